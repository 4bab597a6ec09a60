"""MeanFlow's train-step time over flow matching's: same model, batch and config.

  python scripts/bench_train_step.py
  python scripts/bench_train_step.py --models dit,dit_noguide --steps 200
  python scripts/bench_train_step.py --models dit_imf --objectives imf,meanflow

--objectives names the pair compared (default meanflow,flow_matching); each objective
runs on the model it builds (iMF adds its v head, and guidance conditions where the
model is class-conditional).

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

from configs import default, digits, digits_imf, toy
from meanflow_jax import cli, models, objectives
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
_OBJECTIVES = flags.DEFINE_list("objectives", ["meanflow", "flow_matching"],
                                "The two objectives compared: first over second.")

SHORT = {"meanflow": "MF", "flow_matching": "FM", "imf": "iMF"}


def _columns(pair):
  a, b = (SHORT.get(o, o) for o in pair)
  return ["model", "params", "batch", f"{a} ms/step", f"{b} ms/step", "time ratio",
          "FLOP ratio"]


def _mlp():
  return toy.get_config(), (2,)  # the toy's 2-D mixture and batch 256


def _dit(guidance):
  c = digits.get_config()  # DiT 4 x 128, patch 2, 10 classes, batch 128; omega 1, kappa 0.5
  if not guidance:
    c.guidance.kappa = 0.0
  return c, (8, 8, 1)


def _dit_imf():
  """The digits DiT with iMF's recipe (configs/digits_imf.py); MeanFlow on it keeps its
  own guidance off, as the iMF config sets it."""
  return digits_imf.get_config(), (8, 8, 1)


def _unet():
  c = default.get_config()
  c.model.name, c.model.variant = "unet", "small"
  c.train.batch_size = 64
  return c, (16, 16, 1)


CASES = {  # name: (table label, config and one example's shape)
    "mlp": ("MLP 4x256, 2-D", _mlp),
    "dit": ("DiT 4x128/2, 8x8x1, guidance on", functools.partial(_dit, True)),
    "dit_noguide": ("DiT 4x128/2, 8x8x1, guidance off", functools.partial(_dit, False)),
    "dit_imf": ("DiT 4x128/2, 8x8x1, iMF recipe", _dit_imf),
    "unet": ("U-Net small, 16x16x1", _unet),
}


def _compile(config, model, tx, state, batch, key):
  """(executable, XLA's FLOPs) of the step, compiled as training does."""
  step = builders.step_function(config, model, tx)
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
  pair = list(steps)
  times = {o: [] for o in pair}
  for i in tqdm(range(-(-_STEPS.value // _BLOCK.value)), desc=name, unit="round", leave=False):
    for o in (pair if i % 2 == 0 else pair[::-1]):
      states[o], dt, metrics = _run(steps[o], states[o], batch, key, _BLOCK.value)
      times[o] += dt
      if not int(metrics["finite"]):
        raise ConfigError(f"{name}: non-finite {o} loss on random data; timings would be off.")
  return times


def bench(name, pair):
  """One row of the table: both steps of case `name`, compiled, warmed up and timed."""
  label, make = CASES[name]
  base, data_shape = make()
  b = base.train.batch_size
  kx, ky, kinit, key = jax.random.split(jax.random.key(0), 4)
  batch = (jax.random.normal(kx, (b, *data_shape)),
           jax.random.randint(ky, (b,), 0, max(base.model.num_classes, 1)))
  # One state per objective (each step donates, and so deletes, the state it is given),
  # on the model that objective builds.
  states, steps, flops, params = {}, {}, {}, {}
  for o in pair:
    config = base.copy_and_resolve_references()
    with config.unlocked():
      config.objective = o
    model = ts.build_model(config)
    tx = ts.make_optimizer(config.optimizer, config.train.steps)
    init = jax.jit(functools.partial(ts.init_state, model=model, tx=tx, example_x=batch[0][:1],
                                     num_ema=len(config.train.ema_decays)))
    states[o] = init(kinit)
    params[o] = models.param_count(model, data_shape)
    steps[o], flops[o] = _compile(config, model, tx, states[o], batch, key)
    states[o], _, _ = _run(steps[o], states[o], batch, key, _WARMUP.value)
  times = _time_interleaved(name, steps, states, batch, key)
  ms = {o: 1e3 * float(np.median(times[o])) for o in pair}
  a, z = pair
  row = {"model": label, "case": name, "pair": list(pair), "params": params[a],
         "guidance": guidance_active(base.guidance, base.model.num_classes), "batch": b,
         "time_ratio": round(ms[a] / ms[z], 3), "flop_ratio": round(flops[a] / flops[z], 3)}
  for o in pair:
    row.update({f"{o}_ms": round(ms[o], 2), f"{o}_gflop": flops[o] / 1e9, f"{o}_params": params[o],
                f"{o}_iqr_ms": [1e3 * float(q) for q in np.percentile(times[o], [25, 75])]})
  return row


def main(argv):
  del argv
  unknown = set(_MODELS.value) - set(CASES)
  if unknown:
    raise ConfigError(f"unknown --models {sorted(unknown)}; choose from {list(CASES)}.")
  pair = tuple(_OBJECTIVES.value)
  if len(pair) != 2 or pair[0] == pair[1]:
    raise ConfigError(f"--objectives takes two different objectives; got {list(pair)}.")
  for o in pair:
    objectives.get(o)  # unknown: one line listing the registered ones
  load_before = os.getloadavg()
  rows = []
  for name in _MODELS.value:
    start = time.perf_counter()
    rows.append(bench(name, pair))
    r = rows[-1]
    print(f"{r['model']}: {pair[0]} {r[pair[0] + '_ms']} ms, {pair[1]} {r[pair[1] + '_ms']} ms, "
          f"time x{r['time_ratio']}, FLOPs x{r['flop_ratio']} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
  load = f"load average (1 min) {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
  note = (f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, {load}; median of "
          f"{_STEPS.value} steps each, in alternating blocks of {_BLOCK.value}.")
  columns = _columns(pair)
  cells = lambda r: dict(zip(columns, (
      r["model"], f"{r['params']:,}", r["batch"], f"{r[pair[0] + '_ms']:.1f}",
      f"{r[pair[1] + '_ms']:.1f}", f"{r['time_ratio']:.2f}", f"{r['flop_ratio']:.2f}")))
  table = markdown_table([cells(r) for r in rows], columns)
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
