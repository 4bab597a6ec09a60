"""Source distributions and couplings: what sits at t = 1 and how it is paired with data.

Training draws a batch of data x and pairs each row with a source sample eps;
the path z_t = (1 - t) x + t eps is straight for every pair, but the marginal
flow is only straight when the pairs do not cross. Three choices:

- "gaussian" + "independent": eps ~ N(0, I) drawn independently of x (the default).
- "gaussian" + "minibatch_ot": the same eps, re-assigned to the rows of x by the
  exact optimal assignment of the batch (min sum_i ||x_i - eps_sigma(i)||^2,
  scipy's `linear_sum_assignment`); inference is unchanged (eps ~ N(0, I)).
- "lowfreq" (images): eps = U(D(x)) + noise_std * xi, the low-frequency
  projection of the image (average-pool by `factor`, nearest upsample: an
  orthogonal projection) plus Gaussian noise, so each eps is paired with its own
  image. At inference the low-frequency coefficients D(x) are drawn from a
  Gaussian fitted to the training data (one per class for conditional models,
  plus a pooled one for the null class), then upsampled and noised the same way.

Sample i of a batch uses `fold_in(key, i)` only, so the source does not depend on
the batch split (minibatch OT couples the whole, global, batch).
"""
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from meanflow_jax import paths
from meanflow_jax.errors import ConfigError, DataError

NAMES = ("gaussian", "lowfreq")
COUPLINGS = ("independent", "minibatch_ot")
STATS_FILE = "prior.npz"


def downsample(x, factor):
  """Average pool of images `[B, H, W, C]` over `factor x factor` blocks -> `[B, H/f, W/f, C]`."""
  b, h, w, c = x.shape
  if h % factor or w % factor:
    raise ValueError(f"images of size {h}x{w} do not split into {factor}x{factor} blocks.")
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample(c, factor):
  """Nearest-neighbour upsample `[B, h, w, C]` -> `[B, h*f, w*f, C]` (the adjoint of the
  pool up to 1/f^2, so upsample(downsample(.)) is an orthogonal projection)."""
  return jnp.repeat(jnp.repeat(c, factor, axis=1), factor, axis=2)


def lowpass(x, factor):
  """U(D(x)): the blockwise mean of each image, same shape as `x`."""
  return upsample(downsample(x, factor), factor)


def ot_assignment(x, eps):
  """sigma `[B]` int32 minimising sum_i ||x_i - eps_sigma(i)||^2 (exact, on the host).

  Traceable: the assignment runs in a `jax.pure_callback`, on the whole batch.
  """
  b = x.shape[0]
  xf, ef = x.reshape(b, -1), eps.reshape(b, -1)
  # ||x||^2 is the same for every assignment of a row; only -2 x.eps + ||eps||^2 matter.
  cost = jnp.sum(ef ** 2, -1)[None, :] - 2.0 * xf @ ef.T

  def solve(c):
    c = np.asarray(c, np.float64)
    import scipy.optimize  # here: importing it adds 0.7 s to every script's start
    _, cols = scipy.optimize.linear_sum_assignment(c)
    return cols.astype(np.int32)

  return jax.pure_callback(solve, jax.ShapeDtypeStruct((b,), jnp.int32), cost)


class LowFreqStats(NamedTuple):
  """Gaussians over the flattened low-frequency coefficients D(x) of the data."""
  mean: np.ndarray   # [K + 1, d]; row K (the null class) is fitted on all the data
  chol: np.ndarray   # [K + 1, d, d], Cholesky factors of the covariances
  shape: tuple       # (h, w, C) of the coefficients


def fit_lowfreq(x, y, num_classes, factor, jitter=1e-4):
  """Fits the inference-time Gaussians of the low-frequency coefficients.

  Args:
    x: images `[N, H, W, C]`; y: int labels `[N]` (ignored when num_classes = 0).
    num_classes: K; 0 fits the pooled Gaussian only.
    jitter: added to the covariance diagonal (few images per class, many coefficients).

  Returns:
    `LowFreqStats` with K + 1 Gaussians.
  """
  c = np.asarray(downsample(jnp.asarray(x, jnp.float32), factor), np.float64)
  shape = c.shape[1:]
  c = c.reshape(c.shape[0], -1)
  d = c.shape[1]

  def gaussian(rows):
    if rows.shape[0] < 2:
      raise DataError(f"fitting the low-frequency prior needs at least 2 images per class; "
                      f"got {rows.shape[0]}.")
    cov = np.cov(rows, rowvar=False).reshape(d, d) + jitter * np.eye(d)
    return rows.mean(0), np.linalg.cholesky(cov)

  groups = [c[np.asarray(y) == k] for k in range(num_classes)] + [c]
  fitted = [gaussian(g) for g in groups]
  return LowFreqStats(np.stack([m for m, _ in fitted]).astype(np.float32),
                      np.stack([l for _, l in fitted]).astype(np.float32), tuple(shape))


class Prior(NamedTuple):
  """The source distribution of a run. `couple` for training, `sample` for inference."""
  name: str = "gaussian"
  coupling: str = "independent"
  factor: int = 2
  noise_std: float = 0.5
  stats: Optional[LowFreqStats] = None

  def couple(self, key, x):
    """Source samples paired with the rows of `x` `[B, ...]`: eps `[B, ...]` (traceable)."""
    noise = paths.sample_noise(key, x.shape[0], x.shape[1:], x.dtype)
    if self.name == "lowfreq":
      return lowpass(x, self.factor) + self.noise_std * noise
    if self.coupling == "minibatch_ot":
      return noise[ot_assignment(x, noise)]
    return noise

  def sample(self, key, num, shape, y=None, start=0):
    """Inference-time source samples `[num, *shape]`; `y` int `[num]` picks the class
    Gaussian of the low-frequency prior (None or K: the pooled one). Sample i depends
    on `fold_in(key, start + i)` alone: rows `start:start + num` of a larger draw."""
    shape = tuple(shape)
    if self.name != "lowfreq":
      return paths.sample_noise(key, num, shape, start=start)
    s = self.stats
    if s is None:
      raise ConfigError("the low-frequency prior needs its fitted statistics (prior.npz).")
    k = s.mean.shape[0] - 1
    y = jnp.full((num,), k, jnp.int32) if y is None else jnp.asarray(y, jnp.int32)
    mean, chol = jnp.asarray(s.mean)[y], jnp.asarray(s.chol)[y]  # [num, d], [num, d, d]

    def one(i, m, l):
      key_c, key_n = jax.random.split(jax.random.fold_in(key, i))
      coef = m + l @ jax.random.normal(key_c, m.shape)
      return coef, jax.random.normal(key_n, shape)

    coef, noise = jax.vmap(one)(start + jnp.arange(num), mean, chol)
    low = upsample(coef.reshape((num,) + s.shape), self.factor)
    return low + self.noise_std * noise


def check_prior_config(c, data_shape=None):
  """Raises ConfigError for a prior section that cannot work (with this data)."""
  p = c.prior
  if p.name not in NAMES:
    raise ConfigError(f"prior.name = {p.name!r} is not one of {NAMES}.")
  if p.coupling not in COUPLINGS:
    raise ConfigError(f"prior.coupling = {p.coupling!r} is not one of {COUPLINGS}.")
  if p.name == "lowfreq":
    if p.coupling != "independent":
      raise ConfigError("prior.name = 'lowfreq' pairs each image with its own projection; "
                        "set prior.coupling = 'independent' (the default).")
    if p.factor < 1 or p.noise_std <= 0 or p.fit_examples < 2:
      raise ConfigError(f"the low-frequency prior needs prior.factor >= 1, prior.noise_std > 0 "
                        f"and prior.fit_examples >= 2; got {p.factor}, {p.noise_std}, "
                        f"{p.fit_examples}.")
    if data_shape is not None:
      if len(data_shape) != 3:
        raise ConfigError(f"prior.name = 'lowfreq' needs images [H, W, C]; the data has shape "
                          f"{tuple(data_shape)}.")
      h, w, _ = data_shape
      if h % p.factor or w % p.factor:
        raise ConfigError(f"prior.factor = {p.factor} does not divide the {h}x{w} images.")


def fit_from_source(config, source):
  """`LowFreqStats` from the first `prior.fit_examples` examples of the training stream."""
  x, y, n, step = [], [], 0, 0
  while n < config.prior.fit_examples:
    xb, yb = source.batch(step)[:2]
    x.append(np.asarray(xb))
    y.append(np.asarray(yb))
    n += xb.shape[0]
    step += 1
  x = np.concatenate(x)[:config.prior.fit_examples]
  y = np.concatenate(y)[:config.prior.fit_examples]
  k = source.num_classes if config.model.num_classes else 0
  return fit_lowfreq(x, y, k, config.prior.factor)


def save_stats(path, stats):
  np.savez(path, mean=stats.mean, chol=stats.chol, shape=np.asarray(stats.shape))


def load_stats(path):
  if not os.path.exists(path):
    raise ConfigError(f"{path}: missing; a low-frequency-prior run writes its fitted prior "
                      "there when training starts.")
  with np.load(path) as f:
    return LowFreqStats(f["mean"], f["chol"], tuple(int(s) for s in f["shape"]))


def from_config(config, stats=None):
  """The `Prior` of `config.prior` (with fitted `stats` for the low-frequency prior)."""
  p = config.prior
  return Prior(p.name, p.coupling, int(p.factor), float(p.noise_std), stats)
