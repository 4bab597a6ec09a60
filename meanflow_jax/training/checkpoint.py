"""Orbax checkpoints of the train state, with the run's config beside it."""
import os

import jax
import orbax.checkpoint as ocp

from meanflow_jax.errors import CheckpointMismatchError


# Config keys (and sections) that fix the structure or shapes of the state: a
# checkpoint whose saved config differs in these cannot be restored into this run.
SHAPE_KEYS = ("model", "objective", "train.ema_decays", "optimizer.name", "optimizer.grad_clip")


def config_mismatches(saved, current, keys=SHAPE_KEYS):
  """Human-readable differences between two config dicts in the `keys` sections."""

  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = list(v) if isinstance(v, (tuple, list)) else v
    return out

  fixed = lambda k: any(k == p or k.startswith(p + ".") for p in keys)
  a = {k: v for k, v in flat(saved).items() if fixed(k)}
  b = {k: v for k, v in flat(current).items() if fixed(k)}
  return [f"{k}: checkpoint has {a.get(k)!r}, config has {b.get(k)!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Checkpointer:
  """Saves and restores `TrainState`s under `directory/<step>/{state,config,meta}`.

  `meta` holds what sampling needs besides the config (the data's shape), so a
  run can be sampled without its training data.
  """

  def __init__(self, directory, *, max_to_keep=3):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                         item_names=("state", "config", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, config_dict, meta):
    """Starts an asynchronous save of `state` and the JSON-able `config_dict`, `meta`."""
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_dict),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore_json(self, name, step=None):
    """The JSON item `name` ("config" or "meta") of a checkpoint."""
    step = self.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
    return out[name]

  def restore_config(self, step=None):
    return self.restore_json("config", step)

  def restore_state(self, abstract_state, step=None, config_dict=None):
    """Restores into `abstract_state` (a pytree of `jax.ShapeDtypeStruct`).

    With `config_dict`, first compares it with the saved config and raises
    `CheckpointMismatchError` naming every key that differs.
    """
    step = self.latest_step() if step is None else step
    where = os.path.join(str(self.manager.directory), str(step))
    if config_dict is not None:
      diffs = config_mismatches(self.restore_config(step), config_dict)
      if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {where} was written for another model:\n  " + "\n  ".join(diffs)
            + "\nUse a new --workdir, or the config the checkpoint was trained with.")
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # Orbax raises several types for a tree that does not fit
      raise CheckpointMismatchError(
          f"checkpoint {where} does not fit the state of this config: {e}") from e
    state = out["state"]
    got = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract_state)
    if got != want:
      raise CheckpointMismatchError(f"checkpoint {where} holds arrays of other shapes than "
                                    "this config's state.")
    return state

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
