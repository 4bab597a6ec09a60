"""Sources and couplings: the low-frequency prior, minibatch OT, reflow pairs."""
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, digits
from meanflow_jax import paths, priors
from meanflow_jax.data import pairs
from meanflow_jax.errors import CheckpointMismatchError, ConfigError, DataError
from meanflow_jax.training import inference, loop
from tests.test_training import override, tiny_config


def test_lowpass_is_an_orthogonal_projection():
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
  p = priors.lowpass(x, 2)
  np.testing.assert_allclose(priors.lowpass(p, 2), p, atol=1e-6)
  assert abs(float(jnp.sum((x - p) * p))) < 1e-4  # the residual is orthogonal to the projection
  block = np.asarray(x[1, 2:4, 4:6, 1]).mean()
  np.testing.assert_allclose(np.asarray(p[1, 2:4, 4:6, 1]), block, rtol=1e-6)
  assert priors.downsample(x, 4).shape == (3, 2, 2, 2)
  with pytest.raises(ValueError, match="do not split"):
    priors.downsample(x, 3)


def test_ot_assignment_is_the_best_of_all_permutations():
  key_x, key_e = jax.random.split(jax.random.key(1))
  x = jax.random.normal(key_x, (6, 3)) + 1.0
  eps = jax.random.normal(key_e, (6, 3))
  sigma = np.asarray(jax.jit(priors.ot_assignment)(x, eps))
  assert sorted(sigma.tolist()) == list(range(6))
  cost = lambda perm: float(jnp.sum((x - eps[np.asarray(perm)]) ** 2))
  best = min(cost(p) for p in itertools.permutations(range(6)))
  assert cost(sigma) == pytest.approx(best, rel=1e-6)


def test_minibatch_ot_permutes_the_independent_noise_and_shortens_paths():
  x = jax.random.normal(jax.random.key(2), (64, 4, 4, 1)) * 0.3 + 0.5
  key = jax.random.key(3)
  independent = priors.Prior().couple(key, x)
  np.testing.assert_array_equal(independent, paths.sample_noise(key, 64, (4, 4, 1)))
  ot = priors.Prior(coupling="minibatch_ot").couple(key, x)
  flat = lambda a: np.sort(np.asarray(a).reshape(64, -1), axis=0)
  np.testing.assert_array_equal(flat(ot), flat(independent))  # the same draws, re-paired
  assert float(jnp.sum((x - ot) ** 2)) < 0.8 * float(jnp.sum((x - independent) ** 2))


def test_lowfreq_couple_is_projection_plus_noise():
  x = jax.random.uniform(jax.random.key(4), (5, 8, 8, 1), minval=-1, maxval=1)
  key = jax.random.key(5)
  eps = priors.Prior(name="lowfreq", factor=4, noise_std=0.3).couple(key, x)
  expected = priors.lowpass(x, 4) + 0.3 * paths.sample_noise(key, 5, (8, 8, 1))
  np.testing.assert_allclose(eps, expected, atol=1e-6)


def _synthetic(n_per_class=400, seed=0):
  """Two classes of 4x4x1 images with known low-frequency means."""
  rng = np.random.default_rng(seed)
  y = np.repeat([0, 1], n_per_class).astype(np.int32)
  x = rng.normal(size=(2 * n_per_class, 4, 4, 1)).astype(np.float32) * 0.2
  x[y == 1] += 0.5
  return x, y


def test_fit_lowfreq_matches_the_coefficients_moments():
  x, y = _synthetic()
  stats = priors.fit_lowfreq(x, y, 2, factor=2, jitter=0.0)
  c = np.asarray(priors.downsample(jnp.asarray(x), 2)).reshape(len(x), -1)
  assert stats.mean.shape == (3, 4) and stats.chol.shape == (3, 4, 4) and stats.shape == (2, 2, 1)
  for k, rows in enumerate([c[y == 0], c[y == 1], c]):
    np.testing.assert_allclose(stats.mean[k], rows.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats.chol[k] @ stats.chol[k].T, np.cov(rows, rowvar=False),
                               atol=1e-5)
  with pytest.raises(DataError, match="at least 2 images"):
    priors.fit_lowfreq(x[:3], np.array([0, 0, 1]), 2, factor=2)


def test_lowfreq_sample_has_the_fitted_moments_per_class():
  x, y = _synthetic()
  stats = priors.fit_lowfreq(x, y, 2, factor=2)
  prior = priors.Prior(name="lowfreq", factor=2, noise_std=0.4, stats=stats)
  n = 40_000
  for k in (0, 1, 2):  # 2 is the null class: the pooled Gaussian
    eps = prior.sample(jax.random.key(10 * k + 20), n, (4, 4, 1), jnp.full((n,), k))
    c = np.asarray(priors.downsample(eps, 2)).reshape(n, -1)
    cov = stats.chol[k] @ stats.chol[k].T + 0.4 ** 2 / 4 * np.eye(4)  # pooling 4 noise pixels
    np.testing.assert_allclose(c.mean(0), stats.mean[k], atol=5 * np.sqrt(cov.max() / n))
    # Standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n).
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)
    assert np.abs(np.cov(c, rowvar=False) - cov).max() < 5 * se.max()
    # Within a block, the pixels differ only by the noise.
    resid = np.asarray(eps - priors.lowpass(eps, 2))
    assert resid.std() == pytest.approx(0.4 * np.sqrt(3 / 4), rel=0.02)
  np.testing.assert_array_equal(prior.sample(jax.random.key(9), 7, (4, 4, 1)),
                                prior.sample(jax.random.key(9), 7, (4, 4, 1), jnp.full((7,), 2)))
  gauss = priors.Prior().sample(jax.random.key(9), 7, (2,))
  np.testing.assert_array_equal(gauss, paths.sample_noise(jax.random.key(9), 7, (2,)))


def test_prior_config_errors():
  c = default.get_config()
  c.prior.name = "uniform"
  with pytest.raises(ConfigError, match="prior.name"):
    priors.check_prior_config(c)
  c = default.get_config()
  c.prior.coupling = "sinkhorn"
  with pytest.raises(ConfigError, match="prior.coupling"):
    priors.check_prior_config(c)
  c = default.get_config()
  c.prior.name, c.prior.coupling = "lowfreq", "minibatch_ot"
  with pytest.raises(ConfigError, match="its own projection"):
    priors.check_prior_config(c)
  c.prior.coupling = "independent"
  with pytest.raises(ConfigError, match="needs images"):
    priors.check_prior_config(c, (2,))
  c.prior.factor = 3
  with pytest.raises(ConfigError, match="does not divide"):
    priors.check_prior_config(c, (8, 8, 1))
  with pytest.raises(ConfigError, match="needs images"):  # caught before a run starts
    loop.train(override(tiny_config(), {"prior.name": "lowfreq"}), "/nonexistent/run")


def _tiny_digits(workdir_overrides):
  c = digits.get_config()
  return override(c, {"model.dit.hidden_size": 32, "model.dit.depth": 1,
                      "model.dit.num_heads": 2, "model.dit.patch_size": 4,
                      "train.batch_size": 16, "train.steps": 6, "train.log_every": 3,
                      "train.checkpoint_every": 3, "train.sample_every": 3,
                      **workdir_overrides})


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_lowfreq_run_writes_its_prior_and_samples_from_it(tmp_path):
  c = _tiny_digits({"prior.name": "lowfreq", "prior.fit_examples": 300})
  loop.train(c, str(tmp_path))
  assert os.path.exists(tmp_path / "samples" / "step_0000006.png")
  run = inference.load_run(str(tmp_path))
  source = loop.make_source(c)
  fitted = priors.fit_from_source(c, source)
  np.testing.assert_allclose(run.prior.stats.mean, fitted.mean, atol=1e-6)
  assert run.prior.stats.mean.shape == (11, 16)  # 10 digits + the pooled null class
  # The sampling script draws its noise from the fitted prior of the asked class.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "scripts/sample.py", "--workdir", str(tmp_path),
                         "--nfe", "1", "--num", "20", "--class", "3", "--seed", "4", "--out",
                         str(tmp_path / "s.npy")], capture_output=True, text=True, cwd=root,
                        timeout=3600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  eps = run.prior.sample(jax.random.key(4), 20, (8, 8, 1), jnp.full((20,), 3))
  x = inference.make_sampler(run.config, run.model, run.params)(eps, 1, jnp.full((20,), 3))
  np.testing.assert_allclose(np.load(tmp_path / "s.npy"), x, atol=1e-5)
  # Resuming with another prior is refused: the parameters map from the old one.
  c2 = override(_tiny_digits({"train.steps": 9}), {})
  with pytest.raises(CheckpointMismatchError, match="prior.name: checkpoint has 'lowfreq'"):
    loop.train(c2, str(tmp_path))
  os.remove(tmp_path / priors.STATS_FILE)
  with pytest.raises(ConfigError, match="prior.npz"):
    inference.load_run(str(tmp_path))


def _write_pairs(path, n=64, dim=2, y=None):
  rng = np.random.default_rng(0)
  eps = rng.normal(size=(n, dim)).astype(np.float32)
  x = (2.0 * eps + 1.0).astype(np.float32)  # a straight, non-crossing pairing
  arrays = dict(x=x, eps=eps) if y is None else dict(x=x, eps=eps, y=y)
  np.savez(path, **arrays)
  return x, eps


def test_pair_source_batches_and_errors(tmp_path):
  x, eps = _write_pairs(tmp_path / "p.npz")
  xs, es, labels, k = pairs.load_pairs(str(tmp_path / "p.npz"))
  assert labels is None and k == 0
  source = pairs.PairSource(xs, es, labels, k, batch_size=16, seed=0)
  bx, by, be = source.batch(3)
  np.testing.assert_allclose(bx, 2.0 * be + 1.0, rtol=1e-6)  # rows stay paired
  np.testing.assert_array_equal(source.batch(3, shard=(1, 2))[2], be[8:])
  np.testing.assert_array_equal(by, np.zeros(16, np.int32))
  np.savez(tmp_path / "bad.npz", x=x, noise=eps)
  with pytest.raises(DataError, match="needs arrays 'x' and 'eps'"):
    pairs.load_pairs(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "bad.npz", x=x, eps=eps[:10])
  with pytest.raises(DataError, match="equal-shape"):
    pairs.load_pairs(str(tmp_path / "bad.npz"))
  x_nan = x.copy()
  x_nan[5, 1] = np.nan
  np.savez(tmp_path / "bad.npz", x=x_nan, eps=eps)
  with pytest.raises(DataError, match=r"1 rows of x hold NaN.*\[5\]"):
    pairs.load_pairs(str(tmp_path / "bad.npz"))
  with pytest.raises(DataError, match="no such file"):
    pairs.load_pairs(str(tmp_path / "none.npz"))


def test_training_on_pairs_uses_the_files_eps(tmp_path):
  """Flow matching on the straight pairing x = 2 eps + 1 learns v = eps - x = -(eps + 1),
  whose Euler step from t = 1 lands on 2 eps + 1 exactly: 1 NFE is enough."""
  _write_pairs(tmp_path / "p.npz", n=512)
  c = tiny_config(**{"objective": "flow_matching", "loss.p": 0.0, "data.source": "pairs",
                     "data.path": str(tmp_path / "p.npz"), "train.steps": 400,
                     "train.batch_size": 64, "train.checkpoint_every": 400,
                     "train.log_every": 100, "model.mlp.width": 64, "model.mlp.depth": 2,
                     "optimizer.lr": 3e-3, "sample.params": "raw"})
  loop.train(c, str(tmp_path / "run"))
  run = inference.load_run(str(tmp_path / "run"))
  eps = jax.random.normal(jax.random.key(0), (256, 2))
  x1 = inference.make_sampler(run.config, run.model, run.params)(eps, 1)
  err = float(jnp.sqrt(jnp.mean(jnp.sum((x1 - (2 * eps + 1)) ** 2, -1))))
  assert err < 0.15, err  # independent pairs would give the data mean, ~2.3 away
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    assert json.loads(f.readlines()[-1])["loss"] < 0.02
  bad = override(c, {"prior.coupling": "minibatch_ot"})
  with pytest.raises(ConfigError, match="own \\(x, eps\\) pairing"):
    loop.train(bad, str(tmp_path / "run2"))
