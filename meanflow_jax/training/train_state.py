"""Train state, optimiser and model construction from a config."""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from meanflow_jax import models, objectives
from meanflow_jax.errors import ConfigError


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly where it stopped."""
  step: jax.Array        # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  ema_params: tuple      # one copy of params per EMA decay


def model_kwargs(model_cfg):
  """Constructor kwargs from the model's config section: the keys set in it.

  Keys left None ("use the preset") are left out, so a variant's preset (or else
  the class's default) gives their value; every other value, 0 and () included,
  is passed on (the config's range checks refuse the ones that cannot work).
  """
  section = model_cfg.get(model_cfg.name)
  kwargs = dict(section) if section is not None else {}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()
          if v is not None}


def build_model(config):
  """The flax module named by `config.model.name` (and `variant`), with its section's kwargs."""
  m = config.model
  kwargs = model_kwargs(m)
  if m.dtype != "float32":
    kwargs["dtype"] = jnp.dtype(m.dtype)
  if m.num_classes:
    kwargs["num_classes"] = m.num_classes
  # The objective's heads and conditions; left out when off, so that models without
  # these attributes (and runs saved before them) build as before.
  objective = objectives.get(config.get("objective", "meanflow"))  # a model section alone: MF
  if "v" in objective.heads:
    kwargs["v_head"] = True
  if objective.conditions and m.num_classes:
    kwargs["guided"] = True
  if m.get("prediction", "u") != "u":
    kwargs["prediction"] = m.prediction
  if m.get("remat", False):  # off: models without the attribute build as before
    kwargs["remat"] = True
  try:
    return models.build(m.name, m.variant or None, **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"model {m.name!r} cannot be built from the config: {e} Set the keys "
                      f"of model.{m.name} (or a model.variant).") from e


def check_model_fits(model, data_shape):
  """Traces `model.init` on the data's shape (no allocation); ConfigError if it cannot run."""
  z = jax.ShapeDtypeStruct((1, *data_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if getattr(model, "num_classes", 0) else None
  try:
    jax.eval_shape(model.init, jax.random.key(0), z, t, t, y)
  except (TypeError, ValueError, ZeroDivisionError) as e:
    raise ConfigError(f"the model does not fit data of shape {tuple(data_shape)}: {e}") from e


def _schedule(opt, total_steps, peak):
  """The learning rate over steps: warm-up to `peak`, then constant or cosine decay."""
  if opt.schedule == "constant":
    lr = optax.constant_schedule(peak)
  elif opt.schedule == "cosine":
    lr = optax.cosine_decay_schedule(peak, max(1, total_steps - opt.warmup_steps))
  else:
    raise ValueError(f"unknown optimizer.schedule {opt.schedule!r}; use 'constant' or 'cosine'.")
  if opt.warmup_steps:
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, opt.warmup_steps), lr], [opt.warmup_steps])
  return lr


def _muon(opt, lr, schedule):
  """Muon (Newton-Schulz orthogonalised momentum, 0.95) on 2-D kernels at
  `optimizer.muon_lr`; AdamW (lr, b1, b2, weight_decay) on everything else."""
  return optax.contrib.muon(schedule(opt.muon_lr), beta=0.95, weight_decay=opt.weight_decay,
                            adam_b1=opt.b1, adam_b2=opt.b2, adam_weight_decay=opt.weight_decay,
                            adam_learning_rate=lr)


OPTIMIZERS = {
    "adam": lambda opt, lr, schedule: optax.adam(lr, b1=opt.b1, b2=opt.b2),
    "adamw": lambda opt, lr, schedule: optax.adamw(lr, b1=opt.b1, b2=opt.b2,
                                                   weight_decay=opt.weight_decay),
    "muon": _muon,
}


def make_optimizer(opt, total_steps):
  """optax transform from the `optimizer` config section."""
  lr = _schedule(opt, total_steps, opt.lr)
  build = OPTIMIZERS.get(opt.name)
  if build is None:
    raise ValueError(f"unknown optimizer.name {opt.name!r}; use one of {sorted(OPTIMIZERS)}.")
  tx = build(opt, lr, lambda peak: _schedule(opt, total_steps, peak))
  if opt.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
  return tx


def init_state(key, model, tx, example_x, num_ema, unbox=True):
  """A fresh TrainState; `example_x` `[B, ...]` fixes the input shape.

  With `unbox` (the default) the arrays are plain; with `unbox=False` every
  parameter-shaped leaf (params, optimiser moments, EMA copies) stays an
  `nn.Partitioned` box with its logical axis names, which is what
  `sharding.state_shardings` reads from `jax.eval_shape` of this function.
  """
  b = example_x.shape[0]
  t = jnp.ones((b,), jnp.float32)
  y = jnp.zeros((b,), jnp.int32) if getattr(model, "num_classes", 0) else None
  params = model.init(key, example_x, t, t, y)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=tuple(params for _ in range(num_ema)))
  return nn.meta.unbox(state) if unbox else state
