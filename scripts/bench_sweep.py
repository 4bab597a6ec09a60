"""One config key swept over values, each run evaluated against the exact flow map.

  python scripts/bench_sweep.py --config configs/toy.py --workdir runs/sweep_p \\
      --key loss.p --values 0 --values 0.5 --values 1 --nfe 1,2

Trains (or resumes) WORKDIR/<key>=<value> for each value and writes
WORKDIR/sweep.{md,json,png}: the exact metrics at each NFE.
"""
import ast
import json
import os

from absl import flags
from ml_collections import config_flags

from meanflow_jax import cli, evaluate, plotting, training
from meanflow_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the runs and the tables.")
_KEY = flags.DEFINE_string("key", None, "Config key to sweep, e.g. loss.p.")
_VALUES = flags.DEFINE_multi_string("values", None, "Values of the key, one flag each "
                                    "(Python literals for non-string keys).")
_NFE = flags.DEFINE_list("nfe", ["1", "2"], "NFE values to evaluate.")
_NUM = flags.DEFINE_integer("num", 20_000, "Samples per evaluation.")
flags.mark_flags_as_required(["config", "workdir", "key", "values"])


def _set(config, dotted, raw):
  *path, last = dotted.split(".")
  node = config
  for p in path:
    node = node[p]
  if last not in node:
    raise ConfigError(f"unknown config key {dotted!r}; see configs/default.py.")
  old = node[last]
  value = raw if isinstance(old, str) else ast.literal_eval(raw)  # "0.5", "(0.999,)", "3"
  node[last] = type(old)(value) if isinstance(old, (int, float)) else value


def main(argv):
  del argv
  rows = []
  for raw in _VALUES.value:
    config = _CONFIG.value.copy_and_resolve_references()
    with config.unlocked():
      _set(config, _KEY.value, raw)
    workdir = os.path.join(_WORKDIR.value, f"{_KEY.value}={raw}")
    training.train(config, workdir)
    train_s = evaluate.training_seconds(workdir)
    for r in evaluate.evaluate_toy(workdir, [int(k) for k in _NFE.value], num=_NUM.value).rows:
      rows.append({_KEY.value: raw, **r, "train_s": train_s})
  columns = [_KEY.value, "nfe", "transport_rms", "low_density_frac", "mode_tv", "sliced_w2",
             "train_s"]
  base = os.path.join(_WORKDIR.value, "sweep")
  with open(base + ".json", "w") as f:
    json.dump(rows, f, indent=2)
  with open(base + ".md", "w") as f:
    f.write(evaluate.markdown_table(rows, columns) + "\n")
  plot_rows = [dict(r, method=f"{_KEY.value}={r[_KEY.value]}") for r in rows]
  plotting.metrics_vs_nfe(plot_rows, ["transport_rms", "low_density_frac", "mode_tv"],
                          base + ".png")
  print(evaluate.markdown_table(rows, columns))
  print(f"wrote {base}.md, {base}.json and {base}.png")


if __name__ == "__main__":
  cli.run(main)
