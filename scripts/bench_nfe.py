"""Quality against NFE: MeanFlow and flow matching trained with the same budget.

  python scripts/bench_nfe.py --config configs/toy.py --workdir runs/bench_toy
  python scripts/bench_nfe.py --config configs/digits.py --workdir runs/bench_digits \
      --fm_nfe 1,2,4,8,16,32 --num 2000

Trains (or resumes) WORKDIR/meanflow and WORKDIR/flow_matching from the same config,
evaluates MeanFlow at --mf_nfe and flow matching (Euler, Heun) at --fm_nfe on the
same noise (and labels) -- mixtures against the exact flow map, images with the
project's classifier -- and writes WORKDIR/bench.{md,json,png} and
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
_NUM = flags.DEFINE_integer("num", None, "Samples per evaluation (default 20000 for mixtures, "
                            "2000 for images).")
_FM_LOSS_P = flags.DEFINE_float("fm_loss_p", 0.0, "Adaptive-weight power of the flow-matching "
                                "run (0: the plain squared error of flow matching).")
flags.mark_flags_as_required(["config", "workdir"])

TOY_COLUMNS = ["method", "nfe", "transport_rms", "low_density_frac", "mode_tv", "sliced_w2",
               "train_s"]
IMAGE_COLUMNS = ["method", "nfe", "clf_fd", "agreement", "class_tv", "train_s"]


def _evaluate(workdir, nfes, method, toy):
  if toy:
    return evaluate.evaluate_toy(workdir, nfes, num=_NUM.value or 20_000, method=method)
  return evaluate.evaluate_images(workdir, nfes, num=_NUM.value or 2_000, method=method)


def main(argv):
  del argv
  toy = _CONFIG.value.data.source == "mixture"
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
      ev = _evaluate(workdir, nfes, method, toy)
      for r in ev.rows:
        r["train_s"] = train_s
      rows += ev.rows
      if method != "heun":
        panels += [(f"{ev.rows[0]['method']}, {k} NFE", _panel(ev, x, config))
                   for k, x in ev.samples.items()]
  base = os.path.join(_WORKDIR.value, "bench")
  if toy:
    _write_toy(rows, panels, ev, base)
  else:
    _write_images(rows, panels, ev, base, config)
  print(f"wrote {base}.md, {base}.json, {base}.png and {base}_samples.png")


def _panel(ev, x, config):
  if isinstance(ev, evaluate.ToyEvaluation):
    return x[:4000]
  per = config.sample.grid_per_class
  if config.model.num_classes:
    return evaluate.class_rows(x, ev.labels, config.model.num_classes, per)
  return x[:per * per]


def _write_images(rows, panels, ev, base, config):
  rows = rows + [dict(ev.floor, method="real data (two halves)", nfe="", train_s="")]
  with open(base + ".json", "w") as f:
    json.dump(rows, f, indent=2)
  with open(base + ".md", "w") as f:
    f.write(evaluate.markdown_table(rows, IMAGE_COLUMNS) + "\n")
  curves = [r for r in rows if r["nfe"] != ""]
  metrics = ["clf_fd", "agreement"] if config.model.num_classes else ["clf_fd", "class_tv"]
  plotting.metrics_vs_nfe(curves, metrics, base + ".png", thresholds={"agreement": 0.9},
                          log_metrics=("clf_fd",))
  k = config.model.num_classes
  plotting.image_grids(panels, base + "_samples.png", ncols=config.sample.grid_per_class,
                       row_labels=list(range(k)) if k else None, panels_per_row=3)
  print(evaluate.markdown_table(rows, IMAGE_COLUMNS))


def _write_toy(rows, panels, ev, base):
  with open(base + ".json", "w") as f:
    json.dump(rows, f, indent=2)
  with open(base + ".md", "w") as f:
    f.write(evaluate.markdown_table(rows, TOY_COLUMNS) + "\n")
  plotting.metrics_vs_nfe(rows, ["transport_rms", "low_density_frac", "mode_tv"], base + ".png",
                          thresholds={"transport_rms": 0.1, "low_density_frac": 0.03,
                                      "mode_tv": 0.03})
  plotting.scatter([("exact flow map", ev.exact[:4000])] + panels, base + "_samples.png",
                   log_prob=ev.mixture.log_prob, ncols=4)
  print(evaluate.markdown_table(rows, TOY_COLUMNS))


if __name__ == "__main__":
  cli.run(main)
