"""Real multi-process training: 2 processes on 127.0.0.1 with 2 CPU devices each
against one process with 4 devices, and a SIGTERM that reaches one process only."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from meanflow_jax import training
from meanflow_jax.training import summary
from tests.helpers import xla

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.dit.hidden_size=32", "--config.model.dit.depth=1",
        "--config.model.dit.num_heads=2", "--config.model.dit.patch_size=4",
        "--config.train.batch_size=16", "--config.train.log_every=2",
        "--config.train.checkpoint_every=3", "--config.train.sample_every=3",
        "--config.mesh.data=2", "--config.mesh.fsdp=2"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir, steps, *extra):
  return [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config",
          "configs/digits.py", "--workdir", str(workdir), *TINY, f"--config.train.steps={steps}",
          *extra]


def _env(devices):
  # One run against another under the same (fast-compiling) flags.
  return xla.env(devices)


def _start_two(workdir, steps, *extra):
  port = _free_port()
  return [subprocess.Popen(_command(workdir, steps, *extra,
                                    f"--coordinator_address=127.0.0.1:{port}",
                                    "--num_processes=2", f"--process_id={i}"),
                           env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(procs, timeout=3600):
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append((p.returncode, out, err))
  return outs


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def _evaluations(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if "eval/clf_fd_nfe1" in r]


def _assert_same_params(a, b):
  pa = training.load_run(str(a), params="raw").params
  pb = training.load_run(str(b), params="raw").params
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_two_processes_equal_one_process_with_four_devices(tmp_path):
  # With evaluations as it trains: every process scores its share of the samples.
  evals = ("--config.train.eval_every=3", "--config.train.eval_num=48")
  one = subprocess.run(_command(tmp_path / "one", 6, *evals), env=_env(4), cwd=ROOT,
                       capture_output=True, text=True, timeout=3600)
  assert one.returncode == 0, one.stderr[-3000:]
  results = _finish(_start_two(tmp_path / "two", 6, *evals))
  for rc, _, err in results:
    assert rc == 0, err[-3000:]
  # Process 0 alone reports, logs, and draws.
  assert "(2 processes)" in results[0][1] and "done:" not in results[1][1]
  assert [s for s, _ in _losses(tmp_path / "two")] == [2, 4, 6]
  np.testing.assert_allclose([l for _, l in _losses(tmp_path / "two")],
                             [l for _, l in _losses(tmp_path / "one")], rtol=1e-5)
  assert len(os.listdir(tmp_path / "two" / "tensorboard")) == 1
  assert sorted(os.listdir(tmp_path / "two" / "samples")) == ["step_0000003.png",
                                                              "step_0000006.png"]
  assert [s for s, _ in summary.read_scalars(str(tmp_path / "two" / "tensorboard"))
          ["train/loss"]] == [2, 4, 6]
  _assert_same_params(tmp_path / "one", tmp_path / "two")
  one_evals, two_evals = _evaluations(tmp_path / "one"), _evaluations(tmp_path / "two")
  assert [r["step"] for r in two_evals] == [r["step"] for r in one_evals] == [3, 6]
  for a, b in zip(one_evals, two_evals):
    for k in ("eval/clf_fd_nfe1", "eval/agreement_nfe1", "eval/class_tv_nfe1"):
      assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-6), (k, a, b)


@pytest.mark.slow
def test_minibatch_ot_over_two_processes_equals_one_process(tmp_path):
  """The exact assignment runs once on the global batch (a host callback), so two
  processes pair noise and data as one process does."""
  ot = "--config.prior.coupling=minibatch_ot"
  one = subprocess.run(_command(tmp_path / "one", 4, ot), env=_env(4), cwd=ROOT,
                       capture_output=True, text=True, timeout=3600)
  assert one.returncode == 0, one.stderr[-3000:]
  port = _free_port()
  procs = [subprocess.Popen(_command(tmp_path / "two", 4, ot,
                                     f"--coordinator_address=127.0.0.1:{port}",
                                     "--num_processes=2", f"--process_id={i}"),
                            env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for rc, _, err in _finish(procs):
    assert rc == 0, err[-3000:]
  np.testing.assert_allclose([l for _, l in _losses(tmp_path / "two")],
                             [l for _, l in _losses(tmp_path / "one")], rtol=1e-5)
  _assert_same_params(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_then_resumes(tmp_path):
  """A preemption signal that reaches process 1 alone: both processes save the same
  step and exit; two fresh processes resume and end where a straight run ends."""
  straight = subprocess.run(_command(tmp_path / "straight", 40), env=_env(4), cwd=ROOT,
                            capture_output=True, text=True, timeout=3600)
  assert straight.returncode == 0, straight.stderr[-3000:]
  procs = _start_two(tmp_path / "two", 40)
  first = tmp_path / "two" / "checkpoints" / "3"
  # No time limit: a busy machine only makes this wait longer.
  while not first.exists() and all(p.poll() is None for p in procs):
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  results = _finish(procs)
  assert [rc for rc, _, _ in results] == [128 + signal.SIGTERM] * 2, results[0][2][-2000:]
  steps = sorted(int(s) for s in os.listdir(tmp_path / "two" / "checkpoints") if s.isdigit())
  # The processes agree on a stop every train.stop_check_every (10) steps.
  assert 3 <= steps[-1] < 40 and steps[-1] % 10 == 0
  for rc, _, err in _finish(_start_two(tmp_path / "two", 40)):
    assert rc == 0, err[-3000:]
  _assert_same_params(tmp_path / "straight", tmp_path / "two")
  np.testing.assert_allclose([l for _, l in _losses(tmp_path / "two")],
                             [l for _, l in _losses(tmp_path / "straight")], rtol=1e-5)
