"""The linear path between data and noise (t = 0 data, t = 1 noise).

    z_t = (1 - t) x + t eps,        v_t = dz_t/dt = eps - x.
"""
import jax
import jax.numpy as jnp


def expand_time(t, x):
  """Reshapes per-sample times `[B]` to broadcast against `x` of shape `[B, ...]`."""
  t = jnp.asarray(t)
  if t.ndim != 1 or t.shape[0] != x.shape[0]:
    raise ValueError(
        f"times must have shape [B] = [{x.shape[0]}] to match a batch of shape "
        f"{tuple(x.shape)}; got shape {tuple(t.shape)}.")
  return t.reshape(t.shape + (1,) * (x.ndim - 1))


def _check_pair(x, eps):
  if x.shape != eps.shape:
    raise ValueError(f"x and eps must have the same shape; got {tuple(x.shape)} "
                     f"and {tuple(eps.shape)}.")
  if x.ndim < 2:
    raise ValueError(f"x must be a batch [B, ...] with at least 2 dims; got shape "
                     f"{tuple(x.shape)}.")


def interpolate(x, eps, t):
  """z_t = (1 - t) x + t eps.

  Args:
    x: data, `[B, ...]` (vectors `[B, D]` or images `[B, H, W, C]`).
    eps: noise, same shape as `x`.
    t: times in [0, 1], `[B]`.

  Returns:
    z_t, same shape as `x`.
  """
  _check_pair(x, eps)
  t = expand_time(t, x)
  return (1.0 - t) * x + t * eps


def conditional_velocity(x, eps, t=None):
  """v_t = eps - x, the velocity of the straight path through (x, eps).

  Args:
    x: data, `[B, ...]`.
    eps: noise, same shape as `x`.
    t: times `[B]`; the velocity does not depend on them, they are only checked.

  Returns:
    v_t, same shape as `x`.
  """
  _check_pair(x, eps)
  if t is not None:
    expand_time(t, x)
  return eps - x


def sample_noise(key, num, shape, dtype=None, start=0):
  """eps ~ N(0, I), `[num, *shape]`; sample i uses only `fold_in(key, start + i)`.

  So a sample's noise does not depend on the batch size or on how a batch is
  sharded, and any single sample can be regenerated from (key, i).
  """
  draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), tuple(shape),
                                     dtype or jnp.float32)
  return jax.vmap(draw)(start + jnp.arange(num))
