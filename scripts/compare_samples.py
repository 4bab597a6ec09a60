"""Sample grids of trained image runs side by side, from the same noise and labels.

  python scripts/compare_samples.py --out docs/mnist_one_step.png \
      --run runs/mnist_mf_w1:1 --run runs/mnist_imf:1:2 --run runs/mnist_imf:2:2

Each --run is WORKDIR:NFE[:OMEGA] (OMEGA: the guidance scale of an iMF run, chosen now;
default its sample.omega). One panel per run, one row per class for class-conditional
runs (sample i asks for class i mod K, as in evaluate.py), titled with the workdir's name,
the objective, the NFE and omega. Every run samples the same `--seed`'s noise.
"""
import os

import jax
import numpy as np
from absl import flags

from meanflow_jax import cli, evaluate, plotting
from meanflow_jax.errors import ConfigError
from meanflow_jax.training import inference

_RUN = flags.DEFINE_multi_string("run", None, "WORKDIR:NFE[:OMEGA]; repeat for each panel.")
_OUT = flags.DEFINE_string("out", None, "Output .png file.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise (the same for every run).")
_PER_ROW = flags.DEFINE_integer("panels_per_row", 4, "Panels side by side.")
flags.mark_flags_as_required(["run", "out"])


def parse(spec):
  """(workdir, nfe, omega or None) of one --run; ConfigError for anything else."""
  parts = spec.rsplit(":", 2) if spec.count(":") >= 2 else spec.rsplit(":", 1)
  try:
    if len(parts) < 2:
      raise ValueError
    nfe = int(parts[1])
    omega = float(parts[2]) if len(parts) == 3 else None
  except ValueError:
    raise ConfigError(f"--run takes WORKDIR:NFE[:OMEGA] (e.g. runs/mnist_imf:1:2); got "
                      f"{spec!r}.") from None
  return parts[0], nfe, omega


def main(argv):
  del argv
  if not _OUT.value.endswith(".png"):
    raise ConfigError(f"--out must name a .png file; got {_OUT.value!r}.")
  specs = [parse(s) for s in _RUN.value]  # every spec checked before any run is loaded
  panels, first, per = [], None, None
  for workdir, nfe, omega in specs:
    run = inference.load_run(workdir)
    config, k = run.config, run.num_classes
    if len(run.data_shape) != 3:
      raise ConfigError(f"{workdir} trained on vectors: compare_samples draws image grids.")
    first = first or (run.data_shape, k, workdir)
    if (run.data_shape, k) != first[:2]:
      raise ConfigError(f"{workdir} has images {run.data_shape} and {k} classes; "
                        f"{first[2]} has {first[0]} and {first[1]}: panels must match.")
    per = config.sample.grid_per_class
    num = k * per if k else per * per
    y = np.arange(num) % k if k else None
    eps = run.prior.sample(jax.random.key(_SEED.value), num, run.data_shape, y)
    sampler = inference.make_sampler(config, run.model, run.params)
    x = np.asarray(sampler(eps, nfe, y, omega=omega))
    guidance = inference.check_guidance(config, omega, None)
    title = (f"{os.path.basename(os.path.normpath(workdir))}: {config.objective}, {nfe} NFE"
             + ("" if guidance is None else f", omega {guidance[0]:g}"))
    panels.append((title, evaluate.class_rows(x, y, k, per) if k else x))
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  k = first[1]
  plotting.image_grids(panels, _OUT.value, ncols=per, row_labels=list(range(k)) if k else None,
                       panels_per_row=min(_PER_ROW.value, len(panels)))
  print(f"wrote {_OUT.value} ({len(panels)} panels)")


if __name__ == "__main__":
  cli.run(main)
