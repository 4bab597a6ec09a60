"""Exact quality metrics for samples of a known mixture (`analytic.GaussianMixture`)."""
import jax
import jax.numpy as jnp


def transport_error(samples, reference, scale):
  """RMS distance between paired samples, over the data scale: sqrt(E||x - x*||^2) / scale.

  Args:
    samples: model outputs `[N, D]`.
    reference: exact flow-map images of the same noise, `[N, D]`.
    scale: the data's scale, e.g. `mixture.scale()`.
  """
  return jnp.sqrt(jnp.mean(jnp.sum((samples - reference) ** 2, -1))) / scale


def low_density_threshold(mixture, key, quantile=0.01, num=400_000):
  """log-density level below which a fraction `quantile` of the data's mass lies."""
  x, _ = mixture.sample(key, num)
  return jnp.quantile(mixture.log_prob(x), quantile)


def low_density_fraction(mixture, samples, threshold):
  """Fraction of samples whose data log-density is below `threshold`."""
  return jnp.mean(mixture.log_prob(samples) < threshold)


def mode_weights(mixture, samples):
  """Fraction of samples assigned to each mode (highest posterior at t = 0), `[K]`."""
  k = jnp.argmax(mixture.posterior(samples, 0.0), axis=-1)
  return jnp.bincount(k, length=mixture.weights.shape[0]) / samples.shape[0]


def mode_tv(mixture, samples):
  """Total variation 0.5 * sum_k |p_hat_k - w_k| between sampled and true mode weights."""
  return 0.5 * jnp.sum(jnp.abs(mode_weights(mixture, samples) - mixture.weights))


def mean_log_density(mixture, samples):
  """E log p_data(x) over the samples (higher is closer to the modes)."""
  return jnp.mean(mixture.log_prob(samples))


def sliced_wasserstein(key, a, b, num_projections=256):
  """Sliced 2-Wasserstein distance between two equal-size samples `[N, D]`."""
  if a.shape != b.shape:
    raise ValueError(f"samples must have equal shapes; got {a.shape} and {b.shape}.")
  theta = jax.random.normal(key, (a.shape[1], num_projections))
  theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
  pa, pb = jnp.sort(a @ theta, axis=0), jnp.sort(b @ theta, axis=0)
  return jnp.sqrt(jnp.mean((pa - pb) ** 2))


def toy_report(mixture, samples, exact, key, quantile=0.01):
  """All exact metrics for `samples` against `exact` (flow map of the same noise).

  Returns:
    dict of floats: transport_rms (over data scale), low_density_frac, mode_tv,
    mean_log_density, sliced_w2 (against fresh data), and the same figures for
    the exact map itself as `exact_*` where they apply.
  """
  key_thr, key_data, key_sw = jax.random.split(key, 3)
  thr = low_density_threshold(mixture, key_thr, quantile)
  data, _ = mixture.sample(key_data, samples.shape[0])
  out = {
      "transport_rms": transport_error(samples, exact, mixture.scale()),
      "low_density_frac": low_density_fraction(mixture, samples, thr),
      "mode_tv": mode_tv(mixture, samples),
      "mean_log_density": mean_log_density(mixture, samples),
      "sliced_w2": sliced_wasserstein(key_sw, samples, data),
      "exact_low_density_frac": low_density_fraction(mixture, exact, thr),
      "exact_mode_tv": mode_tv(mixture, exact),
  }
  return {k: float(v) for k, v in out.items()}
