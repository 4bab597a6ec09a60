"""Samplers of the time pair (t, r) with 0 <= r <= t <= 1."""
import jax
import jax.numpy as jnp

DISTRIBUTIONS = ("logit_normal", "uniform")


def _draw_one(key, distribution, mu, sigma):
  """Two independent times from `distribution`, shape `[2]`."""
  if distribution == "logit_normal":
    return jax.nn.sigmoid(mu + sigma * jax.random.normal(key, (2,)))
  if distribution == "uniform":
    return jax.random.uniform(key, (2,))
  raise ValueError(f"unknown time distribution {distribution!r}; "
                   f"expected one of {DISTRIBUTIONS}.")


def sample_t_r(key, batch_size, *, distribution="logit_normal", mu=-0.4, sigma=1.0,
               ratio_r_neq_t=0.25):
  """Draws (t, r) per sample: two times, t = max, r = min; then r = t unless chosen.

  Each sample `i` uses only `fold_in(key, i)`: its own two times and its own coin
  for `r != t` (probability `ratio_r_neq_t`). So a sample's times do not depend on
  the batch size or on how the batch is sharded.

  Args:
    key: PRNG key.
    batch_size: B.
    distribution: "logit_normal" (sigmoid(N(mu, sigma))) or "uniform".
    mu, sigma: logit-normal parameters (the paper: -0.4, 1.0 on ImageNet).
    ratio_r_neq_t: probability that a sample keeps r != t (the paper: 0.25).

  Returns:
    (t, r), each `[B]` float32, with r <= t.
  """
  if not 0.0 <= ratio_r_neq_t <= 1.0:
    raise ValueError(f"ratio_r_neq_t must lie in [0, 1]; got {ratio_r_neq_t}.")
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"unknown time distribution {distribution!r}; "
                     f"expected one of {DISTRIBUTIONS}.")

  def one(index):
    key_i = jax.random.fold_in(key, index)
    key_times, key_coin = jax.random.split(key_i)
    times = _draw_one(key_times, distribution, mu, sigma)
    t, r = jnp.max(times), jnp.min(times)
    keep_r = jax.random.uniform(key_coin) < ratio_r_neq_t
    return t, jnp.where(keep_r, r, t)

  return jax.vmap(one)(jnp.arange(batch_size))


def sample_t(key, batch_size, *, distribution="logit_normal", mu=-0.4, sigma=1.0):
  """One time per sample for flow matching, `fold_in(key, i)` per sample; `[B]`."""
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"unknown time distribution {distribution!r}; "
                     f"expected one of {DISTRIBUTIONS}.")

  def one(index):
    return _draw_one(jax.random.fold_in(key, index), distribution, mu, sigma)[0]

  return jax.vmap(one)(jnp.arange(batch_size))
