"""Reflow against MeanFlow at the same total compute, on a built-in mixture.

  python scripts/study_reflow.py --config configs/toy.py --workdir runs/reflow

1. Flow matching on independent pairs (1-rectified flow), `--fm_steps` steps.
2. `--num_pairs` pairs (Phi(eps), eps) from its ODE (Heun, `--pair_nfe` evaluations).
3. Reflow: flow matching on those pairs, started from the first model, `--reflow_steps`.
4. MeanFlow from scratch with as many steps as the FLOPs of 1-3 buy (XLA's counts of
   one training step of each objective and of the pair generation).
Each model is scored at 1, 2, 4 and 8 NFE on the same noise against the exact
mixture (`metrics.toy`), and its learned instantaneous field v(z, t) (u(z, t, t)
for MeanFlow) is measured for straightness (`metrics.straightness`), with the
gap between one step and the model's own ODE endpoint. Writes OUT/table.md,
OUT/results.json and OUT/reflow.png.
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
from meanflow_jax.training import inference

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "Base config (a mixture).",
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

COLUMNS = ["model", "train_steps", "gflop", "nfe", "transport_rms", "low_density_frac",
           "mode_tv", "sliced_w2", "straightness", "curvature", "one_step_gap"]


def configs(base, workdir, fm_steps, reflow_steps):
  """(first flow, reflow) configs; the MeanFlow one is made once the FLOPs are known."""
  fm = base.copy_and_resolve_references()
  with fm.unlocked():
    fm.objective, fm.loss.p, fm.train.steps = "flow_matching", _FM_LOSS_P.value, fm_steps
  rf = fm.copy_and_resolve_references()
  with rf.unlocked():
    rf.data.source, rf.data.path = "pairs", os.path.join(workdir, "pairs.npz")
    rf.train.init_from, rf.train.steps = os.path.join(workdir, "flow_matching"), reflow_steps
  return fm, rf


def model_fields(workdir):
  """(v_fn(z, t), u_fn(z, r, t)) of a run; flow matching's u is one Euler step."""
  run = inference.load_run(workdir)
  apply = lambda z, r, t: run.model.apply(run.params, z, r, t, None)
  v_fn = lambda z, t: apply(z, t, t)
  u_fn = apply if run.config.objective == "meanflow" else straightness.euler_u(v_fn)
  return v_fn, u_fn


def path_report(workdir, eps, num_steps):
  """Straightness of the run's v and the one-step gap to its own ODE endpoint."""
  v_fn, u_fn = model_fields(workdir)

  def report(e):
    out = straightness.trajectory_report(v_fn, e, num_steps)
    end = lambda z: straightness.trajectory(v_fn, z, num_steps)[1][-1]
    out["one_step_gap"] = straightness.one_step_gap(u_fn, e, end)
    return out

  return {k: float(v) for k, v in jax.jit(report)(eps).items()}


def score(workdir, mixture, eps, exact, reference, nfes, method="euler"):
  """`toy.toy_report` rows of a run at each NFE."""
  run = inference.load_run(workdir)
  sampler = inference.make_sampler(run.config, run.model, run.params, method=method)
  rows = []
  for k in nfes:
    x = np.asarray(sampler(eps, k))
    rows.append(dict(toy.toy_report(mixture, jnp.asarray(x), exact, reference), nfe=k, x=x))
  return rows


def exact_row(mixture, eps, num_steps):
  out = straightness.trajectory_report(mixture.velocity, eps, num_steps)
  return {k: float(v) for k, v in out.items()}


def write_outputs(rows, panels, mixture, out):
  os.makedirs(out, exist_ok=True)
  clean = [{k: v for k, v in r.items() if k != "x"} for r in rows]
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(clean, f, indent=2)
  table = evaluate.markdown_table(clean, COLUMNS)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  curves = [dict(r, method=r["model"]) for r in clean if r["nfe"] != ""]
  plotting.metrics_vs_nfe(curves, ["transport_rms", "low_density_frac", "sliced_w2"],
                          os.path.join(out, "reflow_nfe.png"))
  plotting.scatter(panels, os.path.join(out, "reflow.png"), log_prob=mixture.log_prob, ncols=4)


def main(argv):
  del argv
  base, root = _CONFIG.value, _WORKDIR.value
  if base.data.source != "mixture":
    raise ConfigError("the reflow study scores against an exact mixture: use a config with "
                      "data.source = 'mixture' (e.g. configs/toy.py).")
  fm_steps = _FM_STEPS.value or base.train.steps
  reflow_steps = _REFLOW_STEPS.value or fm_steps // 2
  fm_cfg, rf_cfg = configs(base, root, fm_steps, reflow_steps)
  mixture = points.config_mixture(base.data)
  shape = (mixture.dim,)

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
  eps = jax.random.normal(key_noise, (_NUM.value, *shape))
  exact = jax.jit(lambda e: mixture.flow_map(e, 1.0, 0.0, 256))(eps)
  reference = toy.make_reference(mixture, key_ref, _NUM.value)
  eps_paths = jax.random.normal(key_paths, (_NUM_PATHS.value, *shape))
  nfes = [int(k) for k in _NFES.value]
  budgets = {"flow matching (1-RF)": (fm_steps, f_fm * fm_steps),
             "reflow (2-RF)": (fm_steps + reflow_steps, total),
             "MeanFlow": (mf_cfg.train.steps, f_mf * mf_cfg.train.steps)}
  rows = [dict(model="exact flow", train_steps="", gflop="", nfe="",
               **exact_row(mixture, eps_paths, _PATH_STEPS.value))]
  panels = [("exact flow map", np.asarray(exact[:4000]))]
  for name, sub in (("flow matching (1-RF)", "flow_matching"), ("reflow (2-RF)", "reflow"),
                    ("MeanFlow", "meanflow")):
    workdir = os.path.join(root, sub)
    paths_ = path_report(workdir, eps_paths, _PATH_STEPS.value)
    steps, flop = budgets[name]
    for r in score(workdir, mixture, eps, exact, reference, nfes):
      rows.append(dict(r, model=name, train_steps=steps, gflop=flop / 1e9, **paths_))
      if r["nfe"] in (1, 2):
        panels.append((f"{name}, {r['nfe']} NFE", r["x"][:4000]))
  write_outputs(rows, panels, mixture, _OUT.value)
  print(f"wrote {_OUT.value}/table.md, results.json, reflow.png, reflow_nfe.png")


if __name__ == "__main__":
  cli.run(main)
