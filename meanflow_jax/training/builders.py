"""One builder per thing a run is made of: its data source, prior, state shapes and
shardings, and the compiled step. The loop, inference, the dry run and the benches all
build through here, so the step a dry run compiles is the step training runs.

Imports run one way: builders <- inference <- loop.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from meanflow_jax import priors
from meanflow_jax.data import PointSource, images, pairs
from meanflow_jax.errors import ConfigError
from meanflow_jax.objectives import features
from meanflow_jax.training import feature_networks  # noqa: F401  (registers "classifier")
from meanflow_jax.training import sharding
from meanflow_jax.training import train_state as ts
from meanflow_jax.training.train_step import train_step


def run_keys(seed):
  """(init, steps, data) keys of a run: each use of randomness has its own key."""
  key_init, key_steps, key_data = jax.random.split(jax.random.key(seed), 3)
  return key_init, key_steps, key_data


VECTOR_SOURCES = ("mixture", "points")


class _Points:
  """A `PointSource` seen as a source of (x, y) batches with unused labels; `stats` is the
  source's `points.Standardization` (None: the run trains on the data as they are)."""
  num_classes = 0

  def __init__(self, source):
    self.source = source
    self.shape = (source.dim,)
    self.stats = source.stats

  def batch(self, step, shard=(0, 1)):
    """Rows `i*B/n : (i+1)*B/n` of the batch of `step` for `shard=(i, n)`
    (the toy data is cheap, so each process draws the whole batch)."""
    x = np.asarray(self.source.batch(step))
    i, n = shard
    x = x[i * len(x) // n:(i + 1) * len(x) // n]
    return x, np.zeros((x.shape[0],), np.int32)


def make_source(config):
  """The run's data: `.batch(step) -> (x [B, ...], y int [B])`, `.shape`, `.num_classes`.

  Raises DataError for data that cannot be used, ConfigError for a model whose
  classes do not fit the data's labels.
  """
  d = config.data
  if d.source == "pairs":
    x, eps, labels, k = pairs.load_pairs(d.path)
    source = pairs.PairSource(x, eps, labels, k, batch_size=config.train.batch_size,
                              seed=config.seed)
  elif d.source in VECTOR_SOURCES:
    if d.source == "points" and not d.path:
      raise ConfigError("data.source = 'points' needs data.path (a .npy [N, D] array).")
    source = _Points(PointSource(batch_size=config.train.batch_size, key=run_keys(config.seed)[2],
                                 path=d.path if d.source == "points" else "",
                                 mixture_name=d.mixture,
                                 mixture_params=dict(dim=d.mixture_dim,
                                                     separation=d.mixture_separation,
                                                     std=d.mixture_std),
                                 standardize=d.standardize))
  else:
    source = images.make_image_source(d.source, path=d.path, batch_size=config.train.batch_size,
                                      seed=config.seed, flip=d.flip, latent_scale=d.latent_scale)
  k = config.model.num_classes
  if k and not source.num_classes:
    raise ConfigError(f"model.num_classes = {k} asks for a class-conditional model, but the "
                      f"{d.source!r} data has no labels; set model.num_classes = 0.")
  if k and source.num_classes > k:
    raise ConfigError(f"the {d.source!r} data has {source.num_classes} classes; model.num_classes "
                      f"= {k} is too few.")
  return source


def init_fn(config, model, tx, data_shape, unbox=True):
  example = jnp.zeros((1, *data_shape), jnp.float32)
  return functools.partial(ts.init_state, model=model, tx=tx, example_x=example,
                           num_ema=len(config.train.ema_decays), unbox=unbox)


def abstract_state(config, model, tx, data_shape, shardings=None):
  """The state's shapes and dtypes (and `shardings`, if given), computed without
  allocating it: the target Orbax restores into."""
  shapes = jax.eval_shape(init_fn(config, model, tx, data_shape), jax.random.key(0))
  if shardings is None:
    return shapes
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def plan_shardings(config, model, tx, data_shape, mesh):
  """(state shardings, batch shardings) on `mesh`, from shapes alone."""
  boxed = jax.eval_shape(init_fn(config, model, tx, data_shape, unbox=False),
                         jax.random.key(0))
  batch = sharding.batch_sharding(mesh)
  return sharding.state_shardings(boxed, mesh), (batch, batch)


def step_function(config, model, tx, prior=None):
  """The pure `train_step` of `config`: `(state, batch, key) -> (state, metrics)`."""
  return functools.partial(
      train_step, apply_fn=model.apply, tx=tx, objective=config.objective,
      time_cfg=config.time, loss_cfg=config.loss, ema_decays=tuple(config.train.ema_decays),
      guidance_cfg=config.guidance, num_classes=config.model.num_classes, prior=prior,
      imf_cfg=config.imf, feature_loss=features.from_config(config))


def make_prior(config, source):
  """The run's `priors.Prior`; the low-frequency prior is fitted on the training stream.

  Raises ConfigError for a prior that does not fit the data.
  """
  priors.check_prior_config(config, source.shape)
  if config.data.source == "pairs" and (config.prior.name, config.prior.coupling) != (
      "gaussian", "independent"):
    raise ConfigError("data.source = 'pairs' trains on the file's own (x, eps) pairing; keep "
                      "prior.name = 'gaussian' and prior.coupling = 'independent'.")
  stats = priors.fit_from_source(config, source) if config.prior.name == "lowfreq" else None
  return priors.from_config(config, stats)


def data_stats(source):
  """The `points.Standardization` a run's data are trained in, or None (data as they are:
  images, pairs, vectors with data.standardize = False)."""
  return source.stats if isinstance(source, _Points) else None


def jit_step(config, model, tx, prior, mesh, state_sh, batch_sh):
  """The run's `step_function`, jitted for `mesh` with the state donated: call
  `.lower(state, batch, key).compile()` on it (training) or on abstract shapes (dry run)."""
  replicated = sharding.replicated(mesh)
  return jax.jit(step_function(config, model, tx, prior), donate_argnums=0,
                 in_shardings=(state_sh, batch_sh, replicated),
                 out_shardings=(state_sh, replicated))


def compiled_figures(compiled):
  """XLA's counts of a compiled program, per device: FLOPs and the memory of its arguments,
  outputs, temporaries and aliased buffers (GiB)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  gib = lambda b: b / 2 ** 30
  return {"flops_per_device": float(cost.get("flops", 0.0)),
          "argument_gib": gib(mem.argument_size_in_bytes),
          "output_gib": gib(mem.output_size_in_bytes),
          "temp_gib": gib(mem.temp_size_in_bytes),
          "alias_gib": gib(mem.alias_size_in_bytes)}
