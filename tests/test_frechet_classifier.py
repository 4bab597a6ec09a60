"""Frechet distance against closed forms; the project's digits classifier."""
import os

import numpy as np
import pytest
import scipy.linalg

from meanflow_jax.data import images
from meanflow_jax.metrics import classifier, frechet


def test_frechet_closed_form_diagonal():
  """Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(want, rel=1e-10)


def test_frechet_general_covariances_against_scipy_sqrtm():
  """Non-commuting covariances: an independent computation with scipy's sqrtm."""
  rng = np.random.default_rng(1)
  m1, m2 = rng.normal(size=(20, 20)), rng.normal(size=(20, 20))
  s1, s2 = m1 @ m1.T / 20 + 0.1 * np.eye(20), m2 @ m2.T / 20
  mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
  assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)
  assert frechet.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_of_samples_converges_to_population_value():
  rng = np.random.default_rng(2)
  f1 = rng.normal(0.0, 1.0, size=(200_000, 2))
  f2 = rng.normal(1.0, 2.0, size=(200_000, 2))
  # d^2 = 2 * 1^2 + 2 * (1 - 2)^2 = 4
  assert frechet.frechet_distance_features(f1, f2) == pytest.approx(4.0, rel=0.01)
  with pytest.raises(ValueError, match="non-finite"):
    frechet.gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))


@pytest.fixture(scope="module")
def digits(classifier_cache):
  """The digits and their classifier, from the session's cache (trained by the first test
  that needs it)."""
  x, y, k = images.load_images("digits")
  return x, y, k, classifier.load_or_train(x, y, k, cache_dir=classifier_cache)


def test_classifier_is_accurate_and_cached(digits, classifier_cache, monkeypatch):
  x, y, k, clf = digits
  assert clf.accuracy > 0.95  # held-out fifth of the real digits
  assert any(f.endswith(".msgpack") for f in os.listdir(classifier_cache))

  def no_training(*args, **kwargs):
    raise AssertionError("trained again instead of loading the cached file")
  monkeypatch.setattr(classifier, "train_classifier", no_training)
  again = classifier.load_or_train(x, y, k, cache_dir=classifier_cache)  # from the file
  assert again.accuracy == clf.accuracy
  np.testing.assert_array_equal(again.features(x[:50]), clf.features(x[:50]))


@pytest.mark.slow  # a second training of the classifier (half a minute)
def test_classifier_training_is_deterministic(digits, tmp_path):
  x, y, k, clf = digits
  trained = classifier.load_or_train(x, y, k, cache_dir=str(tmp_path))
  np.testing.assert_allclose(trained.features(x[:50]), clf.features(x[:50]), rtol=1e-5, atol=1e-5)


def test_classifier_fd_orders_corruptions(digits):
  """Real halves < lightly noised digits < uniform noise."""
  x, _, _, clf = digits
  f = clf.features(x)
  a, b = classifier.split(len(x), seed=1, holdout=0.5)
  rng = np.random.default_rng(0)
  noisy = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  noise = rng.uniform(-1, 1, x.shape).astype(np.float32)
  fd_halves = frechet.frechet_distance_features(f[a], f[b])
  fd_noisy = frechet.frechet_distance_features(clf.features(noisy), f)
  fd_noise = frechet.frechet_distance_features(clf.features(noise), f)
  assert fd_halves < 0.5 * fd_noisy and fd_noisy < 0.1 * fd_noise


def test_classifier_needs_labels():
  with pytest.raises(Exception, match="labelled"):
    classifier.load_or_train(np.zeros((4, 8, 8, 1), np.float32), None, 0)
