"""Train state, optimiser and model construction from a config."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from meanflow_jax import models


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly where it stopped."""
  step: jax.Array        # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  ema_params: tuple      # one copy of params per EMA decay


def build_model(config):
  """The flax module named by `config.model.name`, with its section's kwargs."""
  name = config.model.name
  section = config.model.get(name)
  kwargs = dict(section) if section is not None else {}
  return models.build(name, **kwargs)


def make_optimizer(opt, total_steps):
  """optax transform from the `optimizer` config section."""
  if opt.schedule == "constant":
    lr = optax.constant_schedule(opt.lr)
  elif opt.schedule == "cosine":
    lr = optax.cosine_decay_schedule(opt.lr, max(1, total_steps - opt.warmup_steps))
  else:
    raise ValueError(f"unknown optimizer.schedule {opt.schedule!r}; use 'constant' or 'cosine'.")
  if opt.warmup_steps:
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, opt.lr, opt.warmup_steps), lr], [opt.warmup_steps])
  if opt.name == "adamw":
    tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
  elif opt.name == "adam":
    tx = optax.adam(lr, b1=opt.b1, b2=opt.b2)
  else:
    raise ValueError(f"unknown optimizer.name {opt.name!r}; use 'adam' or 'adamw'.")
  if opt.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
  return tx


def init_state(key, model, tx, example_x, num_ema):
  """A fresh TrainState; `example_x` `[B, ...]` fixes the input shape."""
  b = example_x.shape[0]
  t = jnp.ones((b,), jnp.float32)
  params = model.init(key, example_x, t, t)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=tuple(params for _ in range(num_ema)))
