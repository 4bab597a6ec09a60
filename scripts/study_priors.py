"""Priors and couplings as design choices: curvature and few-step quality, same budget.

  python scripts/study_priors.py --config configs/digits.py --workdir runs/priors

Trains (or resumes) one run per (prior, coupling) and objective from the same config
and step budget -- N(0, I) noise paired independently, N(0, I) re-paired by exact
minibatch OT, and the low-frequency prior U(D(x)) + noise -- with MeanFlow and flow
matching (Euler). For each run it measures, on the same labels:
- the trajectories of the learned instantaneous field v(z, t) (u(z, t, t) for
  MeanFlow) from the run's own prior: straightness, curvature (scale-free), path
  length over chord (`meanflow_jax.metrics.straightness`, RK4);
- the training pairs: E||eps - x||^2 of the coupling (shorter for OT and the
  structured prior);
- 1- and 2-NFE quality (and flow matching at more NFE) with the project's
  classifier (`evaluate.evaluate_images`).
Writes OUT/table.md, OUT/results.json, OUT/priors.png (quality against NFE, and
curvature per run) and OUT/samples.png (1- and 2-NFE grids).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags
from tqdm.auto import tqdm

from meanflow_jax import cli, evaluate, objectives, plotting, priors, training
from meanflow_jax.metrics import straightness
from meanflow_jax.training import inference, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config of every run.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/priors", "Directory of the runs.")
_OUT = flags.DEFINE_string("out", "results/priors", "Directory of the table and figures.")
_VARIANTS = flags.DEFINE_list("variants", ["gaussian:independent", "gaussian:minibatch_ot",
                                           "lowfreq:independent"], "prior:coupling pairs.")
_OBJECTIVES = flags.DEFINE_list("objectives", ["meanflow", "flow_matching"], "Objectives.")
_MF_NFE = flags.DEFINE_list("mf_nfe", ["1", "2"], "MeanFlow NFE values.")
_FM_NFE = flags.DEFINE_list("fm_nfe", ["1", "2", "4", "8"], "Flow-matching (Euler) NFE values.")
_NUM = flags.DEFINE_integer("num", 2000, "Samples per quality evaluation.")
_NUM_PATHS = flags.DEFINE_integer("num_paths", 256, "Trajectories per curvature measure.")
_PATH_STEPS = flags.DEFINE_integer("path_steps", 32, "RK4 steps per trajectory.")
_FM_LOSS_P = flags.DEFINE_float("fm_loss_p", 0.0, "Adaptive-weight power of flow matching.")

COLUMNS = ["prior", "coupling", "objective", "nfe", "clf_fd", "agreement", "class_tv",
           "curvature", "straightness", "path_length_ratio", "pair_sq_dist"]


def run_config(base, prior, coupling, objective):
  c = base.copy_and_resolve_references()
  with c.unlocked():
    c.prior.name, c.prior.coupling, c.objective = prior, coupling, objective
    c.loss.p = {"flow_matching": _FM_LOSS_P.value}.get(objective, c.loss.p)
  return c


def pair_sq_dist(config, batches=8):
  """E||eps - x||^2 over the coupled pairs of the first training batches (the paths'
  squared length: the independent coupling's is E||x||^2 + D)."""
  source = loop.make_source(config)
  couple = jax.jit(priors.from_config(config).couple)  # pairing needs no fitted statistics
  total = []
  for step in range(batches):
    x = jnp.asarray(source.batch(step)[0])
    eps = couple(jax.random.fold_in(jax.random.key(1), step), x)
    total.append(float(jnp.mean(jnp.sum((eps - x).reshape(x.shape[0], -1) ** 2, -1))))
  return float(np.mean(total))


def trajectory_stats(workdir, num, num_steps, num_classes):
  """`straightness.trajectory_report` of the run's v(z, t) from its own prior."""
  run = inference.load_run(workdir)
  y = (jnp.arange(num) % num_classes).astype(jnp.int32) if run.num_classes else None
  eps = run.prior.sample(jax.random.key(7), num, run.data_shape, y)
  u_fn = inference.average_velocity(run.config, run.model, run.params, y)
  v_fn = lambda z, t: u_fn(z, t, t)
  report = jax.jit(lambda e: straightness.trajectory_report(v_fn, e, num_steps))(eps)
  return {k: float(v) for k, v in report.items()}


def write_outputs(rows, grids, out, floor):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"rows": rows, "real_data_floor": floor}, f, indent=2)
  table = evaluate.markdown_table(rows, COLUMNS)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table + "\n\nReal data against itself (two halves): clf_fd "
            f"{floor.get('clf_fd', float('nan')):.3f}.\n")
  print(table)
  curves = [dict(r, method=f"{r['prior']}/{r['coupling']}/{r['objective']}") for r in rows]
  plotting.metrics_vs_nfe(curves, ["clf_fd", "agreement"], os.path.join(out, "priors.png"),
                          log_metrics=("clf_fd",))
  _curvature_bars(rows, os.path.join(out, "curvature.png"))
  plotting.image_grids(grids, os.path.join(out, "samples.png"), ncols=10, panels_per_row=4)


def _curvature_bars(rows, path):
  plt = plotting.pyplot()  # on the Agg backend
  runs = {(r["prior"], r["coupling"], r["objective"]): r for r in rows}
  names = [f"{p}\n{c}\n{o}" for p, c, o in runs]
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
  for ax, key in zip(axes, ["curvature", "straightness"]):
    ax.bar(range(len(runs)), [r[key] for r in runs.values()],
           color=[f"C{objectives.names().index(o)}" for _, _, o in runs])
    ax.set_xticks(range(len(runs)), names, fontsize=7)
    ax.set_title(f"{key} of the learned v (blue: MeanFlow, orange: flow matching)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  base = _CONFIG.value
  rows, grids, floor = [], [], {}
  for o in _OBJECTIVES.value:
    objectives.get(o)  # unknown: one line listing the registered ones
  jobs = [(v.split(":")[0], v.split(":")[1], o) for v in _VARIANTS.value
          for o in _OBJECTIVES.value]
  for prior, coupling, objective in tqdm(jobs, desc="runs", unit="run"):
    config = run_config(base, prior, coupling, objective)
    workdir = os.path.join(_WORKDIR.value, f"{prior}_{coupling}_{objective}")
    training.train(config, workdir)
    paths_report = trajectory_stats(workdir, _NUM_PATHS.value, _PATH_STEPS.value,
                                    config.model.num_classes)
    pairs = pair_sq_dist(config)
    nfes = [int(k) for k in {"meanflow": _MF_NFE.value, "flow_matching": _FM_NFE.value}[objective]]
    ev = evaluate.evaluate_images(workdir, nfes, num=_NUM.value, method="euler",
                                  progress=True)
    floor = ev.floor
    for r in ev.rows:
      rows.append(dict(r, prior=prior, coupling=coupling, pair_sq_dist=pairs,
                       train_s=evaluate.training_seconds(workdir), **paths_report))
    k = config.model.num_classes
    for nfe in nfes[:2]:
      x = ev.samples[nfe]
      panel = evaluate.class_rows(x, ev.labels, k, 10) if k else x[:100]
      grids.append((f"{prior}/{coupling}, {objective}, {nfe} NFE", panel))
  write_outputs(rows, grids, _OUT.value, floor)
  print(f"wrote {_OUT.value}/table.md, results.json, priors.png, curvature.png, samples.png")


if __name__ == "__main__":
  cli.run(main)
