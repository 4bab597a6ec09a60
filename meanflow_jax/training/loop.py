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

from meanflow_jax.data import PointSource
from meanflow_jax.errors import ConfigError, NonFiniteError
from meanflow_jax.training import checkpoint as ckpt_lib
from meanflow_jax.training import train_state as ts
from meanflow_jax.training.train_step import train_step

OBJECTIVES = ("meanflow", "flow_matching")


def make_source(config):
  return PointSource(batch_size=config.train.batch_size, seed=config.seed,
                     path=config.data.path, mixture_name=config.data.mixture)


def abstract_state(config, model, tx, dim):
  """The state's shapes and dtypes, computed without allocating it."""
  example = jnp.zeros((1, dim), jnp.float32)
  init = functools.partial(ts.init_state, model=model, tx=tx, example_x=example,
                           num_ema=len(config.train.ema_decays))
  return jax.eval_shape(init, jax.random.key(0))


def _truncate_metrics(path, last_step):
  """Drops log lines past `last_step` (written after the checkpoint we resume from)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)["step"] <= last_step]
  with open(path, "w") as f:
    f.writelines(lines)


def train(config, workdir):
  """Trains per `config` in `workdir`, resuming from its latest checkpoint.

  Returns:
    the final TrainState.
  """
  if config.objective not in OBJECTIVES:
    raise ConfigError(f"objective must be one of {OBJECTIVES}; got {config.objective!r}.")
  os.makedirs(workdir, exist_ok=True)
  config_dict = config.to_dict()
  source = make_source(config)
  model = ts.build_model(config)
  tx = ts.make_optimizer(config.optimizer, config.train.steps)
  key_init, key_steps = jax.random.split(jax.random.key(config.seed))

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               max_to_keep=config.train.max_to_keep)
  start = ckpt.latest_step()
  if start is None:
    state = jax.jit(functools.partial(
        ts.init_state, model=model, tx=tx, example_x=jnp.zeros((1, source.dim)),
        num_ema=len(config.train.ema_decays)))(key_init)
    start = 0
  else:
    state = ckpt.restore_state(abstract_state(config, model, tx, source.dim), start,
                               config_dict=config_dict)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config_dict, f, indent=2)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  _truncate_metrics(metrics_path, start)

  step_fn = functools.partial(
      train_step, apply_fn=model.apply, tx=tx, objective=config.objective,
      time_cfg=config.time, loss_cfg=config.loss, ema_decays=tuple(config.train.ema_decays))
  # Compiled once, ahead of time; the loop calls the executable directly.
  compiled = jax.jit(step_fn, donate_argnums=0).lower(
      state, source.batch(start), key_steps).compile()

  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda sig, _: stop.update(signal=sig))
  pending, t_last = [], time.time()
  bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps,
             unit="step", dynamic_ncols=True, disable=None)
  try:
    for step in bar:
      state, metrics = compiled(state, source.batch(step), key_steps)
      pending.append(metrics)
      done = step + 1
      if done % config.train.log_every == 0 or done == config.train.steps or stop["signal"]:
        logs = jax.device_get(pending)
        bad = [done - len(logs) + i for i, m in enumerate(logs) if not m["finite"]]
        if bad:
          last = ckpt.latest_step()
          raise NonFiniteError(
              f"non-finite loss or gradient at step {bad[0]} (loss {logs[bad[0] - done + len(logs)]['loss']}). "
              f"Training stopped; the last checkpoint (step {last}) is untouched. Lower the "
              "learning rate, set optimizer.grad_clip, or check the data for outliers.")
        now = time.time()
        row = {k: float(np.mean([m[k] for m in logs])) for k in logs[0] if k != "finite"}
        row.update(step=done, steps_per_s=len(logs) / max(now - t_last, 1e-9))
        with open(metrics_path, "a") as f:
          f.write(json.dumps(row) + "\n")
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        pending, t_last = [], now
      if done % config.train.checkpoint_every == 0 or done == config.train.steps or stop["signal"]:
        ckpt.save(done, state, config_dict)
      if stop["signal"]:
        print(f"signal {stop['signal']}: saved step {done} in {workdir}; rerun to resume.")
        break
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
    signal.signal(signal.SIGTERM, previous)
  return state
