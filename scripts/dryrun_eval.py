"""What FID-N costs: compiles one evaluation batch (sampler, VAE decoder, Inception) against
abstract shapes over a mesh of devices, and adds up FLOPs and memory for N samples.

  python scripts/dryrun_eval.py --config configs/imagenet_dit.py:XL/2 --fake_devices 8 \
      --batch 256 --num 50000 --out results/eval_cost/xl2.json

Nothing is allocated, so the XL/2 generator, the SD-VAE decoder (256x256 images from
32x32x4 latents) and the FID Inception network compile here on a CPU. Each batch of
--batch samples is split over the devices, as evaluate.py does. Prints per stage the
FLOPs per batch and per device, the per-device memory (arguments, outputs,
temporaries), and the total for --num samples, and the time that total would take at
--sustained_tflops per device: an estimate, not a measurement (the sustained rate is
an assumption; XLA's FLOP count on CPU is the same program's count on a GPU).
"""
import os
import sys


def _fake_devices_from_argv():
  for i, a in enumerate(sys.argv):
    value = a.split("=", 1)[1] if a.startswith("--fake_devices=") else (
        sys.argv[i + 1] if a == "--fake_devices" and i + 1 < len(sys.argv) else None)
    if value:  # before jax is imported
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={int(value)}")


_fake_devices_from_argv()

import json  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from meanflow_jax import cli, objectives  # noqa: E402
from meanflow_jax.errors import ConfigError  # noqa: E402
from meanflow_jax.metrics import inception  # noqa: E402
from meanflow_jax.models import vae as vae_lib  # noqa: E402
from meanflow_jax.training import builders, inference, train_state as ts  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "The generator's config.",
                                          lock_config=True)
_BATCH = flags.DEFINE_integer("batch", 256, "Samples per evaluation batch (all devices).")
_NUM = flags.DEFINE_integer("num", 50_000, "Samples of the FID.")
_NFE = flags.DEFINE_integer("nfe", 1, "Network evaluations per sample.")
_FAKE = flags.DEFINE_integer("fake_devices", None, "Fake CPU devices (XLA_FLAGS), e.g. 8.")
_LATENT = flags.DEFINE_list("latent_shape", ["32", "32", "4"], "Shape of one latent sample.")
_TFLOPS = flags.DEFINE_float("sustained_tflops", 100.0, "Assumed sustained TFLOP/s per device "
                             "for the time estimate.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the figures.")
flags.mark_flags_as_required(["config"])


def _abstract(tree, sharding):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def stages(config, batch, latent_shape, mesh):
  """{stage: compiled executable} of one evaluation batch: sampler, decoder, Inception."""
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  model = ts.build_model(config)
  k = int(config.model.num_classes)
  z = jax.ShapeDtypeStruct((batch, *latent_shape), jnp.float32, sharding=rows)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows) if k else None
  tx = ts.make_optimizer(config.optimizer, config.train.steps)
  params = _abstract(builders.abstract_state(config, model, tx, latent_shape).params, rep)
  objective = objectives.get(config.objective)
  guidance = None
  if objective.conditions and k:
    g = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=rows)
    guidance = {"omega": g, "t_min": g, "t_max": g}
  sampler = jax.jit(lambda p, e, y, g, nfe: inference.draw(config.objective, model,
                                                           config.sample.method, p, e, nfe, y,
                                                           g), static_argnums=4)
  # One network evaluation; the caller multiplies by the NFE (XLA counts a loop's body once).
  out = {"sampler": sampler.lower(params, z, y, guidance, 1).compile()}
  vae = vae_lib.AutoencoderKL(vae_lib.VAEConfig())
  vae_params = _abstract(jax.eval_shape(vae.init, jax.random.key(0),
                                        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)), rep)
  decode = jax.jit(lambda p, z: vae.apply(p, z, method=vae.decode))
  out["vae_decoder"] = decode.lower(vae_params, z).compile()
  side = latent_shape[0] * vae_lib.VAEConfig().factor
  images = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32, sharding=rows)
  incep_params = _abstract(jax.eval_shape(inception.InceptionV3().init, jax.random.key(0),
                                          jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)),
                           rep)
  out["inception"] = jax.jit(inception._features).lower(incep_params, images).compile()
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  latent_shape = tuple(int(v) for v in _LATENT.value)
  devices = jax.devices()
  batch, num = _BATCH.value, _NUM.value
  if batch < 1 or num < 1 or batch % len(devices):
    raise ConfigError(f"--batch must be a positive multiple of the {len(devices)} devices and "
                      f"--num positive; got {batch} and {num}.")
  mesh = Mesh(np.array(devices), ("data",))
  batches = math.ceil(num / batch)
  print(f"{config.model.name} {config.model.variant or ''} ({config.objective}, {_NFE.value} "
        f"NFE), SD-VAE decoder, FID Inception: {num} samples in {batches} batches of {batch} "
        f"on {len(devices)} {devices[0].platform} devices")
  out = {"num": num, "batch": batch, "devices": len(devices), "nfe": _NFE.value,
         "sustained_tflops_assumed": _TFLOPS.value}
  total = 0.0
  for name, compiled in stages(config, batch, latent_shape, mesh).items():
    f = builders.compiled_figures(compiled)
    if name == "sampler":  # compiled for one evaluation
      f["flops_per_device"] *= _NFE.value
    f["flops_per_batch"] = f["flops_per_device"] * len(devices)
    f["flops_total"] = f["flops_per_batch"] * batches
    total += f["flops_total"]
    out[name] = f
    print(f"{name:>12}: {f['flops_per_batch'] / 1e12:8.2f} TFLOP per batch "
          f"({f['flops_per_batch'] / batch / 1e9:7.1f} GFLOP per sample), "
          f"{f['flops_total'] / 1e15:7.2f} PFLOP in all; per device: arguments "
          f"{f['argument_gib']:.2f} GiB, temporaries {f['temp_gib']:.2f} GiB")
  seconds = total / (len(devices) * _TFLOPS.value * 1e12)
  out["flops_total"], out["estimated_s"] = total, seconds
  print(f"total {total / 1e15:.2f} PFLOP: about {seconds / 60:.1f} minutes on "
        f"{len(devices)} devices at an assumed {_TFLOPS.value:g} TFLOP/s each (an estimate)")
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as fh:
      json.dump(out, fh, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
