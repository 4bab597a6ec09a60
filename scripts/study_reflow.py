"""Reflow against MeanFlow at the same total compute.

  python scripts/study_reflow.py --config configs/toy.py --workdir runs/reflow
  python scripts/study_reflow.py --config configs/digits.py --workdir runs/reflow_digits \
      --out results/reflow_digits --num_pairs 20000 --num 2000 --num_paths 256 --path_steps 32

1. Flow matching on independent pairs (1-rectified flow), `--fm_steps` steps.
2. `--num_pairs` pairs (Phi(eps), eps) from its ODE (Heun, `--pair_nfe` evaluations).
3. Reflow: flow matching on those pairs, started from the first model, `--reflow_steps`.
4. MeanFlow from scratch with as many steps as the FLOPs of 1-3 buy (XLA's counts of
   one training step of each objective and of the pair generation).
Each model is scored at 1, 2, 4 and 8 NFE on the same noise (and labels): against
the exact mixture (`metrics.toy`), or for images with the project's classifier
against the real data (`evaluate.evaluate_images`). Its learned instantaneous
field v(z, t) (u(z, t, t) for MeanFlow) is measured for straightness
(`metrics.straightness`), with the gap between one step and the model's own ODE
endpoint. Class-conditional runs: the pairs come from the guided first flow, so
the reflow trains without guidance (kappa = 0), on the pairs' labels. Writes
OUT/table.md, OUT/results.json, OUT/reflow.png (samples) and OUT/reflow_nfe.png.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from meanflow_jax import cli, evaluate, plotting, reflow, training
from meanflow_jax.data import points
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import straightness, toy
from meanflow_jax.training import inference, loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "Base config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/reflow", "Directory of the runs and the pairs.")
_OUT = flags.DEFINE_string("out", "results/reflow", "Directory of the table and figure.")
_FM_STEPS = flags.DEFINE_integer("fm_steps", None, "Steps of the first flow (default: config).")
_REFLOW_STEPS = flags.DEFINE_integer("reflow_steps", None, "Steps of the reflow (default: half "
                                     "of --fm_steps).")
_NUM_PAIRS = flags.DEFINE_integer("num_pairs", 50_000, "Pairs generated for the reflow.")
_PAIR_NFE = flags.DEFINE_integer("pair_nfe", 64, "Evaluations per pair (Heun).")
_NFES = flags.DEFINE_list("nfe", ["1", "2", "4", "8"], "NFE values scored for every model.")
_NUM = flags.DEFINE_integer("num", 20_000, "Samples per score.")
_NUM_PATHS = flags.DEFINE_integer("num_paths", 2000, "Trajectories per straightness measure.")
_PATH_STEPS = flags.DEFINE_integer("path_steps", 64, "RK4 steps per trajectory.")
_FM_LOSS_P = flags.DEFINE_float("fm_loss_p", 0.0, "Adaptive-weight power of flow matching.")

TOY_COLUMNS = ["model", "train_steps", "gflop", "nfe", "transport_rms", "low_density_frac",
               "mode_tv", "sliced_w2", "straightness", "curvature", "path_length_ratio",
               "one_step_gap"]
IMAGE_COLUMNS = ["model", "train_steps", "gflop", "nfe", "clf_fd", "agreement", "straightness",
                 "curvature", "path_length_ratio", "one_step_gap"]


def configs(base, workdir, fm_steps, reflow_steps):
  """(first flow, reflow) configs; the MeanFlow one is made once the FLOPs are known."""
  fm = base.copy_and_resolve_references()
  with fm.unlocked():
    fm.objective, fm.loss.p, fm.train.steps = "flow_matching", _FM_LOSS_P.value, fm_steps
  rf = fm.copy_and_resolve_references()
  with rf.unlocked():
    rf.data.source, rf.data.path = "pairs", os.path.join(workdir, "pairs.npz")
    rf.train.init_from, rf.train.steps = os.path.join(workdir, "flow_matching"), reflow_steps
    rf.guidance.omega, rf.guidance.kappa = 1.0, 0.0  # the pairs are guided already
  return fm, rf


def labels_for(run, num):
  """Class i mod K of sample i for conditional runs, as in `evaluate_images`."""
  return (jnp.arange(num) % run.num_classes).astype(jnp.int32) if run.num_classes else None


def model_fields(workdir, num):
  """(v_fn(z, t), u_fn(z, r, t)) of a run for `num` samples; flow matching's u is one
  Euler step."""
  run = inference.load_run(workdir)
  y = labels_for(run, num)
  u_fn = inference.average_velocity(run.config, run.model, run.params, y)
  v_fn = lambda z, t: u_fn(z, t, t)
  return v_fn, u_fn


def path_report(workdir, eps, num_steps):
  """Straightness of the run's v and the one-step gap to its own ODE endpoint."""
  v_fn, u_fn = model_fields(workdir, eps.shape[0])

  def report(e):
    out = straightness.trajectory_report(v_fn, e, num_steps)
    end = lambda z: straightness.trajectory(v_fn, z, num_steps)[1][-1]
    out["one_step_gap"] = straightness.one_step_gap(u_fn, e, end)
    return out

  return {k: float(v) for k, v in jax.jit(report)(eps).items()}


def score(workdir, mixture, eps, exact, reference, nfes, method="euler"):
  """`toy.toy_report` rows of a run at each NFE."""
  run = inference.load_run(workdir)
  sampler = inference.make_sampler(run.config, run.model, run.params, method=method,
                                   data_stats=run.data_stats)
  rows = []
  for k in nfes:
    x = np.asarray(sampler(eps, k))
    rows.append(dict(toy.toy_report(mixture, jnp.asarray(x), exact, reference), nfe=k, x=x))
  return rows


def exact_row(mixture, eps, num_steps):
  out = straightness.trajectory_report(mixture.velocity, eps, num_steps)
  return {k: float(v) for k, v in out.items()}


def score_images(workdir, data, nfes):
  """`evaluate.evaluate_images` rows of a run against `data`, and the real-data floor."""
  ev = evaluate.evaluate_images(workdir, nfes, num=_NUM.value, method="euler", data=data,
                                progress=True)
  k = inference.load_run(workdir).num_classes
  rows = []
  for r in ev.rows:
    x = ev.samples[r["nfe"]]
    rows.append(dict(r, x=evaluate.class_rows(x, ev.labels, k, 10) if k else x[:100]))
  return rows, ev.floor


def write_outputs(rows, panels, mixture, out, floor=None):
  os.makedirs(out, exist_ok=True)
  clean = [{k: v for k, v in r.items() if k != "x"} for r in rows]
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"rows": clean, "real_data_floor": floor}, f, indent=2)
  table = evaluate.markdown_table(clean, TOY_COLUMNS if mixture else IMAGE_COLUMNS)
  if floor:
    table += f"\n\nReal data against itself (two halves): clf_fd {floor['clf_fd']:.3f}."
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  curves = [dict(r, method=r["model"]) for r in clean if r["nfe"] != ""]
  metrics = ["transport_rms", "low_density_frac", "sliced_w2"] if mixture else ["clf_fd"]
  plotting.metrics_vs_nfe(curves, metrics, os.path.join(out, "reflow_nfe.png"),
                          log_metrics=() if mixture else ("clf_fd",))
  if mixture:
    plotting.scatter(panels, os.path.join(out, "reflow.png"), log_prob=mixture.log_prob,
                     ncols=4)
  else:
    plotting.image_grids(panels, os.path.join(out, "reflow.png"), ncols=10, panels_per_row=3)


def main(argv):
  del argv
  base, root = _CONFIG.value.copy_and_resolve_references(), _WORKDIR.value
  # One space for all three runs and the exact flow: the reflow run trains on stored
  # pairs, which are not standardised, and starts from the first flow's parameters.
  base.data.standardize = False
  if base.data.source in ("points", "pairs", "latents"):
    raise ConfigError(f"the reflow study scores against an exact mixture or labelled images; "
                      f"data.source = {base.data.source!r} is neither.")
  toy_data = base.data.source == "mixture"
  fm_steps = _FM_STEPS.value or base.train.steps
  reflow_steps = _REFLOW_STEPS.value or fm_steps // 2
  fm_cfg, rf_cfg = configs(base, root, fm_steps, reflow_steps)
  mixture = points.config_mixture(base.data) if toy_data else None
  shape = tuple(loop.make_source(base).shape)

  training.train(fm_cfg, os.path.join(root, "flow_matching"))
  pairs_path = rf_cfg.data.path
  if not os.path.exists(pairs_path):
    pairs = reflow.make_pairs(os.path.join(root, "flow_matching"), _NUM_PAIRS.value,
                              _PAIR_NFE.value, seed=1)
    np.savez(pairs_path, **pairs)
  training.train(rf_cfg, os.path.join(root, "reflow"))

  # MeanFlow's budget: the FLOPs of both flow-matching runs and of the pairs.
  f_fm = reflow.train_step_flops(fm_cfg, shape)
  f_gen = reflow.sampling_flops(os.path.join(root, "flow_matching"), _NUM_PAIRS.value,
                                _PAIR_NFE.value)
  mf_cfg = base.copy_and_resolve_references()
  f_mf = reflow.train_step_flops(mf_cfg, shape)
  total = f_fm * (fm_steps + reflow_steps) + f_gen
  with mf_cfg.unlocked():
    mf_cfg.train.steps = int(round(total / f_mf))
  training.train(mf_cfg, os.path.join(root, "meanflow"))
  print(f"GFLOP: flow-matching step {f_fm / 1e9:.4f}, MeanFlow step {f_mf / 1e9:.4f}, pairs "
        f"{f_gen / 1e9:.1f}; MeanFlow gets {mf_cfg.train.steps} steps")

  key_noise, key_ref, key_paths = jax.random.split(jax.random.key(0), 3)
  eps_paths = jax.random.normal(key_paths, (_NUM_PATHS.value, *shape))
  nfes = [int(k) for k in _NFES.value]
  if toy_data:
    eps = jax.random.normal(key_noise, (_NUM.value, *shape))
    exact = jax.jit(lambda e: mixture.flow_map(e, 1.0, 0.0, 256))(eps)
    reference = toy.make_reference(mixture, key_ref, _NUM.value)
  budgets = {"flow matching (1-RF)": (fm_steps, f_fm * fm_steps),
             "reflow (2-RF)": (fm_steps + reflow_steps, total),
             "MeanFlow": (mf_cfg.train.steps, f_mf * mf_cfg.train.steps)}
  rows, panels, floor = [], [], None
  if toy_data:
    rows.append(dict(model="exact flow", train_steps="", gflop="", nfe="",
                     **exact_row(mixture, eps_paths, _PATH_STEPS.value)))
    panels.append(("exact flow map", np.asarray(exact[:4000])))
  for name, sub in (("flow matching (1-RF)", "flow_matching"), ("reflow (2-RF)", "reflow"),
                    ("MeanFlow", "meanflow")):
    workdir = os.path.join(root, sub)
    paths_ = path_report(workdir, eps_paths, _PATH_STEPS.value)
    steps, flop = budgets[name]
    if toy_data:
      scored = score(workdir, mixture, eps, exact, reference, nfes)
    else:
      scored, floor = score_images(workdir, base.data, nfes)
    for r in scored:
      rows.append(dict(r, model=name, train_steps=steps, gflop=flop / 1e9, **paths_))
      if r["nfe"] in (1, 2):
        panels.append((f"{name}, {r['nfe']} NFE", r["x"][:4000]))
  write_outputs(rows, panels, mixture, _OUT.value, floor)
  print(f"wrote {_OUT.value}/table.md, results.json, reflow.png, reflow_nfe.png")


if __name__ == "__main__":
  cli.run(main)
