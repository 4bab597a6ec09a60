"""Pure samplers from noise (t = 1) to data (t = 0).

MeanFlow:        z_r = z_t - (t - r) u(z_t, r, t)        (1 NFE per interval)
Flow matching:   z_{t-h} = z_t - h v(z_t, t)             (Euler, 1 NFE per step)
                 Heun: Euler predictor + trapezoid corrector (2 NFE per step)
"""
import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("euler", "heun")


def uniform_grid(steps):
  """Times 1 = t_0 > t_1 > ... > t_steps = 0, `[steps + 1]`."""
  if int(steps) < 1:
    raise ValueError(f"steps must be >= 1; got {steps}.")
  return jnp.linspace(1.0, 0.0, int(steps) + 1)


def _check_grid(time_grid):
  grid = jnp.asarray(time_grid, jnp.float32)
  if grid.ndim != 1 or grid.shape[0] < 2:
    raise ValueError(f"time_grid must be 1-D with >= 2 times; got shape {grid.shape}.")
  if not isinstance(grid, jax.core.Tracer):  # a traced grid cannot be checked here
    g = np.asarray(grid)
    if not (np.all(np.diff(g) < 0) and g[0] <= 1 and g[-1] >= 0):
      raise ValueError(f"time_grid must decrease within [0, 1] (from noise to data); got "
                       f"{g.tolist()}.")
  return grid


def _full(eps, s):
  return jnp.full((eps.shape[0],), s, eps.dtype)


def meanflow_sample(u_fn, eps, steps=1, time_grid=None):
  """z_0 from z_1 = eps by jumps z_r = z_t - (t - r) u(z_t, r, t).

  Args:
    u_fn: `u_fn(z [B, ...], r [B], t [B]) -> [B, ...]`.
    eps: noise `[B, ...]`.
    steps: number of uniform intervals of [0, 1] (= NFE); ignored with `time_grid`.
    time_grid: optional decreasing times `[K + 1]`, e.g. [1, 0.5, 0] (K NFE).

  Returns:
    samples like `eps`. Exactly `steps` (or K) evaluations of `u_fn`.
  """
  grid = uniform_grid(steps) if time_grid is None else _check_grid(time_grid)

  def jump(z, t_r):
    t, r = t_r
    return z - (t - r) * u_fn(z, _full(z, r), _full(z, t)), None

  z, _ = jax.lax.scan(jump, eps, (grid[:-1], grid[1:]))
  return z


def flow_matching_sample(v_fn, eps, steps, method="euler", time_grid=None):
  """Integrates dz/dt = v(z, t) from t = 1 to t = 0.

  Args:
    v_fn: `v_fn(z [B, ...], t [B]) -> [B, ...]`.
    eps: noise `[B, ...]`.
    steps: number of uniform steps; ignored with `time_grid`.
    method: "euler" (NFE = steps) or "heun" (NFE = 2 * steps).
    time_grid: optional decreasing times `[steps + 1]`.

  Returns:
    samples like `eps`.
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}.")
  grid = uniform_grid(steps) if time_grid is None else _check_grid(time_grid)

  def euler(z, t_s):
    t, s = t_s
    return z - (t - s) * v_fn(z, _full(z, t)), None

  def heun(z, t_s):
    t, s = t_s
    v_t = v_fn(z, _full(z, t))
    z_pred = z - (t - s) * v_t
    v_s = v_fn(z_pred, _full(z, s))
    return z - (t - s) * 0.5 * (v_t + v_s), None

  z, _ = jax.lax.scan(euler if method == "euler" else heun, eps, (grid[:-1], grid[1:]))
  return z


def nfe(method, steps):
  """Network evaluations of a sampler: MeanFlow and Euler 1 per step, Heun 2."""
  return 2 * steps if method == "heun" else steps
