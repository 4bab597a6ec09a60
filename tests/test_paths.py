import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanflow_jax import paths


@pytest.mark.parametrize("shape", [(5, 3), (4, 6, 6, 2)])
def test_interpolate_matches_numpy(shape):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x, eps = jax.random.normal(k1, shape), jax.random.normal(k2, shape)
  t = jax.random.uniform(k3, shape[:1])
  z = jax.jit(paths.interpolate)(x, eps, t)
  tb = np.asarray(t).reshape((-1,) + (1,) * (len(shape) - 1))
  np.testing.assert_allclose(z, (1 - tb) * np.asarray(x) + tb * np.asarray(eps), rtol=1e-6)
  np.testing.assert_allclose(paths.interpolate(x, eps, jnp.zeros(shape[0])), x)
  np.testing.assert_allclose(paths.interpolate(x, eps, jnp.ones(shape[0])), eps)


def test_conditional_velocity_is_time_derivative_of_path():
  k1, k2 = jax.random.split(jax.random.key(1))
  x, eps = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  _, dz_dt = jax.jvp(lambda t: paths.interpolate(x, eps, t), (t,), (jnp.ones(4),))
  np.testing.assert_allclose(dz_dt, paths.conditional_velocity(x, eps, t), rtol=1e-6)
  np.testing.assert_allclose(paths.conditional_velocity(x, eps, t), eps - x)


def test_bad_shapes_raise():
  x = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="same shape"):
    paths.interpolate(x, jnp.zeros((4, 2)), jnp.zeros(4))
  with pytest.raises(ValueError, match=r"shape \[B\]"):
    paths.interpolate(x, x, jnp.zeros((4, 1)))
  with pytest.raises(ValueError, match=r"shape \[B\]"):
    paths.interpolate(x, x, jnp.zeros(3))
