"""Trains a MeanFlow or flow-matching model from a config.

  python scripts/train.py --config configs/toy.py --workdir runs/toy [--config.KEY=VALUE ...]

Rerunning with the same --workdir resumes from the latest checkpoint.
"""
from absl import app, flags
from ml_collections import config_flags

from meanflow_jax import cli, training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  training.train(_CONFIG.value, _WORKDIR.value)
  print(f"done: checkpoints, metrics.jsonl and config.json in {_WORKDIR.value}")


if __name__ == "__main__":
  cli.run(main)
