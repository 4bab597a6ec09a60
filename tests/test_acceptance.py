"""End to end: the default toy budget, evaluated against the exact flow map (slow)."""
import pytest

from configs import toy
from meanflow_jax import evaluate, training


@pytest.mark.slow
def test_toy_meanflow_one_step_quality(tmp_path):
  training.train(toy.get_config(), str(tmp_path))
  ev = evaluate.evaluate_toy(str(tmp_path), [1], num=20_000)
  row = ev.rows[0]
  assert row["transport_rms"] < 0.1, row
  assert row["low_density_frac"] < 0.03, row
  assert row["mode_tv"] < 0.03, row
