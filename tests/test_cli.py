"""The scripts as a user runs them: bad input gives one clear line, not a traceback."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from meanflow_jax import evaluate, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.mlp.width=16", "--config.model.mlp.depth=1",
        "--config.model.mlp.time_dim=8", "--config.train.batch_size=16",
        "--config.train.log_every=5", "--config.train.checkpoint_every=10"]


def run(script, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


def assert_clean_error(proc, *needles):
  assert proc.returncode != 0
  err = proc.stderr.strip().splitlines()
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert err and err[-1].startswith("error:"), proc.stderr[-2000:]
  for n in needles:
    assert n in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  work = tmp_path_factory.mktemp("run")
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(work),
             "--config.train.steps=10", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return work


def test_unknown_config_key(tmp_path):
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path),
             "--config.train.stepz=5")
  assert_clean_error(proc, "unknown config key", "stepz", "steps", "configs/default.py")
  assert not (tmp_path / "checkpoints").exists()


def test_data_file_with_wrong_rank(tmp_path):
  np.save(tmp_path / "x.npy", np.zeros((10, 2, 2), np.float32))
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path / "w"),
             "--config.data.source=points", f"--config.data.path={tmp_path / 'x.npy'}", "--config.train.steps=2", *TINY)
  assert_clean_error(proc, "rank 2 [N, D]", "(10, 2, 2)")


def test_data_file_with_nans(tmp_path):
  x = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
  x[4, 0] = np.nan
  np.save(tmp_path / "x.npy", x)
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path / "w"),
             "--config.data.source=points", f"--config.data.path={tmp_path / 'x.npy'}", "--config.train.steps=2", *TINY)
  assert_clean_error(proc, "non-finite", "first rows [4]")


def test_train_outputs_and_resume(trained):
  rows = open(trained / "metrics.jsonl").read().splitlines()
  assert len(rows) == 2
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(trained),
             "--config.train.steps=10", *TINY)
  assert proc.returncode == 0 and len(open(trained / "metrics.jsonl").read().splitlines()) == 2


def test_sample_writes_npy_and_png(trained, tmp_path):
  out = tmp_path / "s.npy"
  proc = run("sample.py", "--workdir", str(trained), "--nfe", "2", "--num", "64", "--seed", "3",
             "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  x = np.load(out)
  assert x.shape == (64, 2) and np.isfinite(x).all()
  assert (tmp_path / "s.png").stat().st_size > 1000
  # The same noise passed explicitly gives the same samples.
  eps = np.asarray(paths.sample_noise(jax.random.key(3), 64, (2,)))
  np.save(tmp_path / "eps.npy", eps)
  proc = run("sample.py", "--workdir", str(trained), "--nfe", "2", "--noise",
             str(tmp_path / "eps.npy"), "--out", str(tmp_path / "s2.npy"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "s2.npy"), x, rtol=1e-5, atol=1e-6)


def test_sample_with_noise_of_wrong_shape(trained, tmp_path):
  np.save(tmp_path / "eps.npy", np.zeros((8, 3), np.float32))
  proc = run("sample.py", "--workdir", str(trained), "--nfe", "1", "--noise",
             str(tmp_path / "eps.npy"), "--out", str(tmp_path / "s.npy"))
  assert_clean_error(proc, "[M, 2]", "(8, 3)")
  assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("content", ["missing", "nan"])
def test_sample_with_missing_or_nan_noise(trained, tmp_path, content):
  noise = tmp_path / "eps.npy"
  if content == "nan":
    np.save(noise, np.full((4, 2), np.nan, np.float32))
  proc = run("sample.py", "--workdir", str(trained), "--noise", str(noise),
             "--out", str(tmp_path / "s.npy"))
  assert_clean_error(proc, "no such file" if content == "missing" else "non-finite")


def test_sample_without_a_run(tmp_path):
  proc = run("sample.py", "--workdir", str(tmp_path), "--out", str(tmp_path / "s.npy"))
  assert_clean_error(proc, "no checkpoints")


def test_evaluate_writes_json_and_png(trained):
  proc = run("evaluate.py", "--workdir", str(trained), "--nfe", "1", "2", "--num", "500")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.load(open(trained / "eval.json"))
  assert [r["nfe"] for r in rows] == [1, 2]
  # The script reports what the library computes for the same run, noise and seed.
  direct = evaluate.evaluate_toy(str(trained), [1, 2], num=500).rows
  for a, b in zip(rows, direct):
    assert a.keys() == b.keys()
    for k in a:
      assert a[k] == (pytest.approx(b[k], rel=1e-5) if isinstance(a[k], float) else b[k])
  assert (trained / "eval.png").stat().st_size > 1000
