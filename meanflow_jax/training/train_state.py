"""Train state, optimiser and model construction from a config."""
from typing import Any

import flax
import flax.linen as nn
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


def _is_unset(value):
  """The config's "keep the variant's value" markers: 0, 0.0, (), (-1,), -1.0."""
  if isinstance(value, (tuple, list)):
    return len(value) == 0 or tuple(value) == (-1,)
  return value == 0 or value == -1.0


def model_kwargs(model_cfg):
  """Constructor kwargs from the model's config section.

  Without a variant every key of the section is passed; with one, only the keys
  set away from their "unset" marker override the variant's preset.
  """
  section = model_cfg.get(model_cfg.name)
  kwargs = dict(section) if section is not None else {}
  if model_cfg.variant:
    kwargs = {k: v for k, v in kwargs.items() if not _is_unset(v)}
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return kwargs


def build_model(config):
  """The flax module named by `config.model.name` (and `variant`), with its section's kwargs."""
  m = config.model
  kwargs = model_kwargs(m)
  if m.num_classes:
    kwargs["num_classes"] = m.num_classes
  if m.variant:
    return models.build(m.name, m.variant, **kwargs)
  return models.build(m.name, **kwargs)


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
  """A fresh TrainState; `example_x` `[B, ...]` fixes the input shape.

  The parameters are unboxed: their logical axis names (`nn.get_partition_spec` of
  `model.init`) are read from the model where shardings are made, not carried here.
  """
  b = example_x.shape[0]
  t = jnp.ones((b,), jnp.float32)
  y = jnp.zeros((b,), jnp.int32) if getattr(model, "num_classes", 0) else None
  params = nn.meta.unbox(model.init(key, example_x, t, t, y))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=tuple(params for _ in range(num_ema)))
