"""Vector data `[N, D]`: the built-in mixtures and user arrays in `.npy` files."""
import os

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


def _sample_mixture(mix, key, index):
  """One mixture sample from `fold_in(key, index)`, `[D]`."""
  return mix.sample(jax.random.fold_in(key, index), 1)[0][0]


class PointSource:
  """Batches `[B, D]` that depend only on (key, step), so resumed runs see the same data.

  Either samples a built-in mixture afresh each step, or draws rows of a fixed
  array with replacement. Sample i of step s uses `fold_in(fold_in(key, s), i)`,
  so it is the same whatever the batch is split into.
  """

  def __init__(self, *, batch_size, key, path="", mixture_name="ring8", mixture_params=None):
    self.batch_size = int(batch_size)
    self.key = key
    if path:
      self.points = jnp.asarray(load_points(path))
      self.mixture = None
    else:
      self.points = None
      self.mixture = mixture(mixture_name, **(mixture_params or {}))
    self._batch = jax.jit(self._make_batch)

  @property
  def dim(self):
    return self.points.shape[1] if self.points is not None else self.mixture.dim

  def _make_batch(self, data, step):
    key = jax.random.fold_in(self.key, step)
    index = jnp.arange(self.batch_size)
    if data is None:
      return jax.vmap(lambda i: _sample_mixture(self.mixture, key, i))(index)
    pick = lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, data.shape[0])
    return data[jax.vmap(pick)(index)]

  def batch(self, step):
    """The batch of training step `step`, `[B, D]`."""
    return self._batch(self.points, jnp.asarray(step, jnp.uint32))
