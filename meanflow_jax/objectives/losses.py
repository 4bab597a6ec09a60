"""The MeanFlow and flow-matching objectives as pure functions of a velocity closure.

MeanFlow identity (Geng et al. 2025), with d/dt u = v . dz u + dt u:

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t).

The time derivative is one `jax.jvp` of `u_fn(z, r, t)` with tangent (v, 0, 1).
"""
import jax
import jax.numpy as jnp

from meanflow_jax import paths


def meanflow_target(u_fn, z, r, t, v):
  """u and u_tgt = sg(v - (t - r) d/dt u) from a single `jax.jvp`.

  The primal output of the JVP is the prediction `u`, so training needs no second
  forward pass; gradients flow through `u` only.

  Args:
    u_fn: `u_fn(z [B, ...], r [B], t [B]) -> [B, ...]`.
    z: z_t, `[B, ...]`.
    r, t: times `[B]`.
    v: the velocity along which z moves with t (v_t, or a guided v~), like `z`.

  Returns:
    (u, u_tgt), both like `z`; `u_tgt` carries a stop-gradient.
  """
  if v.shape != z.shape:
    raise ValueError(f"v must have the shape of z {tuple(z.shape)}; got {tuple(v.shape)}.")
  u, du_dt = jax.jvp(u_fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
  u_tgt = v - paths.expand_time(t - r, z) * du_dt
  return u, jax.lax.stop_gradient(u_tgt)


def bind(u_fn, cond):
  """`u_fn` as a function of (z, r, t): itself when `cond` is None, else with its fourth
  argument, the network's conditions, bound to `cond`."""
  return u_fn if cond is None else (lambda z, r, t: u_fn(z, r, t, cond))


def by_rows(rows, cond, jvp_part, plain_part, *arrays):
  """Outputs of `jvp_part` on the r != t rows of `rows` and of `plain_part` on the others,
  merged back into batch order.

  Args:
    rows: a `timesteps.RowSplit`.
    cond: None, or a pytree of the network's `[B]` conditions, split with the rows.
    jvp_part, plain_part: `f(cond_part, *arrays_part) -> tuple of [n, ...]` arrays.
    arrays: `[B, ...]` inputs.

  Returns:
    the tuple of merged `[B, ...]` outputs. A part with no rows is not called.
  """
  (cond_j, *arr_j), (cond_p, *arr_p) = rows.split((cond, *arrays))
  if rows.count == 0:
    return plain_part(cond_p, *arr_p)
  if rows.count == rows.batch_size:
    return jvp_part(cond_j, *arr_j)
  out_j, out_p = jvp_part(cond_j, *arr_j), plain_part(cond_p, *arr_p)
  return tuple(rows.merge(a, b) for a, b in zip(out_j, out_p))


def meanflow_target_by_rows(u_fn, z, r, t, v, rows, cond=None):
  """`meanflow_target`'s (u, u_tgt) with the JVP on the r != t rows of `rows` alone.

  On the rows with r = t, u_tgt = v - 0 * du/dt = v exactly, so they take one plain
  forward pass: the same u and u_tgt per row as `meanflow_target` at a fraction of its
  cost. `u_fn(z, r, t, cond)` (or `u_fn(z, r, t)` with `cond` None); shapes as there.
  """
  def jvp_part(c, z, r, t, v):
    return meanflow_target(bind(u_fn, c), z, r, t, v)

  def plain_part(c, z, r, t, v):
    return bind(u_fn, c)(z, r, t), jax.lax.stop_gradient(v)

  return by_rows(rows, cond, jvp_part, plain_part, z, r, t, v)


def adaptive_weight(err, p, c):
  """w = sg(1 / (err + c)^p), per sample; p = 0 gives w = 1 (plain squared error)."""
  return jax.lax.stop_gradient(1.0 / (err + c) ** p)


def squared_error(pred, target):
  """Per-sample squared error summed over all non-batch dims: `[B, ...] -> [B]`."""
  return jnp.sum(jnp.square(pred - target).reshape(pred.shape[0], -1), axis=1)


def _weighted_loss(pred, target, p, c, extra=None):
  """mean_b [w err + extra]: `extra` `[B]` (or None) is an added per-sample term."""
  err = squared_error(pred, target)
  w = adaptive_weight(err, p, c)
  metrics = {
      "mse": jnp.mean(jnp.square(pred - target)),  # unweighted, per element
      "mean_weight": jnp.mean(w),
  }
  return mean_with_extra(w * err, extra, metrics), metrics


def mean_with_extra(per_sample, extra, metrics):
  """mean_b [per_sample + extra] `[B] -> ()`; records "feature_loss" in `metrics` when
  `extra` (`extra_term`'s `[B]`) is not None."""
  if extra is not None:
    metrics["feature_loss"] = jnp.mean(extra)
    per_sample = per_sample + extra
  return jnp.mean(per_sample)


def extra_term(extra, z, pred, t, x):
  """`extra(x_hat, x)` `[B]` at pMF's x field x_hat = z_t - t pred, or None without one."""
  if extra is None:
    return None
  return extra(z - paths.expand_time(t, z) * pred, x)


def meanflow_loss(u_fn, x, eps, *, t, r, v=None, p=1.0, c=1e-3, extra=None, rows=None,
                  cond=None):
  """MeanFlow loss  E[ w * ||u_theta(z_t, r, t) - u_tgt||^2 ],  w = sg(1/(err + c)^p).

  Args:
    u_fn: `u_fn(z, r, t) -> u`, shapes as in `meanflow_target`.
    x: data `[B, ...]`; eps: noise like `x`.
    t, r: times `[B]` with r <= t (keyword-only: `u_fn` takes them as (r, t)).
    v: the velocity used in the target; defaults to v_t = eps - x (pass the
      guided velocity from `guided_velocity` for CFG training).
    p, c: adaptive-weight power and offset (p = 0: plain squared error).
    extra: optional `extra(x_hat, x) -> [B]` added per sample, at x_hat = z_t - t u
      (`objectives.features`).
    rows: None (the JVP on every row), or the batch's `timesteps.RowSplit`, whose r != t
      rows alone take the JVP (`meanflow_target_by_rows`; r must equal t elsewhere).
    cond: None, or the network's `[B]` conditions: then `u_fn(z, r, t, cond)`.

  Returns:
    (loss scalar, metrics dict with "mse", "mean_weight", "frac_r_neq_t", and
    "feature_loss" with `extra`).
  """
  z = paths.interpolate(x, eps, t)
  if v is None:
    v = paths.conditional_velocity(x, eps, t)
  if rows is None:
    u, u_tgt = meanflow_target(bind(u_fn, cond), z, r, t, v)
  else:
    u, u_tgt = meanflow_target_by_rows(u_fn, z, r, t, v, rows, cond)
  loss, metrics = _weighted_loss(u, u_tgt, p, c, extra_term(extra, z, u, t, x))
  metrics["frac_r_neq_t"] = jnp.mean((r != t).astype(jnp.float32))
  return loss, metrics


def flow_matching_loss(v_fn, x, eps, *, t, v=None, p=0.0, c=1e-3, extra=None):
  """Flow-matching loss  E[ w * ||v_theta(z_t, t) - v_t||^2 ]  (same weighting).

  Args:
    v_fn: `v_fn(z [B, ...], t [B]) -> [B, ...]`.
    x, eps: data and noise `[B, ...]`; t: times `[B]`.
    v: target velocity, defaults to v_t = eps - x.
    p, c: adaptive-weight power and offset.
    extra: optional per-sample term as in `meanflow_loss` (x_hat = z_t - t v).

  Returns:
    (loss scalar, metrics dict with "mse", "mean_weight", "frac_r_neq_t" = 0).
  """
  z = paths.interpolate(x, eps, t)
  if v is None:
    v = paths.conditional_velocity(x, eps, t)
  pred = v_fn(z, t)
  loss, metrics = _weighted_loss(pred, jax.lax.stop_gradient(v), p, c,
                                 extra_term(extra, z, pred, t, x))
  metrics["frac_r_neq_t"] = jnp.zeros((), jnp.float32)
  return loss, metrics


def guided_velocity(v_t, u_cond, u_uncond, t, *, omega, kappa=0.0, t_interval=(0.0, 1.0),
                    is_null=None):
  """Training-time classifier-free guidance target (MeanFlow, Eq. of Sec. 4.2).

      v~ = omega v_t + kappa u(z_t, t, t | y) + (1 - omega - kappa) u(z_t, t, t | null)

  for t inside `t_interval`, and v~ = v_t outside it and for samples whose label
  was dropped to the null class. With kappa = 0 the effective guidance scale is
  omega; in general it is omega / (1 - kappa).

  Args:
    v_t: conditional velocity `[B, ...]`.
    u_cond: u_theta(z_t, t, t | y) `[B, ...]` (the caller stops its gradient).
    u_uncond: u_theta(z_t, t, t | null) `[B, ...]`.
    t: times `[B]`.
    omega, kappa: guidance weights.
    t_interval: (t_min, t_max), closed interval in which guidance applies.
    is_null: optional bool `[B]`, True where the label is the null class.

  Returns:
    v~ `[B, ...]` with a stop-gradient.
  """
  t_min, t_max = t_interval
  v_guided = omega * v_t + kappa * u_cond + (1.0 - omega - kappa) * u_uncond
  apply = (t >= t_min) & (t <= t_max)
  if is_null is not None:
    apply = apply & ~is_null
  out = jnp.where(paths.expand_time(apply, v_t), v_guided, v_t)
  return jax.lax.stop_gradient(out)
