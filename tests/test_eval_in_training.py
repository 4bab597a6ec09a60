"""Evaluation as it trains (train.eval_every), running Frechet statistics, the wandb writer."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from meanflow_jax import evaluate, training
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import frechet, toy
from meanflow_jax.training import inference, validate
from configs import default
from tests.test_training import override, tiny_config


@pytest.mark.parametrize("splits", [[500], [1, 499], [7, 93, 400], [250, 0, 250]])
def test_running_stats_equal_the_stats_of_all_features_for_any_split(splits):
  rng = np.random.default_rng(0)
  # A mean far from zero and unequal scales: what naive sums of squares get wrong.
  f = rng.normal(size=(500, 6)) * np.array([1e-3, 1, 3, 10, 0.1, 2]) + 1e3
  stats = frechet.RunningStats(6)
  edges = np.cumsum([0] + splits)
  for a, b in zip(edges[:-1], edges[1:]):
    stats.update(f[a:b])
  mu, sigma = stats.gaussian()
  mu_ref, sigma_ref = frechet.gaussian_stats(f)
  scale = np.sqrt(np.outer(np.diag(sigma_ref), np.diag(sigma_ref)))  # errors relative to
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-14)                 # each entry's scale
  np.testing.assert_allclose(sigma / scale, sigma_ref / scale, rtol=0, atol=1e-9)
  # Merged in another grouping (as processes are): the same.
  left, right = frechet.RunningStats.of(f[:123]), frechet.RunningStats.of(f[123:])
  merged = frechet.RunningStats(6).merge(left).merge(right)
  np.testing.assert_allclose(merged.gaussian()[1] / scale, sigma_ref / scale, rtol=0, atol=1e-9)
  assert merged.count == 500


def test_running_stats_refuse_non_finite_features_and_too_few():
  with pytest.raises(ValueError, match="NaN or inf"):
    frechet.RunningStats.of(np.array([[0.0, np.nan]]))
  with pytest.raises(ValueError, match="at least 2"):
    frechet.RunningStats.of(np.ones((1, 3))).gaussian()


def _eval_config(**extra):
  return tiny_config(**{"train.eval_every": 20, "train.eval_num": 300, "train.eval_nfe": (1, 2),
                        "train.eval_keep_best": True, **extra})


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("evaluated"))
  training.train(_eval_config(), workdir)
  return workdir


def _eval_rows(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in rows if any(k.startswith("eval/") for k in r)]


def test_evaluations_are_logged_at_every_interval_and_equal_evaluate_toy(evaluated_run):
  rows = _eval_rows(evaluated_run)
  assert [r["step"] for r in rows] == [20, 40]
  assert {"eval/sliced_w2_nfe1", "eval/transport_rms_nfe2", "eval/mode_tv_nfe1"} <= set(rows[-1])
  # The last evaluation is of the final state: evaluate_toy on the checkpoint, with the
  # run's seed and eval_num, gives the same figures.
  ev = evaluate.evaluate_toy(evaluated_run, [1, 2], num=300, seed=0)
  for r in ev.rows:
    for m in ("sliced_w2", "transport_rms", "low_density_frac", "mode_tv"):
      assert rows[-1][f"eval/{m}_nfe{r['nfe']}"] == pytest.approx(r[m], rel=1e-5, abs=1e-7)
  # Training rows keep their own steps/s (the evaluation time is not counted in them).
  train_rows = [json.loads(l) for l in open(os.path.join(evaluated_run, "metrics.jsonl"))
                if "steps_per_s" in l]
  assert [r["step"] for r in train_rows] == [10, 20, 30, 40]
  assert evaluate.training_seconds(evaluated_run) > 0


def test_keep_best_saves_the_state_with_the_lowest_metric(evaluated_run):
  rows = _eval_rows(evaluated_run)
  best = json.load(open(os.path.join(evaluated_run, "best", "best.json")))
  values = {r["step"]: r["eval/sliced_w2_nfe1"] for r in rows}
  assert best["metric"] == "sliced_w2" and best["nfe"] == 1
  assert best["step"] == min(values, key=values.get)
  assert best["value"] == pytest.approx(values[best["step"]])
  # workdir/best is a run directory: it samples, and holds the state of that step (the run
  # checkpoints every 20 steps, so the same step is in checkpoints/ too).
  run_best = inference.load_run(os.path.join(evaluated_run, "best"))
  run_same = inference.load_run(evaluated_run, step=best["step"])
  for a, b in zip(jax.tree.leaves(run_best.params), jax.tree.leaves(run_same.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("keys, needle", [
    ({"train.eval_num": 50}, "train.eval_every > 0"),
    ({"train.eval_keep_best": True}, "train.eval_every > 0"),
    ({"train.eval_every": 10, "train.eval_ref": "x.npz"}, "train.eval_inception is set"),
    ({"train.eval_every": 10, "train.eval_vae": "v.npz"}, "latents run"),
    ({"train.eval_every": 10, "train.eval_num": 1}, "train.eval_num must be >= 2"),
    ({"train.eval_every": 10, "train.eval_nfe": ()}, "train.eval_nfe must be"),
    ({"train.eval_every": -1}, "train.eval_every must be"),
    ({"logging.wandb_project": "p"}, "logging.wandb = True"),
])
def test_eval_and_logging_keys_that_would_do_nothing_are_refused(keys, needle):
  with pytest.raises(ConfigError, match=needle):
    validate.check_config(override(tiny_config(), keys), defaults=default.get_config())


def test_eval_during_training_on_points_or_latents_without_fid_is_refused(tmp_path):
  c = tiny_config(**{"data.source": "points", "data.path": str(tmp_path / "p.npy"),
                     "train.eval_every": 10})
  with pytest.raises(ConfigError, match="no metric to evaluate"):
    validate.check_config(c)
  c = tiny_config(**{"data.source": "latents", "data.path": str(tmp_path / "l.npy"),
                     "train.eval_every": 10})
  with pytest.raises(ConfigError, match="train.eval_inception"):
    validate.check_config(c)


def test_missing_fid_weights_fail_before_the_workdir_is_touched(tmp_path):
  c = tiny_config(**{"data.source": "digits", "model.name": "mlp", "train.eval_every": 10,
                     "train.eval_inception": str(tmp_path / "none.npz")})
  with pytest.raises(FileNotFoundError, match="none.npz"):
    training.train(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_wandb_writer_logs_the_training_scalars_offline(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir = tmp_path / "run"
  training.train(tiny_config(**{"logging.wandb": True, "train.steps": 20}), str(workdir))
  (run_file,) = glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-*.wandb"))
  data = open(run_file, "rb").read()
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [10, 20]
  # wandb's log file holds every scalar as its JSON text beside its key.
  for r in rows:
    assert json.dumps(r["loss"]).encode() in data
  assert b"train/loss" in data and b"train/grad_norm" in data
  # A resumed run continues the same wandb run (one id per workdir).
  run_id = open(workdir / "wandb_id").read().strip()
  assert run_id in os.path.basename(run_file)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  from configs import digits
  workdir = str(tmp_path_factory.mktemp("digits"))
  c = override(digits.get_config(), {  # a small DiT of one token: the evaluation is the point
      "model.dit.hidden_size": 16, "model.dit.depth": 1, "model.dit.num_heads": 2,
      "model.dit.patch_size": 8, "train.batch_size": 16, "train.steps": 4,
      "train.log_every": 2, "train.checkpoint_every": 4, "train.sample_every": 0,
      "optimizer.warmup_steps": 0})
  training.train(c, workdir)
  return workdir


@pytest.mark.slow  # five evaluations, 35,000 samples (a minute)
def test_image_evaluation_memory_does_not_grow_with_the_number_of_samples(digits_run,
                                                                          classifier_cache):
  """Only running sums and one batch are held while the samples are drawn and scored:
  the peak of host memory (numpy allocations, traced) for 16,000 samples is that of
  1,000 (a few tens of kB apart). Holding the samples (keep=None) shows the growth the test
  would catch: 15,000 x 64 pixels x 4 bytes = 3.8 MB (2.8 MB more at the peak here)."""
  import tracemalloc
  kw = dict(batch=500, cache_dir=classifier_cache)
  evaluate.evaluate_images(digits_run, [1], num=1_000, keep=0, **kw)  # compiles
  peaks = {}
  for keep in (0, None):
    for num in (1_000, 16_000):
      tracemalloc.start()
      row = evaluate.evaluate_images(digits_run, [1], num=num, keep=keep, **kw).rows[0]
      peaks[keep, num] = tracemalloc.get_traced_memory()[1]
      tracemalloc.stop()
      assert np.isfinite(row["clf_fd"])
  assert peaks[0, 16_000] - peaks[0, 1_000] < 0.5e6, peaks
  assert peaks[None, 16_000] - peaks[None, 1_000] > 2e6, peaks


def test_toy_metrics_do_not_depend_on_the_batch_size(evaluated_run):
  """Sample i draws from fold_in(key, i) whatever the batching (the image scorer's batches
  are tested the same way in the slow test below)."""
  a = evaluate.evaluate_toy(evaluated_run, [1], num=300, batch=300)
  b = evaluate.evaluate_toy(evaluated_run, [1], num=300, batch=64)
  for m in ("transport_rms", "low_density_frac", "mode_tv", "sliced_w2"):
    assert a.rows[0][m] == pytest.approx(b.rows[0][m], rel=1e-5, abs=1e-7)


def test_steep_share_exact_cases():
  slopes = np.array([0.5, 3.0, 1.0, 9.0, 2.0, 7.0])
  top2, other = np.zeros(6, bool), np.zeros(6, bool)
  top2[[3, 5]] = True            # the two steepest
  other[[0, 3]] = True           # the steepest and the flattest
  assert toy.steep_share(slopes, top2) == 1.0
  assert toy.steep_share(slopes, other) == 0.5
  assert toy.steep_share(slopes, ~top2) == 0.5   # 4 flagged; the steepest 4 (9, 7, 3, 2) hold two
  assert np.isnan(toy.steep_share(slopes, np.zeros(6, bool)))
  with pytest.raises(ValueError, match="equal"):
    toy.steep_share(slopes, top2[:5])


def test_one_step_slopes_use_evaluate_toys_noise_and_density_level(evaluated_run):
  """`off_support` is the 1-NFE low-density test of `evaluate_toy` at the same num and
  seed, sample by sample; the slopes are finite and positive."""
  s = evaluate.one_step_slopes(evaluated_run, num=300, seed=0, flow_steps=64)
  ev = evaluate.evaluate_toy(evaluated_run, [1], num=300, seed=0, flow_steps=64)
  off = np.asarray(ev.mixture.log_prob(ev.samples[1]) < toy.make_reference(
      ev.mixture, jax.random.split(jax.random.key(0))[1], 300).threshold)
  assert s.off_support.shape == (300,) and s.off_support.any()
  np.testing.assert_array_equal(s.off_support, off)
  assert s.off_support.mean() == pytest.approx(ev.rows[0]["low_density_frac"], abs=1e-7)
  assert np.all(np.isfinite(s.exact)) and np.all(s.exact > 0) and np.all(s.model > 0)


@pytest.mark.slow  # two image evaluations of a trained DiT with the digits classifier
def test_image_metrics_do_not_depend_on_the_batch_size(digits_run, classifier_cache):
  cache = classifier_cache
  a = evaluate.evaluate_images(digits_run, [1], num=300, batch=300, cache_dir=cache)
  b = evaluate.evaluate_images(digits_run, [1], num=300, batch=64, cache_dir=cache)
  for m in ("clf_fd", "agreement", "class_tv"):
    assert a.rows[0][m] == pytest.approx(b.rows[0][m], rel=1e-6, abs=1e-9)
  np.testing.assert_allclose(a.samples[1], b.samples[1], atol=1e-6)


def test_evaluations_reach_tensorboard(evaluated_run):
  from meanflow_jax.training import summary
  scalars = summary.read_scalars(os.path.join(evaluated_run, "tensorboard"))
  rows = _eval_rows(evaluated_run)
  (step, value), = [(s, v) for s, v in scalars["eval/sliced_w2_nfe1"] if s == 40]
  assert value == pytest.approx(rows[-1]["eval/sliced_w2_nfe1"], rel=1e-6)


def test_class_rows_of_the_kept_first_samples():
  """A grid from the first samples an evaluation keeps (K x per of them), labels i mod K
  for all of the num samples."""
  labels = np.arange(1000) % 10
  kept = np.arange(30, dtype=np.float32)[:, None]  # sample i holds i
  rows = evaluate.class_rows(kept, labels, 10, 3)
  np.testing.assert_array_equal(rows[:, 0], [c + 10 * j for c in range(10) for j in range(3)])
