"""Reflow (rectified flow): pair noise with a trained model's own samples.

A flow-matching model trained on independent pairs defines a deterministic map
eps -> Phi(eps) (its ODE). Training again on the pairs (Phi(eps), eps) gives a
flow whose straight conditional paths do not cross (the pairs come from a flow),
so its trajectories are straighter and few-step sampling improves; each round
costs the pair generation plus another training run.
"""
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from meanflow_jax.training import builders, inference
from meanflow_jax.training import train_state as ts


def make_pairs(workdir, num, nfe, *, method="heun", seed=0, batch=1000, progress=True):
  """`num` pairs (x = the run's sample from eps, eps from the run's prior) and labels.

  Args:
    workdir: a trained run (any objective; flow matching for reflow).
    nfe: network evaluations per sample (the ODE solve: Heun with nfe / 2 steps).
    seed: pair i uses noise `fold_in(key(seed), i)`; class-conditional runs ask for
      class i mod K.

  Returns:
    dict x `[num, ...]`, eps `[num, ...]` (float32) and, for conditional runs, y int32 `[num]`.
  """
  run = inference.load_run(workdir)
  y = (np.arange(num) % run.num_classes).astype(np.int32) if run.num_classes else None
  eps = np.asarray(run.prior.sample(jax.random.key(seed), num, run.data_shape,
                                    None if y is None else jnp.asarray(y)))
  # x in data space: a pairs run trains on the file as it is (no standardisation).
  sampler = inference.make_sampler(run.config, run.model, run.params, method=method,
                                   data_stats=run.data_stats)
  starts = range(0, num, batch)
  if progress:
    starts = tqdm(starts, desc=f"pairs ({nfe} NFE)", unit="batch")
  x = np.concatenate([np.asarray(sampler(eps[i:i + batch], nfe,
                                         None if y is None else y[i:i + batch]))
                      for i in starts])
  out = {"x": x.astype(np.float32), "eps": eps.astype(np.float32)}
  if y is not None:
    out["y"] = y
  return out


# Programs compiled only to be counted: XLA counts FLOPs on the HLO after its own passes,
# which LLVM's optimisation of the machine code (off here) does not change; the count is
# the same and the compile takes about half the time.
_COUNT_ONLY = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def train_step_flops(config, data_shape):
  """XLA's FLOP count of one training step of `config` on one device (compiled against
  abstract shapes, nothing run)."""
  model = ts.build_model(config)
  tx = ts.make_optimizer(config.optimizer, config.train.steps)
  state = builders.abstract_state(config, model, tx, data_shape)
  b = config.train.batch_size
  batch = (jax.ShapeDtypeStruct((b, *data_shape), jnp.float32),
           jax.ShapeDtypeStruct((b,), jnp.int32))
  if config.data.source == "pairs":
    batch = batch + batch[:1]
  step = builders.step_function(config, model, tx)
  return _flops(jax.jit(step, compiler_options=_COUNT_ONLY).lower(
      state, batch, jax.random.key(0)).compile())


def sampling_flops(workdir, num, nfe):
  """FLOPs of drawing `num` samples with `nfe` evaluations from a run: `nfe` times
  XLA's count of one network evaluation (XLA counts a loop's body once, so the
  sampler's own count would not grow with nfe); the solver's few vector ops are left out."""
  run = inference.load_run(workdir)
  z = jax.ShapeDtypeStruct((num, *run.data_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((num,), jnp.float32)
  y = jax.ShapeDtypeStruct((num,), jnp.int32) if run.num_classes else None
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), run.params)
  # Through the objective: an iMF network's v head is not evaluated when sampling.
  forward = lambda p, z, r, t, y: inference.average_velocity(run.config, run.model, p, y)(z, r, t)
  return nfe * _flops(jax.jit(forward, compiler_options=_COUNT_ONLY).lower(
      params, z, t, t, y).compile())
