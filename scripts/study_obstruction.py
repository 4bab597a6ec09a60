"""The straight-flow obstruction: one-step MeanFlow on two modes pulled apart.

  python scripts/study_obstruction.py
  python scripts/study_obstruction.py --dims 2 --separations 1,4 --steps 300 --num 4000 \\
      --workdir /tmp/ob/runs --out /tmp/ob

Data: two equal modes N(+-separation/2 e_0, std^2 I) (data.mixture = "two_modes") in
each of --dims, at each of --separations. Every (dim, separation) trains MeanFlow with
configs/toy.py's values and the same budget (--steps) in WORKDIR/d{dim}_s{separation}
(a finished run with the same config is reused, one with another is an error), then
draws --num samples at each --nfe (raw parameters: see --params) from one noise batch
and compares them with the exact probability-flow map of the same noise (RK4 on the
exact mixture velocity). The exact flow's columns need no training.

A continuous map cannot split a Gaussian into two separated modes without sending
some noise into the gap between them; the closer it comes to the data's split, the
steeper it must be (the exact map's slope at eps_0 = 0 is std * exp(sep^2 / (8 std^2))).
Columns (OUT/table.md; OUT/results.json has every number):

  between          share of samples with |x_0| < g, g = separation/2 - gap_stds * std
                   (empty, so blank, when g <= 0); _exact: of the exact map's images of
                   the same noise; _data: of fresh data; _closed: the data's, in closed
                   form, Phi(-k) - Phi(k - separation/std) with k = gap_stds
  low_density      share of samples below the data's 1 % log-density quantile
  transport_rms    RMS distance to the exact map's images, over the data scale
  mode_tv          |share assigned to the right mode - 1/2| (the exact weights are 1/2)
  min_lipschitz    the smallest Lipschitz constant of any map from N(0, I) whose image puts
                   these shares a, b beyond -g and g: 2 g / -(Phi^-1(a) + Phi^-1(b))
                   (Gaussian isoperimetry); blank when g <= 0
  S_exact          straightness int E||(z_1 - z_0) - v(z_t, t)||^2 dt of the exact flow
  curv_exact       S_exact / E||z_1 - z_0||^2
  log10_slope      log10 of the exact map's slope d x_0 / d eps_0 at eps = 0

Writes OUT/table.md, OUT/results.json and OUT/obstruction.png.
"""
import json
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import flags
from ml_collections import config_flags
from scipy import stats
from tqdm.auto import tqdm

from meanflow_jax import cli, evaluate, training
from meanflow_jax.data import points
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import straightness as st
from meanflow_jax.metrics import toy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

_TOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "toy.py")
_CONFIG = config_flags.DEFINE_config_file("config", _TOY, "Base config of every run.",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", "results/obstruction", "Output directory.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/obstruction", "Directory of the runs.")
_DIMS = flags.DEFINE_list("dims", ["2", "10"], "Dimensions.")
_SEPARATIONS = flags.DEFINE_list("separations", ["0.5", "1", "2", "3", "4", "8"],
                                 "Distances between the two means.")
_STD = flags.DEFINE_float("std", 0.25, "Std of each mode.")
# The defaults took 11 minutes on 2 CPU cores shared with another job (8 of them in
# training at ~50 steps/s; configs/toy.py runs ~100 steps/s on idle cores).
_STEPS = flags.DEFINE_integer("steps", 2_000, "Training steps of every run.")
_NFE = flags.DEFINE_list("nfe", ["1", "2"], "MeanFlow NFE values.")
_NUM = flags.DEFINE_integer("num", 20_000, "Samples per evaluation.")
_GAP_STDS = flags.DEFINE_float("gap_stds", 2.0, "The gap is |x_0| < separation/2 - "
                               "gap_stds * std.")
_FLOW_STEPS = flags.DEFINE_integer("flow_steps", 256, "RK4 steps of the exact flow.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise and the data samples.")
# The EMA starts at the initial weights and is not debiased: after 2,000 steps at decay
# 0.999 it still holds 0.999^2000 = 13.5 % of them, which pulls the samples towards the
# origin, into the gap (at separation 8, half the 1-NFE samples against 8 % raw).
_PARAMS = flags.DEFINE_enum("params", "raw", ["raw", "ema"], "Parameters to sample with.")

COLUMNS = ["dim", "separation", "nfe", "between", "between_exact", "between_data",
           "between_closed", "low_density", "low_density_exact", "transport_rms", "mode_tv",
           "mode_tv_exact", "min_lipschitz", "S_exact", "curv_exact", "log10_slope"]


def run_config(base, dim, separation, std, steps):
  """`base` on two_modes(dim, separation, std) for `steps` steps, checkpointed at the end."""
  c = base.copy_and_resolve_references()
  with c.unlocked():
    c.data.source, c.data.mixture = "mixture", "two_modes"
    c.data.mixture_dim, c.data.mixture_separation, c.data.mixture_std = dim, separation, std
    c.train.steps = steps
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, steps // 5)
    c.train.log_every = min(c.train.log_every, steps)
    c.train.checkpoint_every = steps
    c.train.sample_every = 0  # the study draws its own samples
  return c


def gap(separation, std, gap_stds):
  """Half-width g of the gap |x_0| < g between the modes (<= 0: no gap)."""
  return separation / 2 - gap_stds * std


def between_fraction(x, g):
  """Share of samples `[N, D]` with |x_0| < g; None when there is no gap."""
  return float(np.mean(np.abs(np.asarray(x)[:, 0]) < g)) if g > 0 else None


def between_closed_form(separation, std, gap_stds):
  """The data's mass in the gap: each mode's x_0 ~ N(+-separation/2, std^2)."""
  if gap(separation, std, gap_stds) <= 0:
    return None
  return float(stats.norm.cdf(-gap_stds) - stats.norm.cdf(gap_stds - separation / std))


def min_lipschitz(x, g):
  """Smallest Lipschitz constant of a map T with T(N(0, I)) putting the samples' shares
  a = P(x_0 < -g), b = P(x_0 > g) beyond the gap.

  T^-1 of the two sides are 2g / L apart, so by Gaussian isoperimetry
  Phi^-1(a) + 2g / L <= -Phi^-1(b). inf when no sample lies in the gap.
  """
  if g <= 0:
    return None
  x0 = np.asarray(x)[:, 0]
  a, b = np.mean(x0 < -g), np.mean(x0 > g)
  room = -(stats.norm.ppf(a) + stats.norm.ppf(b))
  return float(2 * g / room) if room > 0 else float("inf")


def exact_flow(mixture, key, num, flow_steps):
  """Straightness of the exact marginal flow from `num` noise samples, and the exact
  map's log10 slope d x_0 / d eps_0 at 0: std exp(sep^2 / (8 std^2)), the 1-D quantile
  map's, since axis 0 moves on its own."""
  eps = jax.random.normal(key, (num, mixture.dim))
  report = jax.jit(lambda e: st.trajectory_report(mixture.velocity, e, flow_steps))(eps)
  sep, std = float(mixture.means[1, 0] - mixture.means[0, 0]), float(mixture.stds[0])
  return {"S_exact": float(report["straightness"]), "curv_exact": float(report["curvature"]),
          "path_ratio_exact": float(report["path_length_ratio"]),
          "log10_slope": float(np.log10(std) + sep ** 2 / (8 * std ** 2) / np.log(10))}


def _differences(saved, new, prefix=""):
  """Dotted keys whose values differ; keys only one side has (added since) are skipped."""
  if isinstance(saved, dict) and isinstance(new, dict):
    return [d for k in saved.keys() & new.keys()
            for d in _differences(saved[k], new[k], f"{prefix}{k}.")]
  return [] if saved == new else [prefix[:-1]]


def check_reuse(config, workdir):
  """A run already in `workdir` must have this config (a finished one is reused as is,
  an unfinished one resumed); another --steps or base config needs another --workdir."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    differ = sorted(_differences(saved, json.loads(json.dumps(config.to_dict()))))
    if differ:
      raise ConfigError(f"{workdir} holds a run with another config ({', '.join(differ)}); "
                        "pass a new --workdir or delete it.")


def study_run(config, workdir, nfes, num, gap_stds, flow_steps, seed, params="raw"):
  """Trains (or reuses) one run and returns (rows, {nfe: samples}, exact images)."""
  check_reuse(config, workdir)
  training.train(config, workdir)
  d = config.data
  g = gap(d.mixture_separation, d.mixture_std, gap_stds)
  ev = evaluate.evaluate_toy(workdir, nfes, num=num, seed=seed, flow_steps=flow_steps,
                             params=params)
  key_data, key_flow = jax.random.split(jax.random.key(seed + 1))
  data = ev.mixture.sample(key_data, num)[0]
  shared = {"dim": d.mixture_dim, "separation": d.mixture_separation,
            "between_exact": between_fraction(ev.exact, g),
            "between_data": between_fraction(data, g),
            "between_closed": between_closed_form(d.mixture_separation, d.mixture_std,
                                                  gap_stds),
            "min_lipschitz_exact": min_lipschitz(ev.exact, g),
            "w_right_exact": float(toy.mode_weights(ev.mixture, jnp.asarray(ev.exact))[1]),
            "train_s": evaluate.training_seconds(workdir),
            **exact_flow(ev.mixture, key_flow, min(num, 8192), flow_steps)}
  rows = []
  for r in ev.rows:
    x = ev.samples[r["nfe"]]
    rows.append({**shared, "nfe": r["nfe"], "between": between_fraction(x, g),
                 "low_density": r["low_density_frac"],
                 "low_density_exact": r["exact_low_density_frac"],
                 "transport_rms": r["transport_rms"], "mode_tv": r["mode_tv"],
                 "mode_tv_exact": r["exact_mode_tv"],
                 "w_right": float(toy.mode_weights(ev.mixture, jnp.asarray(x))[1]),
                 "min_lipschitz": min_lipschitz(x, g), "sliced_w2": r["sliced_w2"]})
  return rows, ev.samples, ev.exact


def markdown(rows, gap_stds, params):
  """table.md: every row, then the change from the first NFE to each later one."""
  fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
  table = lambda rs, cols: "\n".join(
      ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
      + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rs])
  first = min(r["nfe"] for r in rows)
  changes = []
  for r in rows:
    if r["nfe"] != first:
      r1 = next(q for q in rows if q["nfe"] == first and q["dim"] == r["dim"]
                and q["separation"] == r["separation"])
      diff = lambda k: None if r[k] is None else r[k] - r1[k]
      changes.append({"dim": r["dim"], "separation": r["separation"],
                      "nfe": f"{first} -> {r['nfe']}", "d_between": diff("between"),
                      "d_low_density": diff("low_density"),
                      "d_transport_rms": diff("transport_rms"), "d_mode_tv": diff("mode_tv")})
  return (f"Gap: |x_0| < separation/2 - {gap_stds:g} std (blank: no gap). Samples from the "
          f"{params} parameters. Columns: see scripts/study_obstruction.py.\n\n"
          + table(rows, COLUMNS) + "\n\nChange with more NFE (same noise):\n\n"
          + table(changes, ["dim", "separation", "nfe", "d_between", "d_low_density",
                            "d_transport_rms", "d_mode_tv"]) + "\n")


def _separation_axis(ax, rows, title):
  seps = sorted({r["separation"] for r in rows})
  ax.set(xscale="log", xlabel="separation", title=title)
  ax.set_xticks(seps, [f"{s:g}" for s in seps])
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.legend(fontsize=7)


def plot(rows, scatters, path, std, gap_stds):
  """Curves against separation (a line per dim and NFE) over 1-NFE scatter panels in 2-D.

  Args:
    scatters: [(separation, 1-NFE samples [N, 2], exact images [N, 2])]; each sample is
      colored by the mode its noise's exact image belongs to.
  """
  dims, nfes = sorted({r["dim"] for r in rows}), sorted({r["nfe"] for r in rows})
  ncols = max(4, len(scatters))
  fig = plt.figure(figsize=(3.6 * ncols, 6.6 if scatters else 3.3))
  grid = fig.add_gridspec(2 if scatters else 1, ncols)
  curves = [("between", "between mass (|x_0| < gap)"), ("low_density", "low-density fraction"),
            ("transport_rms", "transport error vs exact map")]
  for i, (key, title) in enumerate(curves):
    ax = fig.add_subplot(grid[0, i])
    for j, dim in enumerate(dims):
      for nfe in nfes:
        rs = sorted((r for r in rows if r["dim"] == dim and r["nfe"] == nfe
                     and r[key] is not None), key=lambda r: r["separation"])
        ax.plot([r["separation"] for r in rs], [r[key] for r in rs],
                "o-" if nfe == nfes[0] else "s--", color=f"C{j}", label=f"D={dim}, {nfe} NFE")
    ref = sorted((r for r in rows if r["nfe"] == nfes[0] and r["dim"] == dims[0]),
                 key=lambda r: r["separation"])
    if key == "between":
      rs = [r for r in ref if r["between_closed"] is not None]
      ax.plot([r["separation"] for r in rs], [r["between_closed"] for r in rs], "k:",
              label="data")
    elif key == "low_density":
      ax.axhline(0.01, color="k", ls=":", label="data")
    _separation_axis(ax, rows, title)
  ax = fig.add_subplot(grid[0, 3])
  for j, dim in enumerate(dims):
    rs = sorted((r for r in rows if r["dim"] == dim and r["nfe"] == nfes[0]),
                key=lambda r: r["separation"])
    ax.plot([r["separation"] for r in rs], [r["S_exact"] for r in rs], "o-", color=f"C{j}",
            label=f"D={dim}: S")
    ax.plot([r["separation"] for r in rs], [r["curv_exact"] for r in rs], "^:",
            color=f"C{j}", label=f"D={dim}: S / E||z_1 - z_0||^2")
  ax.set(yscale="log")
  _separation_axis(ax, rows, "exact flow: straightness")
  for i, (sep, x, exact) in enumerate(scatters):
    ax = fig.add_subplot(grid[1, i])
    g = gap(sep, std, gap_stds)
    if g > 0:
      ax.axvspan(-g, g, color="0.9", zorder=0)
    half = sep / 2 + 5 * std
    gx, gy = np.meshgrid(np.linspace(-half, half, 200), np.linspace(-5 * std, 5 * std, 80))
    log_p = points.two_modes(2, sep, std).log_prob(
        jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), jnp.float32))
    density = np.exp(np.asarray(log_p)).reshape(gx.shape)
    ax.contour(gx, gy, density, levels=density.max() * np.array([0.05, 0.25, 0.6]),
               colors="0.6", linewidths=0.6)
    right = np.asarray(exact)[:, 0] > 0
    for side, color in ((~right, "C0"), (right, "C3")):
      ax.scatter(x[side, 0], x[side, 1], s=1.5, alpha=0.35, color=color, linewidths=0)
    ax.set(xlim=(-half, half), ylim=(-5 * std, 5 * std),
           title=f"D=2, sep {sep:g}: 1 NFE", xlabel="x_0 (color: exact map's mode)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv):
  del argv
  nfes = [int(k) for k in _NFE.value]
  sweep = [(int(d), float(s)) for d in _DIMS.value for s in _SEPARATIONS.value]
  rows, scatters = [], []
  for dim, sep in tqdm(sweep, desc="obstruction sweep", unit="run"):
    config = run_config(_CONFIG.value, dim, sep, _STD.value, _STEPS.value)
    workdir = os.path.join(_WORKDIR.value, f"d{dim}_s{sep:g}")
    rs, samples, exact = study_run(config, workdir, nfes, _NUM.value, _GAP_STDS.value,
                                   _FLOW_STEPS.value, _SEED.value, _PARAMS.value)
    rows += rs
    if dim == 2:
      scatters.append((sep, samples[nfes[0]][:4000], exact[:4000]))
  if len(scatters) > 4:  # a few separations, the extremes included
    scatters = [scatters[i] for i in np.linspace(0, len(scatters) - 1, 4).round().astype(int)]
  os.makedirs(_OUT.value, exist_ok=True)
  out = lambda name: os.path.join(_OUT.value, name)
  with open(out("results.json"), "w") as f:
    json.dump({"std": _STD.value, "gap_stds": _GAP_STDS.value, "steps": _STEPS.value,
               "num": _NUM.value, "params": _PARAMS.value, "rows": rows}, f, indent=2)
  text = markdown(rows, _GAP_STDS.value, _PARAMS.value)
  with open(out("table.md"), "w") as f:
    f.write(text)
  plot(rows, scatters, out("obstruction.png"), _STD.value, _GAP_STDS.value)
  print(text)
  print(f"wrote {out('table.md')}, {out('results.json')} and {out('obstruction.png')}")


if __name__ == "__main__":
  cli.run(main)
