"""Quality against NFE: MeanFlow and flow matching trained with the same budget.

  python scripts/bench_nfe.py --config configs/toy.py --workdir runs/bench_toy
  python scripts/bench_nfe.py --config configs/digits.py --workdir runs/bench_digits \
      --fm_nfe 1,2,4,8,16,32 --num 2000
  python scripts/bench_nfe.py --config configs/digits.py --workdir runs/bench_digits \
      --imf_config configs/digits_imf.py --omega 1,1.5,2,3 --num 2000

Trains (or resumes) WORKDIR/meanflow and WORKDIR/flow_matching from the same config,
evaluates MeanFlow at --mf_nfe and flow matching (Euler, Heun) at --fm_nfe on the
same noise (and labels) -- mixtures against the exact flow map, images with the
project's classifier -- and writes WORKDIR/bench.{md,json,png} and
WORKDIR/bench_samples.png. `train_s` is the time spent in training steps (from
metrics.jsonl), so rerunning on finished runs reproduces the quality columns.

Sampling speed, in the same run: `sample_s` (seconds to draw --num samples, compiled
beforehand) for every row; the bare network forward pass over the same noise
against the 1-NFE MeanFlow sampler; and, for each method, the fastest setting
that reaches 1-NFE MeanFlow's quality (WORKDIR/bench_speed.md).

With --imf_config, an Improved MeanFlow run is trained from that config into WORKDIR/imf
(its own recipe: the v head, guidance drawn per sample) and evaluated at --mf_nfe; a
class-conditional one at each guidance scale of --omega, all from the one model, one
line per omega in the table and plot.
"""
import json
import os
import time

import jax
import numpy as np

from absl import flags
from ml_collections import config_flags

from meanflow_jax import cli, evaluate, objectives, paths, plotting, training
from meanflow_jax.errors import ConfigError
from meanflow_jax.training import inference

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
_IMF_CONFIG = config_flags.DEFINE_config_file("imf_config", None, "Optional config of an iMF "
                                              "run to compare (e.g. configs/digits_imf.py).",
                                              lock_config=True)
_OMEGA = flags.DEFINE_list("omega", None, "iMF, class-conditional: guidance scales to sample "
                           "at (default: the iMF config's sample.omega).")
_INTERVAL = flags.DEFINE_multi_string("interval", None, "iMF: the guidance interval "
                                      "t_min,t_max at sampling (default: the iMF config's); "
                                      "repeat it to sweep: --interval 0,1 --interval 0.2,0.8.")
flags.mark_flags_as_required(["config", "workdir"])

TOY_COLUMNS = ["method", "nfe", "transport_rms", "low_density_frac", "mode_tv", "sliced_w2",
               "train_s", "sample_s"]
IMAGE_COLUMNS = ["method", "nfe", "clf_fd", "agreement", "class_tv", "train_s", "sample_s"]
BATCH = {True: 10_000, False: 500}  # samples per sampler call: mixtures, images


def forward_seconds(workdir, num, batch, repeats=3):
  """Seconds of the bare network forward pass u(eps, 0, 1) over `num` noise samples
  in batches of `batch` (compiled beforehand; the median of `repeats` passes)."""
  run = inference.load_run(workdir)
  eps = paths.sample_noise(jax.random.key(0), num, run.data_shape)
  y = (np.arange(num) % run.num_classes).astype(np.int32) if run.num_classes else None
  apply = jax.jit(lambda p, z, y: inference.average_velocity(run.config, run.model, p, y)(
      z, jax.numpy.zeros(z.shape[:1]), jax.numpy.ones(z.shape[:1])))
  part = lambda i: None if y is None else y[i:i + batch]
  jax.block_until_ready(apply(run.params, eps[:batch], part(0)))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    outs = [apply(run.params, eps[i:i + batch], part(i)) for i in range(0, num, batch)]
    [np.asarray(o) for o in outs]  # the sampler's timing includes the copy to the host too
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def speed_report(rows, metric, forward_s):
  """Markdown: 1-NFE sampler against the bare forward pass, and per method the fastest
  row whose `metric` (lower is better) is at most 1-NFE MeanFlow's."""
  mf1 = next(r for r in rows if r["method"] == "meanflow" and r["nfe"] == 1)
  lines = [f"1-NFE MeanFlow: {mf1['sample_s']:.3f} s for the samples; the bare forward pass "
           f"over the same noise: {forward_s:.3f} s; the sampler adds "
           f"{100 * (mf1['sample_s'] / forward_s - 1):+.1f} %.", "",
           f"Fastest setting of each method reaching 1-NFE MeanFlow's {metric} "
           f"({mf1[metric]:.4f}):", "",
           "| method | nfe | " + metric + " | sample_s | time / MeanFlow 1-NFE |", "|---|---|---|---|---|"]
  for method in dict.fromkeys(r["method"] for r in rows if r["nfe"] != ""):
    ok = [r for r in rows if r["method"] == method and r["nfe"] != "" and r[metric] <= mf1[metric]]
    if ok:
      r = min(ok, key=lambda r: r["sample_s"])
      lines.append(f"| {method} | {r['nfe']} | {r[metric]:.4f} | {r['sample_s']:.3f} | "
                   f"{r['sample_s'] / mf1['sample_s']:.1f}x |")
    else:
      best = min((r for r in rows if r["method"] == method and r["nfe"] != ""),
                 key=lambda r: r[metric])
      lines.append(f"| {method} | not reached (best: {best['nfe']} NFE) | {best[metric]:.4f} | "
                   f"{best['sample_s']:.3f} | |")
  return "\n".join(lines)


def _evaluate(workdir, nfes, method, toy, omegas=None, intervals=None):
  if toy:
    return evaluate.evaluate_toy(workdir, nfes, num=_NUM.value or 20_000, method=method,
                                 batch=BATCH[toy], progress=True)
  return evaluate.evaluate_images(workdir, nfes, num=_NUM.value or 2_000, method=method,
                                  batch=BATCH[toy], progress=True, omegas=omegas,
                                  intervals=intervals)


def _imf_rows(toy):
  """Rows and panels of the iMF run of --imf_config (trained or resumed): one method per
  guidance scale."""
  config = _IMF_CONFIG.value
  if config.objective != "imf":
    raise ConfigError(f"--imf_config must train objective 'imf'; it sets {config.objective!r}.")
  workdir = os.path.join(_WORKDIR.value, "imf")
  training.train(config, workdir)
  omegas = cli.floats("--omega", _OMEGA.value) if config.model.num_classes else None
  intervals = cli.intervals(_INTERVAL.value) if config.model.num_classes else None
  if (_OMEGA.value or _INTERVAL.value) and not config.model.num_classes:
    raise ConfigError("--omega and --interval need a class-conditional iMF run; "
                      "--imf_config trains an unconditional one.")
  ev = _evaluate(workdir, [int(k) for k in _MF_NFE.value], None, toy, omegas, intervals)
  train_s = evaluate.training_seconds(workdir)
  span = lambda lo, hi: f" on [{lo:g}, {hi:g}]"
  for r in ev.rows:
    r["train_s"] = train_s
    if "omega" in r:
      r["method"] = f"imf, omega {r['omega']:g}" + (span(r["t_min"], r["t_max"]) if "t_min"
                                                    in r else "")
  name = lambda key: (f"imf, omega {key[1]:g}" + (span(*key[2:]) if len(key) == 4 else "")
                      + f", {key[0]} NFE" if isinstance(key, tuple) else f"imf, {key} NFE")
  return ev.rows, [(name(k), _panel(ev, x, config)) for k, x in ev.samples.items()]


def main(argv):
  del argv
  toy = _CONFIG.value.data.source == "mixture"
  rows, panels = [], []
  nfe_lists = {"meanflow": _MF_NFE.value, "flow_matching": _FM_NFE.value}
  loss_p = {"flow_matching": _FM_LOSS_P.value}  # the objective's own weighting otherwise
  for name in ("meanflow", "flow_matching"):
    objective = objectives.get(name)
    config = _CONFIG.value.copy_and_resolve_references()
    with config.unlocked():
      config.objective = name
      config.loss.p = loss_p.get(name, config.loss.p)
    workdir = os.path.join(_WORKDIR.value, name)
    training.train(config, workdir)
    train_s = evaluate.training_seconds(workdir)
    nfes = [int(k) for k in nfe_lists[name]]
    runs = [(m, [k for k in nfes if objective.spends(k, m)]) for m in objective.methods]
    for method, nfes in runs:
      ev = _evaluate(workdir, nfes, method, toy)
      for r in ev.rows:
        r["train_s"] = train_s
      rows += ev.rows
      if method != "heun":
        panels += [(f"{ev.rows[0]['method']}, {k} NFE", _panel(ev, x, config))
                   for k, x in ev.samples.items()]
  if _IMF_CONFIG.value is not None:
    imf_rows, imf_panels = _imf_rows(toy)
    rows, panels = rows + imf_rows, panels + imf_panels
  elif _OMEGA.value or _INTERVAL.value:
    raise ConfigError("--omega and --interval need --imf_config (the guidance of an iMF run).")
  base = os.path.join(_WORKDIR.value, "bench")
  num = _NUM.value or (20_000 if toy else 2_000)
  forward_s = forward_seconds(os.path.join(_WORKDIR.value, "meanflow"), num, BATCH[toy])
  speed = speed_report(rows, "transport_rms" if toy else "clf_fd", forward_s)
  with open(base + "_speed.md", "w") as f:
    f.write(speed + "\n")
  print(speed)
  if toy:
    _write_toy(rows, panels, ev, base)
  else:
    _write_images(rows, panels, ev, base, config)
  print(f"wrote {base}.md, {base}.json, {base}.png, {base}_speed.md and {base}_samples.png")


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
