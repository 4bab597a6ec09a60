"""Evaluating trained runs: per-sample noise, samples at several NFE, quality metrics.

Runs on a built-in mixture are scored exactly against the probability-flow map;
runs on labelled images with the project's classifier (`metrics.classifier`).
"""
import functools
import itertools
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from meanflow_jax import objectives
from meanflow_jax.data import images as image_data
from meanflow_jax.data import points
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import classifier as classifier_lib
from meanflow_jax.metrics import frechet, toy
from meanflow_jax.metrics import inception as inception_lib
from meanflow_jax.training import inference


class ToyEvaluation(NamedTuple):
  rows: list       # one dict of metrics per NFE
  samples: dict    # nfe -> samples [num, D], in data space
  exact: object    # exact flow-map images of the same noise [num, D], in data space
  mixture: object  # the analytic.GaussianMixture of the data (in data space)


def exact_images(mixture, eps, data_stats=None, flow_steps=256, batch=10_000):
  """The exact probability-flow map's images Phi_{1 -> 0}(eps) `[N, D]`, in data space, of
  the flow a run learns: for a run that standardised its data, the flow of the
  standardised mixture (noise N(0, I) in that space), mapped back.

  Args:
    mixture: the data's `analytic.GaussianMixture`.
    eps: noise `[N, D]`.
    data_stats: the run's `points.Standardization`, or None.
  """
  target = mixture if data_stats is None else mixture.standardized(data_stats.mean,
                                                                   data_stats.std)
  flow = jax.jit(lambda e: target.flow_map(e, 1.0, 0.0, flow_steps))
  x = jnp.concatenate([flow(eps[i:i + batch]) for i in range(0, eps.shape[0], batch)])
  return x if data_stats is None else data_stats.invert(x)


def evaluate_toy(workdir, nfes, *, num=10_000, seed=0, params=None, method=None,
                 flow_steps=256, batch=10_000, ema=None, progress=False, mixture=None):
  """Exact metrics of a run trained on a known mixture, at each NFE in `nfes`.

  Every NFE uses the same noise; the reference is the exact probability-flow map
  of that noise (RK4 with `flow_steps` steps on the exact mixture velocity) of the
  flow the run learns (`exact_images`). Samples, reference and metrics are in data
  space. Rows also hold `sample_s` (seconds to draw the `num` samples) and
  `samples_per_s`.

  Args:
    mixture: the `analytic.GaussianMixture` the data were drawn from: needed for a run on
      points (data.source = "points", e.g. samples of `points.random_mixture` saved to a
      .npy); None takes a built-in mixture run's own.

  Returns:
    a `ToyEvaluation`.
  """
  run = inference.load_run(workdir, params=params, ema=ema)
  config, model, p = run.config, run.model, run.params
  source = config.data.source
  if mixture is None and source != "mixture":
    raise ConfigError(f"{workdir} trained on data.source = {source!r}; exact metrics need a "
                      "built-in mixture (data.source = 'mixture'), or for points the mixture "
                      "they were drawn from (mixture=...).")
  if mixture is not None and source not in ("mixture", "points"):
    raise ConfigError(f"{workdir} trained on data.source = {source!r}, not on vectors.")
  mixture = points.config_mixture(config.data) if mixture is None else mixture
  if tuple(run.data_shape) != (mixture.dim,):
    raise ConfigError(f"{workdir} trained on data of shape {tuple(run.data_shape)}; the "
                      f"mixture has dimension {mixture.dim}.")
  key_noise, key_reference = jax.random.split(jax.random.key(seed))
  reference = toy.make_reference(mixture, key_reference, num)
  eps = run.prior.sample(key_noise, num, (mixture.dim,))
  exact = exact_images(mixture, eps, run.data_stats, flow_steps, batch)
  sampler = inference.make_sampler(config, model, p, method=method, data_stats=run.data_stats)
  rows, samples = [], {}
  for k in nfes:
    name = sampler_name(config.objective, method or config.sample.method)
    x, seconds = _timed_samples(sampler, eps, int(k), None, batch, progress, f"{name}, {k} NFE")
    samples[int(k)] = x
    row = {"objective": config.objective, "nfe": int(k), "method": name,
           "sample_s": seconds, "samples_per_s": num / seconds}
    row.update(toy.toy_report(mixture, x, exact, reference))
    rows.append(row)
  return ToyEvaluation(rows, samples, np.asarray(exact), mixture)


def one_step_slopes(workdir, num=1000, seed=0, mixture=None, flow_steps=256, params=None):
  """How steep a run's 1-NFE map is against the exact map it learns, at the same noise.

  Both are `toy.map_slopes` in data space over the data's scale: the largest singular
  value of d x / d eps at `num` noise points drawn with key `seed`. Where the exact map
  needs slopes far beyond the network's, the network's map is smoother and leaves mass
  between the modes (the one-step obstruction).

  Args:
    mixture: as in `evaluate_toy` (needed for a points run).

  Returns:
    (exact slopes `[num]`, model slopes `[num]`), numpy.
  """
  run = inference.load_run(workdir, params=params)
  config = run.config
  mixture = points.config_mixture(config.data) if mixture is None else mixture
  stats = run.data_stats
  target = mixture if stats is None else mixture.standardized(stats.mean, stats.std)
  back = (lambda x: x) if stats is None else stats.invert
  eps = run.prior.sample(jax.random.key(seed), num, (mixture.dim,))
  exact_map = lambda e: back(target.flow_map(e, 1.0, 0.0, flow_steps))
  model_map = lambda e: back(inference.draw(config.objective, run.model, config.sample.method,
                                            run.params, e, 1, None))
  scale = float(mixture.scale())
  exact = jax.jit(lambda e: toy.map_slopes(exact_map, e))(eps)
  model = jax.jit(lambda e: toy.map_slopes(model_map, e))(eps)
  return np.asarray(exact) / scale, np.asarray(model) / scale


class ImageEvaluation(NamedTuple):
  rows: list       # one dict of metrics per NFE
  samples: dict    # nfe -> samples [num, H, W, C] in [-1, 1]
  labels: object   # the class asked of sample i, [num] (i mod K), or None
  floor: dict      # the metrics of real data against itself (two halves)


def sampler_name(objective, method):
  """The sampler's name in result tables ("meanflow", "fm-euler", ...)."""
  return objectives.get(objective).sampler_name(method)


def _timed_samples(sampler, eps, nfe, labels, batch, progress, what, **guidance):
  """Samples of every noise row in batches, and the seconds they took (compilation,
  done on the first batch beforehand, excluded; the median of up to 5 passes while
  they take under 0.5 s in all). `guidance`: omega, interval of an iMF sampler."""
  num = eps.shape[0]
  sampler = functools.partial(sampler, **guidance) if guidance else sampler
  y = lambda i: None if labels is None else labels[i:i + batch]
  jax.block_until_ready(sampler(eps[:batch], nfe, y(0)))
  starts = range(0, num, batch)
  if progress:
    starts = tqdm(starts, desc=what, unit="batch", leave=False)
  draw = lambda starts: np.concatenate([np.asarray(p) for p in
                                        [sampler(eps[i:i + batch], nfe, y(i)) for i in starts]])
  t0 = time.perf_counter()
  x = draw(starts)
  seconds = [time.perf_counter() - t0]
  while sum(seconds) < 0.5 and len(seconds) < 5:  # fast samplers: the median of a few passes
    t0 = time.perf_counter()
    draw(range(0, num, batch))
    seconds.append(time.perf_counter() - t0)
  return x, float(np.median(seconds))


def evaluate_images(workdir, nfes, *, num=2_000, seed=0, params=None, method=None, batch=500,
                    cache_dir=None, ema=None, inception=None, ref=None, progress=False,
                    data=None, omegas=None, interval=None, intervals=None):
  """Quality of a run trained on images, at each NFE in `nfes`.

  Sample i uses noise from `fold_in(key, i)` and, for a class-conditional run,
  class i mod K, so every NFE sees the same noise and labels, and any sample can
  be regenerated alone. Batches are split over this process's devices.

  Metrics, for labelled data: `clf_fd` (Frechet distance to the real images in the
  features of the project's classifier; not FID), `agreement` (fraction
  classified as the asked class; conditional runs), `class_tv` (total variation
  between the predicted class frequencies and the data's). With `inception` (the
  path of converted FID Inception weights, `metrics.inception`): `fid` against
  the statistics in `ref` (an .npz of mu, sigma) or, without it, against the
  Inception statistics of the run's training data. `data`: the config's data
  section to score against instead of the run's own (a reflow run trained on
  stored pairs is scored against the images its pairs imitate). Every row also has
  `sample_s` (seconds to draw the `num` samples) and `samples_per_s`.

  `omegas`: a guidance-conditioned (iMF) run is sampled at each of these guidance
  scales (on `interval`, default the config's), all from one trained model, at the
  same noise: one row per (nfe, omega), with "omega" in the row; samples keyed
  (nfe, omega). None: the config's sample.omega, keyed by nfe alone. `intervals`: a
  list of (t_min, t_max) to sweep as well (instead of `interval`): one row per (nfe,
  omega, interval), with "t_min" and "t_max" in the row; samples keyed (nfe, omega,
  t_min, t_max).

  Returns:
    an `ImageEvaluation`.
  """
  run = inference.load_run(workdir, params=params, ema=ema)
  config = run.config
  d = data or config.data
  if d.source == "pairs":
    raise ConfigError(f"{workdir} trained on stored pairs: pass the data they imitate "
                      "(data=the first run's config.data).")
  if d.source in ("mixture", "points"):
    raise ConfigError(f"{workdir} trained on vectors ({d.source}); use evaluate_toy.")
  if d.source == "latents":
    raise ConfigError(f"{workdir} trained on VAE latents: the metrics need pixels (decode the "
                      "samples with the VAE, then compute FID on the images).")
  real, labels, num_classes = image_data.load_images(d.source, path=d.path,
                                                     latent_scale=d.latent_scale)
  if labels is None and inception is None:
    raise ConfigError(f"{workdir}: the {d.source!r} data has no labels for the classifier "
                      "metrics; pass Inception weights (--inception) for FID.")
  half_a, half_b = classifier_lib.split(real.shape[0], seed=1, holdout=0.5)
  floor = {}
  if labels is not None:
    clf = classifier_lib.load_or_train(real, labels, num_classes, cache_dir=cache_dir)
    real_features = clf.features(real)
    real_stats = frechet.gaussian_stats(real_features)
    data_freq = np.bincount(labels, minlength=num_classes) / labels.shape[0]
    floor.update(clf_fd=frechet.frechet_distance_features(real_features[half_a],
                                                          real_features[half_b]),
                 agreement=clf.accuracy,  # on real images the classifier did not train on
                 class_tv=0.0, classifier_heldout_accuracy=clf.accuracy)
  if inception is not None:
    features = inception_lib.make_feature_fn(inception_lib.load_params(inception),
                                            batch_size=min(100, num))
    if ref is not None:
      fid_ref = inception_lib.load_stats(ref)
    else:
      real_incep = features(real, progress=progress)
      fid_ref = inception_lib.reference_stats(real_incep)
      floor["fid"] = frechet.frechet_distance_features(real_incep[half_a], real_incep[half_b])

  # Classes the data has labels for (a model may have been built with spare ones).
  asked = (np.arange(num) % min(run.num_classes, num_classes)
           if run.num_classes and labels is not None else None)
  eps = run.prior.sample(jax.random.key(seed), num, run.data_shape, asked)
  sampler = inference.make_sampler(config, run.model, run.params, method=method)
  name = sampler_name(config.objective, method or config.sample.method)
  rows, samples = [], {}
  if interval is not None and intervals is not None:
    raise ConfigError("pass one guidance interval (interval) or a sweep (intervals), not both.")
  by_interval = intervals is not None
  sweep = omegas is not None or by_interval
  if by_interval and omegas is None:
    omegas = [config.sample.omega]
  spans = [tuple(map(float, i)) for i in intervals] if by_interval else [interval]
  if sweep or interval is not None:
    for span in spans:  # every value checked before the first sample is drawn
      inference.check_guidance(config, omegas[0] if sweep else None, span)
  for k, w, span in itertools.product(nfes, omegas if sweep else [None], spans):
    guidance = {} if not sweep and interval is None else {"omega": w, "interval": span}
    what = (f"{name}, {k} NFE" + (f", omega {w:g}" if sweep else "")
            + (f" on [{span[0]:g}, {span[1]:g}]" if by_interval else ""))
    x, seconds = _timed_samples(sampler, eps, int(k), asked, batch, progress, what, **guidance)
    if not np.all(np.isfinite(x)):
      raise ConfigError(f"{workdir}: the {what} samples contain NaN or inf.")
    key = (int(k), float(w)) + (span if by_interval else ()) if sweep else int(k)
    samples[key] = x
    row = {"objective": config.objective, "nfe": int(k), "method": name,
           "sample_s": seconds, "samples_per_s": num / seconds}
    if sweep:
      row["omega"] = float(w)
    if by_interval:
      row["t_min"], row["t_max"] = span
    if labels is not None:
      feats, pred = clf.features_and_predictions(x)
      row["clf_fd"] = frechet.frechet_distance(*frechet.gaussian_stats(feats), *real_stats)
      row["class_tv"] = 0.5 * float(np.abs(np.bincount(pred, minlength=num_classes)
                                            / pred.shape[0] - data_freq).sum())
      if asked is not None:
        row["agreement"] = float(np.mean(pred == asked))
    if inception is not None:
      row["fid"] = frechet.frechet_distance(
          *inception_lib.reference_stats(features(x, progress=progress)), *fid_ref)
    rows.append(row)
  return ImageEvaluation(rows, samples, asked, floor)


def class_rows(samples, labels, num_classes, per_class):
  """The first `per_class` samples of each class, class by class: `[K * per_class, ...]`."""
  return np.concatenate([samples[labels == c][:per_class] for c in range(num_classes)])


def markdown_table(rows, columns):
  """A Markdown table of `rows` (dicts) with the given columns; floats to 4 decimals,
  or 3 significant digits below 1e-3 (so a small value does not read as 0)."""
  fmt = lambda v: ((f"{v:.3g}" if 0 < abs(v) < 1e-3 else f"{v:.4f}") if isinstance(v, float)
                   else str(v))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def training_seconds(workdir):
  """Seconds spent in training steps, from the run's metrics.jsonl (resume-proof).

  Sums each logged interval's steps over its measured steps/s; compilation and
  checkpoint waits are not included.
  """
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if l.strip()]
  total, last = 0.0, 0
  for r in rows:
    total += (r["step"] - last) / r["steps_per_s"]
    last = r["step"]
  return total
