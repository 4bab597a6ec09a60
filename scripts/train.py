"""Trains a MeanFlow or flow-matching model from a config.

  python scripts/train.py --config configs/toy.py --workdir runs/toy [--config.KEY=VALUE ...]

Rerunning with the same --workdir resumes from the latest checkpoint; a resume that
changes what the run is (seed, data, times, loss, guidance, imf, optimiser, prior) is refused
unless --allow_resume_change lists the keys, e.g. --allow_resume_change=seed,loss.p.

Several processes (one per host or GPU) run the same command with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or the
environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID);
--distributed_auto lets JAX find them on SLURM, Open MPI, TPU pods or Kubernetes.
"""
import os

from absl import app, flags
from ml_collections import config_flags

from configs import default
from meanflow_jax import cli, training
from meanflow_jax.errors import ConfigError
from meanflow_jax.training import validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_DISTRIBUTED = cli.DistributedFlags()
_ALLOW = flags.DEFINE_list("allow_resume_change", [],
                           "Config keys or sections a resume may change (e.g. seed,loss.p); "
                           "others that change what the run is are refused.")
flags.mark_flags_as_required(["config", "workdir"])


def _check_workdir(workdir):
  """ConfigError unless `workdir` is, or can be made, a directory."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise ConfigError(f"--workdir {workdir}: {path} is a file, not a directory; name a new or "
                      "existing directory.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Keys set to values the run does not read: against configs/default.py, and forgiving
  # the file's settings that an override made moot (validate.check_reads).
  overrides = set(config_flags.get_override_values(flags.FLAGS["config"]))
  validate.check_config(_CONFIG.value, defaults=default.get_config(), overrides=overrides)
  _check_workdir(_WORKDIR.value)
  # Before anything touches a device: afterwards JAX would see this process's devices only.
  index, count = _DISTRIBUTED.join()
  training.train(_CONFIG.value, _WORKDIR.value, allow_changes=tuple(_ALLOW.value))
  if index == 0:
    print(f"done: checkpoints, metrics.jsonl, tensorboard/ and config.json in {_WORKDIR.value}"
          + (f" ({count} processes)" if count > 1 else ""))


if __name__ == "__main__":
  cli.run(main)
