"""Restoring a trained run for sampling: config, model, parameters, sampler."""
import functools
import os

import jax
import ml_collections

from meanflow_jax import sampling
from meanflow_jax.errors import RunNotFoundError
from meanflow_jax.training import checkpoint as ckpt_lib
from meanflow_jax.training import loop
from meanflow_jax.training import train_state as ts


def load_run(workdir, params="ema", step=None):
  """(config, model, params) of the latest (or given) checkpoint in `workdir`.

  Args:
    params: "ema" for the first EMA copy, "raw" for the optimised parameters.
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise RunNotFoundError(f"{workdir}: no checkpoints/ folder; train there first.")
  ckpt = ckpt_lib.Checkpointer(directory)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise RunNotFoundError(f"{directory}: no checkpoint saved yet.")
    config = ml_collections.ConfigDict(ckpt.restore_config(step))
    model = ts.build_model(config)
    tx = ts.make_optimizer(config.optimizer, config.train.steps)
    dim = loop.make_source(config).dim
    state = ckpt.restore_state(loop.abstract_state(config, model, tx, dim), step)
  finally:
    ckpt.close()
  if params == "ema":
    return config, model, state.ema_params[0]
  if params == "raw":
    return config, model, state.params
  raise ValueError(f"params must be 'ema' or 'raw'; got {params!r}.")


def make_sampler(config, model, params, method=None):
  """A jitted `sample(eps [B, ...], nfe) -> [B, ...]` for the run's objective.

  MeanFlow: `nfe` uniform jumps. Flow matching: Euler with `nfe` steps, or Heun
  with `nfe // 2` steps (nfe must then be even).
  """
  method = method or config.sample.method

  @functools.partial(jax.jit, static_argnums=1)
  def sample(eps, nfe):
    if config.objective == "meanflow":
      return sampling.meanflow_sample(lambda z, r, t: model.apply(params, z, r, t), eps, nfe)
    v_fn = lambda z, t: model.apply(params, z, t, t)
    if method == "heun":
      if nfe % 2:
        raise ValueError(f"Heun takes 2 evaluations a step: nfe must be even, got {nfe}.")
      return sampling.flow_matching_sample(v_fn, eps, nfe // 2, "heun")
    return sampling.flow_matching_sample(v_fn, eps, nfe, "euler")

  return sample
