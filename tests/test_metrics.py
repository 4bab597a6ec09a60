import jax
import jax.numpy as jnp
import numpy as np

from meanflow_jax import analytic
from meanflow_jax.metrics import toy

MIX = analytic.ring_mixture()


def test_transport_error_exact_value():
  a = jnp.zeros((4, 2))
  b = jnp.array([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # one error of length 5
  np.testing.assert_allclose(toy.transport_error(a, b, 2.0), np.sqrt(25 / 4) / 2.0, rtol=1e-6)


def test_low_density_fraction_of_data_is_the_quantile():
  thr = toy.low_density_threshold(MIX, jax.random.key(0), 0.01)
  x, _ = MIX.sample(jax.random.key(1), 200_000)
  frac = float(toy.low_density_fraction(MIX, x, thr))
  assert abs(frac - 0.01) < 0.0015
  # Points halfway between two neighbouring modes are all in the low-density region.
  mid = 0.5 * (MIX.means + jnp.roll(MIX.means, 1, 0))
  assert float(toy.low_density_fraction(MIX, mid, thr)) == 1.0


def test_mode_weights_and_tv():
  x = jnp.concatenate([jnp.repeat(MIX.means[:1], 3, 0), jnp.repeat(MIX.means[1:2], 1, 0)])
  w = toy.mode_weights(MIX, x)
  np.testing.assert_allclose(w, [0.75, 0.25] + [0.0] * 6)
  np.testing.assert_allclose(toy.mode_tv(MIX, x), 0.5 * (0.625 + 0.125 + 6 * 0.125), rtol=1e-6)


def test_sliced_wasserstein_of_a_shift():
  a = jax.random.normal(jax.random.key(2), (1000, 2))
  assert float(toy.sliced_wasserstein(jax.random.key(3), a, a)) == 0.0
  shift = jnp.array([0.6, -0.8])
  key = jax.random.key(3)
  theta = jax.random.normal(key, (2, 256))
  theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
  expected = jnp.sqrt(jnp.mean((shift @ theta) ** 2))  # each 1-D projection moves by theta.shift
  np.testing.assert_allclose(toy.sliced_wasserstein(key, a + shift, a), expected, rtol=1e-4)


def test_toy_report_of_exact_samples():
  eps = jax.random.normal(jax.random.key(4), (20_000, 2))
  exact = MIX.flow_map(eps, 1.0, 0.0, 128)
  ref = toy.make_reference(MIX, jax.random.key(5), 20_000)
  rep = toy.toy_report(MIX, exact, exact, ref)
  assert rep["transport_rms"] == 0.0
  assert abs(rep["low_density_frac"] - 0.01) < 0.004
  assert rep["mode_tv"] < 0.02
  # Collapsing every sample to the data mean (1-step exact flow matching) is maximally bad.
  collapsed = jnp.zeros_like(exact)
  bad = toy.toy_report(MIX, collapsed, exact, ref)
  assert bad["low_density_frac"] == 1.0 and bad["transport_rms"] > 0.9
  # The sliced distance of exact samples is at the level of two independent data draws.
  two_draws = toy.sliced_wasserstein(jax.random.key(6), ref.data, MIX.sample(jax.random.key(7), 20_000)[0])
  assert rep["sliced_w2"] < 2 * float(two_draws) + 0.01 < bad["sliced_w2"]
