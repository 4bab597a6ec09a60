import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from meanflow_jax import timesteps

N = 200_000


def _logit_normal_cdf(x, mu, sigma):
  return scipy.stats.norm.cdf((np.log(x) - np.log1p(-x) - mu) / sigma)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.75, 1.0])
def test_fraction_r_neq_t(ratio):
  t, r = jax.jit(lambda k: timesteps.sample_t_r(k, N, ratio_r_neq_t=ratio))(jax.random.key(0))
  frac = float(jnp.mean(r != t))
  assert abs(frac - ratio) < 4 * np.sqrt(ratio * (1 - ratio) / N) + 1e-6
  assert bool(jnp.all(r <= t)) and bool(jnp.all((r >= 0) & (t <= 1)))


def test_logit_normal_max_min_distribution():
  mu, sigma = -0.4, 1.0
  t, r = timesteps.sample_t_r(jax.random.key(1), N, mu=mu, sigma=sigma, ratio_r_neq_t=1.0)
  F = lambda x: _logit_normal_cdf(x, mu, sigma)
  # max of two iid draws has CDF F^2, min has 1 - (1 - F)^2.
  assert scipy.stats.kstest(np.asarray(t), lambda x: F(x) ** 2).pvalue > 1e-3
  assert scipy.stats.kstest(np.asarray(r), lambda x: 1 - (1 - F(x)) ** 2).pvalue > 1e-3
  # A wrong law (a single draw) is rejected at this sample size.
  assert scipy.stats.kstest(np.asarray(t), F).pvalue < 1e-6


def test_uniform_distribution():
  t, r = timesteps.sample_t_r(jax.random.key(2), N, distribution="uniform", ratio_r_neq_t=1.0)
  assert scipy.stats.kstest(np.asarray(t), lambda x: x ** 2).pvalue > 1e-3
  assert scipy.stats.kstest(np.asarray(r), lambda x: 1 - (1 - x) ** 2).pvalue > 1e-3


def test_sample_t_single_draw_law():
  t = timesteps.sample_t(jax.random.key(3), N, mu=-0.4, sigma=1.0)
  assert scipy.stats.kstest(np.asarray(t), lambda x: _logit_normal_cdf(x, -0.4, 1.0)).pvalue > 1e-3


def test_per_sample_draws_do_not_depend_on_batch_size():
  key = jax.random.key(4)
  t_small, r_small = timesteps.sample_t_r(key, 64)
  t_big, r_big = timesteps.sample_t_r(key, 1024)
  np.testing.assert_array_equal(t_small, t_big[:64])
  np.testing.assert_array_equal(r_small, r_big[:64])
  # The r != t samples are spread over the batch, not a prefix.
  neq = np.asarray(r_big != t_big)
  assert neq[:512].mean() > 0.15 and neq[512:].mean() > 0.15


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown time distribution"):
    timesteps.sample_t_r(jax.random.key(0), 4, distribution="beta")
  with pytest.raises(ValueError, match="ratio_r_neq_t"):
    timesteps.sample_t_r(jax.random.key(0), 4, ratio_r_neq_t=1.5)
