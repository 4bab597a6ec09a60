"""The training loop: data, compiled step, logging, checkpoints, exact resume."""
import contextlib
import errno
import json
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from meanflow_jax import priors
from meanflow_jax.data import points
from meanflow_jax.errors import (CheckpointMismatchError, ConfigError, Interrupted,
                                 MeanFlowError, NonFiniteError, WorkdirLockedError,
                                 WorkdirWriteError)
from meanflow_jax.training import checkpoint as ckpt_lib
from meanflow_jax.training import (actions, distributed, inference, prefetch, sharding,
                                   validate)
from meanflow_jax.training import lock as lock_lib
from meanflow_jax.training import train_state as ts
# Re-exported: the loop's builders were defined here before builders.py.
from meanflow_jax.training.builders import (VECTOR_SOURCES, abstract_state,  # noqa: F401
                                            data_stats, init_fn, jit_step, make_prior,
                                            make_source, plan_shardings, run_keys,
                                            step_function)
from meanflow_jax.training.summary import SummaryWriter, WandbWriter, Writers
from meanflow_jax.training.validate import check_config


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


def _last_checkpoint(ckpt):
  step = ckpt.latest_step()
  return ("no checkpoint was saved yet" if step is None
          else f"the last checkpoint (step {step}) is untouched")


def _check_finite(logs, first_step, ckpt):
  """Raises NonFiniteError at the first update whose loss or gradient was not finite."""
  for i, m in enumerate(logs):
    if not m["finite"]:
      raise NonFiniteError(
          f"non-finite loss or gradient at step {first_step + i} (loss {float(m['loss'])}, "
          f"grad norm {float(m['grad_norm'])}). Training stopped; {_last_checkpoint(ckpt)}. "
          "Lower optimizer.lr, set optimizer.grad_clip, or look for outliers in the data.")


def _save(ckpt, step, state, config_dict, meta, out_sharding):
  """Writes `state` as checkpoint `step` if all of it is finite, else NonFiniteError.

  The state itself is checked, not only the losses: an update can make the parameters
  non-finite after a finite loss, and the EMA copies never reach the loss. One jitted
  pass gives both this check and the checksums saved with the state.
  """
  finite, checksums = ckpt_lib.state_checksums(state, out_sharding)
  bad = [path for path, ok in finite.items() if not ok]
  if bad:
    more = f" and {len(bad) - 1} more arrays" if len(bad) > 1 else ""
    raise NonFiniteError(
        f"the state after step {step} holds non-finite values in {bad[0]}{more}, though the "
        f"losses and gradients up to it were finite. Training stopped without saving it; "
        f"{_last_checkpoint(ckpt)}. Lower optimizer.lr, set optimizer.grad_clip, or look for "
        "outliers in the data.")
  ckpt.save(step, state, config_dict, meta, checksums)


def _lock_workdir(workdir):
  """This process's `lock.WorkdirLock` of `workdir`. If any process of the run cannot take
  its own (another run holds the workdir), every process raises WorkdirLockedError."""
  try:
    held, refused = lock_lib.acquire(workdir, jax.process_index()), None
  except WorkdirLockedError as e:
    held, refused = None, e
  if distributed.any_process(refused is not None):
    if held is not None:
      held.release()
    raise refused or WorkdirLockedError(
        f"{workdir} is in use by another run: another process of this run could not take "
        "its lock (its error names the holder).")
  message = lock_lib.takeover_message(held)
  if message:
    print(message, file=sys.stderr, flush=True)
  return held


# Errors of a write that say the disk cannot take it, whichever file it was (a write to
# an open file names none), and those that say the workdir cannot be written.
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
_ACCESS_ERRORS = (errno.EACCES, errno.EPERM)


def _write_error(error, workdir):
  """WorkdirWriteError, in one line, for an OSError of a write into `workdir`; else None."""
  name = os.path.abspath(error.filename) if isinstance(error.filename, str) else ""
  inside = name.startswith(os.path.abspath(workdir))
  if not (error.errno in _DISK_ERRORS or (error.errno in _ACCESS_ERRORS and inside)):
    return None
  reason = f"{os.strerror(error.errno)} [errno {error.errno}]" if error.errno else str(error)
  return WorkdirWriteError(
      f"could not write to {name or os.path.abspath(workdir)}: {reason}. Training stopped; "
      "free space (or train in another --workdir) and rerun to resume from the last "
      "checkpoint.")


class _Profile:
  """A `jax.profiler` trace of steps [first, last) (`train.profile_steps`; () none) in
  `directory`, by every process (TensorBoard's profile plugin or Perfetto opens it)."""

  def __init__(self, steps, directory):
    self.steps, self.directory, self.running = tuple(steps), directory, False

  def at(self, step, state):
    """Called before `step` runs: starts or stops the trace there (once `state`, the
    previous step's output, is computed)."""
    if not self.steps:
      return
    first, last = self.steps
    if step == first and not self.running:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.directory)
      self.running = True
    elif step == last and self.running:
      jax.block_until_ready(state)
      self.close()

  def close(self):
    if self.running:
      self.running = False
      jax.profiler.stop_trace()


def _init_from(config, state, state_sh, meta):
  """`state` with params and every EMA copy set to the `sample.params` copy of the run in
  `train.init_from` (same model; the optimizer starts afresh)."""
  src = config.train.init_from
  saved = inference.load_config(src)
  # The network and what it maps from must agree; the objective may differ (a MeanFlow
  # run may start from a flow-matching one), so may the optimizer and EMA.
  keys = ("model.name", "model.variant", "model.num_classes", f"model.{config.model.name}",
          "prior.name", "prior.factor", "prior.noise_std")
  diffs = ckpt_lib.config_mismatches(saved.to_dict(), config.to_dict(), keys=keys)
  if diffs:
    raise CheckpointMismatchError(f"train.init_from = {src} holds another model:\n  "
                                  + "\n  ".join(diffs))
  run = inference.load_run(src)
  # Parameters map noise to the space their run trained in: starting from another space
  # (a standardised run into an unstandardised pairs run, say) would start far off.
  if not points.same_stats(points.stats_to_json(run.data_stats), meta["data_stats"]):
    raise CheckpointMismatchError(
        f"train.init_from = {src} trained on data standardised as "
        f"{points.stats_to_json(run.data_stats)}, this run on {meta['data_stats']} (None: "
        "not standardised); train the first run with the same data.standardize (False for "
        "a reflow run on stored pairs).")
  if list(run.data_shape) != meta["data_shape"]:
    raise CheckpointMismatchError(f"train.init_from = {src} was trained on data of shape "
                                  f"{list(run.data_shape)}, this run's is {meta['data_shape']}.")
  params = jax.device_put(run.params, state_sh.params)
  copy = lambda: jax.tree.map(jnp.copy, params)  # own buffers: the step donates the state
  return state.replace(params=copy(), ema_params=tuple(copy() for _ in state.ema_params))


def _check_resume_stats(saved, meta, start, workdir):
  """The run's standardisation is fixed when it starts: a changed .npy file or
  data.standardize must not move the data under parameters trained on the old ones."""
  if not points.same_stats(saved.get("data_stats"), meta["data_stats"]):  # absent: old runs
    raise CheckpointMismatchError(
        f"checkpoint {start} in {workdir} was trained on data standardised as "
        f"{saved.get('data_stats')} (None: not standardised), this config's data give "
        f"{meta['data_stats']}: the data file or data.standardize changed. Use a new "
        "--workdir, or the data and data.standardize the run started with.")


# Config keys and sections that say what a run is (its data stream, times, loss, guided
# target and iMF's draws of it, optimiser, prior, matmul dtype): a resume that changed one
# would continue another run under the old one's name, so only `allow_changes` lets it.
# The network's keys are `checkpoint.SHAPE_KEYS`, checked as the state is restored; the
# length, the intervals, sampling and the mesh may change.
RUN_KEYS = ("seed", "data", "time", "loss", "guidance", "imf", "optimizer", "prior",
            "model.dtype")
# data.standardize is compared through the statistics it gives (`_check_resume_stats`),
# which no flag overrides.
_RESUME_CHECKED_ELSEWHERE = ("data.standardize",)


def _check_resume_meta(saved, meta, start, workdir, config, saved_config=None,
                       allow_changes=()):
  """Raises CheckpointMismatchError if the run in `workdir` cannot continue with `config`:
  other data shape, classes or batch size (`saved` meta), or other `RUN_KEYS` values than
  `saved_config` unless they lie in `allow_changes` (keys or sections)."""
  for k in ("data_shape", "num_classes", "batch_size"):
    if k in saved and saved[k] != meta[k]:
      hint = ("the data stream and the step's noise depend on it, so the run could not "
              "continue exactly" if k == "batch_size" else f"this config's data "
              f"({config.data.source}) has {meta[k]}")
      raise CheckpointMismatchError(
          f"checkpoint {start} in {workdir} was trained with {k} {saved[k]}, not {meta[k]}: "
          f"{hint}. Use a new --workdir, or the checkpoint's {k}.")
  current = config.to_dict()
  if saved_config is None or ckpt_lib.config_mismatches(saved_config, current):
    return  # another network altogether: the restore reports that, first
  under = lambda k, prefixes: any(k == p or k.startswith(p + ".") for p in prefixes)
  old, new = validate.flatten(saved_config), validate.flatten(current)
  changed = [k for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and under(k, RUN_KEYS)
             and not under(k, ckpt_lib.shape_keys(current) + _RESUME_CHECKED_ELSEWHERE)
             and not under(k, allow_changes)]
  if changed:
    raise CheckpointMismatchError(
        f"checkpoint {start} in {workdir} belongs to another run: "
        + "; ".join(f"{k} was {old.get(k)!r}, the config has {new.get(k)!r}" for k in changed)
        + ". Each changes the data, the noise or the objective of the run it resumes. Use a "
        "new --workdir or the checkpoint's values; to continue with the new ones, pass "
        f"--allow_resume_change={','.join(changed)} (training.train(..., allow_changes=...)).")


def train(config, workdir, allow_changes=()):
  """Trains per `config` in `workdir`, resuming from its newest intact checkpoint.

  The same code runs on one device, on a mesh of local devices, and across
  processes (after `distributed.initialize`): every process calls `train` with
  the same arguments, loads only its rows of each batch, and takes part in every
  checkpoint; process 0 alone writes metrics.jsonl, TensorBoard events
  (`workdir/tensorboard`), sample grids (`workdir/samples`) and the progress bar.

  One run writes a workdir at a time: each process holds `workdir/lock.<process_index>`
  (see `lock`) from before its first write until it returns or raises. A damaged
  checkpoint (see `Checkpointer.restore_intact`) is said in one line, moved to
  `workdir/damaged_checkpoints/`, and the run resumes from the newest intact one.

  Args:
    allow_changes: keys or sections of `RUN_KEYS` (e.g. ("seed", "loss.p")) that a
      resume may change; a resume that changes any other is refused.
  Returns:
    the final TrainState.
  Raises:
    ConfigError, DataError, CheckpointMismatchError, WorkdirLockedError before
    anything is written; CheckpointDamagedError if no checkpoint reads back whole;
    NonFiniteError at the first non-finite step or state, before it is saved;
    CheckpointWriteError / WorkdirWriteError when a write fails (a full disk), at
    that write; Interrupted after saving on SIGTERM.
  """
  with contextlib.ExitStack() as cleanup:  # releases the lock after the checkpointer closed
    try:
      return _train(config, workdir, allow_changes, cleanup)
    except OSError as e:
      error = None if isinstance(e, MeanFlowError) else _write_error(e, workdir)
      if error is None:
        raise
      raise error from e


def _train(config, workdir, allow_changes, cleanup):
  check_config(config)
  validate.check_allow_changes(config, allow_changes)
  validate.check_data_path(config)
  config_dict = config.to_dict()
  source = make_source(config)  # validates the data before the workdir is touched
  model = ts.build_model(config)
  ts.check_model_fits(model, source.shape)
  prior = make_prior(config, source)
  tx = ts.make_optimizer(config.optimizer, config.train.steps)
  key_init, key_steps, _ = run_keys(config.seed)
  # Built before the workdir is touched, so that its settings fail first.
  evaluation = (actions.Evaluate(config, model, source, prior, workdir,
                                 os.path.join(workdir, "metrics.jsonl"))
                if config.train.eval_every else None)
  batch_size = config.train.batch_size
  meta = {"data_shape": list(source.shape), "num_classes": source.num_classes,
          "batch_size": batch_size,
          "data_stats": points.stats_to_json(data_stats(source))}
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  if batch_size % mesh.size:
    raise ConfigError(f"train.batch_size {batch_size} does not split over the "
                      f"{mesh.size} devices of the mesh; use a multiple of {mesh.size}.")
  state_sh, batch_sh = plan_shardings(config, model, tx, source.shape, mesh)
  shapes = ((batch_size, *source.shape), (batch_size,))
  if config.data.source == "pairs":  # batches carry their eps
    batch_sh, shapes = batch_sh + batch_sh[:1], shapes + shapes[:1]
  shard = distributed.local_shard(batch_sh[0], shapes[0])

  def load(step):
    """This process's rows of batch `step`, as global arrays over the mesh."""
    arrays = source.batch(step, shard=shard)
    return tuple(distributed.global_batch(s, a, g) for s, a, g in zip(batch_sh, arrays, shapes))

  main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  cleanup.callback(_lock_workdir(workdir).release)  # before anything in the workdir is written
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               max_to_keep=config.train.max_to_keep)
  replicated = sharding.replicated(mesh)

  def check_resume(start, saved_config, saved_meta):
    """The user's errors (another model, data or run): raised as they are, not damage."""
    _check_resume_meta(saved_meta, meta, start, workdir, config, saved_config, allow_changes)
    _check_resume_stats(saved_meta, meta, start, workdir)
    error = ckpt.mismatch(start, saved_config, config_dict)
    if error:
      raise error

  found = ckpt.restore_intact(
      lambda saved_config, saved_meta: abstract_state(config, model, tx, meta["data_shape"],
                                                      state_sh),
      check=check_resume, out_sharding=replicated)
  if found is None:
    state = jax.jit(init_fn(config, model, tx, source.shape),
                    out_shardings=state_sh)(key_init)
    if config.train.init_from:
      state = _init_from(config, state, state_sh, meta)
    start = 0
  else:
    for step, what in found.damaged:
      # Moved, not deleted: the run saves that step again, and Orbax would count the
      # damaged one among the newest to keep.
      moved = ckpt.set_aside(step, os.path.join(workdir, "damaged_checkpoints"))
      ckpt_lib.warn(f"checkpoint {os.path.join(ckpt.directory, str(step))} is damaged ({what}); "
                    f"moved to {moved}, resuming from step {found.step}, the newest intact "
                    "checkpoint.")
    state, start = found.state, found.step
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_dict, f, indent=2)
    if prior.stats is not None:
      priors.save_stats(os.path.join(workdir, priors.STATS_FILE), prior.stats)
    _truncate_metrics(metrics_path, start)
  writer = SummaryWriter(os.path.join(workdir, "tensorboard"), enabled=main)
  if config.logging.wandb:
    writer = Writers(writer, WandbWriter(workdir, config.logging.wandb_project,
                                         config.logging.wandb_name or os.path.basename(
                                             os.path.abspath(workdir)), config_dict,
                                         enabled=main))

  # Compiled once, ahead of time, for the mesh; the loop calls the executable directly.
  compiled = jit_step(config, model, tx, prior, mesh, state_sh, batch_sh).lower(
      state, load(start), key_steps).compile()
  periodic = ([actions.Preview(config, model, source, mesh, prior, workdir, writer)]
              if config.train.sample_every else [])
  if evaluation is not None:
    evaluation.attach(writer, lambda c, step, st: _save(
        c, step, st, config_dict, dict(meta, data_position=step * batch_size), replicated))
    periodic.append(evaluation)

  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda sig, _: stop.update(signal=sig))
  pending, t_last, waited = [], time.time(), 0.0
  bar = tqdm(initial=start, total=config.train.steps, unit="step", dynamic_ncols=True,
             disable=None if main else True)
  last = {"metrics": None}
  # The device is busy while the last step's metrics are not computed yet.
  batches = prefetch.Prefetch(
      load, start, config.train.steps, config.train.prefetch,
      busy=lambda: last["metrics"] is not None and not last["metrics"]["finite"].is_ready())
  cleanup.callback(batches.close)
  profile = _Profile(config.train.profile_steps, os.path.join(workdir, "profile"))
  cleanup.callback(profile.close)
  stop_every = 1 if jax.process_count() == 1 else config.train.stop_check_every
  finished = False
  try:
    for step, batch, wait in batches:
      profile.at(step, state)
      state, metrics = compiled(state, batch, key_steps)
      last["metrics"] = metrics
      pending.append(metrics)
      waited += wait
      done = step + 1
      bar.update(1)
      # A signal may reach one process only: all of them must stop at the same step. They
      # agree every `stop_every` steps (an all-gather that waits for the slowest process).
      stopping = (done % stop_every == 0 or done == config.train.steps) and (
          distributed.any_process(stop["signal"]))
      log = done % config.train.log_every == 0 or done == config.train.steps
      save = (done % config.train.checkpoint_every == 0 or done == config.train.steps
              or stopping)
      if log or save:
        # Checked before every save, so a non-finite state is never written.
        logs = jax.device_get(pending)
        _check_finite(logs, done - len(logs) + 1, ckpt)
      if log:
        now = time.time()
        row = {k: float(np.mean([m[k] for m in logs])) for k in logs[0] if k != "finite"}
        row.update(step=done, steps_per_s=len(logs) / max(now - t_last, 1e-9))
        row["examples_per_s"] = row["steps_per_s"] * batch_size
        # The share of the interval the device stood idle waiting for a batch (0: the data
        # kept up; `prefetch.Prefetch`).
        row["data_wait_frac"] = min(1.0, waited / max(now - t_last, 1e-9))
        if main:
          with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
          writer.scalars(done, {f"train/{k}": v for k, v in row.items() if k != "step"})
        # tqdm shows steps/s and the ETA; examples/s is what compares across batch sizes.
        bar.set_postfix(loss=f"{row['loss']:.4f}", examples_per_s=f"{row['examples_per_s']:.0f}")
        pending, t_last, waited = [], now, 0.0
      if save:
        _save(ckpt, done, state, config_dict, dict(meta, data_position=done * batch_size),
              replicated)
      busy = time.time()
      for action in periodic:
        if action.due(done):
          action.run(done, state)
      t_last += time.time() - busy  # steps/s counts the steps, not the previews or evaluations
      if log or save:
        writer.flush()
      if stopping:
        ckpt.wait()
        raise Interrupted(f"stopped by signal {stop['signal'] or 'SIGTERM (another process)'} "
                          f"after step {done}; the checkpoint is saved in {workdir}: rerun to "
                          "resume.", stop["signal"] or signal.SIGTERM)
    finished = True
  finally:
    bar.close()
    signal.signal(signal.SIGTERM, previous)
    for close in [a.close for a in periodic] + [writer.close, ckpt.wait, ckpt.close]:
      if finished:
        close()
      else:  # a failing run (a full disk) may fail here too: its first error is the one to say
        with contextlib.suppress(Exception):
          close()
  return state
