"""How straight a flow is: what one-step generation has to gain or lose.

Conventions: t = 0 is data, t = 1 is noise, z_t = (1-t) x + t eps, v = dz/dt. A
velocity field `v_fn(z, t)` (z `[B, ...]`, t `[B]`) is integrated from z_1 = eps down
to z_0, and its trajectories are compared with their chords z_1 - z_0:

    straightness    S = int_0^1 E ||(z_1 - z_0) - v(z_t, t)||^2 dt   (0 iff straight
                                                                       at constant speed)
    curvature       S / E ||z_1 - z_0||^2                            (scale-free)
    path length     E[arc length] / E ||z_1 - z_0||                  (>= 1; 1 iff every
                                                                       path runs along its chord)

A straight flow is one that a single Euler step integrates exactly. The coupling of
a data set with noise sets how straight its marginal flow can be:
`coupling_straightness` is the flow-matching loss that remains with the exact
marginal field, E_t E ||(eps - x) - v(z_t, t)||^2, zero iff the coupling's straight
paths do not cross. `one_step_gap` measures how far one network evaluation
u(eps, 0, 1) lands from the ODE's endpoint.

||.||^2 sums over every non-batch axis; expectations are means over the batch.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("euler", "heun", "rk4")


def _check_noise(eps, name="eps"):
  if jnp.ndim(eps) < 2 or eps.shape[0] < 1:
    raise ValueError(f"{name} must be a batch [B, ...] with at least one non-batch axis "
                     f"(e.g. [B, D] or [B, H, W, C]); got shape {jnp.shape(eps)}.")


def _check_steps(num_steps, method):
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be an integer >= 1; got {num_steps!r}.")
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")


def _checked(fn, z, *times, what):
  """fn(z, *times) with times broadcast to `[B]`, which must return z's shape."""
  batch = z.shape[:1]
  out = fn(z, *(jnp.broadcast_to(jnp.asarray(a, z.dtype), batch) for a in times))
  if out.shape != z.shape:
    raise ValueError(f"{what} returned shape {out.shape} for z of shape {z.shape}; "
                     "it must return one vector per sample, shaped like z.")
  return out


def _per_sample(a, batch_axis):
  """Sum of squares over every axis after `batch_axis`."""
  return jnp.sum(a.reshape(a.shape[:batch_axis + 1] + (-1,)) ** 2, -1)


def time_weights(num_steps):
  """Quadrature weights `[S+1]` for int_0^1 f(t) dt on the uniform grid of `trajectory`.

  Composite Simpson when num_steps is even (fourth order, like RK4, so the integral
  is not the larger error), the trapezoid rule when it is odd.
  """
  h = 1.0 / num_steps
  if num_steps % 2:
    w = np.full(num_steps + 1, h)
    w[[0, -1]] = h / 2
  else:
    w = np.full(num_steps + 1, 2 * h / 3)
    w[1::2] = 4 * h / 3
    w[[0, -1]] = h / 3
  return w


def trajectory(v_fn, eps, num_steps=64, method="rk4"):
  """Integrates dz/dt = v(z, t) from z_1 = eps at t = 1 down to t = 0.

  Uniform steps of h = -1/num_steps with Euler, Heun (2nd order) or RK4 (4th order).
  jit-friendly with `num_steps` and `method` static.

  Args:
    v_fn: velocity `v_fn(z [B, ...], t [B]) -> [B, ...]`.
    eps: noise `[B, ...]`, any trailing shape.
    num_steps: number of steps S >= 1.
    method: "euler", "heun" or "rk4".

  Returns:
    (times `[S+1]` from 1 down to 0, states `[S+1, B, ...]` with states[0] = eps,
     velocities `[S+1, B, ...]` with velocities[i] = v(states[i], times[i])).
  """
  _check_noise(eps)
  _check_steps(num_steps, method)
  eps = jnp.asarray(eps)
  # 1 - i/S rather than repeated additions of h: the last time is exactly 0.
  times = 1.0 - jnp.arange(num_steps + 1, dtype=eps.dtype) / num_steps
  h = -1.0 / num_steps
  v = lambda z, t: _checked(v_fn, z, t, what="v_fn")

  def step(z, t):
    k1 = v(z, t)
    if method == "euler":
      z_next = z + h * k1
    elif method == "heun":
      k2 = v(z + h * k1, t + h)
      z_next = z + 0.5 * h * (k1 + k2)
    else:
      k2 = v(z + 0.5 * h * k1, t + 0.5 * h)
      k3 = v(z + 0.5 * h * k2, t + 0.5 * h)
      k4 = v(z + h * k3, t + h)
      z_next = z + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z_next, (z, k1)

  z_0, (states, velocities) = jax.lax.scan(step, eps, times[:-1])
  states = jnp.concatenate([states, z_0[None]])
  velocities = jnp.concatenate([velocities, v(z_0, times[-1])[None]])
  return times, states, velocities


def _path_stats(states, velocities, num_steps):
  """Per-sample (deviation integral, ||chord||^2, polygonal arc length, ||chord||), each `[B]`."""
  chord = states[0] - states[-1]  # z_1 - z_0
  deviation = _per_sample(chord[None] - velocities, 1)  # [S+1, B]
  w = jnp.asarray(time_weights(num_steps), deviation.dtype)
  integral = jnp.einsum("s,sb->b", w, deviation)
  # The polygon through the states: never shorter than the chord (triangle
  # inequality), so the ratio stays >= 1 whatever the step size.
  arc = jnp.sum(jnp.sqrt(_per_sample(states[1:] - states[:-1], 1)), 0)
  chord_sq = _per_sample(chord, 0)
  return integral, chord_sq, arc, jnp.sqrt(chord_sq)


def straightness(v_fn, eps, num_steps=64, method="rk4", reduce=True):
  """S = int_0^1 E ||(z_1 - z_0) - v(z_t, t)||^2 dt along the flow's own trajectories.

  z_1 = eps and z_0 is the ODE endpoint of `trajectory(v_fn, eps, num_steps, method)`;
  the time integral uses `time_weights`. S = 0 iff every trajectory is a straight
  line travelled at constant speed (one Euler step is then exact).

  Args:
    v_fn: velocity `v_fn(z [B, ...], t [B]) -> [B, ...]`.
    eps: noise `[B, ...]`.
    reduce: mean over the batch (scalar); False returns the per-sample integrals `[B]`.
  """
  _, states, velocities = trajectory(v_fn, eps, num_steps, method)
  integral, _, _, _ = _path_stats(states, velocities, num_steps)
  return jnp.mean(integral) if reduce else integral


def curvature(v_fn, eps, num_steps=64, method="rk4"):
  """S / E||z_1 - z_0||^2: straightness over the mean squared displacement (dimensionless).

  Compares flows whose displacements have different scales; undefined (inf or nan)
  when every trajectory returns to its start.
  """
  return trajectory_report(v_fn, eps, num_steps, method)["curvature"]


def trajectory_report(v_fn, eps, num_steps=64, method="rk4"):
  """The straightness summaries of one integration, as a dict of scalars.

    straightness:      S (see `straightness`)
    curvature:         S / displacement
    displacement:      E ||z_1 - z_0||^2
    path_length_ratio: E[arc length] / E||z_1 - z_0||, >= 1, 1 for straight paths.
                       Arc lengths are those of the polygon through the states. It
                       measures geometry only: a straight path at varying speed has
                       ratio 1 but S > 0.
  """
  _, states, velocities = trajectory(v_fn, eps, num_steps, method)
  integral, chord_sq, arc, chord = _path_stats(states, velocities, num_steps)
  s, d = jnp.mean(integral), jnp.mean(chord_sq)
  return {"straightness": s, "curvature": s / d, "displacement": d,
          "path_length_ratio": jnp.mean(arc) / jnp.mean(chord)}


def coupling_straightness(v_fn, x, eps, num_times=32, reduce=True):
  """E_t E ||(eps - x) - v(z_t, t)||^2 on the straight interpolations of coupled pairs.

  z_t = (1-t) x + t eps, t integrated over [0, 1] by `num_times`-point Gauss-Legendre
  (deterministic). With v the coupling's exact marginal field this is the flow-matching
  loss no model can go below, E_t E Var(eps - x | z_t): zero iff the pairs' straight
  paths do not cross (as with the optimal-transport coupling).

  Args:
    v_fn: velocity `v_fn(z [B, ...], t [B]) -> [B, ...]`.
    x: data `[B, ...]`, the i-th paired with eps[i].
    eps: noise `[B, ...]`.
    num_times: quadrature nodes >= 1.
    reduce: mean over the batch; False returns per-sample values `[B]`.
  """
  _check_noise(eps)
  if jnp.shape(x) != jnp.shape(eps):
    raise ValueError(f"x and eps are paired one to one and must have equal shapes; "
                     f"got {jnp.shape(x)} and {jnp.shape(eps)}.")
  if not isinstance(num_times, (int, np.integer)) or num_times < 1:
    raise ValueError(f"num_times must be an integer >= 1; got {num_times!r}.")
  x, eps = jnp.asarray(x), jnp.asarray(eps)
  nodes, weights = np.polynomial.legendre.leggauss(num_times)  # on [-1, 1]
  nodes = jnp.asarray((nodes + 1) / 2, eps.dtype)
  weights = jnp.asarray(weights / 2, eps.dtype)
  target = eps - x

  def at(total, tw):
    t, w = tw
    z = (1 - t) * x + t * eps
    return total + w * _per_sample(target - _checked(v_fn, z, t, what="v_fn"), 0), None

  per_sample, _ = jax.lax.scan(at, jnp.zeros(eps.shape[:1], eps.dtype), (nodes, weights))
  return jnp.mean(per_sample) if reduce else per_sample


def one_step_gap(u_fn, eps, flow_map_fn, reduce=True):
  """E ||u(eps, 0, 1) - (eps - Phi(eps))||^2: one network evaluation against the ODE.

  Phi = `flow_map_fn(eps)` is the exact (or a reference) solution from t = 1 to t = 0,
  so eps - Phi(eps) is the average velocity over [0, 1] and the one-step sample is
  eps - u(eps, 0, 1): the gap equals E ||x_one_step - Phi(eps)||^2, and its square root
  is the RMS transport error of one-step sampling (`toy.transport_error` times the
  data scale). Score a flow-matching field with `u_fn = euler_u(v_fn)`.

  Args:
    u_fn: average velocity `u_fn(z [B, ...], r [B], t [B]) -> [B, ...]`.
    eps: noise `[B, ...]`.
    flow_map_fn: `[B, ...] -> [B, ...]`, noise to its ODE endpoint at t = 0.
    reduce: mean over the batch; False returns per-sample values `[B]`.
  """
  _check_noise(eps)
  eps = jnp.asarray(eps)
  u = _checked(u_fn, eps, 0.0, 1.0, what="u_fn")
  endpoint = flow_map_fn(eps)
  if endpoint.shape != eps.shape:
    raise ValueError(f"flow_map_fn returned shape {endpoint.shape} for eps of shape "
                     f"{eps.shape}; it must map each noise sample to one data sample.")
  per_sample = _per_sample(u - (eps - endpoint), 0)
  return jnp.mean(per_sample) if reduce else per_sample


def euler_u(v_fn):
  """u(z, r, t) := v(z, t): the average velocity that one Euler step from t to r assumes."""
  return lambda z, r, t: v_fn(z, t)


def moment_matched_noise(key, n, shape):
  """`[n, *shape]` standard-normal draws transformed so that their sample mean is
  exactly 0 and their sample covariance (1/n) exactly I.

  The batch mean of any quadratic form a^T A a + b^T a + c of the noise is then its
  exact expectation under N(0, I), tr(A) + c: the straightness of Gaussian flows,
  their one-step gaps and displacements are such forms, so closed forms can be
  checked to the integration error rather than the Monte Carlo error. Needs
  n > prod(shape).
  """
  d = int(np.prod(shape))
  if n <= d:
    raise ValueError(f"moment matching needs more samples than dimensions; got n={n}, "
                     f"shape={tuple(shape)} ({d} dims).")
  return _whitened_normal(key, n, d).reshape((n,) + tuple(shape))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _whitened_normal(key, n, d):
  """`[n, d]` normal draws with sample mean 0 and sample covariance I: one program
  (eagerly, its dozen ops took a second of compiling)."""
  a = jax.random.normal(key, (n, d))
  a = a - jnp.mean(a, 0)
  cov = a.T @ a / n
  # Symmetric inverse square root, so the draws stay as close to the originals as
  # possible (they still look Gaussian in a scatter plot).
  evals, evecs = jnp.linalg.eigh(cov)
  return a @ (evecs / jnp.sqrt(evals)) @ evecs.T
