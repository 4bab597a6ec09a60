"""Compiles the full train step for a global batch and mesh against abstract shapes.

  python scripts/dryrun.py --config configs/imagenet_dit.py:XL/2 --data_shape 32,32,4 \
      --fake_devices 8 --batch 256
  python scripts/dryrun.py --config configs/digits.py --fake_devices 8 --mesh 4,2

Nothing is allocated: the state, batch and key are `jax.ShapeDtypeStruct`s with
their shardings, so models far too large for this machine compile here. Prints
XLA's FLOPs per step and per device, the per-device memory (arguments, outputs,
temporaries) and the compile time, for the config's objective and the others in
--objectives (default: the config's, then meanflow and flow_matching; each with the
model that objective builds, e.g. iMF's v head), the FLOPs of one forward pass of that
network at the same batch, the step in forward passes, and the FLOP ratios to the first.

  python scripts/dryrun.py --config configs/imagenet_imf.py:B/2 --data_shape 32,32,4 \
      --batch 256 --objectives imf,meanflow
"""
import os
import sys


# XLA's CPU scheduler orders a program for concurrency and keeps more buffers alive than an
# accelerator's memory-aware scheduler would (rematerialisation then saves almost nothing:
# 5.35 -> 5.23 GiB of temporaries for an 8-block DiT's gradient, against 4.16 -> 3.38 GiB
# in the memory-minimising order). The dry run asks for that order, so that its
# temporaries approximate what a GPU needs.
MEMORY_ORDER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _fake_devices_from_argv():
  """--fake_devices (and the memory-minimising order) must take effect before jax is
  imported."""
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + MEMORY_ORDER
  for i, a in enumerate(sys.argv):
    value = a.split("=", 1)[1] if a.startswith("--fake_devices=") else (
        sys.argv[i + 1] if a == "--fake_devices" and i + 1 < len(sys.argv) else None)
    if value:
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={int(value)}")


_fake_devices_from_argv()

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from meanflow_jax import cli, models, objectives, priors  # noqa: E402
from meanflow_jax.errors import ConfigError  # noqa: E402
from meanflow_jax.training import builders, sharding, train_state as ts  # noqa: E402
from meanflow_jax.training.validate import check_config  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config to compile.", lock_config=True)
_BATCH = flags.DEFINE_integer("batch", None, "Global batch (default: train.batch_size).")
_MESH = flags.DEFINE_list("mesh", None, "data,fsdp sizes (default: the config's mesh).")
_SHAPE = flags.DEFINE_list("data_shape", None, "Shape of one example, e.g. 32,32,4 (default: "
                           "from the config's data, which must then be readable here).")
_FAKE = flags.DEFINE_integer("fake_devices", None, "Fake CPU devices (XLA_FLAGS), e.g. 8.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the figures.")
_OBJECTIVES = flags.DEFINE_list("objectives", None, "Objectives to compile (default: the "
                                "config's, then meanflow and flow_matching).")
flags.mark_flags_as_required(["config"])


def compile_step(config, objective, data_shape, batch, mesh):
  """(compiled executable, compile seconds, compiled forward pass) of `objective`'s step
  with the model it builds, from shapes alone."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.objective = objective
  model = ts.build_model(config)
  tx = ts.make_optimizer(config.optimizer, config.train.steps)
  state_sh, batch_sh = builders.plan_shardings(config, model, tx, data_shape, mesh)
  state = builders.abstract_state(config, model, tx, data_shape, state_sh)
  x = jax.ShapeDtypeStruct((batch, *data_shape), jnp.float32, sharding=batch_sh[0])
  y = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sh[1])
  t = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=batch_sh[1])
  forward = jax.jit(lambda p, z, t, y: model.apply(p, z, t, t, y if config.model.num_classes
                                                   else None)).lower(
      state.params, x, t, y).compile()
  # The step training compiles, prior included; pairing with data needs no fitted
  # statistics (those are for sampling from a low-frequency prior).
  lowered = builders.jit_step(config, model, tx, priors.from_config(config), mesh, state_sh,
                              batch_sh).lower(state, (x, y), jax.random.key(0))
  start = time.perf_counter()
  compiled = lowered.compile()
  return compiled, time.perf_counter() - start, forward


def main(argv):
  del argv
  config = _CONFIG.value
  if _MESH.value:
    if len(_MESH.value) != 2:
      raise ConfigError(f"--mesh takes data,fsdp; got {_MESH.value}.")
    with config.unlocked():
      config.mesh.data, config.mesh.fsdp = (int(v) for v in _MESH.value)
  if config.data.source in ("latents", "array", "folder", "points") and not config.data.path:
    with config.unlocked():
      config.data.path = "(not read)"  # the shape comes from --data_shape
  check_config(config)
  if _SHAPE.value:
    data_shape = tuple(int(v) for v in _SHAPE.value)
  elif config.data.path == "(not read)":
    raise ConfigError(f"data.source {config.data.source!r}: give --data_shape (e.g. 32,32,4).")
  else:
    data_shape = tuple(builders.make_source(config).shape)
  batch = _BATCH.value or config.train.batch_size
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  if batch % mesh.size:
    raise ConfigError(f"--batch {batch} does not split over {mesh.size} devices.")
  params = models.param_count(ts.build_model(config), data_shape)
  print(f"{config.model.name} {config.model.variant or ''}: {params:,} parameters; data "
        f"{data_shape}; global batch {batch}; mesh data x fsdp = {mesh.shape['data']} x "
        f"{mesh.shape['fsdp']} ({jax.devices()[0].platform}, {mesh.size} devices)")
  out = {"params": params, "batch": batch, "mesh": dict(mesh.shape), "data_shape": data_shape}
  chosen = _OBJECTIVES.value or list(dict.fromkeys([config.objective, "meanflow",
                                                      "flow_matching"]))
  for objective in chosen:
    objectives.get(objective)  # unknown: one line listing the registered ones
  for objective in chosen:
    compiled, seconds, forward = compile_step(config, objective, data_shape, batch, mesh)
    f = builders.compiled_figures(compiled)
    f["compile_s"] = seconds
    f["flops_per_step"] = f["flops_per_device"] * mesh.size
    f["forward_flops"] = builders.compiled_figures(forward)["flops_per_device"] * mesh.size
    f["forward_passes"] = f["flops_per_step"] / f["forward_flops"]
    out[objective] = f
    print(f"{objective:>14}: {f['flops_per_step'] / 1e12:10.3f} TFLOP/step "
          f"({f['flops_per_device'] / 1e12:.3f} per device; {f['forward_passes']:.2f} forward "
          f"passes of its network, {f['forward_flops'] / 1e9:.4g} GFLOP each); per device: "
          f"arguments {f['argument_gib']:.2f} GiB, outputs {f['output_gib']:.2f} GiB, "
          f"temporaries {f['temp_gib']:.2f} GiB; compiled in {seconds:.1f} s")
  first = chosen[0]
  for other in chosen[1:]:
    ratio = out[first]["flops_per_step"] / out[other]["flops_per_step"]
    out[f"flop_ratio_{first}_{other}"] = ratio
    print(f"{first} / {other} FLOPs per step: {ratio:.3f}")
  if chosen[:2] == ["meanflow", "flow_matching"]:
    out["flop_ratio"] = out["flop_ratio_meanflow_flow_matching"]  # the name it always had
  if _OUT.value:
    with open(_OUT.value, "w") as fh:
      json.dump(out, fh, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
