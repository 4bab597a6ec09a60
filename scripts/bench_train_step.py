"""MeanFlow's train-step time over flow matching's: same model, batch and config.

  python scripts/bench_train_step.py
  python scripts/bench_train_step.py --models dit,dit_noguide --steps 200

For each model both steps are compiled ahead of time (as `training.loop` does),
warmed up, then timed one step at a time in alternating blocks (MF, FM, FM, MF,
...), so load from other processes on the machine falls on both alike; each time
is the median over steps. The data is random: loading is not what is measured.
Beside the time ratio, XLA's FLOP ratio of the two compiled steps. Writes --out
(Markdown) and the same path with .json.

XLA counts the MeanFlow step as the flow-matching step plus one forward pass: the
JVP's primal is the prediction and its tangent costs one forward, while the
backward runs through the primal only (u_tgt is stop-gradient). So the FLOP ratio
is about 4/3 unguided, and (4 + 2) / (3 + 2) with guidance's two extra forwards.
"""
import functools
import json
import os
import time

import jax
import numpy as np
from absl import flags
from tqdm.auto import tqdm

from configs import default, digits, toy
from meanflow_jax import cli, models
from meanflow_jax.errors import ConfigError
from meanflow_jax.evaluate import markdown_table
from meanflow_jax.training import builders
from meanflow_jax.training import train_state as ts
from meanflow_jax.training.train_step import guidance_active

_MODELS = flags.DEFINE_list("models", ["mlp", "dit", "dit_noguide", "unet"],
                            "Subset of: mlp, dit, dit_noguide, unet.")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed steps per objective and model.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps per objective before timing.")
_BLOCK = flags.DEFINE_integer("block", 10, "Steps per block of one objective.")
_OUT = flags.DEFINE_string("out", "runs/bench_train_step.md", "Markdown table; JSON beside it.")

OBJECTIVES = ("meanflow", "flow_matching")
COLUMNS = ["model", "params", "batch", "MF ms/step", "FM ms/step", "time ratio", "FLOP ratio"]


def _mlp():
  return toy.get_config(), (2,)  # the toy's 2-D mixture and batch 256


def _dit(guidance):
  c = digits.get_config()  # DiT 4 x 128, patch 2, 10 classes, batch 128; omega 1, kappa 0.5
  if not guidance:
    c.guidance.kappa = 0.0
  return c, (8, 8, 1)


def _unet():
  c = default.get_config()
  c.model.name, c.model.variant = "unet", "small"
  c.train.batch_size = 64
  return c, (16, 16, 1)


CASES = {  # name: (table label, config and one example's shape)
    "mlp": ("MLP 4x256, 2-D", _mlp),
    "dit": ("DiT 4x128/2, 8x8x1, guidance on", functools.partial(_dit, True)),
    "dit_noguide": ("DiT 4x128/2, 8x8x1, guidance off", functools.partial(_dit, False)),
    "unet": ("U-Net small, 16x16x1", _unet),
}


def _compile(config, model, tx, objective, state, batch, key):
  """(executable, XLA's FLOPs) of the step, compiled as training does."""
  step = functools.partial(builders.step_function(config, model, tx), objective=objective)
  compiled = jax.jit(step, donate_argnums=0).lower(state, batch, key).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, float(cost["flops"])


def _run(step, state, batch, key, n):
  """Runs `n` steps: (state, each step's seconds, last metrics)."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state, times, metrics


def _time_interleaved(name, steps, states, batch, key):
  """Seconds of each timed step per objective, in blocks whose order alternates."""
  times = {o: [] for o in OBJECTIVES}
  for i in tqdm(range(-(-_STEPS.value // _BLOCK.value)), desc=name, unit="round", leave=False):
    for o in (OBJECTIVES if i % 2 == 0 else OBJECTIVES[::-1]):
      states[o], dt, metrics = _run(steps[o], states[o], batch, key, _BLOCK.value)
      times[o] += dt
      if not int(metrics["finite"]):
        raise ConfigError(f"{name}: non-finite {o} loss on random data; timings would be off.")
  return times


def bench(name):
  """One row of the table: both steps of case `name`, compiled, warmed up and timed."""
  label, make = CASES[name]
  config, data_shape = make()
  b = config.train.batch_size
  model = ts.build_model(config)
  tx = ts.make_optimizer(config.optimizer, config.train.steps)
  kx, ky, kinit, key = jax.random.split(jax.random.key(0), 4)
  batch = (jax.random.normal(kx, (b, *data_shape)),
           jax.random.randint(ky, (b,), 0, max(config.model.num_classes, 1)))
  init = jax.jit(functools.partial(ts.init_state, model=model, tx=tx,
                                   example_x=batch[0][:1], num_ema=len(config.train.ema_decays)))
  # One state per objective: each step donates (and so deletes) the state it is given.
  states = {o: init(kinit) for o in OBJECTIVES}
  steps, flops = {}, {}
  for o in OBJECTIVES:
    steps[o], flops[o] = _compile(config, model, tx, o, states[o], batch, key)
    states[o], _, _ = _run(steps[o], states[o], batch, key, _WARMUP.value)
  times = _time_interleaved(name, steps, states, batch, key)
  ms = {o: 1e3 * float(np.median(times[o])) for o in OBJECTIVES}
  return {"model": label, "case": name, "params": models.param_count(model, data_shape),
          "guidance": guidance_active(config.guidance, config.model.num_classes),
          "batch": b, "mf_ms": round(ms["meanflow"], 2), "fm_ms": round(ms["flow_matching"], 2),
          "time_ratio": round(ms["meanflow"] / ms["flow_matching"], 3),
          "flop_ratio": round(flops["meanflow"] / flops["flow_matching"], 3),
          "mf_gflop": flops["meanflow"] / 1e9, "fm_gflop": flops["flow_matching"] / 1e9,
          "mf_iqr_ms": [1e3 * float(q) for q in np.percentile(times["meanflow"], [25, 75])],
          "fm_iqr_ms": [1e3 * float(q) for q in np.percentile(times["flow_matching"], [25, 75])]}


def main(argv):
  del argv
  unknown = set(_MODELS.value) - set(CASES)
  if unknown:
    raise ConfigError(f"unknown --models {sorted(unknown)}; choose from {list(CASES)}.")
  load_before = os.getloadavg()
  rows = []
  for name in _MODELS.value:
    start = time.perf_counter()
    rows.append(bench(name))
    r = rows[-1]
    print(f"{r['model']}: MF {r['mf_ms']} ms, FM {r['fm_ms']} ms, time x{r['time_ratio']}, "
          f"FLOPs x{r['flop_ratio']} ({time.perf_counter() - start:.0f} s)", flush=True)
  load = f"load average (1 min) {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
  note = (f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, {load}; median of "
          f"{_STEPS.value} steps each, in alternating blocks of {_BLOCK.value}.")
  cells = lambda r: dict(zip(COLUMNS, (
      r["model"], f"{r['params']:,}", r["batch"], f"{r['mf_ms']:.1f}", f"{r['fm_ms']:.1f}",
      f"{r['time_ratio']:.2f}", f"{r['flop_ratio']:.2f}")))
  table = markdown_table([cells(r) for r in rows], COLUMNS)
  print(f"\n{table}\n\n{note}")
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as fh:
    fh.write(f"{table}\n\n{note}\n")
  base = os.path.splitext(_OUT.value)[0]
  with open(f"{base}.json", "w") as fh:
    json.dump({"rows": rows, "note": note, "steps": _STEPS.value, "warmup": _WARMUP.value,
               "block": _BLOCK.value, "jax": jax.__version__}, fh, indent=2)
  print(f"wrote {_OUT.value} and {base}.json")


if __name__ == "__main__":
  cli.run(main)
