import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanflow_jax import analytic, objectives, paths

GAUSS = analytic.Gaussian(mean=jnp.array([1.5, -0.5, 0.25]), std=0.4)


def _batch(key, b=256, d=3):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  x = GAUSS.sample(k1, b)
  eps = jax.random.normal(k2, (b, d))
  a, c = jax.random.uniform(k3, (b,)), jax.random.uniform(k4, (b,))
  t, r = jnp.maximum(a, c), jnp.minimum(a, c)
  return x, eps, t, r


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_identity_holds_at_exact_gaussian_u():
  x, eps, t, r = _batch(jax.random.key(0))
  z = paths.interpolate(x, eps, t)
  v = GAUSS.velocity(z, t)  # marginal velocity: the identity's v
  u, u_tgt = jax.jit(lambda z, r, t, v: objectives.meanflow_target(
      GAUSS.average_velocity, z, r, t, v))(z, r, t, v)
  np.testing.assert_allclose(u, GAUSS.average_velocity(z, r, t), rtol=1e-5, atol=1e-5)
  assert _rel(u_tgt, u) < 1e-4


@pytest.mark.parametrize("wrong", ["instantaneous", "other_std", "other_mean"])
def test_identity_fails_for_wrong_fields(wrong):
  x, eps, t, r = _batch(jax.random.key(1))
  z = paths.interpolate(x, eps, t)
  v = GAUSS.velocity(z, t)
  u_fn = {
      "instantaneous": lambda z, r, t: GAUSS.velocity(z, t),
      "other_std": analytic.Gaussian(GAUSS.mean, 0.8).average_velocity,
      "other_mean": analytic.Gaussian(GAUSS.mean + 0.5, GAUSS.std).average_velocity,
  }[wrong]
  u, u_tgt = objectives.meanflow_target(u_fn, z, r, t, v)
  assert _rel(u_tgt, u) > 1e-2


def test_identity_holds_at_mixture_u_from_rk4():
  mix = analytic.ring_mixture(num_modes=4, radius=1.5, std=0.3)
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  x, _ = mix.sample(k1, 64)
  eps = jax.random.normal(k2, x.shape)
  t = jax.random.uniform(k3, (64,), minval=0.3, maxval=1.0)
  r = 0.5 * t
  z = paths.interpolate(x, eps, t)
  u_fn = lambda z, r, t: mix.average_velocity(z, r, t, num_steps=128)
  u, u_tgt = jax.jit(lambda z, r, t, v: objectives.meanflow_target(u_fn, z, r, t, v))(
      z, r, t, mix.velocity(z, t))
  assert _rel(u_tgt, u) < 1e-3


def test_jvp_matches_central_finite_differences():
  with jax.enable_x64(True):
    g = analytic.Gaussian(jnp.array([1.5, -0.5], jnp.float64), 0.4)
    k1, k2 = jax.random.split(jax.random.key(3))
    z = jax.random.normal(k1, (16, 2), jnp.float64)
    v = jax.random.normal(k2, (16, 2), jnp.float64)
    t, r = jnp.full((16,), 0.7), jnp.full((16,), 0.2)
    _, du_dt = jax.jvp(g.average_velocity, (z, r, t), (v, jnp.zeros(16), jnp.ones(16)))
    h = 1e-5
    fd = (g.average_velocity(z + h * v, r, t + h) - g.average_velocity(z - h * v, r, t - h)) / (2 * h)
    np.testing.assert_allclose(du_dt, fd, rtol=1e-7, atol=1e-9)
    # The target uses that derivative: u_tgt = v - (t - r) du/dt.
    _, u_tgt = objectives.meanflow_target(g.average_velocity, z, r, t, v)
    np.testing.assert_allclose(u_tgt, v - 0.5 * fd, rtol=1e-7, atol=1e-9)


def test_meanflow_loss_weighting_and_metrics():
  x, eps, t, r = _batch(jax.random.key(4), b=64)
  r = jnp.where(jnp.arange(64) % 4 == 0, r, t)  # a quarter with r != t
  w_mat = jax.random.normal(jax.random.key(5), (3, 3)) * 0.3
  u_fn = lambda z, r, t: z @ w_mat + (t - r)[:, None] + t[:, None] ** 2
  z = paths.interpolate(x, eps, t)
  u, u_tgt = objectives.meanflow_target(u_fn, z, r, t, eps - x)
  err = np.sum((np.asarray(u) - np.asarray(u_tgt)) ** 2, axis=1)
  for p, c in [(0.0, 1e-3), (1.0, 1e-3), (0.5, 0.01)]:
    loss, m = jax.jit(lambda x, eps, t, r: objectives.meanflow_loss(
        u_fn, x, eps, t=t, r=r, p=p, c=c))(x, eps, t, r)
    w = 1.0 / (err + c) ** p
    np.testing.assert_allclose(loss, np.mean(w * err), rtol=1e-5)
    np.testing.assert_allclose(m["mean_weight"], np.mean(w), rtol=1e-5)
    np.testing.assert_allclose(m["mse"], np.mean(err) / 3, rtol=1e-5)
    np.testing.assert_allclose(m["frac_r_neq_t"], np.mean(np.asarray(r != t)))


def test_adaptive_weight_has_no_gradient():
  # With p = 1, d/dtheta [sg(w) err] = w d err/dtheta, not d/dtheta [err / (err + c)].
  x, eps, t, r = _batch(jax.random.key(6), b=8)

  def loss(a, p):
    return objectives.meanflow_loss(lambda z, r, t: a * z, x, eps, t=t, r=r, p=p, c=1e-3)[0]

  a = 0.3
  z = paths.interpolate(x, eps, t)
  u_fn = lambda z, r, t: a * z
  u, u_tgt = objectives.meanflow_target(u_fn, z, r, t, eps - x)
  err = jnp.sum((u - u_tgt) ** 2, 1)
  w = 1.0 / (err + 1e-3)
  expected = jnp.mean(w * jnp.sum(2 * (u - u_tgt) * z, 1))
  np.testing.assert_allclose(jax.grad(loss)(a, 1.0), expected, rtol=1e-4)


def test_flow_matching_loss():
  x, eps, t, _ = _batch(jax.random.key(7), b=32)
  v_fn = lambda z, t: 0.5 * z + t[:, None]
  loss, m = objectives.flow_matching_loss(v_fn, x, eps, t=t, p=0.0)
  z = (1 - t[:, None]) * x + t[:, None] * eps
  expected = np.mean(np.sum((np.asarray(v_fn(z, t)) - np.asarray(eps - x)) ** 2, 1))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(m["frac_r_neq_t"]) == 0.0


def test_guided_velocity():
  b = 6
  v_t, u_c, u_u = jnp.ones((b, 2)), 2 * jnp.ones((b, 2)), 4 * jnp.ones((b, 2))
  t = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.5])
  null = jnp.array([False] * 5 + [True])
  out = objectives.guided_velocity(v_t, u_c, u_u, t, omega=0.2, kappa=0.92,
                                   t_interval=(0.0, 0.75), is_null=null)
  guided = 0.2 * 1 + 0.92 * 2 + (1 - 0.2 - 0.92) * 4
  np.testing.assert_allclose(out[:, 0], [guided, guided, guided, guided, 1.0, 1.0], rtol=1e-6)
  # omega = 1, kappa = 0: no guidance at all.
  np.testing.assert_allclose(objectives.guided_velocity(v_t, u_c, u_u, t, omega=1.0), v_t)


def test_meanflow_target_rejects_bad_v():
  with pytest.raises(ValueError, match="shape of z"):
    objectives.meanflow_target(lambda z, r, t: z, jnp.zeros((4, 2)), jnp.zeros(4),
                               jnp.ones(4), jnp.zeros((4, 3)))
