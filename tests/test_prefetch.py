"""Batches built ahead on a thread: the same stream as building them in the loop, errors
raised at their step, and a run (and its resume) unchanged by the prefetch depth."""
import glob
import json
import os
import threading
import time

import jax
import numpy as np
import pytest

from configs import toy
from meanflow_jax import training
from meanflow_jax.errors import ConfigError
from meanflow_jax.training import prefetch


def test_same_steps_and_batches_at_any_depth():
  load = lambda step: np.full((2,), step)
  for depth in (0, 1, 3):
    got = [(s, int(b[0])) for s, b, _ in prefetch.Prefetch(load, 5, 12, depth)]
    assert got == [(s, s) for s in range(5, 12)]


def test_loads_ahead_on_another_thread():
  threads, loaded = set(), []

  def load(step):
    threads.add(threading.current_thread().name)
    loaded.append(step)
    return step

  batches = prefetch.Prefetch(load, 0, 10, depth=3)
  first = next(batches)
  deadline = time.time() + 60
  while len(loaded) < 4 and time.time() < deadline:  # the queue holds 3, the thread a 4th
    time.sleep(0.01)
  assert first[0] == 0 and loaded[:4] == [0, 1, 2, 3]
  assert threads == {"meanflow-prefetch"}
  batches.close()
  assert len(loaded) <= 5  # stopped: it does not run to the end


def test_error_is_raised_at_its_step():
  def load(step):
    if step == 3:
      raise ValueError("bad shard 3")
    return step

  batches = prefetch.Prefetch(load, 0, 10, depth=2)
  assert [next(batches)[0] for _ in range(3)] == [0, 1, 2]
  with pytest.raises(ValueError, match="bad shard 3"):
    next(batches)


@pytest.mark.parametrize("depth", [0, 2])
def test_stall_counts_only_while_the_device_is_idle(depth):
  """A slow load stalls an idle device for its whole length, a busy one not at all."""
  slow = lambda step: time.sleep(0.05) or step
  idle = [w for _, _, w in prefetch.Prefetch(slow, 0, 4, depth=depth)]
  assert min(idle) >= 0.04
  busy = [w for _, _, w in prefetch.Prefetch(slow, 0, 4, depth=depth, busy=lambda: True)]
  assert max(busy) == 0.0


def _config(**overrides):
  c = toy.get_config()
  c.model.mlp.width, c.model.mlp.depth = 32, 2
  c.train.steps, c.train.batch_size, c.train.log_every = 12, 64, 4
  c.train.checkpoint_every = 6
  for k, v in overrides.items():
    section, key = k.split(".")
    setattr(c[section], key, v)
  return c


@pytest.mark.slow  # four runs end to end; the SIGTERM test below resumes with batches ahead
def test_run_and_resume_are_the_same_with_and_without_prefetch(tmp_path):
  ahead = training.train(_config(**{"train.prefetch": 3}), str(tmp_path / "ahead"))
  inline = training.train(_config(**{"train.prefetch": 0}), str(tmp_path / "inline"))
  # Resumed at step 6 with another depth.
  training.train(_config(**{"train.steps": 6, "train.prefetch": 0}), str(tmp_path / "resumed"))
  resumed = training.train(_config(**{"train.prefetch": 2}), str(tmp_path / "resumed"))
  for a, b, c in zip(*(jax.tree.leaves(s.params) for s in (ahead, inline, resumed))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  rows = [json.loads(line) for line in open(tmp_path / "ahead" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [4, 8, 12]
  assert all(0.0 <= r["data_wait_frac"] <= 1.0 for r in rows)


@pytest.mark.slow  # the profiler's start costs seconds; bad profile_steps are refused fast below
def test_profile_steps_write_a_trace(tmp_path):
  training.train(_config(**{"train.steps": 6, "train.profile_steps": (2, 4)}), str(tmp_path))
  traces = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


@pytest.mark.parametrize("steps", [(3,), (4, 2), (-1, 2), (12, 14)])
def test_bad_profile_steps_are_refused(tmp_path, steps):
  with pytest.raises(ConfigError, match="train.profile_steps"):
    training.train(_config(**{"train.profile_steps": steps}), str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")


def test_sigterm_with_batches_ahead_saves_the_step_reached_and_resumes_exactly(tmp_path,
                                                                               monkeypatch):
  """A SIGTERM while the thread builds a batch ahead: the loop saves the step it reached
  (not the one being built) and the rerun ends where a straight run ends."""
  from meanflow_jax.data.points import PointSource
  from meanflow_jax.errors import Interrupted
  from tests.test_training import signal_at_batch
  straight = training.train(_config(), str(tmp_path / "a"))
  real_batch = signal_at_batch(monkeypatch, 8)
  with pytest.raises(Interrupted):
    training.train(_config(**{"train.prefetch": 3}), str(tmp_path / "b"))
  saved = sorted(int(s) for s in os.listdir(tmp_path / "b" / "checkpoints") if s.isdigit())
  assert 1 <= saved[-1] <= 9 and saved[-1] != 12
  monkeypatch.setattr(PointSource, "batch", real_batch)
  resumed = training.train(_config(**{"train.prefetch": 3}), str(tmp_path / "b"))
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
