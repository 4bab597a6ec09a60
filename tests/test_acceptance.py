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
  """1-NFE samples are classified as the asked class >= 90 % of the time, and their
  classifier Frechet distance beats flow matching's at 4 NFE with the same budget."""
  config = digits.get_config()
  training.train(config, str(tmp_path / "mf"))
  (mf,) = evaluate.evaluate_images(str(tmp_path / "mf"), [1], num=2000).rows
  assert mf["agreement"] >= 0.9, mf
  with config.unlocked():
    config.objective = "flow_matching"
    config.loss.p = 0.0
  training.train(config, str(tmp_path / "fm"))
  (fm,) = evaluate.evaluate_images(str(tmp_path / "fm"), [4], num=2000, method="euler").rows
  assert mf["clf_fd"] < fm["clf_fd"], (mf, fm)
