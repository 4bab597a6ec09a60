"""Writes (x, eps[, y]) pairs drawn from a trained run: the data of a reflow run.

x is in data space. A pairs run trains on them as they are (no standardisation), so the
first run of a reflow on vectors is trained with data.standardize=False: the reflow run
starts from its parameters (train.init_from), which must map to the same space.

  python scripts/train.py --config configs/toy.py --workdir runs/toy_fm \
      --config.objective=flow_matching --config.loss.p=0 --config.data.standardize=False
  python scripts/make_pairs.py --workdir runs/toy_fm --num 50000 --nfe 64 --out runs/pairs.npz
  python scripts/train.py --config configs/toy.py --workdir runs/toy_reflow \
      --config.objective=flow_matching --config.loss.p=0 \
      --config.data.source=pairs --config.data.path=runs/pairs.npz \
      --config.train.init_from=runs/toy_fm
"""
import os

import numpy as np
from absl import flags

from meanflow_jax import cli, reflow

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained run that generates the pairs.")
_OUT = flags.DEFINE_string("out", None, "Output .npz (arrays x, eps and, if conditional, y).")
_NUM = flags.DEFINE_integer("num", 50_000, "Number of pairs.")
_NFE = flags.DEFINE_integer("nfe", 64, "Network evaluations per sample.")
_METHOD = flags.DEFINE_enum("method", "heun", ["euler", "heun"], "Flow-matching solver.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise.")
_BATCH = flags.DEFINE_integer("batch", 1000, "Samples per sampler call.")


def main(argv):
  del argv
  pairs = reflow.make_pairs(_WORKDIR.value, _NUM.value, _NFE.value, method=_METHOD.value,
                            seed=_SEED.value, batch=_BATCH.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  np.savez(_OUT.value, **pairs)
  print(f"wrote {_NUM.value} pairs ({_NFE.value} NFE) to {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  cli.run(main)
