"""Improved MeanFlow (iMF; Geng et al., arXiv 2512.02012) as pure functions, in this
project's conventions (t = 0 data, t = 1 noise, z_t = (1-t) x + t eps, v_t = eps - x).

The network has two heads, `(u, v) = net(z, r, t)`: u the average velocity, v an
auxiliary instantaneous velocity. iMF regresses the *compound* velocity

    V = u + (t - r) sg(du/dt),   du/dt from one `jax.jvp` with tangents (v_c, 0, 1),

on the guided velocity v~ (the tangent for z is the network's own guided velocity v_c,
not eps - x), and the v head on the same v~. At the exact fields V = v by the MeanFlow
identity u = v - (t - r) du/dt, so the loss is a plain regression on v. Guidance is a
condition of the network: omega and the interval [t_min, t_max] are drawn per sample at
training time and chosen freely at sampling time.

Registered as the objective "imf": the model is built with a v head and, when it is
class-conditional, with the guidance conditions (omega, t_min, t_max). `imf.tangent`
chooses the JVP's tangent for z (`TANGENTS`): the paper's "model" (v_c), or "target"
(v~ itself, built on eps - x as MeanFlow's tangent is; then the V term of the loss is
MeanFlow's loss at the target v~).
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from meanflow_jax import paths, sampling
from meanflow_jax.objectives import losses
from meanflow_jax.objectives.registry import AverageVelocity, register


def compound_velocity(net, z, r, t, v_c):
  """(V, u, v) of iMF's reparameterised v-loss, from one `jax.jvp` of the network.

  Args:
    net: `net(z [B, ...], r [B], t [B]) -> (u, v)`, both like z (conditions bound).
    z: z_t `[B, ...]`; r, t: times `[B]`, r <= t.
    v_c: the tangent for z, the guided velocity `[B, ...]` (stop-gradient is applied).

  Returns:
    V = u + (t - r) sg(du/dt), u and the v head, each like z. Gradients flow through u
    (in V) and v.
  """
  if v_c.shape != z.shape:
    raise ValueError(f"v_c must have the shape of z {tuple(z.shape)}; got {tuple(v_c.shape)}.")
  tangents = (jax.lax.stop_gradient(v_c), jnp.zeros_like(r), jnp.ones_like(t))
  (u, v), (du_dt, _) = jax.jvp(net, (z, r, t), tangents)
  V = u + paths.expand_time(t - r, z) * jax.lax.stop_gradient(du_dt)
  return V, u, v


def robust_weighted_error(pred, target, p, c):
  """w(e) = e / sg(e + c)^p per sample, e = ||pred - target||^2 over all non-batch dims:
  `[B, ...] -> [B]`. Its gradient is de / (e + c)^p (p = 0: plain squared error); the
  same weighting as MeanFlow's `losses.adaptive_weight(e) * e`."""
  e = losses.squared_error(pred, target)
  return losses.adaptive_weight(e, p, c) * e


class Tangent(NamedTuple):
  """A choice of the JVP's tangent for z: `pick(v_c, v~)`; `needs_v_c`: whether it reads
  the network's own velocity (an unconditional model then spends a pass on it)."""
  pick: Callable
  needs_v_c: bool


# The network's guided velocity (the paper's: a low-variance estimate of the marginal
# velocity once the v head has learnt it), or the target v~ (an unbiased one-sample
# estimate from the first step on, as MeanFlow's eps - x is).
TANGENTS = {"model": Tangent(lambda v_c, v_tilde: v_c, True),
            "target": Tangent(lambda v_c, v_tilde: v_tilde, False)}


def reads_v_head(tangent, num_classes, s_max):
  """Whether a run reads its v head while training: for the JVP's tangent ("model"), or
  for the guided target v~ (a class-conditional model with omega drawn above 1)."""
  return TANGENTS[tangent].needs_v_c or (bool(num_classes) and s_max > 0)


def guided_velocity(v_t, v_c, v_u, omega, t, t_min, t_max, is_null=None):
  """v~ = v_t + (1 - 1/omega') (v_c - v_u), omega' = omega inside [t_min, t_max], else 1.

  Args:
    v_t: conditional velocity eps - x `[B, ...]`.
    v_c, v_u: the v head at (z_t | y, omega', h = 0) and (z_t | null, omega = 1, h = 0).
    omega, t, t_min, t_max: `[B]`.
    is_null: optional bool `[B]`: dropped labels keep v~ = v_t.

  Returns:
    v~ `[B, ...]` with a stop-gradient.
  """
  scale = 1.0 - 1.0 / effective_omega(omega, t, t_min, t_max)
  if is_null is not None:
    scale = jnp.where(is_null, 0.0, scale)
  out = v_t + paths.expand_time(scale, v_t) * (v_c - v_u)
  return jax.lax.stop_gradient(out)


def effective_omega(omega, t, t_min, t_max):
  """omega' = omega for t in [t_min, t_max], else 1: `[B]`."""
  return jnp.where((t >= t_min) & (t <= t_max), omega, 1.0)


def guided_target(net, z, t, v_t, y, omega, t_min, t_max, is_null, null_class):
  """(v_c, v~) of iMF's guided target from ONE batched network pass of 2B rows.

  The conditional half asks the v head for (z_t | y, omega', h = 0, [0, 1]), the
  unconditional half for (z_t | null, omega = 1, h = 0, [0, 1]); omega' = omega inside
  the sample's interval, else 1. The reference implementation spends a third pass of B
  rows on the v head at the unclipped omega; it is only used where r = t, whose interval
  is [0, 1], so omega' = omega there and the 2B pass already holds it
  (tests/test_imf.py checks the equality).

  Args:
    net: `net(z, r, t, cond) -> (u, v)`, `cond` a dict of `[B]` arrays "y", "omega",
      "t_min", "t_max".
    z: z_t `[B, ...]`; t: `[B]`; v_t: eps - x like z.
    y: labels `[B]` as the network sees them (after label dropout).
    omega, t_min, t_max: the sample's guidance conditions `[B]`.
    is_null: bool `[B]`, dropped labels (their v~ stays v_t).
    null_class: the null label.

  Returns:
    (v_c, v~), both like z with a stop-gradient: the JVP's tangent and the target.
  """
  b = z.shape[0]
  omega_eff = effective_omega(omega, t, t_min, t_max)
  both = lambda a, c: jnp.concatenate([a, c])
  cond = {"y": both(y, jnp.full_like(y, null_class)),
          "omega": both(omega_eff, jnp.ones_like(omega_eff)),
          "t_min": jnp.zeros((2 * b,), t.dtype), "t_max": jnp.ones((2 * b,), t.dtype)}
  _, v_both = net(both(z, z), both(t, t), both(t, t), cond)
  v_c, v_u = jnp.split(jax.lax.stop_gradient(v_both), 2)
  ones = jnp.ones_like(t)
  v_tilde = guided_velocity(v_t, v_c, v_u, omega_eff, t, jnp.zeros_like(t), ones, is_null)
  return v_c, v_tilde


def sample_omega(key, batch_size, s_max=7.0, beta=1.0):
  """Per-sample guidance scales with density proportional to omega^(-beta) on
  [1, 1 + s_max] (beta = 1: log-uniform, omega = (1 + s_max)^U), by the inverse CDF.
  Sample i from `fold_in(key, i)`: `[B]` float32."""
  if s_max < 0:
    raise ValueError(f"s_max must be >= 0; got {s_max}.")
  top = 1.0 + s_max
  u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(jnp.arange(batch_size))
  if beta == 1.0:
    return top ** u
  a = 1.0 - beta
  return (1.0 + u * (top ** a - 1.0)) ** (1.0 / a)


def sample_interval(key, batch_size, r=None, t=None):
  """Per-sample guidance intervals: t_min ~ U(0, 0.5), t_max ~ U(0.5, 1); samples with
  r = t (when r and t are given) get [0, 1]. Sample i from `fold_in(key, i)`.

  Returns:
    (t_min `[B]`, t_max `[B]`).
  """
  def one(i):
    k_lo, k_hi = jax.random.split(jax.random.fold_in(key, i))
    return 0.5 * jax.random.uniform(k_lo), 0.5 + 0.5 * jax.random.uniform(k_hi)

  t_min, t_max = jax.vmap(one)(jnp.arange(batch_size))
  if r is not None and t is not None:
    same = r == t
    t_min, t_max = jnp.where(same, 0.0, t_min), jnp.where(same, 1.0, t_max)
  return t_min, t_max


def compound_velocity_by_rows(net, z, r, t, v_c, rows, cond=None):
  """`compound_velocity`'s (V, u, v) with the JVP on the r != t rows of `rows` alone: on
  the others V = u + 0 * du/dt = u, from one plain forward pass. `net(z, r, t, cond)`
  (or `net(z, r, t)` with `cond` None); `v_c` is read on the r != t rows only."""
  def jvp_part(c, z, r, t, v_c):
    return compound_velocity(losses.bind(net, c), z, r, t, v_c)

  def plain_part(c, z, r, t, v_c):
    del v_c
    u, v = losses.bind(net, c)(z, r, t)
    return u, u, v

  return losses.by_rows(rows, cond, jvp_part, plain_part, z, r, t, v_c)


def imf_loss(net, x, eps, *, r, t, v_c, v_tilde, p=1.0, c=0.01, v_weight=1.0, extra=None,
             rows=None, cond=None):
  """iMF loss  mean_b [ w(||V - sg(v~)||^2) + lambda_v w(||v - sg(v~)||^2) ],
  w(e) = e / sg(e + c)^p, lambda_v = `v_weight` (the paper: 1).

  Args:
    net: `net(z, r, t) -> (u, v)` (label and guidance conditions bound).
    x, eps: data and noise `[B, ...]`; r, t: `[B]`.
    v_c: the JVP's tangent for z, the network's guided velocity `[B, ...]`.
    v_tilde: the regression target v~ `[B, ...]` (`guided_velocity`).
    p, c: the adaptive weight (the paper: p = 1, c = 0.01).
    v_weight: lambda_v, the v head's share of the loss (`loss.v_weight`).
    extra: optional `extra(x_hat, x) -> [B]` added per sample at pMF's x field
      x_hat = z_t - t u (`objectives.features`).
    rows: None (the JVP on every row), or the batch's `timesteps.RowSplit`: the JVP on
      its r != t rows alone (`compound_velocity_by_rows`; r must equal t elsewhere).
    cond: None, or the network's `[B]` conditions: then `net(z, r, t, cond)`.

  Returns:
    (loss, metrics with "u_loss" (the V term), "v_loss", "mse" of V per element, and
    "feature_loss" with `extra`).
  """
  z = paths.interpolate(x, eps, t)
  if rows is None:
    V, u, v = compound_velocity(losses.bind(net, cond), z, r, t, v_c)
  else:
    V, u, v = compound_velocity_by_rows(net, z, r, t, v_c, rows, cond)
  target = jax.lax.stop_gradient(v_tilde)
  u_term = robust_weighted_error(V, target, p, c)
  v_term = robust_weighted_error(v, target, p, c)
  metrics = {"u_loss": jnp.mean(u_term), "v_loss": jnp.mean(v_term),
             "mse": jnp.mean(jnp.square(V - target)),
             "frac_r_neq_t": jnp.mean((r != t).astype(jnp.float32))}
  loss = losses.mean_with_extra(u_term + v_weight * v_term, losses.extra_term(extra, z, u, t, x),
                                metrics)
  return loss, metrics


class ImprovedMeanFlow(AverageVelocity):
  """iMF: times as MeanFlow's (time.ratio_r_neq_t; the paper 0.5), the guided target and
  its tangent from one 2B pass (class-conditional) or the v head's own velocity
  (unconditional), the loss `imf_loss`, generation by u's jumps at the omega and
  interval chosen at sampling time."""
  name = "imf"
  default_nfe = 1
  heads = ("u", "v")
  reads = AverageVelocity.reads + ("imf", "sample.omega", "loss.v_weight")
  conditions = ("omega", "t_min", "t_max")

  def targets(self, key, net, x, eps, *, t, r, y, is_null, cond, guidance_cfg, imf_cfg,
              num_classes, rows=None):
    """cond gains per-sample omega and [t_min, t_max] (omega = 1 on [0, 1] where the label
    was dropped: the unconditional model is unguided); v = (v_c, v~)."""
    del y, guidance_cfg
    z = paths.interpolate(x, eps, t)
    v_t = paths.conditional_velocity(x, eps, t)
    tangent = TANGENTS[imf_cfg.tangent]
    if not num_classes:
      if not tangent.needs_v_c:  # v~ = v_t: no pass of the network needed
        return cond, (v_t, v_t)
      # No guidance: v~ = v_t; the tangent is still the network's own velocity at h = 0,
      # needed on the r != t rows alone (zeros elsewhere: the loss reads none there).
      own = lambda c, z, t: (jax.lax.stop_gradient(net(z, t, t, c)[1]),)
      if rows is None:
        (v_c,) = own(cond, z, t)
      else:
        (v_c,) = losses.by_rows(rows, cond, own, lambda c, z, t: (jnp.zeros_like(z),), z, t)
      return cond, (v_c, v_t)
    b = x.shape[0]
    key_omega, key_interval = jax.random.split(key)
    omega = sample_omega(key_omega, b, imf_cfg.s_max, imf_cfg.beta)
    t_min, t_max = sample_interval(key_interval, b, r, t)
    omega = jnp.where(is_null, 1.0, omega)
    t_min, t_max = jnp.where(is_null, 0.0, t_min), jnp.where(is_null, 1.0, t_max)
    v_c, v_tilde = guided_target(net, z, t, v_t, cond["y"], omega, t_min, t_max, is_null,
                                 num_classes)
    cond = dict(cond, omega=omega, t_min=t_min, t_max=t_max)
    return cond, (tangent.pick(v_c, v_tilde), v_tilde)

  def loss(self, net, x, eps, *, t, r, v, loss_cfg, extra=None, rows=None, cond=None):
    v_c, v_tilde = v
    return imf_loss(net, x, eps, r=r, t=t, v_c=v_c, v_tilde=v_tilde, p=loss_cfg.p, c=loss_cfg.c,
                    v_weight=loss_cfg.v_weight, extra=extra, rows=rows, cond=cond)

  def average_velocity(self, net):
    return lambda z, r, t: net(z, r, t)[0]

  def generate(self, net, eps, nfe, method):
    del method  # jumps of u, as MeanFlow's
    return sampling.meanflow_sample(self.average_velocity(net), eps, int(nfe))


IMF = register(ImprovedMeanFlow())
