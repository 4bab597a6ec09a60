import jax
import jax.numpy as jnp
import numpy as np

from meanflow_jax import analytic
from meanflow_jax.metrics import toy

GAUSS = analytic.Gaussian(mean=jnp.array([1.0, -2.0]), std=0.5)
ONE = analytic.GaussianMixture(means=GAUSS.mean[None], stds=jnp.array([0.5]),
                               weights=jnp.array([1.0]))
Z = jax.random.normal(jax.random.key(0), (64, 2))


def test_gaussian_average_velocity_limits_and_flow_map():
  t, r = jnp.full(64, 0.8), jnp.full(64, 0.3)
  np.testing.assert_allclose(GAUSS.average_velocity(Z, t, t), GAUSS.velocity(Z, t), rtol=1e-5)
  np.testing.assert_allclose(GAUSS.average_velocity(Z, r, t),
                             (Z - GAUSS.flow_map(Z, t, r)) / 0.5, rtol=1e-4, atol=1e-5)
  # Flow maps compose: 0.8 -> 0.5 -> 0.3 equals 0.8 -> 0.3.
  mid = GAUSS.flow_map(GAUSS.flow_map(Z, 0.8, 0.5), 0.5, 0.3)
  np.testing.assert_allclose(mid, GAUSS.flow_map(Z, 0.8, 0.3), rtol=1e-5, atol=1e-6)


def test_gaussian_flow_map_pushes_noise_to_data():
  eps = jax.random.normal(jax.random.key(1), (200_000, 2))
  x = GAUSS.flow_map(eps, 1.0, 0.0)
  np.testing.assert_allclose(jnp.mean(x, 0), GAUSS.mean, atol=0.01)
  np.testing.assert_allclose(jnp.std(x, 0), [0.5, 0.5], rtol=0.01)


def test_velocity_is_derivative_of_flow_map():
  with jax.enable_x64(True):
    g = analytic.Gaussian(jnp.array([1.0, -2.0], jnp.float64), 0.5)
    z = Z.astype(jnp.float64)
    h = 1e-6
    fd = (g.flow_map(z, 0.6, 0.6 + h) - g.flow_map(z, 0.6, 0.6 - h)) / (2 * h)
    np.testing.assert_allclose(fd, g.velocity(z, 0.6), rtol=1e-6)


def test_one_component_mixture_equals_gaussian():
  t = jnp.linspace(0.05, 1.0, 64)
  np.testing.assert_allclose(ONE.velocity(Z, t), GAUSS.velocity(Z, t), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ONE.flow_map(Z, 1.0, 0.0, 64), GAUSS.flow_map(Z, 1.0, 0.0),
                             rtol=1e-4, atol=1e-4)
  r = 0.4 * t
  np.testing.assert_allclose(ONE.average_velocity(Z, r, t, 64), GAUSS.average_velocity(Z, r, t),
                             rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(ONE.log_prob(Z), GAUSS.log_prob(Z), rtol=1e-5)


def test_mixture_velocity_is_posterior_mean_of_conditional_velocity():
  # v(z, t) = E[eps - x | z_t = z], checked by self-normalised importance sampling.
  mix = analytic.ring_mixture(num_modes=4, radius=1.0, std=0.4)
  t = 0.6
  z = jnp.array([[0.3, -0.2]])
  x, _ = mix.sample(jax.random.key(2), 400_000)
  eps = (z - (1 - t) * x) / t  # the eps that puts each x at z
  logw = -0.5 * jnp.sum(eps ** 2, -1)
  w = jax.nn.softmax(logw)
  mc = jnp.sum(w[:, None] * (eps - x), 0)
  np.testing.assert_allclose(mix.velocity(z, t)[0], mc, atol=0.01)


def test_rk4_converged_and_flow_pushes_noise_to_the_mixture():
  mix = analytic.ring_mixture()
  eps = jax.random.normal(jax.random.key(3), (20_000, 2))
  x = jax.jit(lambda e: mix.flow_map(e, 1.0, 0.0, 256))(eps)
  x_fine = jax.jit(lambda e: mix.flow_map(e, 1.0, 0.0, 1024))(eps[:1000])  # 4x the steps
  assert float(jnp.sqrt(jnp.mean(jnp.sum((x[:1000] - x_fine) ** 2, -1)))) < 1e-4
  data, _ = mix.sample(jax.random.key(4), 20_000)
  sw_flow = toy.sliced_wasserstein(jax.random.key(5), x, data)
  sw_data = toy.sliced_wasserstein(jax.random.key(5), mix.sample(jax.random.key(6), 20_000)[0], data)
  assert float(sw_flow) < 2 * float(sw_data) + 0.01
  assert float(toy.mode_tv(mix, x)) < 0.02
  # A mixture with another radius is far off at this sample size.
  wrong = analytic.ring_mixture(radius=2.5).sample(jax.random.key(7), 20_000)[0]
  assert float(toy.sliced_wasserstein(jax.random.key(5), wrong, data)) > 5 * float(sw_flow)


def test_mixture_scale_matches_samples():
  mix = analytic.ring_mixture()
  x, _ = mix.sample(jax.random.key(8), 400_000)
  emp = jnp.sqrt(jnp.mean(jnp.sum((x - x.mean(0)) ** 2, -1)))
  np.testing.assert_allclose(mix.scale(), emp, rtol=5e-3)
  np.testing.assert_allclose(mix.scale(), np.sqrt(2.0 ** 2 + 2 * 0.2 ** 2), rtol=1e-6)
