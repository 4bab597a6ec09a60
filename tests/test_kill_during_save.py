"""`kill -9` while Orbax is writing a checkpoint: the previous one stays restorable,
and resuming from it ends exactly where a run that was never killed ends."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from meanflow_jax import training
from meanflow_jax.training import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An MLP of ~4M parameters (state ~64 MB): each save takes long enough to be caught.
ARGS = ["--config", "configs/toy.py", "--config.model.mlp.width=1024",
        "--config.model.mlp.depth=2", "--config.train.batch_size=64",
        "--config.train.checkpoint_every=1", "--config.train.log_every=1",
        "--config.train.max_to_keep=2", "--config.train.sample_every=0"]
STEPS = 6


def _train(workdir, **kwargs):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train.py"), *ARGS,
                           f"--config.train.steps={STEPS}", "--workdir", str(workdir)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def _committed(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_kill_9_during_async_save_leaves_previous_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  ckpts = workdir / "checkpoints"
  proc = _train(workdir)
  # Wait until one checkpoint is committed and the next is being written, then kill.
  caught = None
  while proc.poll() is None:  # no time limit: a busy machine only makes this wait longer
    if ckpts.exists():
      names = os.listdir(ckpts)
      writing = [n for n in names if ".orbax-checkpoint-tmp" in n]
      if writing and any(n.isdigit() for n in names):
        os.kill(proc.pid, signal.SIGKILL)
        caught = writing
        break
    time.sleep(0.002)
  proc.communicate(timeout=3600)
  assert caught, "no save was caught in progress (the run ended or timed out first)"
  assert proc.returncode == -signal.SIGKILL

  done = _committed(ckpts)
  assert done and done[-1] < STEPS
  half_written = int(caught[0].split(".")[0])
  assert half_written not in done  # the interrupted save never became a checkpoint
  c = ckpt_lib.Checkpointer(str(ckpts))
  assert c.latest_step() == done[-1]
  c.close()
  run = training.load_run(str(workdir), params="raw")  # restorable as it is
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(run.params))

  resumed = _train(workdir)
  _, err = resumed.communicate(timeout=3600)
  assert resumed.returncode == 0, err[-3000:]
  straight = _train(tmp_path / "straight")
  _, err = straight.communicate(timeout=3600)
  assert straight.returncode == 0, err[-3000:]
  a = training.load_run(str(workdir), params="raw").params
  b = training.load_run(str(tmp_path / "straight"), params="raw").params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
