"""Exact quality metrics of a run trained on a built-in mixture, at several NFE.

  python scripts/evaluate.py --workdir runs/toy --nfe 1 2 4 --num 20000

Writes WORKDIR/eval.json (one row per NFE) and WORKDIR/eval.png (samples next to
the exact probability-flow map of the same noise).
"""
import json
import os

from absl import flags

from meanflow_jax import cli, evaluate, plotting
from meanflow_jax.errors import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/).")
_NFE = flags.DEFINE_multi_integer("nfe", [1, 2], "NFE values to evaluate.")
_NUM = flags.DEFINE_integer("num", 20_000, "Samples per NFE.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise.")
_PARAMS = flags.DEFINE_enum("params", None, ["ema", "raw"],
                            "Parameters (default: the run's sample.params).")
_METHOD = flags.DEFINE_enum("method", None, ["euler", "heun"], "Flow-matching solver.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  extra = argv[1:]  # absl takes one value per --nfe; accept the spelling --nfe 1 2 4 too
  if not all(a.isdigit() for a in extra):
    raise ConfigError(f"unexpected arguments {extra}; NFE values are positive integers.")
  nfes = _NFE.value + [int(a) for a in extra]
  rows, samples, exact, mixture = evaluate.evaluate_toy(
      _WORKDIR.value, nfes, num=_NUM.value, seed=_SEED.value, params=_PARAMS.value,
      method=_METHOD.value)
  out = os.path.join(_WORKDIR.value, "eval.json")
  with open(out, "w") as f:
    json.dump(rows, f, indent=2)
  for r in rows:
    print(f"{r['method']:>9} NFE {r['nfe']:>3}: transport {r['transport_rms']:.4f}  "
          f"low-density {r['low_density_frac']:.4f}  mode TV {r['mode_tv']:.4f}")
  n = 4000
  panels = [("exact flow map", exact[:n])] + [
      (f"{rows[0]['method']}, {k} NFE", s[:n]) for k, s in samples.items()]
  png = plotting.scatter(panels, os.path.join(_WORKDIR.value, "eval.png"),
                         log_prob=mixture.log_prob)
  print(f"wrote {out} and {png}")


if __name__ == "__main__":
  cli.run(main)
