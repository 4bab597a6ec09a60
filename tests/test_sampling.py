import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanflow_jax import analytic, sampling

GAUSS = analytic.Gaussian(mean=jnp.array([2.0, -1.0]), std=0.5)
EPS = jax.random.normal(jax.random.key(0), (100_000, 2))


@pytest.mark.parametrize("steps", [1, 3])
def test_meanflow_exact_u_reproduces_gaussian(steps):
  x = jax.jit(lambda e: sampling.meanflow_sample(GAUSS.average_velocity, e, steps))(EPS)
  np.testing.assert_allclose(x, GAUSS.flow_map(EPS, 1.0, 0.0), atol=2e-5)
  np.testing.assert_allclose(jnp.mean(x, 0), GAUSS.mean, atol=0.01)
  np.testing.assert_allclose(jnp.std(x, 0), [GAUSS.std] * 2, rtol=0.01)


def test_time_grids():
  grid = jnp.array([1.0, 0.8, 0.3, 0.0])
  a = sampling.meanflow_sample(GAUSS.average_velocity, EPS[:100], time_grid=grid)
  np.testing.assert_allclose(a, GAUSS.flow_map(EPS[:100], 1.0, 0.0), atol=2e-5)
  # A partial grid stops at its last time: the exact map 1 -> 0.4.
  b = sampling.meanflow_sample(GAUSS.average_velocity, EPS[:100], time_grid=[1.0, 0.4])
  np.testing.assert_allclose(b, GAUSS.flow_map(EPS[:100], 1.0, 0.4), atol=2e-5)
  # Euler on a given grid equals Euler with that many uniform steps when uniform.
  c = sampling.flow_matching_sample(GAUSS.velocity, EPS[:100], 4, time_grid=jnp.linspace(1, 0, 5))
  np.testing.assert_allclose(c, sampling.flow_matching_sample(GAUSS.velocity, EPS[:100], 4),
                             rtol=1e-6, atol=1e-6)


def test_one_euler_step_of_exact_flow_matching_collapses_to_the_mean():
  x = sampling.flow_matching_sample(GAUSS.velocity, EPS, 1)
  np.testing.assert_allclose(x, jnp.broadcast_to(GAUSS.mean, x.shape), atol=1e-5)
  assert float(jnp.max(jnp.std(x, 0))) < 1e-5


def test_flow_matching_solvers_converge_at_their_order():
  exact = GAUSS.flow_map(EPS[:1000], 1.0, 0.0)
  err = lambda m, n: float(jnp.max(jnp.abs(
      sampling.flow_matching_sample(GAUSS.velocity, EPS[:1000], n, m) - exact)))
  e1, e2 = err("euler", 16), err("euler", 32)
  h1, h2 = err("heun", 16), err("heun", 32)
  assert 1.6 < e1 / e2 < 2.4       # first order
  assert 3.0 < h1 / h2 < 5.0       # second order
  assert h2 < e2 / 10


@pytest.mark.parametrize("method,steps,expected", [("euler", 5, 5), ("heun", 3, 6)])
def test_nfe_is_exact(method, steps, expected):
  calls = []

  def v_fn(z, t):
    jax.debug.callback(lambda: calls.append(1))
    return GAUSS.velocity(z, t)

  jax.block_until_ready(jax.jit(lambda e: sampling.flow_matching_sample(v_fn, e, steps, method))(EPS[:8]))
  jax.effects_barrier()
  assert len(calls) == expected == sampling.nfe(method, steps)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_meanflow_nfe_is_exact(steps):
  calls = []

  def u_fn(z, r, t):
    jax.debug.callback(lambda: calls.append(1))
    return GAUSS.average_velocity(z, r, t)

  jax.block_until_ready(jax.jit(lambda e: sampling.meanflow_sample(u_fn, e, steps))(EPS[:8]))
  jax.effects_barrier()
  assert len(calls) == steps


def test_bad_arguments():
  with pytest.raises(ValueError, match="steps must be >= 1"):
    sampling.meanflow_sample(GAUSS.average_velocity, EPS[:4], 0)
  with pytest.raises(ValueError, match="must decrease"):
    sampling.meanflow_sample(GAUSS.average_velocity, EPS[:4], time_grid=[0.0, 0.5, 1.0])
  with pytest.raises(ValueError, match="unknown method"):
    sampling.flow_matching_sample(GAUSS.velocity, EPS[:4], 2, "rk45")
