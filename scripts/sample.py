"""Writes samples of a trained run with a given number of network evaluations.

  python scripts/sample.py --workdir runs/toy --nfe 1 --num 4000 --seed 0 --out runs/toy/x.npy
  python scripts/sample.py --workdir runs/toy --nfe 2 --noise eps.npy --out x.npy

Writes `--out` ([M, D] float32) and a scatter PNG beside it (for 2-D data).
"""
import os

import jax
import numpy as np
from absl import flags

from meanflow_jax import cli, evaluate, plotting
from meanflow_jax.data import points
from meanflow_jax.errors import DataError
from meanflow_jax.training import inference

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/).")
_NFE = flags.DEFINE_integer("nfe", 1, "Network evaluations per sample.")
_NUM = flags.DEFINE_integer("num", None, "Number of samples (default 1000, or the noise's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise; sample i uses fold_in(key, i).")
_OUT = flags.DEFINE_string("out", None, "Output .npy file.")
_NOISE = flags.DEFINE_string("noise", None, "Optional .npy noise [M, D] to start from.")
_PARAMS = flags.DEFINE_enum("params", None, ["ema", "raw"], "Parameters (default: config).")
_METHOD = flags.DEFINE_enum("method", None, ["euler", "heun"], "Flow-matching solver.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  config, model, params = inference.load_run(_WORKDIR.value,
                                             params=_PARAMS.value or "ema")
  dim = None if config.data.path else points.mixture(config.data.mixture).dim
  if dim is None:
    dim = points.load_points(config.data.path).shape[1]
  if _NOISE.value:
    eps = np.load(_NOISE.value)
    if eps.ndim != 2 or eps.shape[1] != dim:
      raise DataError(f"{_NOISE.value}: noise must have shape [M, {dim}] for this run; got "
                      f"{eps.shape}.")
    if _NUM.value is not None and _NUM.value != eps.shape[0]:
      raise DataError(f"--num {_NUM.value} disagrees with the {eps.shape[0]} rows of "
                      f"{_NOISE.value}.")
    points.check_points(eps, source=_NOISE.value)
  else:
    eps = evaluate.noise(jax.random.key(_SEED.value), _NUM.value or 1000, (dim,))
  sampler = inference.make_sampler(config, model, params, method=_METHOD.value)
  x = np.asarray(sampler(np.asarray(eps, np.float32), _NFE.value))
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  np.save(_OUT.value, x)
  print(f"wrote {x.shape[0]} samples ({_NFE.value} NFE, {config.objective}) to {_OUT.value}")
  if dim == 2:
    png = os.path.splitext(_OUT.value)[0] + ".png"
    log_prob = None if config.data.path else points.mixture(config.data.mixture).log_prob
    plotting.scatter([(f"{config.objective}, {_NFE.value} NFE", x[:config.sample.num_plot])],
                     png, log_prob=log_prob)
    print(f"wrote {png}")


if __name__ == "__main__":
  cli.run(main)
