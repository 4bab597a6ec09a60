"""Reflow: pairs from a trained run, fine-tuning from it, and the compute accounting."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from meanflow_jax import reflow
from meanflow_jax.errors import CheckpointMismatchError
from meanflow_jax.training import inference, loop
from tests.test_training import override, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fm_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("fm"))
  # Unstandardised, as the first run of a reflow on vectors: the pairs run trains in data
  # space from its parameters (scripts/make_pairs.py).
  loop.train(tiny_config(**{"objective": "flow_matching", "loss.p": 0.0,
                            "data.standardize": False}), workdir)
  return workdir


def test_pairs_are_the_runs_own_samples_of_its_noise(fm_run):
  pairs = reflow.make_pairs(fm_run, 50, 6, seed=3, batch=20, progress=False)
  run = inference.load_run(fm_run)
  eps = run.prior.sample(jax.random.key(3), 50, (2,))
  np.testing.assert_array_equal(pairs["eps"], eps)
  x = inference.make_sampler(run.config, run.model, run.params, method="heun")(eps, 6)
  np.testing.assert_allclose(pairs["x"], x, atol=1e-6)
  assert "y" not in pairs and pairs["x"].dtype == np.float32


def test_init_from_starts_at_the_source_parameters(fm_run, tmp_path):
  np.savez(tmp_path / "p.npz", **reflow.make_pairs(fm_run, 64, 4, progress=False))
  c = tiny_config(**{"objective": "flow_matching", "loss.p": 0.0, "data.source": "pairs",
                     "data.path": str(tmp_path / "p.npz"), "train.init_from": fm_run,
                     "train.steps": 2, "optimizer.lr": 1e-12})
  state = loop.train(c, str(tmp_path / "reflow"))
  source = inference.load_run(fm_run).params  # its EMA copy (sample.params)
  for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-8)
  ema = jax.tree.leaves(state.ema_params[0])
  for a, b in zip(jax.tree.leaves(source), ema):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-8)
  wider = override(c, {"model.mlp.width": 48})
  with pytest.raises(CheckpointMismatchError, match="model.mlp.width"):
    loop.train(wider, str(tmp_path / "wider"))


def test_flop_counts():
  c = tiny_config()
  fm = override(tiny_config(), {"objective": "flow_matching"})
  fm_flops = reflow.train_step_flops(fm, (2,))
  # The JVP's tangent adds one forward to FM's forward + backward on the r != t rows (25 %)
  # alone, or on every row without the subset JVP.
  ratio = reflow.train_step_flops(c, (2,)) / fm_flops
  assert 1.05 < ratio < 1.15, ratio
  full = reflow.train_step_flops(override(tiny_config(), {"time.subset_jvp": False}), (2,))
  assert 1.2 < full / fm_flops < 1.5, full / fm_flops


def test_sampling_flops_against_a_training_step(fm_run):
  """A flow-matching step (forward and backward) costs about three forwards of its batch."""
  config = inference.load_config(fm_run)
  b = config.train.batch_size
  step = reflow.train_step_flops(config, (2,))
  one = reflow.sampling_flops(fm_run, b, 1)
  assert 2.5 < step / one < 3.6, step / one
  assert reflow.sampling_flops(fm_run, b, 8) == 8 * one


@pytest.mark.slow
def test_study_reflow_end_to_end(tmp_path):
  proc = subprocess.run(
      [sys.executable, "scripts/study_reflow.py", "--workdir", str(tmp_path / "runs"),
       "--out", str(tmp_path / "out"), "--fm_steps", "60", "--num_pairs", "1000",
       "--pair_nfe", "8", "--num", "1000", "--num_paths", "100", "--path_steps", "8",
       "--config.model.mlp.width=32", "--config.train.sample_every=0"],
      capture_output=True, text=True, timeout=3600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = open(tmp_path / "out" / "table.md").read()
  for name in ("exact flow", "flow matching (1-RF)", "reflow (2-RF)", "MeanFlow"):
    assert name in table
  assert os.path.getsize(tmp_path / "out" / "reflow.png") > 10_000
