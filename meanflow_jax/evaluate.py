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
from meanflow_jax.errors import ConfigError, NonFiniteError
from meanflow_jax.metrics import classifier as classifier_lib
from meanflow_jax.metrics import frechet, toy
from meanflow_jax.metrics import inception as inception_lib
from meanflow_jax.models import vae as vae_lib
from meanflow_jax.training import distributed, inference


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


class ToyScorer:
  """The exact metrics of samples of a known mixture, set up once: the noise, its exact
  flow-map images and the reference sample are computed here, and `rows` scores any
  sampler on them (so a run can be scored again and again as it trains).

  Args:
    mixture: the data's `analytic.GaussianMixture` (in data space).
    prior: the run's `priors.Prior`; data_stats: its `points.Standardization` or None.
    num: samples per NFE; seed: key of the noise and the reference.
  """

  def __init__(self, mixture, prior, data_stats=None, *, num=10_000, seed=0, flow_steps=256,
               batch=10_000):
    key_noise, key_reference = jax.random.split(jax.random.key(seed))
    self.mixture, self.batch = mixture, batch
    self.reference = toy.make_reference(mixture, key_reference, num)
    self.eps = prior.sample(key_noise, num, (mixture.dim,))
    self.exact = exact_images(mixture, self.eps, data_stats, flow_steps, batch)

  def rows(self, sampler, nfes, name, objective, progress=False):
    """(one row of metrics per NFE, {nfe: samples [num, D]}) of `sampler` (as
    `inference.make_sampler`'s, returning data space)."""
    rows, samples = [], {}
    num = self.eps.shape[0]
    for k in nfes:
      x, seconds = _timed_samples(sampler, self.eps, int(k), None, self.batch, progress,
                                  f"{name}, {k} NFE")
      samples[int(k)] = x
      row = {"objective": objective, "nfe": int(k), "method": name,
             "sample_s": seconds, "samples_per_s": num / seconds}
      row.update(toy.toy_report(self.mixture, x, self.exact, self.reference))
      rows.append(row)
    return rows, samples


def run_mixture(run, mixture=None):
  """The `analytic.GaussianMixture` a run's metrics are exact against: `mixture`, or a
  built-in mixture run's own; ConfigError for a run it cannot be."""
  source = run.config.data.source
  if mixture is None and source != "mixture":
    raise ConfigError(f"this run trained on data.source = {source!r}; exact metrics need a "
                      "built-in mixture (data.source = 'mixture'), or for points the mixture "
                      "they were drawn from (mixture=...).")
  if mixture is not None and source not in ("mixture", "points"):
    raise ConfigError(f"this run trained on data.source = {source!r}, not on vectors.")
  mixture = points.config_mixture(run.config.data) if mixture is None else mixture
  if tuple(run.data_shape) != (mixture.dim,):
    raise ConfigError(f"this run trained on data of shape {tuple(run.data_shape)}; the "
                      f"mixture has dimension {mixture.dim}.")
  return mixture


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
  config = run.config
  try:
    mixture = run_mixture(run, mixture)
  except ConfigError as e:
    raise ConfigError(f"{workdir}: {e}") from None
  scorer = ToyScorer(mixture, run.prior, run.data_stats, num=num, seed=seed,
                     flow_steps=flow_steps, batch=batch)
  sampler = inference.make_sampler(config, run.model, run.params, method=method,
                                   data_stats=run.data_stats)
  name = sampler_name(config.objective, method or config.sample.method)
  rows, samples = scorer.rows(sampler, nfes, name, config.objective, progress)
  return ToyEvaluation(rows, samples, np.asarray(scorer.exact), mixture)


class OneStepSlopes(NamedTuple):
  exact: np.ndarray        # [num] the exact map's slope at each noise point, over the data's scale
  model: np.ndarray        # [num] the run's 1-NFE map's slope at the same noise
  off_support: np.ndarray  # bool [num]: the 1-NFE sample of that noise lies below the
                           # data's 1 % log-density level (`low_density_frac`'s test)


def one_step_slopes(workdir, num=1000, seed=0, mixture=None, flow_steps=256, params=None):
  """How steep a run's 1-NFE map is against the exact map it learns, at the same noise,
  and which of its samples land off the support.

  Slopes are `toy.map_slopes` in data space over the data's scale: the largest singular
  value of d x / d eps at `num` noise points. Where the exact map needs slopes far beyond
  the network's, the network's map is smoother and leaves mass between the modes (the
  one-step obstruction); `toy.steep_share(exact, off_support)` says whether the samples
  off the support come from that noise. The noise and the density level are those of
  `evaluate_toy(workdir, [1], num=num, seed=seed)`, so `off_support.mean()` is its 1-NFE
  `low_density_frac`.

  Args:
    mixture: as in `evaluate_toy` (needed for a points run).

  Returns:
    a `OneStepSlopes` of numpy arrays.
  """
  run = inference.load_run(workdir, params=params)
  config = run.config
  mixture = points.config_mixture(config.data) if mixture is None else mixture
  stats = run.data_stats
  target = mixture if stats is None else mixture.standardized(stats.mean, stats.std)
  back = (lambda x: x) if stats is None else stats.invert
  # evaluate_toy's noise and density level (its exact images, a small cost, are unused)
  scorer = ToyScorer(mixture, run.prior, stats, num=num, seed=seed, flow_steps=flow_steps)
  eps, threshold = scorer.eps, scorer.reference.threshold
  exact_map = lambda e: back(target.flow_map(e, 1.0, 0.0, flow_steps))
  model_map = lambda e: back(inference.draw(config.objective, run.model, config.sample.method,
                                            run.params, e, 1, None))
  scale = float(mixture.scale())
  exact = jax.jit(lambda e: toy.map_slopes(exact_map, e))(eps)
  model = jax.jit(lambda e: toy.map_slopes(model_map, e))(eps)
  off = jax.jit(lambda e: mixture.log_prob(model_map(e)) < threshold)(eps)
  return OneStepSlopes(np.asarray(exact) / scale, np.asarray(model) / scale, np.asarray(off))


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


class _ImageMetrics:
  """The metrics of image samples, accumulated a batch at a time (nothing kept per
  sample) and combined over every process: `clf_fd`, `agreement`, `class_tv` from the
  project's classifier on labelled pixel data; `fid` with Inception weights."""

  def __init__(self, clf, real_stats, data_freq, features, fid_ref):
    self.clf, self.real_stats, self.data_freq = clf, real_stats, data_freq
    self.features, self.fid_ref = features, fid_ref

  def new(self):
    k = 0 if self.clf is None else self.clf.num_classes
    return {"clf": frechet.RunningStats(classifier_lib.FEATURE_DIM), "counts": np.zeros(k),
            "agree": 0.0, "asked": 0.0, "fid": frechet.RunningStats(inception_lib.FEATURE_DIM)}

  def add(self, acc, x, asked):
    """Counts images `x` `[B, H, W, C]` in [-1, 1], asked for classes `asked` `[B]` or None."""
    if self.clf is not None:
      feats, pred = self.clf.features_and_predictions(x)
      acc["clf"].update(feats)
      acc["counts"] += np.bincount(pred, minlength=self.clf.num_classes)
      if asked is not None:
        acc["agree"] += float(np.sum(pred == asked))
        acc["asked"] += pred.shape[0]
    if self.features is not None:
      acc["fid"].update(self.features(x))

  def row(self, acc):
    """The metrics of everything every process added (all processes call it together)."""
    out = {}
    if self.clf is not None:
      stats = _all_processes(acc["clf"])
      out["clf_fd"] = frechet.frechet_distance(*stats.gaussian(), *self.real_stats)
      counts = distributed.gather_float64(acc["counts"]).sum(0)
      out["class_tv"] = 0.5 * float(np.abs(counts / counts.sum() - self.data_freq).sum())
      agree, asked = distributed.gather_float64([acc["agree"], acc["asked"]]).sum(0)
      if asked:
        out["agreement"] = float(agree / asked)
    if self.features is not None:
      out["fid"] = frechet.frechet_distance(*_all_processes(acc["fid"]).gaussian(),
                                            *self.fid_ref)
    return out


def _all_processes(stats):
  """`frechet.RunningStats` of every process's features, merged in process order."""
  count, mean, m2 = (distributed.gather_float64(a) for a in stats.to_arrays())
  total = frechet.RunningStats(mean.shape[1])
  for c, m, s in zip(count, mean, m2):
    total.merge(frechet.RunningStats.from_arrays(c, m, s))
  return total


def _decoder(vae, source, latent_scale, batch):
  """`decode(samples) -> images in [-1, 1]` of a run's samples: the VAE decoder for a
  latents run (samples are latents times `latent_scale`), identity for pixels."""
  if source != "latents":
    if vae is not None:
      raise ConfigError(f"--vae decodes latents; this run trained on {source!r} pixels.")
    return lambda x: x
  if vae is None:
    raise ConfigError("this run trained on VAE latents: pass the VAE weights (--vae, see "
                      f"{vae_lib.CONVERTER}) to decode its samples into images.")
  params, vae_config = vae_lib.load_params(vae)
  decode = vae_lib.make_decoder(params, vae_config, batch_size=batch)
  # The run's latents are the VAE's times data.latent_scale; the decoder takes them times
  # its own scale (the same 0.18215 for SD-VAE, unless the run chose another).
  return lambda x: decode(np.asarray(x) * (vae_config.scale / latent_scale))


class ImageScorer:
  """The metrics of a run's image samples (`_ImageMetrics`), set up once: the classifier,
  the real data's statistics, the Inception network and reference, the VAE decoder;
  `rows` then scores any sampler (see `evaluate_images` for what is measured and how
  the work is split over processes).

  Args:
    data: the config's data section the samples are scored against.
    prior, data_shape, num_classes: the run's (`inference.Run`).
  """

  def __init__(self, data, prior, data_shape, num_classes, *, num=2_000, seed=0, batch=500,
               cache_dir=None, inception=None, ref=None, vae=None, progress=False):
    if batch < 1:
      raise ConfigError(f"batch must be >= 1; got {batch}.")
    d = data
    if d.source == "pairs":
      raise ConfigError("this run trained on stored pairs: pass the data they imitate "
                        "(data=the first run's config.data).")
    if d.source in ("mixture", "points"):
      raise ConfigError(f"this run trained on vectors ({d.source}); use evaluate_toy.")
    latents = d.source == "latents"
    if latents and inception is None:
      raise ConfigError("this run trained on VAE latents: it is scored by FID; pass Inception "
                        "weights (--inception) and the VAE (--vae).")
    self.decode = _decoder(vae, d.source, d.latent_scale, batch)
    # Weights first: a missing file fails before the data are read or a classifier trains.
    incep_params = None if inception is None else inception_lib.load_params(inception)
    real, labels, k = image_data.load_images(d.source, path=d.path,
                                             latent_scale=d.latent_scale)
    if labels is None and inception is None:
      raise ConfigError(f"the {d.source!r} data has no labels for the classifier metrics; "
                        "pass Inception weights (--inception) for FID.")
    floor, clf, real_stats, data_freq, features, fid_ref = {}, None, None, None, None, None
    if labels is not None and not latents:
      half_a, half_b = classifier_lib.split(real.shape[0], seed=1, holdout=0.5)
      clf = classifier_lib.load_or_train(real, labels, k, cache_dir=cache_dir)
      real_features = clf.features(real)
      real_stats = frechet.gaussian_stats(real_features)
      data_freq = np.bincount(labels, minlength=k) / labels.shape[0]
      floor.update(clf_fd=frechet.frechet_distance_features(real_features[half_a],
                                                            real_features[half_b]),
                   agreement=clf.accuracy,  # on real images the classifier did not train on
                   class_tv=0.0, classifier_heldout_accuracy=clf.accuracy)
    if inception is not None:
      features = inception_lib.make_feature_fn(incep_params, batch_size=min(100, num))
      if ref is not None:
        fid_ref = inception_lib.load_stats(ref)
      else:
        rows = np.arange(real.shape[0])
        if latents and real.shape[0] > num:  # a fixed subset: latents may be millions
          rows = np.sort(np.random.default_rng(0).choice(real.shape[0], num, replace=False))
        pixels = np.concatenate([self.decode(real[rows[i:i + batch]])
                                 for i in range(0, rows.shape[0], batch)])
        real_incep = features(pixels, progress=progress)
        fid_ref = inception_lib.reference_stats(real_incep)
        half_a, half_b = classifier_lib.split(real_incep.shape[0], seed=1, holdout=0.5)
        floor["fid"] = frechet.frechet_distance_features(real_incep[half_a], real_incep[half_b])
    self.metrics = _ImageMetrics(clf, real_stats, data_freq, features, fid_ref)
    self.floor, self.prior, self.data_shape = floor, prior, tuple(data_shape)
    self.num, self.batch, self.progress, self.key = num, batch, progress, jax.random.key(seed)
    # Classes the data has labels for (a model may have been built with spare ones).
    self.asked = (np.arange(num) % min(num_classes, k)
                  if num_classes and labels is not None else None)

  def rows(self, sampler, settings, name, objective, keep=None):
    """(one row per setting, {setting key: the first `keep` samples in pixels}) of
    `sampler`; `settings`: (key, nfe, guidance kwargs, description, row extras)."""
    num, batch, asked = self.num, self.batch, self.asked
    keep = num if keep is None else min(int(keep), num)
    starts = list(range(0, num, batch))
    main = jax.process_index() == 0
    rows, samples = [], {}
    for setting, k, guidance, what, extras in settings:

      def draw(i0, i1):
        y = None if asked is None else asked[i0:i1]
        eps = self.prior.sample(self.key, i1 - i0, self.data_shape, y, start=i0)
        x = np.asarray(sampler(eps, int(k), y, **guidance))
        if not np.all(np.isfinite(x)):
          raise NonFiniteError(f"the {what} samples contain NaN or inf.")
        return x

      draw(0, min(batch, num))  # compiles; not timed
      acc, kept, seconds = self.metrics.new(), [], 0.0
      share = distributed.process_share(len(starts))
      for b in (tqdm(share, desc=what, unit="batch", leave=False) if self.progress and main
                else share):
        i0, i1 = starts[b], min(starts[b] + batch, num)
        t0 = time.perf_counter()
        x = draw(i0, i1)
        seconds += time.perf_counter() - t0
        x = self.decode(x)
        self.metrics.add(acc, x, None if asked is None else asked[i0:i1])
        if i0 < keep and jax.process_count() == 1:
          kept.append(x[:keep - i0])
      if main and jax.process_count() > 1 and keep:  # the first samples, drawn again here
        kept = [self.decode(draw(i, min(i + batch, keep))) for i in range(0, keep, batch)]
      slowest = float(distributed.gather_float64(seconds).max())
      row = {"objective": objective, "nfe": int(k), "method": name, **extras,
             "sample_s": slowest, "samples_per_s": num / max(slowest, 1e-9)}
      row.update(self.metrics.row(acc))
      rows.append(row)
      if main and kept:
        samples[setting] = np.concatenate(kept)
    return rows, samples


def evaluate_images(workdir, nfes, *, num=2_000, seed=0, params=None, method=None, batch=500,
                    cache_dir=None, ema=None, inception=None, ref=None, progress=False,
                    data=None, omegas=None, interval=None, intervals=None, vae=None,
                    keep=None):
  """Quality of a run trained on images (or VAE latents), at each NFE in `nfes`.

  Sample i uses noise from `fold_in(key, i)` and, for a class-conditional run,
  class i mod K, so every NFE sees the same noise and labels, and any sample can
  be regenerated alone. In a multi-process job every process calls this together:
  each draws and scores every P-th batch of `batch` samples on its own devices, and
  the metrics combine every process's running sums (`frechet.RunningStats`, class
  counts), so the set of samples and the metrics do not depend on the number of
  processes or devices, and no host holds more than a batch of samples (plus `keep`).

  Metrics, for labelled data: `clf_fd` (Frechet distance to the real images in the
  features of the project's classifier; not FID), `agreement` (fraction
  classified as the asked class; conditional runs), `class_tv` (total variation
  between the predicted class frequencies and the data's). With `inception` (the
  path of converted FID Inception weights, `metrics.inception`): `fid` against
  the statistics in `ref` (an .npz of mu, sigma) or, without it, against the
  Inception statistics of the run's training data. `data`: the config's data
  section to score against instead of the run's own (a reflow run trained on
  stored pairs is scored against the images its pairs imitate). Every row also has
  `sample_s` (seconds the sampler took for the samples, slowest process) and
  `samples_per_s`.

  A run on VAE latents is scored by FID alone, on its samples decoded with the VAE
  weights `vae` (`models.vae`); without `ref`, against the Inception statistics of
  up to `num` of its training latents (a fixed random subset), decoded.

  `omegas`: a guidance-conditioned (iMF) run is sampled at each of these guidance
  scales (on `interval`, default the config's), all from one trained model, at the
  same noise: one row per (nfe, omega), with "omega" in the row; samples keyed
  (nfe, omega). None: the config's sample.omega, keyed by nfe alone. `intervals`: a
  list of (t_min, t_max) to sweep as well (instead of `interval`): one row per (nfe,
  omega, interval), with "t_min" and "t_max" in the row; samples keyed (nfe, omega,
  t_min, t_max).

  Args:
    keep: how many samples (the first ones, in pixels) to return per setting, e.g.
      for a grid; None: all `num` (held in host memory).

  Returns:
    an `ImageEvaluation`; its `samples` on process 0 only (empty elsewhere).
  """
  run = inference.load_run(workdir, params=params, ema=ema)
  config = run.config
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
  try:
    scorer = ImageScorer(data or config.data, run.prior, run.data_shape, run.num_classes,
                         num=num, seed=seed, batch=batch, cache_dir=cache_dir,
                         inception=inception, ref=ref, vae=vae, progress=progress)
  except ConfigError as e:
    raise ConfigError(f"{workdir}: {e}") from None
  sampler = inference.make_sampler(config, run.model, run.params, method=method)
  name = sampler_name(config.objective, method or config.sample.method)
  settings = []
  for k, w, span in itertools.product(nfes, omegas if sweep else [None], spans):
    guidance = {} if not sweep and interval is None else {"omega": w, "interval": span}
    what = (f"{name}, {k} NFE" + (f", omega {w:g}" if sweep else "")
            + (f" on [{span[0]:g}, {span[1]:g}]" if by_interval else ""))
    extras = ({"omega": float(w)} if sweep else {}) | (
        {"t_min": span[0], "t_max": span[1]} if by_interval else {})
    key = (int(k), float(w)) + (span if by_interval else ()) if sweep else int(k)
    settings.append((key, k, guidance, what, extras))
  try:
    rows, samples = scorer.rows(sampler, settings, name, config.objective, keep)
  except NonFiniteError as e:
    raise NonFiniteError(f"{workdir}: {e}") from None
  return ImageEvaluation(rows, samples, scorer.asked, scorer.floor)


def class_rows(samples, labels, num_classes, per_class):
  """The first `per_class` samples of each class, class by class: `[K * per_class, ...]`.

  `samples` may be the first rows only of those `labels` describe (an evaluation keeps
  the first K * per_class)."""
  labels = np.asarray(labels)[:samples.shape[0]]
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
  rows = [r for r in rows if "steps_per_s" in r]  # not the evaluation rows (train.eval_every)
  total, last = 0.0, 0
  for r in rows:
    total += (r["step"] - last) / r["steps_per_s"]
    last = r["step"]
  return total
