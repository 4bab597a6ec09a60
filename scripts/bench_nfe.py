"""Quality against NFE: MeanFlow and flow matching trained with the same budget.

  python scripts/bench_nfe.py --config configs/toy.py --workdir runs/bench_toy

Trains (or resumes) WORKDIR/meanflow and WORKDIR/flow_matching from the same config,
evaluates MeanFlow at --mf_nfe and flow matching (Euler, Heun) at --fm_nfe on the
same noise against the exact flow map, and writes WORKDIR/bench.{md,json,png} and
WORKDIR/bench_samples.png. `train_s` is the time spent in training steps (from
metrics.jsonl), so rerunning on finished runs reproduces the table.
"""
import json
import os

from absl import flags
from ml_collections import config_flags

from meanflow_jax import cli, evaluate, plotting, training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config of both runs.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the two runs and the tables.")
_MF_NFE = flags.DEFINE_list("mf_nfe", ["1", "2", "4"], "MeanFlow NFE values.")
_FM_NFE = flags.DEFINE_list("fm_nfe", ["1", "2", "4", "8", "16", "32", "64", "128"],
                            "Flow-matching NFE values (Heun uses the even ones).")
_NUM = flags.DEFINE_integer("num", 20_000, "Samples per evaluation.")
_FM_LOSS_P = flags.DEFINE_float("fm_loss_p", 0.0, "Adaptive-weight power of the flow-matching "
                                "run (0: the plain squared error of flow matching).")
flags.mark_flags_as_required(["config", "workdir"])

COLUMNS = ["method", "nfe", "transport_rms", "low_density_frac", "mode_tv", "sliced_w2",
           "train_s"]


def main(argv):
  del argv
  rows, panels = [], []
  for objective in ("meanflow", "flow_matching"):
    config = _CONFIG.value.copy_and_resolve_references()
    with config.unlocked():
      config.objective = objective
      if objective == "flow_matching":
        config.loss.p = _FM_LOSS_P.value
    workdir = os.path.join(_WORKDIR.value, objective)
    training.train(config, workdir)
    train_s = evaluate.training_seconds(workdir)
    if objective == "meanflow":
      runs = [(None, [int(k) for k in _MF_NFE.value])]
    else:
      nfes = [int(k) for k in _FM_NFE.value]
      runs = [("euler", nfes), ("heun", [k for k in nfes if k % 2 == 0])]
    for method, nfes in runs:
      ev = evaluate.evaluate_toy(workdir, nfes, num=_NUM.value, method=method)
      for r in ev.rows:
        r["train_s"] = train_s
      rows += ev.rows
      if method != "heun":
        exact = ev.exact
        panels += [(f"{ev.rows[0]['method']}, {k} NFE", x[:4000]) for k, x in ev.samples.items()]
  base = os.path.join(_WORKDIR.value, "bench")
  with open(base + ".json", "w") as f:
    json.dump(rows, f, indent=2)
  with open(base + ".md", "w") as f:
    f.write(evaluate.markdown_table(rows, COLUMNS) + "\n")
  plotting.metrics_vs_nfe(rows, ["transport_rms", "low_density_frac", "mode_tv"], base + ".png",
                          thresholds={"transport_rms": 0.1, "low_density_frac": 0.03,
                                      "mode_tv": 0.03})
  plotting.scatter([("exact flow map", exact[:4000])] + panels, base + "_samples.png",
                   log_prob=ev.mixture.log_prob, ncols=4)
  print(evaluate.markdown_table(rows, COLUMNS))
  print(f"wrote {base}.md, {base}.json, {base}.png and {base}_samples.png")


if __name__ == "__main__":
  cli.run(main)
