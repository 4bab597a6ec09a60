"""Runs a few train steps of a tiny conditional DiT (or U-Net with dropout) on digits unsharded and sharded over a
(data, fsdp) mesh of the fake CPU devices, and prints the largest differences (JSON)."""
import os
import sys

# 8 fake devices; both runs compiled without XLA's costly passes (see tests/helpers/xla.py).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0"
                           " --xla_llvm_disable_expensive_passes=true")

import functools  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from configs import digits  # noqa: E402
from meanflow_jax import priors  # noqa: E402
from meanflow_jax.data import images  # noqa: E402
from meanflow_jax.training import sharding, train_state as ts  # noqa: E402
from meanflow_jax.training.train_step import train_step  # noqa: E402


PRIORS = {"gaussian": priors.Prior(), "ot": priors.Prior(coupling="minibatch_ot"),
          "lowfreq": priors.Prior(name="lowfreq", factor=2, noise_std=0.5)}


def main(data, fsdp, model_name="dit", prior="gaussian"):
  c = digits.get_config()
  c.model.dit.hidden_size, c.model.dit.depth, c.model.dit.num_heads = 64, 1, 2
  if model_name == "unet":  # with dropout: its masks must not depend on the layout either
    c.model.name, c.model.variant = "unet", "small"
    c.model.unet.base_channels, c.model.unet.dropout = 16, 0.3
  model = ts.build_model(c)
  tx = ts.make_optimizer(c.optimizer, 100)
  init = functools.partial(ts.init_state, model=model, tx=tx,
                           example_x=jnp.zeros((1, 8, 8, 1)), num_ema=1)
  source = images.make_image_source("digits", batch_size=32, seed=0)
  step = functools.partial(train_step, apply_fn=model.apply, tx=tx, objective="meanflow",
                           time_cfg=c.time, loss_cfg=c.loss, ema_decays=(0.99,),
                           guidance_cfg=c.guidance, num_classes=10, prior=PRIORS[prior])
  key = jax.random.key(1)

  def run(jitted, state):
    losses = []
    for s in range(3):
      state, m = jitted(state, source.batch(s), key)
      losses.append(float(m["loss"]))
    return state, losses

  single, loss_1 = run(jax.jit(step), jax.jit(init)(jax.random.key(0)))

  mesh = sharding.make_mesh(data=data, fsdp=fsdp)
  boxed = jax.eval_shape(functools.partial(init, unbox=False), jax.random.key(0))
  state_sh = sharding.state_shardings(boxed, mesh, min_size=1024)
  batch_sh = (sharding.batch_sharding(mesh), sharding.batch_sharding(mesh))
  state = jax.jit(init, out_shardings=state_sh)(jax.random.key(0))
  sharded = jax.jit(step, in_shardings=(state_sh, batch_sh, sharding.replicated(mesh)),
                    out_shardings=(state_sh, sharding.replicated(mesh)))
  multi, loss_n = run(sharded, state)
  leaves_1, leaves_n = jax.tree.leaves(single), jax.tree.leaves(multi)
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(leaves_1, leaves_n))
  fsdp_sharded = sum(1 for s in jax.tree.leaves(state_sh) if "fsdp" in str(s.spec))
  print(json.dumps({"losses_1": loss_1, "losses_n": loss_n, "max_param_diff": diff,
                    "devices": len(jax.devices()), "fsdp_sharded_leaves": fsdp_sharded}))


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])
