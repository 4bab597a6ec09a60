"""End to end with the shipped budgets (slow): the toy against the exact flow map, and
the digits demo against flow matching in the features of the project's classifier."""
import pytest

from configs import digits, toy
from meanflow_jax import evaluate, training


@pytest.mark.slow
@pytest.mark.parametrize("variant", [
    "v1",
    # The values tuned on the mixture family keep ring8's transport and mode weights but
    # leave 5.5 % of its samples off the support (BENCHMARKS.md "Mixture family").
    pytest.param("", marks=pytest.mark.xfail(strict=True, reason="ring8 low-density 0.055 "
                                             "with the mixture-family defaults")),
])
def test_toy_meanflow_one_step_quality(tmp_path, variant):
  training.train(toy.get_config(variant), str(tmp_path))
  ev = evaluate.evaluate_toy(str(tmp_path), [1], num=20_000)
  row = ev.rows[0]
  assert row["transport_rms"] < 0.1, row
  assert row["low_density_frac"] < 0.03, row
  assert row["mode_tv"] < 0.03, row


@pytest.mark.slow
def test_digits_one_step_samples_are_the_asked_digits(tmp_path):
  """1-NFE samples are classified as the asked class >= 90 % of the time, their
  classifier Frechet distance is far below flow matching's at 2 Euler steps and level
  with its 4 (within 25 %) at the same budget. Level, not below: at 2,000 steps the
  MeanFlow figure moves with the random stream (48.9 with the fixed r != t rows, 41.4 with
  a coin per sample, against 47.7 for 4 Euler steps; BENCHMARKS.md section 5)."""
  config = digits.get_config()
  training.train(config, str(tmp_path / "mf"))
  (mf,) = evaluate.evaluate_images(str(tmp_path / "mf"), [1], num=2000).rows
  assert mf["agreement"] >= 0.9, mf
  with config.unlocked():
    config.objective = "flow_matching"
    config.loss.p = 0.0
  training.train(config, str(tmp_path / "fm"))
  fm2, fm4 = evaluate.evaluate_images(str(tmp_path / "fm"), [2, 4], num=2000,
                                      method="euler").rows
  assert 2 * mf["clf_fd"] < fm2["clf_fd"], (mf, fm2)
  assert mf["clf_fd"] < 1.25 * fm4["clf_fd"], (mf, fm4)
