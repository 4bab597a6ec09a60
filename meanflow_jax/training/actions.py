"""What the training loop does every so many steps besides the step: sample grids,
evaluations. Each is a `PeriodicAction`; the loop runs the list of them after every
step (`due` says when), so a new one is added here, not in the loop body.

Every process runs every action (an evaluation combines every process's share);
process 0 alone writes files and logs.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from meanflow_jax import evaluate, objectives, plotting
from meanflow_jax.training import builders, inference, sharding
from meanflow_jax.training import checkpoint as ckpt_lib

PREVIEW_STREAM = 2 ** 31 - 1  # fold_in index of the preview noise: no other use of the seed has it


class PeriodicAction:
  """Runs `run(step, state)` after every `every`-th step (0: never), and after the last
  step too if `at_end`."""

  def __init__(self, every, last_step, at_end=False):
    self.every, self.last_step, self.at_end = int(every), int(last_step), at_end

  def due(self, step):
    return self.every > 0 and (step % self.every == 0 or (self.at_end
                                                          and step == self.last_step))

  def run(self, step, state):
    raise NotImplementedError

  def close(self):
    pass


def sample_params(config, state):
  """The parameters a run samples with: the first EMA copy or the raw ones."""
  return state.ema_params[0] if config.sample.params == "ema" else state.params


# ------------------------------------------------------------------------------ previews


def _preview_inputs(config, source, prior):
  """(noise [M, ...], labels [M] or None) of the sample grids written during training:
  the same noise at every interval, so the grids show one model changing."""
  k = source.num_classes if config.model.num_classes else 0
  per_class = config.sample.grid_per_class
  m = k * per_class if k else (config.sample.num_plot if len(source.shape) == 1 else 64)
  key = jax.random.fold_in(jax.random.key(config.seed), PREVIEW_STREAM)
  y = jnp.repeat(jnp.arange(k, dtype=jnp.int32), per_class) if k else None
  return prior.sample(key, m, source.shape, y), y


class Preview(PeriodicAction):
  """Sample grids (or scatter plots) from fixed noise every `train.sample_every` steps:
  workdir/samples/step_XXXXXXX.png and, for images, TensorBoard."""

  def __init__(self, config, model, source, mesh, prior, workdir, writer):
    super().__init__(config.train.sample_every, config.train.steps)
    objective = objectives.get(config.objective)
    self.nfe = config.train.sample_nfe or objective.default_nfe
    eps, y = _preview_inputs(config, source, prior)
    method = config.sample.method
    evaluations = objective.preview_nfe(self.nfe, method)  # e.g. Heun: one whole step at least
    guidance = inference.check_guidance(config, None, None)  # iMF: the config's sample.omega
    if guidance is not None:
      full = lambda v: jnp.full((eps.shape[0],), v, jnp.float32)
      omega, (t_min, t_max) = guidance
      guidance = {"omega": full(omega), "t_min": full(t_min), "t_max": full(t_max)}
    # Replicated output: every process holds the samples; process 0 draws them.
    self._draw = jax.jit(lambda params: inference.draw(config.objective, model, method, params,
                                                       eps, evaluations, y, guidance),
                         out_shardings=sharding.replicated(mesh))
    stats = builders.data_stats(source)
    self._to_data = (lambda x: x) if stats is None else stats.invert
    self.config, self.source, self.workdir, self.writer = config, source, workdir, writer

  def samples(self, params):
    """Samples `[M, ...]` (numpy, every process, data space) at train.sample_nfe."""
    return self._to_data(np.asarray(self._draw(params)))

  def run(self, step, state):
    samples = self.samples(sample_params(self.config, state))
    if jax.process_index() == 0:
      write_preview(samples, self.config, self.source, step, self.nfe, self.workdir,
                    self.writer)


def write_preview(samples, config, source, step, nfe, workdir, writer):
  """samples/step_XXXXXXX.png (image grid, one row per class; or a scatter plot) and,
  for images, the grid in TensorBoard."""
  folder = os.path.join(workdir, "samples")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"step_{step:07d}.png")
  title = f"step {step}, {nfe} NFE"
  if (samples.ndim == 2 and samples.shape[1] != 2) or (samples.ndim == 4
                                                         and samples.shape[-1] not in (1, 3)):
    return None  # no picture of points in more than 2-D, nor of latents without their decoder
  if samples.ndim == 2:
    plotting.scatter([(title, samples)], path)
  else:
    k = source.num_classes if config.model.num_classes else 0
    ncols = config.sample.grid_per_class if k else 8
    plotting.image_grids([(title, samples)], path, ncols=ncols,
                         row_labels=list(range(k)) if k else None)
    writer.image(step, "samples", plotting.mosaic(samples, ncols))
  return path


# --------------------------------------------------------------------------- evaluation

# The metric that decides the best checkpoint, by preference (lower is better).
BEST_BY = ("fid", "clf_fd", "sliced_w2")
BEST_FILE = "best.json"


class Evaluate(PeriodicAction):
  """The run's metric on `train.eval_num` samples at each of `train.eval_nfe`, every
  `train.eval_every` steps and after the last: exact metrics for a built-in mixture
  (`evaluate.ToyScorer`), clf_fd / agreement for labelled images and fid with
  `train.eval_inception` (`evaluate.ImageScorer`). Logged to metrics.jsonl (a row with
  the step and `eval/<metric>_nfe<k>` values) and TensorBoard. With
  `train.eval_keep_best`, the state with the lowest `BEST_BY` metric at the first NFE
  is saved to workdir/best (a run directory of its own: sample.py --workdir
  WORKDIR/best) and described in workdir/best/best.json.

  The scorer (noise, references, classifier, Inception) is built once, here, so that
  bad settings fail before the first step and each evaluation only samples and scores.
  """

  def __init__(self, config, model, source, prior, workdir, metrics_path):
    t = config.train
    super().__init__(t.eval_every, t.steps, at_end=True)
    self.config, self.model, self.workdir = config, model, workdir
    self.writer, self.metrics_path = None, metrics_path
    self.nfes = [int(k) for k in t.eval_nfe]
    self.data_stats = builders.data_stats(source)
    self.name = evaluate.sampler_name(config.objective, config.sample.method)
    d = config.data
    if d.source == "mixture":
      run = inference.Run(config, model, None, tuple(source.shape), 0, prior, self.data_stats)
      self.scorer = evaluate.ToyScorer(evaluate.run_mixture(run), prior, self.data_stats,
                                       num=t.eval_num, seed=config.seed)
    else:
      self.scorer = evaluate.ImageScorer(
          d, prior, source.shape, source.num_classes if config.model.num_classes else 0,
          num=t.eval_num, seed=config.seed, batch=min(500, t.eval_num),
          inception=t.eval_inception or None, ref=t.eval_ref or None,
          vae=t.eval_vae or None)
    self.keep_best = bool(t.eval_keep_best)
    self.best_dir = os.path.join(workdir, "best")
    self._best_ckpt, self._save = None, None

  def attach(self, writer, save):
    """The loop's log writer, and its checked `save(checkpointer, step, state)` that
    writes the best state."""
    self.writer, self._save = writer, save

  def rows(self, params):
    """The evaluation rows (one per NFE) of `params`."""
    if jax.process_count() > 1:  # the sampler runs on each process's own devices
      params = multihost_utils.process_allgather(params, tiled=True)
    sampler = inference.make_sampler(self.config, self.model, params,
                                     data_stats=self.data_stats)
    if isinstance(self.scorer, evaluate.ToyScorer):
      return self.scorer.rows(sampler, self.nfes, self.name, self.config.objective)[0]
    settings = [(k, k, {}, f"eval, {k} NFE", {}) for k in self.nfes]
    return self.scorer.rows(sampler, settings, self.name, self.config.objective, keep=0)[0]

  def run(self, step, state):
    rows = self.rows(sample_params(self.config, state))
    skip = {"objective", "nfe", "method", "sample_s", "samples_per_s", "omega", "t_min",
            "t_max"}
    # exact_*: the exact map's own figures, the same at every evaluation.
    values = {f"eval/{m}_nfe{r['nfe']}": float(v) for r in rows for m, v in r.items()
              if m not in skip and not m.startswith("exact_")}
    if jax.process_index() == 0:
      with open(self.metrics_path, "a") as f:
        f.write(json.dumps(dict(values, step=step)) + "\n")
      self.writer.scalars(step, values)
    if self.keep_best:
      self._keep_if_best(step, state, rows[0])
    return values

  def best(self):
    """The record of the best state so far ({step, metric, value, nfe}), or None."""
    path = os.path.join(self.best_dir, BEST_FILE)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def _keep_if_best(self, step, state, row):
    metric = next(m for m in BEST_BY if m in row)
    value = float(row[metric])
    best = self.best()
    if best is not None and best["metric"] == metric and best["value"] <= value:
      return
    if self._best_ckpt is None:
      self._best_ckpt = ckpt_lib.Checkpointer(os.path.join(self.best_dir, "checkpoints"),
                                              max_to_keep=1)
    self._save(self._best_ckpt, step, state)
    self._best_ckpt.wait()
    if jax.process_index() == 0:
      record = {"step": step, "metric": metric, "value": value, "nfe": row["nfe"]}
      tmp = os.path.join(self.best_dir, BEST_FILE + ".tmp")
      with open(tmp, "w") as f:
        json.dump(record, f)
      os.replace(tmp, os.path.join(self.best_dir, BEST_FILE))

  def close(self):
    if self._best_ckpt is not None:
      self._best_ckpt.close()
