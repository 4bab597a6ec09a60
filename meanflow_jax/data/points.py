"""Vector data `[N, D]`: the built-in mixtures, a family of random mixtures, user arrays
in `.npy` files, and the per-dimension standardisation a vector run trains in."""
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from meanflow_jax import analytic
from meanflow_jax.errors import DataError


def two_modes(dim=2, separation=4.0, std=0.25):
  """Two equal-weight modes N(+-separation/2 e_0, std^2 I) in `dim` dimensions."""
  if dim < 1 or separation < 0 or std <= 0:
    raise DataError(f"two_modes needs dim >= 1, separation >= 0 and std > 0; got {dim}, "
                    f"{separation}, {std}.")
  means = jnp.zeros((2, int(dim))).at[:, 0].set(jnp.array([-0.5, 0.5]) * separation)
  return analytic.GaussianMixture(means=means, stds=jnp.full((2,), float(std)),
                                  weights=jnp.full((2,), 0.5))


def random_mixture(key, dim=2, num_modes=7, scale=4.0, offset=0.0, anisotropy=1.0,
                   mode_std=0.25, concentration=2.0):
  """A random Gaussian mixture of `num_modes` rotated, anisotropic modes of unequal weight.

  Before scaling: means ~ N(0, I_dim); mode k has random orthonormal axes A_k (Haar) and
  stds along them running geometrically from mode_std / sqrt(anisotropy) to
  mode_std * sqrt(anisotropy) (largest over smallest = anisotropy, exactly, for dim >= 2);
  weights ~ Dirichlet(concentration, ..., concentration). Then means and stds are scaled
  together so that `scale()` equals `scale`, and shifted so the mean E x is `offset`
  (a scalar, or `[dim]`). Small `mode_std` separates the modes (in units of the spread of
  their means, about sqrt(2 dim) apart), large ones make them overlap.

  Returns:
    an `analytic.GaussianMixture` with stds `[K, D]` and axes `[K, D, D]`.
  """
  if dim < 1 or num_modes < 1 or scale <= 0 or anisotropy < 1 or mode_std <= 0 \
      or concentration <= 0:
    raise DataError(f"random_mixture needs dim >= 1, num_modes >= 1, scale > 0, anisotropy "
                    f">= 1, mode_std > 0 and concentration > 0; got {dim}, {num_modes}, {scale}, "
                    f"{anisotropy}, {mode_std}, {concentration}.")
  key_m, key_a, key_w = jax.random.split(key, 3)
  means = jax.random.normal(key_m, (num_modes, dim))
  axes = (jax.random.orthogonal(key_a, dim, (num_modes,)) if dim > 1
          else jnp.ones((num_modes, 1, 1)))
  profile = jnp.float32(anisotropy) ** (jnp.linspace(-0.5, 0.5, dim) if dim > 1 else 0.0)
  stds = jnp.broadcast_to(mode_std * profile, (num_modes, dim))
  weights = jax.random.dirichlet(key_w, jnp.full((num_modes,), float(concentration)))
  unit = analytic.GaussianMixture(means=means, stds=stds, weights=weights, axes=axes)
  factor = scale / unit.scale()
  center = weights @ means
  offset = jnp.broadcast_to(jnp.asarray(offset, jnp.float32), (dim,))
  return unit._replace(means=(means - center) * factor + offset, stds=stds * factor)


# The family the toy config's defaults were chosen on ("tune") and checked on, once, after
# the choice ("heldout"): 2-D and 10-D, 2 to 16 modes, scales 0.5 to 10, offsets,
# anisotropy 1 to 8, unequal weights. "user7" is the case a user reported: 7 anisotropic
# modes of unequal weight at scale 4, some overlapping, some well apart; "user7b" draws the
# same recipe with another seed. Each entry: (split, seed, random_mixture arguments).
FAMILY = {
    "user7": ("tune", 7, dict(dim=2, num_modes=7, scale=4.0, offset=(3.0, -2.0),
                              anisotropy=4.0, mode_std=0.25)),
    "small3": ("tune", 3, dict(dim=2, num_modes=3, scale=0.5, offset=(-4.0, 5.0),
                               anisotropy=2.0, mode_std=0.3)),
    "wide16": ("tune", 16, dict(dim=2, num_modes=16, scale=10.0, offset=0.0, anisotropy=1.0,
                                mode_std=0.15)),
    "d10_5": ("tune", 5, dict(dim=10, num_modes=5, scale=3.0, offset=1.0, anisotropy=3.0,
                              mode_std=0.6)),
    "user7b": ("heldout", 70, dict(dim=2, num_modes=7, scale=4.0, offset=(3.0, -2.0),
                                   anisotropy=4.0, mode_std=0.25)),
    "pair2": ("heldout", 2, dict(dim=2, num_modes=2, scale=1.0, offset=(0.0, -3.0),
                                 anisotropy=8.0, mode_std=0.35)),
    "many12": ("heldout", 12, dict(dim=2, num_modes=12, scale=6.0, offset=(-5.0, 2.0),
                                   anisotropy=2.0, mode_std=0.2)),
    "d10_16": ("heldout", 160, dict(dim=10, num_modes=16, scale=10.0, offset=0.0,
                                    anisotropy=2.0, mode_std=0.5)),
    "d10_3": ("heldout", 30, dict(dim=10, num_modes=3, scale=0.5, offset=-2.0, anisotropy=4.0,
                                  mode_std=0.8)),
}


def family_mixture(name):
  """The mixture `name` of `FAMILY` (an `analytic.GaussianMixture`)."""
  if name not in FAMILY:
    raise DataError(f"unknown family mixture {name!r}; available: {sorted(FAMILY)}.")
  _, seed, params = FAMILY[name]
  return random_mixture(jax.random.key(seed), **params)


MIXTURES = {
    "ring8": lambda **_: analytic.ring_mixture(num_modes=8, radius=2.0, std=0.2),
    # One Gaussian N((1, -1), 0.5^2 I): the straight-flow case, quick to learn (tests).
    "gaussian": lambda **_: analytic.GaussianMixture(
        means=jnp.array([[1.0, -1.0]]), stds=jnp.array([0.5]), weights=jnp.array([1.0])),
    "two_modes": two_modes,
}


def mixture(name, **params):
  """The built-in mixture called `name` (an `analytic.GaussianMixture`); `params`
  (dim, separation, std) shape the parametric ones."""
  if name not in MIXTURES:
    raise DataError(f"unknown built-in mixture {name!r}; available: {sorted(MIXTURES)}.")
  return MIXTURES[name](**params)


def config_mixture(data):
  """The mixture of a config's `data` section."""
  return mixture(data.mixture, dim=data.get("mixture_dim", 2),
                 separation=data.get("mixture_separation", 4.0),
                 std=data.get("mixture_std", 0.25))


def check_points(x, source="data"):
  """Validates a point cloud: float-like, rank 2 `[N, D]`, N >= 1, all finite."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise DataError(f"{source}: expected a float array of rank 2 [N, D]; got shape "
                    f"{x.shape} (rank {x.ndim}).")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise DataError(f"{source}: expected numbers; got dtype {x.dtype}.")
  if x.shape[0] < 1 or x.shape[1] < 1:
    raise DataError(f"{source}: empty array of shape {x.shape}.")
  bad = ~np.isfinite(x)
  if bad.any():
    rows = np.unique(np.nonzero(bad)[0])
    raise DataError(f"{source}: {bad.sum()} non-finite values (NaN or inf) in "
                    f"{rows.size} rows, first rows {rows[:5].tolist()}.")
  return x.astype(np.float32)


def load_points(path):
  """Loads and validates a `.npy` float array `[N, D]`."""
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file.")
  try:
    x = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise DataError(f"{path}: not a plain .npy array ({e}).") from e
  if not isinstance(x, np.ndarray):
    raise DataError(f"{path}: expected a single array in a .npy file.")
  return check_points(x, source=path)


class Standardization(NamedTuple):
  """x -> (x - mean) / std, per dimension: the space a vector run trains and samples in.

  Per dimension (as scikit-learn's StandardScaler) rather than one isotropic scale: the
  noise N(0, I) has unit variance in every direction, and data whose dimensions differ in
  spread by large factors (an offset, a thin direction) otherwise needs a map that
  shrinks some directions and stretches others; measured in BENCHMARKS.md (section 13).
  """
  mean: np.ndarray  # [D] float32
  std: np.ndarray   # [D] float32, > 0

  def apply(self, x):
    """(x - mean) / std for x `[..., D]` (numpy or jax)."""
    return (x - self.mean) / self.std

  def invert(self, x):
    """x * std + mean for x `[..., D]`: model space back to data space."""
    return x * self.std + self.mean

  def to_json(self):
    return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

  @classmethod
  def from_json(cls, d):
    return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def stats_to_json(stats):
  """A `Standardization` as a JSON-able dict, None for none (stored in checkpoint meta)."""
  return None if stats is None else stats.to_json()


def stats_from_json(d):
  """The inverse of `stats_to_json`."""
  return None if d is None else Standardization.from_json(d)


def same_stats(a, b):
  """Whether two `stats_to_json` dicts (or Nones) standardise alike, up to float rounding
  (moments computed by another backend may differ in the last bit)."""
  if a is None or b is None:
    return a is None and b is None
  return all(len(a[k]) == len(b[k]) and np.allclose(a[k], b[k], rtol=1e-6, atol=0)
             for k in ("mean", "std"))


def _standardization(mean, var):
  """From a mean and variance `[D]`; a constant dimension (variance 0) keeps std 1, as
  in scikit-learn, so it is shifted but not divided by zero."""
  std = np.sqrt(np.asarray(var, np.float64))
  return Standardization(np.asarray(mean, np.float32),
                         np.where(std > 0, std, 1.0).astype(np.float32))


def points_standardization(x):
  """The mean and (population, ddof 0) std of each column of `x` `[N, D]`, in float64."""
  x = np.asarray(x, np.float64)
  return _standardization(x.mean(0), x.var(0))


def mixture_standardization(mix):
  """The exact per-dimension mean and std of an `analytic.GaussianMixture`."""
  mean, var = mix.moments()
  return _standardization(np.asarray(mean, np.float64), np.asarray(var, np.float64))


def _sample_mixture(mix, key, index):
  """One mixture sample from `fold_in(key, index)`, `[D]`."""
  return mix.sample(jax.random.fold_in(key, index), 1)[0][0]


class PointSource:
  """Batches `[B, D]` that depend only on (key, step), so resumed runs see the same data.

  Either samples a built-in mixture afresh each step, or draws rows of a fixed
  array with replacement. Sample i of step s uses `fold_in(fold_in(key, s), i)`,
  so it is the same whatever the batch is split into. With `standardize`, batches
  are `stats.apply(x)`: `stats` holds the array's own mean and std, or the mixture's
  exact moments; without it `stats` is None and batches are the data as they are.
  """

  def __init__(self, *, batch_size, key, path="", mixture_name="ring8", mixture_params=None,
               standardize=False):
    self.batch_size = int(batch_size)
    self.key = key
    if path:
      points = load_points(path)
      self.points = jnp.asarray(points)
      self.mixture = None
      self.stats = points_standardization(points) if standardize else None
    else:
      self.points = None
      self.mixture = mixture(mixture_name, **(mixture_params or {}))
      self.stats = mixture_standardization(self.mixture) if standardize else None

  @property
  def dim(self):
    return self.points.shape[1] if self.points is not None else self.mixture.dim

  def batch(self, step):
    """The batch of training step `step`, `[B, D]`."""
    return _point_batch(self.batch_size, self.key, jnp.asarray(step, jnp.uint32), self.points,
                        self.mixture, self.stats)


# One program per batch size and data layout for every source of a process, the data
# passed as arguments: a jit per source recompiled at every run started in one process
# (a second for each train() call of a sweep or a test).
@functools.partial(jax.jit, static_argnums=0)
def _point_batch(batch_size, key, step, data, mix, stats):
  """Rows `fold_in(fold_in(key, step), i)`, i < batch_size, of `data` `[N, D]` (or
  samples of the mixture `mix` when `data` is None), standardised by `stats` if given."""
  key = jax.random.fold_in(key, step)
  index = jnp.arange(batch_size)
  if data is None:
    x = jax.vmap(lambda i: _sample_mixture(mix, key, i))(index)
  else:
    pick = lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, data.shape[0])
    x = data[jax.vmap(pick)(index)]
  return x if stats is None else stats.apply(x)
