"""Restoring a trained run for sampling: config, model, parameters, sampler."""
import functools
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from meanflow_jax import objectives, priors, sampling
from meanflow_jax.data import points
from meanflow_jax.errors import CheckpointMismatchError, ConfigError, RunNotFoundError
from meanflow_jax.training import checkpoint as ckpt_lib
from meanflow_jax.training import builders, sharding
from meanflow_jax.training import train_state as ts


class Run(NamedTuple):
  config: ml_collections.ConfigDict
  model: object
  params: object
  data_shape: tuple  # shape of one data sample, e.g. (2,) or (8, 8, 1)
  num_classes: int   # classes of a conditional model; 0 for an unconditional one
  prior: priors.Prior = priors.Prior()  # the source: `prior.sample(key, num, data_shape, y)`
  # The space the model samples in: data = data_stats.invert(sample); None: data space.
  data_stats: Optional[points.Standardization] = None


def _restore(workdir, step, target=None):
  """`checkpoint.Restored` of the newest intact (or the given) checkpoint of `workdir`,
  read only, with a warning for each newer damaged step (left in place)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise RunNotFoundError(f"{workdir}: no checkpoints/ folder; train there first.")
  ckpt = ckpt_lib.Checkpointer(directory, read_only=True)
  try:
    found = ckpt.restore_intact(target, step=step)
  finally:
    ckpt.close()
  if found is None:
    raise RunNotFoundError(f"{workdir}: no checkpoint saved yet.")
  for s, what in found.damaged:
    ckpt_lib.warn(f"checkpoint {os.path.join(ckpt.directory, str(s))} is damaged ({what}); "
                  f"using step {found.step}, the newest intact checkpoint (the damaged one is "
                  "left in place).")
  return found


def load_config(workdir, step=None):
  """The config saved with the newest (or given) checkpoint of `workdir` whose config and
  meta read back; its arrays are verified by `load_run`, not here."""
  return ml_collections.ConfigDict(_restore(workdir, step).config)


def load_run(workdir, params=None, step=None, ema=None):
  """The `Run` of the newest intact (or the given) checkpoint in `workdir`.

  Every checkpoint read is verified against the checksums saved with it; a damaged
  newest step is said on stderr and the newest intact one used (the given `step`
  alone: CheckpointDamagedError if damaged).

  Args:
    params: "ema" for the first EMA copy, "raw" for the optimised parameters;
      None takes the run's `sample.params`.
    ema: with params "ema", the decay of the copy (one of train.ema_decays);
      None: the first.
  """

  def target(saved, meta):
    config = ml_collections.ConfigDict(saved)
    tx = ts.make_optimizer(config.optimizer, config.train.steps)
    return builders.abstract_state(config, ts.build_model(config), tx, meta["data_shape"])

  found = _restore(workdir, step, target)
  step, state, meta = found.step, found.state, found.meta
  config = ml_collections.ConfigDict(found.config)
  model = ts.build_model(config)
  data_shape = meta["data_shape"]
  params = params or config.sample.params
  if params not in ("ema", "raw"):
    raise ConfigError(f"params must be 'ema' or 'raw'; got {params!r}.")
  decays = [float(d) for d in config.train.ema_decays]
  if ema is not None and float(ema) not in decays:
    raise ConfigError(f"{workdir} keeps EMA copies with decays {decays}; got --ema {ema}.")
  index = 0 if ema is None else decays.index(float(ema))
  chosen = state.ema_params[index] if params == "ema" else state.params
  stats = (priors.load_stats(os.path.join(workdir, priors.STATS_FILE))
           if config.prior.name == "lowfreq" else None)
  data_stats = points.stats_from_json(meta.get("data_stats"))  # absent before standardisation
  if (data_stats is not None) != bool(config.data.standardize
                                      and config.data.source in builders.VECTOR_SOURCES):
    raise CheckpointMismatchError(
        f"{workdir}: checkpoint {step} has data.standardize = {config.data.standardize} "
        f"({config.data.source}) but {'' if data_stats else 'no '}standardisation statistics "
        "in its meta; it is corrupt or written by another version.")
  return Run(config, model, chosen, tuple(data_shape), int(config.model.num_classes),
             priors.from_config(config, stats), data_stats)


def draw(objective, model, method, params, eps, nfe, y, guidance=None):
  """Samples from noise `eps` with `nfe` network evaluations by the registered
  `objective`'s generation steps (MeanFlow and iMF jumps; flow matching by Euler, `nfe`
  steps, or Heun, `nfe // 2`). `guidance`: None, or a dict of `[B]` arrays "omega",
  "t_min", "t_max" for a guidance-conditioned (iMF) model. Pure; unchecked."""
  guidance = guidance or {}
  net = lambda z, r, t: model.apply(params, z, r, t, y, **guidance)
  return objectives.get(objective).generate(net, eps, nfe, method)


def average_velocity(config, model, params, y=None, guidance=None):
  """`u(z, r, t)` of a trained network through its objective (`Objective.average_velocity`):
  the u head of a two-head (iMF) model, one Euler step of a flow-matching v; u(z, t, t) is
  the instantaneous velocity. `guidance`: as in `draw`."""
  guidance = guidance or {}
  net = lambda z, r, t: model.apply(params, z, r, t, y, **guidance)
  return objectives.get(config.objective).average_velocity(net)


def check_guidance(config, omega, interval):
  """(omega, (t_min, t_max)) to sample a guidance-conditioned run with: the arguments, or
  the config's `sample.omega` / `sample.t_min`, `sample.t_max` where None.

  Raises ConfigError for guidance given to a run without guidance conditions, omega < 1
  or an interval outside [0, 1]; warns (stderr) for omega outside the trained range
  [1, 1 + imf.s_max], where the network extrapolates.
  """
  conditioned = bool(objectives.get(config.objective).conditions) and config.model.num_classes
  if not conditioned:
    if omega is not None or interval is not None:
      raise ConfigError(f"guidance at sampling (omega, interval) needs a class-conditional "
                        f"run of an objective that takes it (imf); this run is "
                        f"{config.objective} with {config.model.num_classes} classes.")
    return None
  omega = float(config.sample.omega if omega is None else omega)
  t_min, t_max = ((config.sample.t_min, config.sample.t_max) if interval is None
                  else map(float, interval))
  if not omega >= 1.0:
    raise ConfigError(f"omega must be >= 1 (1: no guidance); got {omega}.")
  if not 0.0 <= t_min <= t_max <= 1.0:
    raise ConfigError(f"the guidance interval needs 0 <= t_min <= t_max <= 1; got "
                      f"[{t_min}, {t_max}].")
  top = 1.0 + config.imf.s_max
  if omega > top:
    ckpt_lib.warn(f"omega {omega:g} lies outside the range this run was trained on [1, "
                  f"{top:g}] (imf.s_max = {config.imf.s_max:g}); the network extrapolates.")
  return omega, (t_min, t_max)


@functools.lru_cache(maxsize=32)
def _jitted_draw(objective, model, method):
  """`draw` jitted for one objective, model and method, shared by every sampler of them
  (a run scored as it trains compiles its sampler once, not at every evaluation)."""
  return jax.jit(functools.partial(draw, objective, model, method), static_argnums=2)


def make_sampler(config, model, params, method=None, devices=None, data_stats=None):
  """`sample(eps [B, ...], nfe, y=None) -> [B, ...]` for the run's objective, jitted per nfe.

  With `data_stats` (a run's `Run.data_stats`) the samples are mapped back to data
  space, `data_stats.invert(x)`; without, they are the network's own outputs (the
  data space of runs that did not standardise). Pass `run.data_stats` wherever samples
  leave the library.

  MeanFlow: `nfe` uniform jumps. Flow matching: Euler with `nfe` steps, or Heun
  with `nfe // 2` steps (nfe must then be even). The parameters are an argument
  of the compiled function, not constants baked into it, replicated on
  `devices` (default: this process's devices), and every batch is split over
  them (padded to a multiple of their number); each sample depends only on its
  own noise and label, so the split does not change it. `y` int `[B]` asks a
  class-conditional model for those classes (guided as it was trained); None, or
  the null class `num_classes`, gives unconditional samples. Unconditional models
  ignore `y`.

  iMF runs with guidance conditions take `omega` and `interval=(t_min, t_max)` per
  call (default: the config's `sample.omega`, `sample.t_min`, `sample.t_max`;
  `check_guidance`): one compiled program serves every omega.
  """
  method = method or config.sample.method
  if method not in sampling.METHODS:
    raise ConfigError(f"method must be one of {sampling.METHODS}; got {method!r}.")
  objective = objectives.get(config.objective)

  k = int(config.model.num_classes)
  mesh = sharding.make_mesh(-1, 1, devices=devices or jax.local_devices())
  rows = sharding.batch_sharding(mesh)
  params = jax.device_put(params, sharding.replicated(mesh))

  _sample = _jitted_draw(config.objective, model, method)

  def split(a, b):
    """`a` padded to a multiple of the devices along its first axis, and split over them."""
    pad = (-b) % mesh.size
    if pad:
      a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)])
    return jax.device_put(a, rows)

  def sample(eps, nfe, y=None, omega=None, interval=None):
    nfe = int(nfe)
    guidance = check_guidance(config, omega, interval)
    if k:
      y = jnp.full((eps.shape[0],), k, jnp.int32) if y is None else jnp.asarray(y, jnp.int32)
      if y.shape != (eps.shape[0],):
        raise ConfigError(f"labels must have shape [{eps.shape[0]}] (one per sample); got "
                          f"{tuple(y.shape)}.")
      bad = np.asarray((y < 0) | (y > k))
      if bad.any():
        raise ConfigError(f"labels must lie in [0, {k}] ({k} = unconditional); got "
                          f"{np.asarray(y)[bad][:5].tolist()}.")
    else:
      y = None
    objective.check_nfe(nfe, method)
    b = eps.shape[0]
    eps = jnp.asarray(eps)
    g = None
    if guidance is not None:
      (w, (lo, hi)), full = guidance, lambda v: split(jnp.full((b,), v, jnp.float32), b)
      g = {"omega": full(w), "t_min": full(lo), "t_max": full(hi)}
    out = _sample(params, split(eps, b), nfe, None if y is None else split(y, b), g)[:b]
    return out if data_stats is None else data_stats.invert(out)

  return sample
