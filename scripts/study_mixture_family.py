"""The toy config on a family of random mixtures, trained the way a user would train on
their own points: samples of each mixture saved to a .npy, data.source = "points".

  python scripts/study_mixture_family.py --split tune --label after
  python scripts/study_mixture_family.py --split tune --label before --config configs/toy.py:v1
  python scripts/study_mixture_family.py --split heldout --label after
  python scripts/study_mixture_family.py --split heldout --label before --config configs/toy.py:v1
  python scripts/study_mixture_family.py --split none --ring8 --label after   # built-in ring8

The mixtures are `meanflow_jax.data.points.FAMILY` ("tune": the values of configs/toy.py
were chosen on them; "heldout": run once with those values, after the choice). For each,
--num_points samples (seed --seed) go to WORKDIR/data/NAME.npy; the run is WORKDIR/LABEL/NAME
(a finished run with the same config is reused, one with another config is an error).
Each run is scored exactly against the mixture it was drawn from (`evaluate.evaluate_toy`
with mixture=...): transport error against the exact probability-flow map of the same noise
(of the standardised mixture, for a run that standardised) over the mixture's scale, mode
TV, the fraction of samples below the data's 1 % log-density level; and the same figures
for the exact map itself (the floor of each metric: `exact_*`). With --slopes, at that many
noise points: the 99th percentile of the exact and the 1-NFE map's stretch, and where the
1-NFE samples off the support come from: `off_steep_share` (the share of them whose noise
is among the exact map's steepest, `metrics.toy.steep_share`: 1 if all of it, about the
off-support fraction if unrelated) and `off_slope_ratio` (the exact map's median slope at
their noise over its median at all noise). Writes OUT/LABEL.json (its
rows), OUT/table.md (every label found in OUT, per split) and OUT/samples.png (1-NFE samples
of each label on the 2-D mixtures, in units of the mixture's scale around its mean).
"""
import glob
import json
import os

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from meanflow_jax import cli, evaluate, plotting, training
from meanflow_jax.data import points
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import toy

_TOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "toy.py")
_CONFIG = config_flags.DEFINE_config_file("config", _TOY, "Config of every run.",
                                          lock_config=True)
_LABEL = flags.DEFINE_string("label", "after", "Name of this config in the tables.")
_SPLIT = flags.DEFINE_enum("split", "tune", ["tune", "heldout", "all", "none"],
                           "Mixtures of points.FAMILY to run.")
_MIXTURES = flags.DEFINE_list("mixtures", None, "Names of points.FAMILY (instead of --split).")
_RING8 = flags.DEFINE_bool("ring8", False, "Also the built-in ring8 (data.source = mixture).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/mixture_family", "Directory of data and runs.")
_OUT = flags.DEFINE_string("out", "results/mixture_family", "Directory of the tables and PNG.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps (default: the config's).")
_NUM_POINTS = flags.DEFINE_integer("num_points", 20_000, "Points in each mixture's .npy.")
_NUM = flags.DEFINE_integer("num", 20_000, "Samples per evaluation.")
_NFE = flags.DEFINE_list("nfe", ["1", "2"], "NFE values scored.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the points and of the evaluation noise.")
_SLOPES = flags.DEFINE_integer("slopes", 1000, "Noise points at which the 1-NFE map's and the "
                               "exact map's slopes and the off-support samples' origin are measured "
                               "(0: not measured).")

COLUMNS = ["mixture", "dim", "modes", "scale", "config", "nfe", "transport_rms", "mode_tv",
           "low_density_frac", "exact_mode_tv", "exact_low_density_frac", "slope_exact_p99",
           "slope_model_p99", "off_steep_share", "off_slope_ratio", "train_s"]


def run_config(base, name, path, steps):
  """`base` on the points at `path` (or on the built-in ring8 for name "ring8")."""
  c = base.copy_and_resolve_references()
  with c.unlocked():
    if name == "ring8":
      c.data.source, c.data.mixture, c.data.path = "mixture", "ring8", ""
    else:
      c.data.source, c.data.path = "points", path
    if steps:
      c.train.steps = steps
      c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, steps // 5)
      c.train.log_every = min(c.train.log_every, steps)
    c.train.checkpoint_every = c.train.steps
    c.train.sample_every = 0  # the study draws its own samples
  return c


def check_reuse(config, workdir):
  """A run already in `workdir` must have this config (it is then reused or resumed)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != json.loads(json.dumps(config.to_dict())):
      raise ConfigError(f"{workdir} holds a run with another config; pass another --label or "
                        "--workdir, or delete it.")


def study(name, base, label):
  """Trains (or reuses) the run of `base` on mixture `name`; returns (rows, mixture,
  {nfe: samples}, data sample)."""
  mixture = points.mixture("ring8") if name == "ring8" else points.family_mixture(name)
  path = os.path.join(_WORKDIR.value, "data", f"{name}.npy")
  key_points, key_data = jax.random.split(jax.random.key(_SEED.value))
  if name != "ring8" and not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.asarray(mixture.sample(key_points, _NUM_POINTS.value)[0]))
  config = run_config(base, name, path, _STEPS.value)
  workdir = os.path.join(_WORKDIR.value, label, name)
  check_reuse(config, workdir)
  training.train(config, workdir)
  ev = evaluate.evaluate_toy(workdir, [int(k) for k in _NFE.value], num=_NUM.value,
                             seed=_SEED.value, mixture=None if name == "ring8" else mixture)
  split = points.FAMILY[name][0] if name in points.FAMILY else "built-in"
  shared = {"mixture": name, "split": split, "dim": mixture.dim,
            "modes": int(mixture.weights.shape[0]), "scale": float(mixture.scale()),
            "config": label, "train_s": evaluate.training_seconds(workdir),
            "standardize": bool(config.data.standardize)}
  if _SLOPES.value:
    s = evaluate.one_step_slopes(workdir, _SLOPES.value, _SEED.value,
                                 None if name == "ring8" else mixture)
    shared.update(slope_exact_p99=float(np.quantile(s.exact, 0.99)),
                  slope_model_p99=float(np.quantile(s.model, 0.99)),
                  off_steep_share=toy.steep_share(s.exact, s.off_support),
                  off_slope_ratio=float(np.median(s.exact[s.off_support]) / np.median(s.exact))
                  if s.off_support.any() else float("nan"))
  rows = [dict(shared, **r) for r in ev.rows]
  return rows, mixture, ev.samples, np.asarray(mixture.sample(key_data, 4000)[0])


def write_table(out):
  """table.md from every OUT/*.json: one table per split, rows by mixture, NFE, config."""
  rows = []
  for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    with open(f) as fh:
      rows += json.load(fh)["rows"]
  text = ["Columns: transport_rms (RMS distance to the exact map's images of the same noise, "
          "over the data scale), mode_tv, low_density_frac (share of samples below the data's "
          "1 % log-density level); exact_*: the exact map's own (the floor); train_s: seconds "
          "of training steps. Targets at 1 NFE: transport < 0.1, mode TV < 0.03, low-density "
          "< 0.03.", ""]
  for split in ("tune", "heldout", "built-in"):
    rs = sorted((r for r in rows if r["split"] == split),
                key=lambda r: (r["mixture"], r["nfe"], r["config"]))
    if rs:
      text += [f"### {split}", "", evaluate.markdown_table(rs, COLUMNS), ""]
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(text))
  return "\n".join(text)


def plot(out, label, panels_by_mixture):
  """samples.png: per 2-D mixture a row (data, then each label's 1-NFE samples found in
  OUT/LABEL.npz), in units of the mixture's scale around its mean."""
  panels, ncols = [], 1
  for name, (mixture, data) in panels_by_mixture.items():
    mean, scale = np.asarray(mixture.moments()[0]), float(mixture.scale())
    view = lambda x: (np.asarray(x) - mean) / scale
    log_prob = (lambda m, s, c: lambda p: m.log_prob(p * s + c))(mixture, scale, mean)
    row = [(f"{name}: data", view(data), log_prob)]
    for f in sorted(glob.glob(os.path.join(out, "*.npz"))):
      saved = np.load(f)
      if name in saved:
        row.append((f"{name}: {os.path.basename(f)[:-4]}, 1 NFE", view(saved[name]), log_prob))
    ncols = max(ncols, len(row))
    panels.append(row)
  grid = [p for row in panels for p in row + [("", np.zeros((0, 2)))] * (ncols - len(row))]
  plotting.scatter(grid, os.path.join(out, "samples.png"), lim=2.6, ncols=ncols)


def main(argv):
  del argv
  names = (list(_MIXTURES.value) if _MIXTURES.value else
           [n for n, (s, _, _) in points.FAMILY.items() if _SPLIT.value in (s, "all")])
  names += ["ring8"] if _RING8.value else []
  unknown = [n for n in names if n not in points.FAMILY and n != "ring8"]
  if unknown:
    raise ConfigError(f"unknown mixtures {unknown}; available: {sorted(points.FAMILY)}, ring8.")
  os.makedirs(_OUT.value, exist_ok=True)
  result = os.path.join(_OUT.value, f"{_LABEL.value}.json")
  old = json.load(open(result))["rows"] if os.path.exists(result) else []
  saved = dict(np.load(result[:-5] + ".npz")) if os.path.exists(result[:-5] + ".npz") else {}
  rows = [r for r in old if r["mixture"] not in names]
  for name in names:
    rs, mixture, samples, _ = study(name, _CONFIG.value, _LABEL.value)
    rows += rs
    if mixture.dim == 2:
      saved[name] = samples[min(samples)][:4000]
    print(evaluate.markdown_table(rs, COLUMNS))
  with open(result, "w") as f:
    json.dump({"config": _CONFIG.value.to_dict(), "rows": rows}, f, indent=2)
  np.savez(result[:-5] + ".npz", **saved)
  print(write_table(_OUT.value))
  shown = {}
  for name in sorted({r["mixture"] for f in glob.glob(os.path.join(_OUT.value, "*.json"))
                      for r in json.load(open(f))["rows"]}):
    mixture = points.mixture("ring8") if name == "ring8" else points.family_mixture(name)
    if mixture.dim == 2:
      shown[name] = (mixture, np.asarray(mixture.sample(jax.random.key(_SEED.value + 1),
                                                        4000)[0]))
  plot(_OUT.value, _LABEL.value, shown)
  print(f"wrote {result}, {_OUT.value}/table.md and {_OUT.value}/samples.png")


if __name__ == "__main__":
  cli.run(main)
