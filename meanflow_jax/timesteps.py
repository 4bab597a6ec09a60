"""Samplers of the time pair (t, r) with 0 <= r <= t <= 1, and the fixed layout of a
batch's r != t rows that lets a step run its JVP on those rows alone."""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DISTRIBUTIONS = ("logit_normal", "uniform")


def _draw_one(key, distribution, mu, sigma):
  """Two independent times from `distribution`, shape `[2]`."""
  if distribution == "logit_normal":
    return jax.nn.sigmoid(mu + sigma * jax.random.normal(key, (2,)))
  if distribution == "uniform":
    return jax.random.uniform(key, (2,))
  raise ValueError(f"unknown time distribution {distribution!r}; "
                   f"expected one of {DISTRIBUTIONS}.")


class RowSplit(NamedTuple):
  """A fixed set of a batch's rows with r != t: B rows seen as `groups` groups of
  B / groups consecutive rows, whose first `per_group` rows have r != t.

  MeanFlow's d/dt u is multiplied by t - r, so only these rows need the JVP; the others
  (r = t) take a plain forward pass. A fixed count keeps the shapes static, and the
  groups spread the rows evenly: a device holding whole groups (a mesh whose batch
  shards divide `groups`) holds `count / shards` of them, so the split never moves rows
  between devices. An independent coin per sample (the papers') gives the same
  fraction on average; here every batch has exactly `count` (the training batches are
  shuffled, so fixed positions pick no particular examples).
  """
  batch_size: int
  groups: int
  per_group: int

  @property
  def count(self):
    """The number of r != t rows."""
    return self.groups * self.per_group

  def mask(self):
    """numpy bool `[B]`: True on the r != t rows."""
    rows = np.arange(self.batch_size) % (self.batch_size // self.groups)
    return rows < self.per_group

  def split(self, tree):
    """(r != t part, r = t part) of every `[B, ...]` leaf of `tree`: `[count, ...]` and
    `[B - count, ...]`, each in batch order."""
    size = self.batch_size // self.groups

    def part(a, lo, hi):
      grouped = a.reshape(self.groups, size, *a.shape[1:])
      return grouped[:, lo:hi].reshape(-1, *a.shape[1:])

    jvp = jax.tree.map(lambda a: part(a, 0, self.per_group), tree)
    plain = jax.tree.map(lambda a: part(a, self.per_group, size), tree)
    return jvp, plain

  def merge(self, jvp, plain):
    """Inverse of `split` for arrays: `[count, ...]` and `[B - count, ...]` -> `[B, ...]`."""
    size = self.batch_size // self.groups
    tail = jvp.shape[1:]
    out = jnp.concatenate([jvp.reshape(self.groups, self.per_group, *tail),
                           plain.reshape(self.groups, size - self.per_group, *tail)], axis=1)
    return out.reshape(self.batch_size, *tail)


def fixed_rows(batch_size, ratio_r_neq_t):
  """The `RowSplit` of k = round(ratio B) r != t rows in as many equal groups as possible
  (gcd(k, B)): every mesh whose shard count divides both k and B gets k / shards per
  shard."""
  if not 0.0 <= ratio_r_neq_t <= 1.0:
    raise ValueError(f"ratio_r_neq_t must lie in [0, 1]; got {ratio_r_neq_t}.")
  k = int(math.floor(ratio_r_neq_t * batch_size + 0.5))
  groups = math.gcd(k, batch_size)  # k = 0: B groups of one row, none of them r != t
  return RowSplit(batch_size, groups, k // groups)


def sample_t_r(key, batch_size, *, distribution="logit_normal", mu=-0.4, sigma=1.0,
               ratio_r_neq_t=0.25, rows=None):
  """Draws (t, r) per sample: two times, t = max, r = min; then r = t unless chosen.

  Each sample `i` uses only `fold_in(key, i)`: its own two times and its own coin
  for `r != t` (probability `ratio_r_neq_t`). So a sample's times do not depend on
  the batch size or on how the batch is sharded. With `rows` (a `RowSplit`) the rows
  of `rows.mask()` keep r != t instead of the coins; the times drawn are the same.

  Args:
    key: PRNG key.
    batch_size: B.
    distribution: "logit_normal" (sigmoid(N(mu, sigma))) or "uniform".
    mu, sigma: logit-normal parameters (the paper: -0.4, 1.0 on ImageNet).
    ratio_r_neq_t: probability that a sample keeps r != t (the paper: 0.25).
    rows: None (coins), or the `RowSplit` of the batch (then `ratio_r_neq_t` is unused).

  Returns:
    (t, r), each `[B]` float32, with r <= t.
  """
  if not 0.0 <= ratio_r_neq_t <= 1.0:
    raise ValueError(f"ratio_r_neq_t must lie in [0, 1]; got {ratio_r_neq_t}.")
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"unknown time distribution {distribution!r}; "
                     f"expected one of {DISTRIBUTIONS}.")

  if rows is not None and rows.batch_size != batch_size:
    raise ValueError(f"rows split a batch of {rows.batch_size}, not {batch_size}.")
  keep = None if rows is None else jnp.asarray(rows.mask())

  def one(index):
    key_i = jax.random.fold_in(key, index)
    key_times, key_coin = jax.random.split(key_i)
    times = _draw_one(key_times, distribution, mu, sigma)
    t, r = jnp.max(times), jnp.min(times)
    keep_r = jax.random.uniform(key_coin) < ratio_r_neq_t if keep is None else keep[index]
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
