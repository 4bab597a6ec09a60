"""The training loop: data, compiled step, logging, checkpoints, exact resume."""
import functools
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from meanflow_jax.data import PointSource, images
from meanflow_jax.errors import (CheckpointMismatchError, ConfigError, Interrupted,
                                 NonFiniteError)
from meanflow_jax.training import checkpoint as ckpt_lib
from meanflow_jax.training import sharding
from meanflow_jax.training import train_state as ts
from meanflow_jax.training.train_step import train_step
from meanflow_jax.training.validate import check_config


def run_keys(seed):
  """(init, steps, data) keys of a run: each use of randomness has its own key."""
  key_init, key_steps, key_data = jax.random.split(jax.random.key(seed), 3)
  return key_init, key_steps, key_data


VECTOR_SOURCES = ("mixture", "points")


class _Points:
  """A `PointSource` seen as a source of (x, y) batches with unused labels."""
  num_classes = 0

  def __init__(self, source):
    self.source = source
    self.shape = (source.dim,)

  def batch(self, step):
    x = self.source.batch(step)
    return x, jnp.zeros((x.shape[0],), jnp.int32)


def make_source(config):
  """The run's data: `.batch(step) -> (x [B, ...], y int [B])`, `.shape`, `.num_classes`.

  Raises DataError for data that cannot be used, ConfigError for a model whose
  classes do not fit the data's labels.
  """
  d = config.data
  if d.source in VECTOR_SOURCES:
    if d.source == "points" and not d.path:
      raise ConfigError("data.source = 'points' needs data.path (a .npy [N, D] array).")
    source = _Points(PointSource(batch_size=config.train.batch_size, key=run_keys(config.seed)[2],
                                 path=d.path if d.source == "points" else "",
                                 mixture_name=d.mixture))
  else:
    source = images.make_image_source(d.source, path=d.path, batch_size=config.train.batch_size,
                                      seed=config.seed, flip=d.flip, latent_scale=d.latent_scale)
  k = config.model.num_classes
  if k and not source.num_classes:
    raise ConfigError(f"model.num_classes = {k} asks for a class-conditional model, but the "
                      f"{d.source!r} data has no labels; set model.num_classes = 0.")
  if k and source.num_classes > k:
    raise ConfigError(f"the {d.source!r} data has {source.num_classes} classes; model.num_classes "
                      f"= {k} is too few.")
  return source


def _init_fn(config, model, tx, data_shape, unbox=True):
  example = jnp.zeros((1, *data_shape), jnp.float32)
  return functools.partial(ts.init_state, model=model, tx=tx, example_x=example,
                           num_ema=len(config.train.ema_decays), unbox=unbox)


def abstract_state(config, model, tx, data_shape, shardings=None):
  """The state's shapes and dtypes (and `shardings`, if given), computed without
  allocating it: the target Orbax restores into."""
  shapes = jax.eval_shape(_init_fn(config, model, tx, data_shape), jax.random.key(0))
  if shardings is None:
    return shapes
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def plan_shardings(config, model, tx, data_shape, mesh):
  """(state shardings, batch shardings) on `mesh`, from shapes alone."""
  boxed = jax.eval_shape(_init_fn(config, model, tx, data_shape, unbox=False),
                         jax.random.key(0))
  batch = sharding.batch_sharding(mesh)
  return sharding.state_shardings(boxed, mesh), (batch, batch)


def _truncate_metrics(path, last_step):
  """Drops log lines past `last_step` (written after the checkpoint we resume from)
  and any line a killed process left half-written."""
  if not os.path.exists(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= last_step:
          keep.append(line)
      except (json.JSONDecodeError, KeyError, TypeError):
        continue
  with open(path, "w") as f:
    f.writelines(keep)


def _check_finite(logs, first_step, ckpt):
  """Raises NonFiniteError at the first update whose loss or gradient was not finite."""
  for i, m in enumerate(logs):
    if not m["finite"]:
      raise NonFiniteError(
          f"non-finite loss or gradient at step {first_step + i} (loss {float(m['loss'])}, "
          f"grad norm {float(m['grad_norm'])}). Training stopped; the last checkpoint (step "
          f"{ckpt.latest_step()}) is untouched. Lower optimizer.lr, set optimizer.grad_clip, "
          "or look for outliers in the data.")


def train(config, workdir):
  """Trains per `config` in `workdir`, resuming from its latest checkpoint.

  Returns:
    the final TrainState.
  Raises:
    ConfigError, DataError, CheckpointMismatchError before anything is written;
    NonFiniteError at the first non-finite step; Interrupted after saving on SIGTERM.
  """
  check_config(config)
  config_dict = config.to_dict()
  source = make_source(config)  # validates the data before the workdir is touched
  model = ts.build_model(config)
  ts.check_model_fits(model, source.shape)
  tx = ts.make_optimizer(config.optimizer, config.train.steps)
  key_init, key_steps, _ = run_keys(config.seed)
  meta = {"data_shape": list(source.shape), "num_classes": source.num_classes}
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  if config.train.batch_size % mesh.size:
    raise ConfigError(f"train.batch_size {config.train.batch_size} does not split over the "
                      f"{mesh.size} devices of the mesh; use a multiple of {mesh.size}.")
  state_sh, batch_sh = plan_shardings(config, model, tx, source.shape, mesh)
  put = lambda batch: jax.device_put(batch, batch_sh)

  os.makedirs(workdir, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               max_to_keep=config.train.max_to_keep)
  start = ckpt.latest_step()
  if start is None:
    state = jax.jit(_init_fn(config, model, tx, source.shape),
                    out_shardings=state_sh)(key_init)
    start = 0
  else:
    saved = ckpt.restore_json("meta", start)
    for k in ("data_shape", "num_classes"):
      if k in saved and saved[k] != meta[k]:
        raise CheckpointMismatchError(
            f"checkpoint {start} in {workdir} was trained on data with {k} {saved[k]}; this "
            f"config's data ({config.data.source}) has {meta[k]}. Use a new --workdir.")
    state = ckpt.restore_state(abstract_state(config, model, tx, meta["data_shape"], state_sh),
                               start, config_dict=config_dict)
    if int(state.step) != start:
      raise CheckpointMismatchError(
          f"checkpoint {start} holds a state at step {int(state.step)}; it is corrupt.")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config_dict, f, indent=2)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  _truncate_metrics(metrics_path, start)

  step_fn = functools.partial(
      train_step, apply_fn=model.apply, tx=tx, objective=config.objective,
      time_cfg=config.time, loss_cfg=config.loss, ema_decays=tuple(config.train.ema_decays),
      guidance_cfg=config.guidance, num_classes=config.model.num_classes)
  # Compiled once, ahead of time, for the mesh; the loop calls the executable directly.
  replicated = sharding.replicated(mesh)
  compiled = jax.jit(step_fn, donate_argnums=0, in_shardings=(state_sh, batch_sh, replicated),
                     out_shardings=(state_sh, replicated)).lower(
      state, put(source.batch(start)), key_steps).compile()

  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda sig, _: stop.update(signal=sig))
  pending, t_last = [], time.time()
  bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps,
             unit="step", dynamic_ncols=True, disable=None)
  try:
    for step in bar:
      state, metrics = compiled(state, put(source.batch(step)), key_steps)
      pending.append(metrics)
      done = step + 1
      log = done % config.train.log_every == 0 or done == config.train.steps
      save = (done % config.train.checkpoint_every == 0 or done == config.train.steps
              or stop["signal"])
      if log or save:
        # Checked before every save, so a non-finite state is never written.
        logs = jax.device_get(pending)
        _check_finite(logs, done - len(logs) + 1, ckpt)
      if log:
        now = time.time()
        row = {k: float(np.mean([m[k] for m in logs])) for k in logs[0] if k != "finite"}
        row.update(step=done, steps_per_s=len(logs) / max(now - t_last, 1e-9))
        with open(metrics_path, "a") as f:
          f.write(json.dumps(row) + "\n")
        # tqdm shows steps/s and the ETA; examples/s is what compares across batch sizes.
        bar.set_postfix(loss=f"{row['loss']:.4f}",
                        examples_per_s=f"{row['steps_per_s'] * config.train.batch_size:.0f}")
        pending, t_last = [], now
      if save:
        ckpt.save(done, state, config_dict, meta)
      if stop["signal"]:
        ckpt.wait()
        raise Interrupted(f"stopped by signal {stop['signal']} after step {done}; the "
                          f"checkpoint is saved in {workdir}: rerun to resume.", stop["signal"])
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
    signal.signal(signal.SIGTERM, previous)
  return state
