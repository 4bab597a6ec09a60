"""Exact quality metrics for samples of a known mixture (`analytic.GaussianMixture`)."""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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
  return _sliced(_unit_directions(key, a.shape[1], num_projections), a, b)


def map_slopes(map_fn, eps):
  """The largest singular value of the Jacobian d map(eps) / d eps at each noise point, `[N]`.

  How much a one-step map from noise to data stretches the noise. Splitting N(0, I)
  into modes separated by empty gaps needs a steep map at the noise that lands near the
  gaps (the exact map's slope grows like exp(gap^2 / (8 std^2)) for two modes, see
  scripts/study_obstruction.py); a network whose slope stays lower must leave mass in
  the gaps. Divide by the data's scale to compare mixtures.

  Args:
    map_fn: `[B, D] -> [B, D]`, row by row (each output row depends on its own input row).
    eps: noise `[N, D]`.
  """
  jac = jax.vmap(jax.jacfwd(lambda e: map_fn(e[None])[0]))(eps)  # [N, D, D]
  return jnp.linalg.norm(jac, ord=2, axis=(-2, -1))


def steep_share(slopes, flagged):
  """The share of the flagged points that lie among the k = flagged.sum() steepest points.

  With `slopes` the exact one-step map's slope at each noise point and `flagged` the
  noise whose model sample fell off the support: 1 when every such sample comes from the
  noise the exact map stretches most (where a smoother map must leave mass between the
  modes, the one-step obstruction), about k / N when where they come from has nothing to
  do with the stretch. NaN when nothing is flagged.

  Args:
    slopes: `[N]`; flagged: bool `[N]`.
  """
  slopes, flagged = np.asarray(slopes), np.asarray(flagged, bool)
  if slopes.shape != flagged.shape or slopes.ndim != 1:
    raise ValueError(f"slopes and flagged must be equal [N]; got {slopes.shape} and "
                     f"{flagged.shape}.")
  k = int(flagged.sum())
  if k == 0:
    return float("nan")
  steepest = np.argsort(-slopes, kind="stable")[:k]
  return float(flagged[steepest].sum() / k)


class Reference(NamedTuple):
  """What every report on one mixture shares: computed once, reused for each model."""
  threshold: jax.Array   # low-density log-density level
  data: jax.Array        # fresh data samples `[N, D]` for the sliced distance
  projections: jax.Array  # unit directions `[D, P]` of the sliced distance


# One compiled program each: op by op, the metrics compiled ~150 small kernels per process.
@functools.partial(jax.jit, static_argnames=("num", "quantile", "num_projections"))
def make_reference(mixture, key, num, quantile=0.01, num_projections=256):
  """The `Reference` of `mixture` with `num` data samples (static)."""
  key_thr, key_data, key_proj = jax.random.split(key, 3)
  return Reference(threshold=low_density_threshold(mixture, key_thr, quantile),
                   data=mixture.sample(key_data, num)[0],
                   projections=_unit_directions(key_proj, mixture.dim, num_projections))


def _unit_directions(key, dim, num):
  """`num` directions uniform on the sphere in R^dim, as columns `[dim, num]`."""
  theta = jax.random.normal(key, (dim, num))
  return theta / jnp.linalg.norm(theta, axis=0, keepdims=True)


def _sliced(theta, a, b):
  """The sliced distance of `a` and `b` `[N, D]` along the columns of `theta`, in float64
  on the host: XLA's CPU sort of the `[N, P]` projections took 3 s where numpy's takes 0.15."""
  theta = np.asarray(theta, np.float64)
  pa = np.sort(np.asarray(a, np.float64) @ theta, axis=0)
  pb = np.sort(np.asarray(b, np.float64) @ theta, axis=0)
  return float(np.sqrt(np.mean((pa - pb) ** 2)))


def toy_report(mixture, samples, exact, reference):
  """All exact metrics for `samples` against `exact` (flow map of the same noise).

  Args:
    reference: a `Reference` of this mixture with as many data samples as `samples`;
      sharing it between models makes their figures differ only by the samples.

  Returns:
    dict of floats: transport_rms (over data scale), low_density_frac, mode_tv,
    mean_log_density, sliced_w2 (against fresh data), and the same figures for
    the exact map itself as `exact_*` where they apply.
  """
  report = {k: float(v) for k, v in _report(mixture, samples, exact, reference).items()}
  report["sliced_w2"] = _sliced(reference.projections, samples, reference.data)
  return {k: report[k] for k in _REPORT_KEYS}


_REPORT_KEYS = ("transport_rms", "low_density_frac", "mode_tv", "mean_log_density", "sliced_w2",
                "exact_low_density_frac", "exact_mode_tv")


@jax.jit
def _report(mixture, samples, exact, reference):
  """The report's figures but the sliced distance (sorted on the host, `_sliced`)."""
  return {
      "transport_rms": transport_error(samples, exact, mixture.scale()),
      "low_density_frac": low_density_fraction(mixture, samples, reference.threshold),
      "mode_tv": mode_tv(mixture, samples),
      "mean_log_density": mean_log_density(mixture, samples),
      "exact_low_density_frac": low_density_fraction(mixture, exact, reference.threshold),
      "exact_mode_tv": mode_tv(mixture, exact),
  }
