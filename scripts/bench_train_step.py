"""Train-step cost of objectives against the last one named: same model, batch and config.

  python scripts/bench_train_step.py
  python scripts/bench_train_step.py --models paper,paper_guided --steps 40
  python scripts/bench_train_step.py --models dit_imf --objectives imf,imf:full,meanflow

--objectives names the steps compared, each timed against the last: an objective's name,
or NAME:full for MeanFlow or iMF with the JVP on every row (`time.subset_jvp` False, the
step before the subset JVP; a coin per sample). Default: meanflow,meanflow:full,
flow_matching. Each objective runs on the model it builds (iMF adds its v head, and
guidance conditions where the model is class-conditional).

For each model every step is compiled ahead of time (as `training.loop` does), warmed
up, then timed one step at a time in blocks whose order alternates (A B C, C B A, ...),
so load from other processes on the machine falls on all alike; each time is the median
over steps. The data is random: loading is not what is measured. Beside the time ratios,
XLA's FLOP ratios of the compiled steps. Writes --out (Markdown) and the same path with
.json.

In forward passes of the network: flow matching's step is 3 (forward and backward),
guidance adds 2 (kappa != 0) or 1 (kappa = 0) to every objective; MeanFlow's JVP adds its
tangent, 1 forward on the rows it runs on: all of them with NAME:full, the fraction
time.ratio_r_neq_t with the subset JVP. At the paper's ImageNet setting (ratio 0.25, no
guidance) the floor is 3.25 / 3 = 1.083 (1.33 before); with omega 1, kappa 0.5 it is
5.25 / 5 = 1.05 (6 / 5 before).
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

_MODELS = flags.DEFINE_list("models", ["mlp", "dit", "dit_noguide", "unet", "paper",
                                       "paper_guided"],
                            "Subset of: mlp, dit, dit_noguide, dit_imf, unet, paper, "
                            "paper_guided.")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed steps per objective and model.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps per objective before timing.")
_BLOCK = flags.DEFINE_integer("block", 10, "Steps per block of one objective.")
_OUT = flags.DEFINE_string("out", "runs/bench_train_step.md", "Markdown table; JSON beside it.")
_OBJECTIVES = flags.DEFINE_list("objectives", ["meanflow", "meanflow:full", "flow_matching"],
                                "Steps compared, each against the last: objective names, "
                                "NAME:full for the JVP on every row.")

SHORT = {"meanflow": "MF", "flow_matching": "FM", "imf": "iMF"}
FULL = ":full"  # the JVP on every row (time.subset_jvp = False)


def _short(o):
  name = o[:-len(FULL)] if o.endswith(FULL) else o
  return SHORT.get(name, name) + (" full JVP" if o.endswith(FULL) else "")


def _columns(names):
  base = _short(names[-1])
  return (["model", "params", "batch"] + [f"{_short(o)} ms/step" for o in names]
          + [f"{_short(o)} / {base} {what}" for o in names[:-1] for what in ("time", "FLOPs")])


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


def _paper(guidance):
  """MeanFlow's ImageNet setting (r != t on 25 % of rows, logit-normal(-0.4, 1), p = 1;
  no guidance, or omega 1, kappa 0.5) on a small DiT: 4 x 256, patch 2, 16x16x4 latents
  (64 tokens), 10 classes, batch 64."""
  c = default.get_config()
  c.model.name, c.model.num_classes = "dit", 10
  c.model.dit.patch_size, c.model.dit.hidden_size = 2, 256
  c.model.dit.depth, c.model.dit.num_heads = 4, 4
  c.time.ratio_r_neq_t = 0.25
  c.guidance.omega, c.guidance.kappa = (1.0, 0.5) if guidance else (1.0, 0.0)
  c.train.batch_size = 64
  return c, (16, 16, 4)


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
    "paper": ("DiT 4x256/2, 16x16x4, ratio 0.25, guidance off", functools.partial(_paper, False)),
    "paper_guided": ("DiT 4x256/2, 16x16x4, ratio 0.25, omega 1 kappa 0.5",
                     functools.partial(_paper, True)),
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
  names = list(steps)
  times = {o: [] for o in names}
  for i in tqdm(range(-(-_STEPS.value // _BLOCK.value)), desc=name, unit="round", leave=False):
    for o in (names if i % 2 == 0 else names[::-1]):
      states[o], dt, metrics = _run(steps[o], states[o], batch, key, _BLOCK.value)
      times[o] += dt
      if not int(metrics["finite"]):
        raise ConfigError(f"{name}: non-finite {o} loss on random data; timings would be off.")
  return times


def _config(base, o):
  """`base` for the step named `o` (an objective, or NAME:full)."""
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.objective = o[:-len(FULL)] if o.endswith(FULL) else o
    config.time.subset_jvp = not o.endswith(FULL)
  return config


def bench(name, names):
  """One row of the table: every step of case `name`, compiled, warmed up and timed."""
  label, make = CASES[name]
  base, data_shape = make()
  b = base.train.batch_size
  kx, ky, kinit, key = jax.random.split(jax.random.key(0), 4)
  batch = (jax.random.normal(kx, (b, *data_shape)),
           jax.random.randint(ky, (b,), 0, max(base.model.num_classes, 1)))
  # One state per objective (each step donates, and so deletes, the state it is given),
  # on the model that objective builds.
  states, steps, flops, params = {}, {}, {}, {}
  for o in names:
    config = _config(base, o)
    model = ts.build_model(config)
    tx = ts.make_optimizer(config.optimizer, config.train.steps)
    init = jax.jit(functools.partial(ts.init_state, model=model, tx=tx, example_x=batch[0][:1],
                                     num_ema=len(config.train.ema_decays)))
    states[o] = init(kinit)
    params[o] = models.param_count(model, data_shape)
    steps[o], flops[o] = _compile(config, model, tx, states[o], batch, key)
    states[o], _, _ = _run(steps[o], states[o], batch, key, _WARMUP.value)
  times = _time_interleaved(name, steps, states, batch, key)
  ms = {o: 1e3 * float(np.median(times[o])) for o in names}
  last = names[-1]
  row = {"model": label, "case": name, "objectives": list(names), "params": params[names[0]],
         "guidance": guidance_active(base.guidance, base.model.num_classes), "batch": b,
         "ratio_r_neq_t": base.time.ratio_r_neq_t,
         "time_ratio": {o: round(ms[o] / ms[last], 3) for o in names[:-1]},
         "flop_ratio": {o: round(flops[o] / flops[last], 3) for o in names[:-1]}}
  for o in names:
    row.update({f"{o}_ms": round(ms[o], 2), f"{o}_gflop": flops[o] / 1e9, f"{o}_params": params[o],
                f"{o}_iqr_ms": [1e3 * float(q) for q in np.percentile(times[o], [25, 75])]})
  return row


def main(argv):
  del argv
  unknown = set(_MODELS.value) - set(CASES)
  if unknown:
    raise ConfigError(f"unknown --models {sorted(unknown)}; choose from {list(CASES)}.")
  names = tuple(_OBJECTIVES.value)
  if len(names) < 2 or len(set(names)) != len(names):
    raise ConfigError(f"--objectives takes two or more different steps; got {list(names)}.")
  for o in names:
    obj = objectives.get(o[:-len(FULL)] if o.endswith(FULL) else o)  # unknown: one line
    if o.endswith(FULL) and "time.subset_jvp" not in obj.reads:
      raise ConfigError(f"{o}: {obj.name} has no JVP to run on every row.")
  load_before = os.getloadavg()
  rows = []
  for name in _MODELS.value:
    start = time.perf_counter()
    rows.append(bench(name, names))
    r = rows[-1]
    print(f"{r['model']}: " + ", ".join(f"{o} {r[o + '_ms']} ms" for o in names)
          + "; time " + ", ".join(f"x{v}" for v in r["time_ratio"].values())
          + "; FLOPs " + ", ".join(f"x{v}" for v in r["flop_ratio"].values())
          + f" ({time.perf_counter() - start:.0f} s)", flush=True)
  load = f"load average (1 min) {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
  note = (f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, {load}; median of "
          f"{_STEPS.value} steps each, in alternating blocks of {_BLOCK.value}.")
  columns = _columns(names)

  def cells(r):
    values = [r["model"], f"{r['params']:,}", r["batch"]]
    values += [f"{r[o + '_ms']:.1f}" for o in names]
    values += [f"{r[k][o]:.2f}" for o in names[:-1] for k in ("time_ratio", "flop_ratio")]
    return dict(zip(columns, values))

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
