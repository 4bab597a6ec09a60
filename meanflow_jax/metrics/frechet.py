"""The Frechet distance between Gaussians fitted to two sets of features.

    d^2 = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr (S_1 S_2)^(1/2)

computed in float64. tr (S_1 S_2)^(1/2) is taken as the sum of square roots of the
eigenvalues of the symmetric PSD matrix S_1^(1/2) S_2 S_1^(1/2) (similar to S_1 S_2),
so no non-symmetric matrix square root and no complex round-off are involved.
"""
import numpy as np


def gaussian_stats(features):
  """Mean `[F]` and covariance `[F, F]` (unbiased) of `features` `[N, F]`, float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must have shape [N >= 2, F]; got {f.shape}.")
  if not np.all(np.isfinite(f)):
    raise ValueError("features contain NaN or inf (non-finite samples?).")
  return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(a):
  w, q = np.linalg.eigh((a + a.T) / 2)
  return (q * np.sqrt(np.clip(w, 0, None))) @ q.T


def trace_sqrt_product(sigma1, sigma2):
  """tr (S_1 S_2)^(1/2) for symmetric PSD `S_1`, `S_2`."""
  s = _sqrt_psd(np.asarray(sigma1, np.float64))
  m = s @ np.asarray(sigma2, np.float64) @ s
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(w, 0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"shapes do not match: mu {mu1.shape} vs {mu2.shape}, sigma "
                     f"{sigma1.shape} vs {sigma2.shape}.")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_features(f1, f2):
  """`frechet_distance` of Gaussians fitted to two feature sets `[N1, F]`, `[N2, F]`."""
  return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


class RunningStats:
  """Mean and covariance of features seen a batch at a time, without keeping them.

  Holds the count n, the mean `[F]` and M2 = sum (f - mean)(f - mean)^T `[F, F]` in
  float64, and merges two parts by Chan et al.'s pairwise update, so that any split of
  the features into batches (or processes) gives the same statistics up to float64
  rounding, and memory does not grow with the number of features.
  """

  def __init__(self, dim):
    self.count = 0
    self.mean = np.zeros(dim, np.float64)
    self.m2 = np.zeros((dim, dim), np.float64)

  @classmethod
  def of(cls, features):
    """The statistics of one block of features `[N, F]`."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
      raise ValueError(f"features must have shape [N, F]; got {f.shape}.")
    if not np.all(np.isfinite(f)):
      raise ValueError("features contain NaN or inf (non-finite samples?).")
    s = cls(f.shape[1])
    if f.shape[0]:
      s.count, s.mean = f.shape[0], f.mean(0)
      c = f - s.mean
      s.m2 = c.T @ c
    return s

  def merge(self, other):
    """Self updated in place with `other`'s features counted too; returns self."""
    if other.mean.shape != self.mean.shape:
      raise ValueError(f"feature dimensions differ: {self.mean.shape[0]} vs "
                       f"{other.mean.shape[0]}.")
    n = self.count + other.count
    if other.count:
      delta = other.mean - self.mean
      self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
      self.mean = self.mean + delta * (other.count / n)
      self.count = n
    return self

  def update(self, features):
    """Self with the features `[N, F]` added; returns self."""
    return self.merge(RunningStats.of(features))

  def gaussian(self):
    """(mu `[F]`, unbiased sigma `[F, F]`), as `gaussian_stats` of all features seen."""
    if self.count < 2:
      raise ValueError(f"need at least 2 features for a covariance; have {self.count}.")
    return self.mean.copy(), self.m2 / (self.count - 1)

  def to_arrays(self):
    """(count, mean, m2) as numpy arrays (for gathering across processes)."""
    return np.float64(self.count), self.mean, self.m2

  @classmethod
  def from_arrays(cls, count, mean, m2):
    s = cls(np.shape(mean)[0])
    s.count, s.mean, s.m2 = int(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64)
    return s
