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
