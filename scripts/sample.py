"""Writes samples of a trained run with a given number of network evaluations.

  python scripts/sample.py --workdir runs/toy --nfe 1 --num 4000 --seed 0 --out runs/toy/x.npy
  python scripts/sample.py --workdir runs/toy --nfe 2 --noise eps.npy --out x.npy

Writes `--out` ([M, D] float32) and, for 2-D data, a scatter PNG beside it.
"""
import os

import jax
import numpy as np
from absl import flags

from meanflow_jax import cli, paths, plotting
from meanflow_jax.data import points
from meanflow_jax.errors import ConfigError, DataError
from meanflow_jax.training import inference

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/).")
_NFE = flags.DEFINE_integer("nfe", 1, "Network evaluations per sample.")
_NUM = flags.DEFINE_integer("num", None, "Number of samples (default 1000, or the noise's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise; sample i uses fold_in(key, i).")
_OUT = flags.DEFINE_string("out", None, "Output .npy file.")
_NOISE = flags.DEFINE_string("noise", None, "Optional .npy noise [M, D] to start from.")
_PARAMS = flags.DEFINE_enum("params", None, ["ema", "raw"], "Parameters (default: the run's "
                            "sample.params).")
_METHOD = flags.DEFINE_enum("method", None, ["euler", "heun"], "Flow-matching solver.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  if not _OUT.value.endswith(".npy"):
    raise ConfigError(f"--out must name a .npy file; got {_OUT.value!r}.")
  if _NUM.value is not None and _NUM.value < 1:
    raise ConfigError(f"--num must be >= 1; got {_NUM.value}.")
  run = inference.load_run(_WORKDIR.value, params=_PARAMS.value)
  config = run.config
  (dim,) = run.data_shape
  if _NOISE.value:
    eps = points.load_points(_NOISE.value)  # rank 2, finite, float32
    if eps.shape[1] != dim:
      raise DataError(f"{_NOISE.value}: noise must have shape [M, {dim}] for this run; got "
                      f"{eps.shape}.")
    if _NUM.value is not None and _NUM.value != eps.shape[0]:
      raise DataError(f"--num {_NUM.value} disagrees with the {eps.shape[0]} rows of "
                      f"{_NOISE.value}.")
  else:
    eps = paths.sample_noise(jax.random.key(_SEED.value), _NUM.value or 1000, (dim,))
  sampler = inference.make_sampler(config, run.model, run.params, method=_METHOD.value)
  x = np.asarray(sampler(eps, _NFE.value))
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  np.save(_OUT.value, x)
  print(f"wrote {x.shape[0]} samples ({_NFE.value} NFE, {config.objective}) to {_OUT.value}")
  if dim == 2:
    png = _OUT.value[:-len(".npy")] + ".png"
    log_prob = None if config.data.path else points.mixture(config.data.mixture).log_prob
    plotting.scatter([(f"{config.objective}, {_NFE.value} NFE", x[:config.sample.num_plot])],
                     png, log_prob=log_prob)
    print(f"wrote {png}")


if __name__ == "__main__":
  cli.run(main)
