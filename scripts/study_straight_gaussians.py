"""Straightness of the independent and the optimal-transport coupling of Gaussian data.

  python scripts/study_straight_gaussians.py
  python scripts/study_straight_gaussians.py --stds 0.25,1 --dims 2 --out /tmp/sg

Data N(m, s^2 I) in D dims, noise N(0, I), for each --stds and --dims: the
independent coupling (analytic.Gaussian, curved marginal paths) against the monotone
one (analytic.StraightGaussian, straight paths), both with their exact velocity
fields. Columns, numeric next to the closed form of the independent coupling (all
are 0 for the OT coupling, and its path_length_ratio is 1):

  straightness           int E||(z_1 - z_0) - v(z_t, t)||^2 dt  D s (2 - pi/2)
  curvature              straightness / E||z_1 - z_0||^2         s (2 - pi/2) / ((1-s)^2 + mean^2)
  coupling_straightness  E_t E||(eps - x) - v(z_t, t)||^2        D pi s / 2
  euler_gap              E||v(eps, 1) - (eps - Phi(eps))||^2     D s^2
  path_length_ratio      E[arc length] / E[chord length]

The noise is moment matched (sample mean 0, covariance I exactly), so every column
with a closed form equals it up to the ODE and quadrature error, not the Monte Carlo
error. Both couplings have the same ODE map from noise to data, x = m + s eps: the
trajectory panels end at the same points. Writes OUT/table.md and OUT/trajectories.png.
"""
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from absl import flags

from meanflow_jax import analytic, cli
from meanflow_jax.metrics import straightness as st

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_OUT = flags.DEFINE_string("out", "results/straight_gaussians", "Output directory.")
_STDS = flags.DEFINE_list("stds", ["0.1", "0.25", "0.5", "1", "2"], "Data stds s.")
_DIMS = flags.DEFINE_list("dims", ["2", "16"], "Dimensions D.")
_MEAN = flags.DEFINE_float("mean", 1.0, "Data mean m = mean * (1, -1, 1, ...).")
_NUM = flags.DEFINE_integer("num", 2048, "Noise samples (more than 2 D).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 128, "RK4 steps of the trajectories.")
_PLOT_STD = flags.DEFINE_float("plot_std", 0.5, "s of the trajectory panels (D = 2).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise.")
flags.register_multi_flags_validator(
    ["num", "dims"], lambda f: f["num"] > 2 * max(int(d) for d in f["dims"]),
    "--num must exceed 2 D for every D in --dims (moment matching of the pairs).")
flags.register_validator("num_steps", lambda n: n >= 1, "--num_steps must be at least 1.")

COLUMNS = ["coupling", "D", "s", "straightness", "straightness_exact", "curvature",
           "curvature_exact", "coupling_straightness", "coupling_straightness_exact",
           "euler_gap", "euler_gap_exact", "path_length_ratio"]
COUPLINGS = {"independent": analytic.Gaussian, "ot": analytic.StraightGaussian}


def closed_forms(coupling, dim, s, mean):
  """(straightness, curvature, coupling_straightness, euler_gap) of data N(m, s^2 I) in
  `dim` dims, m = mean * (1, -1, ...): trajectories z_t = (1-t) m + S(t) eps with
  S(t) = sqrt((1-t)^2 s^2 + t^2), int_0^1 S'^2 dt = 1 + s^2 - pi s / 2, and
  E||z_1 - z_0||^2 = E||(1-s) eps - m||^2 = D ((1-s)^2 + mean^2)."""
  if coupling == "ot":
    return 0.0, 0.0, 0.0, 0.0
  straight = dim * s * (2 - np.pi / 2)
  return (straight, straight / (dim * ((1 - s) ** 2 + mean ** 2)), dim * np.pi * s / 2,
          dim * s ** 2)


def mean_vector(dim, scale):
  return scale * jnp.asarray([(-1.0) ** i for i in range(dim)], jnp.float32)


def _metrics(coupling, num_steps):
  """jit(mean, s, eps, xi) -> dict of the columns; traced once per coupling and shape."""

  def fn(mean, s, eps, xi):
    field = COUPLINGS[coupling](mean, s)
    report = st.trajectory_report(field.velocity, eps, num_steps)
    # Independent pairs draw x from noise of their own; OT pairs are x = mean + s eps.
    x = mean + s * xi if coupling == "independent" else field.coupling(eps)
    report["coupling_straightness"] = st.coupling_straightness(field.velocity, x, eps)
    report["euler_gap"] = st.one_step_gap(st.euler_u(field.velocity), eps,
                                          lambda e: field.flow_map(e, 1.0, 0.0))
    return report

  return jax.jit(fn)


def study(stds, dims, mean, num, num_steps, seed):
  """The table's rows, one per (D, coupling, s)."""
  rows = []
  for dim in dims:
    # Joint moment matching of (xi, eps): the independent pairs are then exactly
    # uncorrelated, as the closed form of the coupling loss assumes.
    both = st.moment_matched_noise(jax.random.key(seed), num, (2 * dim,))
    xi, eps = both[:, :dim], both[:, dim:]
    m = mean_vector(dim, mean)
    for coupling in COUPLINGS:
      fn = _metrics(coupling, num_steps)
      for s in stds:
        out = {k: float(v) for k, v in fn(m, jnp.float32(s), eps, xi).items()}
        exact = closed_forms(coupling, dim, s, mean)
        rows.append(dict(coupling=coupling, D=dim, s=s, straightness=out["straightness"],
                         straightness_exact=exact[0], curvature=out["curvature"],
                         curvature_exact=exact[1],
                         coupling_straightness=out["coupling_straightness"],
                         coupling_straightness_exact=exact[2], euler_gap=out["euler_gap"],
                         euler_gap_exact=exact[3],
                         path_length_ratio=out["path_length_ratio"]))
  return rows


def markdown(rows):
  fmt = lambda v: f"{v:.5f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
  return "\n".join(lines)


def plot(rows, path, mean, s, num_steps, seed, num_paths=30):
  """Trajectory panels of both couplings at std s (D = 2) and straightness against s."""
  eps = jax.random.normal(jax.random.key(seed + 1), (num_paths, 2))
  m = mean_vector(2, mean)
  fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2))
  for ax, (coupling, field) in zip(axes, COUPLINGS.items()):
    _, states, _ = st.trajectory(field(m, s).velocity, eps, num_steps)
    states = np.asarray(states)
    ax.plot(states[:, :, 0], states[:, :, 1], color="C0", lw=0.7, alpha=0.7)
    ax.scatter(*states[0].T, s=8, color="0.5", label="noise (t = 1)", zorder=3)
    ax.scatter(*states[-1].T, s=8, color="C3", label="data (t = 0)", zorder=3)
    ax.set(aspect="equal", title=f"{coupling} coupling, s = {s:g}")
    ax.legend(loc="lower left", fontsize=7)
  ax = axes[2]
  for k, coupling in enumerate(COUPLINGS):
    got = [(r["s"], r["straightness"]) for r in rows if r["coupling"] == coupling and r["D"] == 2]
    if got:
      ax.plot(*zip(*sorted(got)), "o", color=f"C{k}", label=f"{coupling} (numeric)")
  grid = np.geomspace(min(r["s"] for r in rows), max(r["s"] for r in rows), 100)
  ax.plot(grid, 2 * grid * (2 - np.pi / 2), "-", color="C0", lw=1,
          label="2 s (2 - pi/2) (closed form)")
  ax.axhline(0.0, color="C1", lw=1, label="0 (closed form)")
  ax.set(xscale="log", xlabel="data std s", ylabel="straightness (D = 2)",
         title="straightness against s")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  stds = [float(s) for s in _STDS.value]
  dims = [int(d) for d in _DIMS.value]
  rows = study(stds, dims, _MEAN.value, _NUM.value, _NUM_STEPS.value, _SEED.value)
  os.makedirs(_OUT.value, exist_ok=True)
  table = markdown(rows)
  with open(os.path.join(_OUT.value, "table.md"), "w") as f:
    f.write(table + "\n")
  plot(rows, os.path.join(_OUT.value, "trajectories.png"), _MEAN.value, _PLOT_STD.value,
       _NUM_STEPS.value, _SEED.value)
  print(table)
  print(f"wrote {_OUT.value}/table.md and {_OUT.value}/trajectories.png")


if __name__ == "__main__":
  cli.run(main)
