"""Steps/s of a training run with batches built in the loop against built ahead on a thread.

  python scripts/bench_prefetch.py
  python scripts/bench_prefetch.py --delay_ms 0,200 --steps 60 --prefetch 0,2

Trains a small DiT (4 x 128, patch 4) on memory-mapped latents (a `.npy` of --examples
random 32x32x4 arrays, written once under --workdir: a large array source read row by row),
once per (--delay_ms, --prefetch). A delay adds that many milliseconds of host time to
every batch (a sleep inside the source's `batch`, as a slow network file system or
decoder would), so that the host's share of the step can be set. Reports steps/s, the
fraction of wall time lost to data against the fastest run without a delay (1 - steps/s
over its steps/s), and metrics.jsonl's `data_wait_frac` (the time the loop waited for a
batch while the device was idle, measured in the loop), each over the logged intervals
after the first. Writes --out (Markdown) and the same path with .json.
"""
import json
import os
import shutil
import time

import jax
import numpy as np
from absl import flags

from configs import default
from meanflow_jax import cli, training
from meanflow_jax.evaluate import markdown_table
from meanflow_jax.training import loop

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_prefetch", "Runs and the latents file.")
_STEPS = flags.DEFINE_integer("steps", 60, "Training steps per run.")
_EXAMPLES = flags.DEFINE_integer("examples", 20_000, "Latents in the file (32x32x4 float32).")
_DELAYS = flags.DEFINE_list("delay_ms", ["0", "150"], "Host milliseconds added per batch.")
_PREFETCH = flags.DEFINE_list("prefetch", ["0", "2"], "train.prefetch values compared.")
_OUT = flags.DEFINE_string("out", "runs/bench_prefetch.md", "Markdown table; JSON beside it.")


class _Delayed:
  """A source whose `batch` costs `delay` more seconds of host time."""

  def __init__(self, source, delay):
    self.source, self.delay = source, delay
    self.shape, self.num_classes = source.shape, source.num_classes

  def batch(self, step, shard=(0, 1)):
    time.sleep(self.delay)
    return self.source.batch(step, shard)


def _latents(path, n):
  if not os.path.exists(path):
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 32, 32, 4))
    for i in range(0, n, 1000):
      out[i:i + 1000] = rng.standard_normal((min(1000, n - i), 32, 32, 4), np.float32) * 5
    out.flush()
  return path


def _config(path, prefetch):
  c = default.get_config()
  c.data.source, c.data.path = "latents", path
  c.model.name = "dit"
  c.model.dit.patch_size, c.model.dit.hidden_size = 4, 128
  c.model.dit.depth, c.model.dit.num_heads = 4, 4
  c.train.steps, c.train.batch_size = _STEPS.value, 64
  c.train.log_every = max(1, _STEPS.value // 6)
  c.train.checkpoint_every = _STEPS.value
  c.train.prefetch = prefetch
  return c


def run(path, delay_ms, prefetch):
  """(steps/s, data wait fraction) over the logged intervals after the first."""
  workdir = os.path.join(_WORKDIR.value, f"d{delay_ms}_p{prefetch}")
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    os.remove(os.path.join(workdir, "metrics.jsonl"))
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)  # a fresh run
  make = loop.make_source
  loop.make_source = lambda config: _Delayed(make(config), delay_ms / 1e3)
  try:
    training.train(_config(path, prefetch), workdir)
  finally:
    loop.make_source = make
  rows = [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
          if "steps_per_s" in r][1:]
  return (float(np.mean([r["steps_per_s"] for r in rows])),
          float(np.mean([r["data_wait_frac"] for r in rows])))


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  path = _latents(os.path.join(_WORKDIR.value, "latents.npy"), _EXAMPLES.value)
  runs = {(d, p): run(path, d, p) for d in map(int, _DELAYS.value)
          for p in map(int, _PREFETCH.value)}
  free = max(v[0] for (d, _), v in runs.items() if d == min(d for d, _ in runs))
  rows = []
  for (delay, prefetch), (steps_per_s, wait) in runs.items():
    inline = runs[(delay, min(p for d, p in runs if d == delay))][0]
    rows.append({"host delay ms/batch": delay, "train.prefetch": prefetch,
                 "steps/s": f"{steps_per_s:.2f}", "speed-up": f"{steps_per_s / inline:.2f}",
                 "time lost to data": f"{100 * max(0.0, 1 - steps_per_s / free):.0f} %",
                 "data_wait_frac": f"{100 * wait:.0f} %"})
    print(rows[-1], flush=True)
  columns = list(rows[0])
  note = (f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores; DiT 4x128/4 on 32x32x4 "
          f"latents (memory-mapped, {_EXAMPLES.value} rows), batch 64, {_STEPS.value} steps; "
          "means over the logged intervals after the first.")
  table = markdown_table(rows, columns)
  print(f"\n{table}\n\n{note}")
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as fh:
    fh.write(f"{table}\n\n{note}\n")
  with open(os.path.splitext(_OUT.value)[0] + ".json", "w") as fh:
    json.dump({"rows": rows, "note": note}, fh, indent=2)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
