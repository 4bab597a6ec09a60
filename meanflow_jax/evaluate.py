"""Evaluating trained runs: per-sample noise, samples at several NFE, exact metrics."""
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from meanflow_jax import paths
from meanflow_jax.data import points
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import toy
from meanflow_jax.training import inference


class ToyEvaluation(NamedTuple):
  rows: list       # one dict of metrics per NFE
  samples: dict    # nfe -> samples [num, D]
  exact: object    # exact flow-map images of the same noise [num, D]
  mixture: object  # the analytic.GaussianMixture the run trained on


def evaluate_toy(workdir, nfes, *, num=10_000, seed=0, params=None, method=None,
                 flow_steps=256, batch=10_000):
  """Exact metrics of a run trained on a built-in mixture, at each NFE in `nfes`.

  Every NFE uses the same noise; the reference is the exact probability-flow map
  of that noise (RK4 with `flow_steps` steps on the exact mixture velocity).

  Returns:
    a `ToyEvaluation`.
  """
  config, model, p, _ = inference.load_run(workdir, params=params)
  if config.data.path:
    raise ConfigError(f"{workdir} trained on {config.data.path}; exact metrics need a "
                     "built-in mixture (data.path = '').")
  mixture = points.mixture(config.data.mixture)
  key_noise, key_reference = jax.random.split(jax.random.key(seed))
  reference = toy.make_reference(mixture, key_reference, num)
  eps = paths.sample_noise(key_noise, num, (mixture.dim,))
  flow = jax.jit(lambda e: mixture.flow_map(e, 1.0, 0.0, flow_steps))
  exact = jnp.concatenate([flow(eps[i:i + batch]) for i in range(0, num, batch)])
  sampler = inference.make_sampler(config, model, p, method=method)
  rows, samples = [], {}
  for k in nfes:
    x = jnp.concatenate([sampler(eps[i:i + batch], int(k)) for i in range(0, num, batch)])
    samples[int(k)] = np.asarray(x)
    row = {"objective": config.objective, "nfe": int(k),
           "method": "meanflow" if config.objective == "meanflow" else (
               "fm-" + (method or config.sample.method))}
    row.update(toy.toy_report(mixture, x, exact, reference))
    rows.append(row)
  return ToyEvaluation(rows, samples, np.asarray(exact), mixture)


def markdown_table(rows, columns):
  """A Markdown table of `rows` (dicts) with the given columns; floats to 4 decimals."""
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def training_seconds(workdir):
  """Seconds spent in training steps, from the run's metrics.jsonl (resume-proof).

  Sums each logged interval's steps over its measured steps/s; compilation and
  checkpoint waits are not included.
  """
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
  total, last = 0.0, 0
  for r in rows:
    total += (r["step"] - last) / r["steps_per_s"]
    last = r["step"]
  return total
