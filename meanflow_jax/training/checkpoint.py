"""Orbax checkpoints of the train state, with the run's config beside it."""
import os

import jax
import orbax.checkpoint as ocp

from meanflow_jax.errors import CheckpointMismatchError


# Config keys (and sections) that fix the structure or shapes of the state, or what
# the parameters mean (the prior they map from): a checkpoint whose saved config
# differs in these cannot be restored into this run.
# The section of the model in use (e.g. "model.dit") is added by `shape_keys`.
SHAPE_KEYS = ("model.name", "model.variant", "model.num_classes", "objective", "prior.name",
              "prior.factor", "prior.noise_std",
              "train.ema_decays", "optimizer.name", "optimizer.grad_clip")

# Keys added after the first release, with the values that runs saved before them
# were trained with (data.source is derived from data.path).
_LEGACY = {"model": {"variant": "", "num_classes": 0, "dtype": "float32"},
           "mesh": {"data": -1, "fsdp": 1},
           "train": {"sample_every": 0, "sample_nfe": 0, "init_from": ""},
           "data": {"flip": False, "latent_scale": 0.18215, "mixture_dim": 2,
                    "mixture_separation": 4.0, "mixture_std": 0.25, "standardize": False},
           "prior": {"name": "gaussian", "coupling": "independent", "factor": 2,
                     "noise_std": 0.5, "fit_examples": 10_000},
           "guidance": {"label_dropout": 0.1, "omega": 1.0, "kappa": 0.0, "t_min": 0.0,
                        "t_max": 1.0},
           "sample": {"grid_per_class": 10}}

# The values that meant "the preset's" in the model sections before None did. No config
# holds them now (the range checks refuse each), so wherever they appear they are old.
_LEGACY_PRESET = {"mlp": {"width": 0, "depth": 0, "time_dim": 0, "time_scale": 0.0},
                  "dit": {"patch_size": 0, "hidden_size": 0, "depth": 0, "num_heads": 0,
                          "mlp_ratio": 0.0, "time_scale": 0.0},
                  "unet": {"base_channels": 0, "channel_mult": [], "num_res_blocks": 0,
                           "attn_resolutions": [-1], "dropout": -1.0, "time_scale": 0.0}}



def upgrade_config(saved):
  """A saved config dict with the keys that older runs lack, set as they trained."""
  out = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
  for section, keys in _LEGACY.items():
    out.setdefault(section, {})
    for k, v in keys.items():
      out[section].setdefault(k, v)
  for name, markers in _LEGACY_PRESET.items():
    if isinstance(out["model"].get(name), dict):
      out["model"][name] = {k: None if k in markers and _plain(v) == markers[k] else v
                            for k, v in out["model"][name].items()}
  data = out.setdefault("data", {})
  data.setdefault("source", "points" if data.get("path") else "mixture")
  return out


def _plain(v):
  return list(v) if isinstance(v, (list, tuple)) else v


def shape_keys(config_dict):
  name = config_dict.get("model", {}).get("name")
  return SHAPE_KEYS + ((f"model.{name}",) if name else ())


def config_mismatches(saved, current, keys=None):
  """Human-readable differences between two config dicts in the `keys` sections
  (default: `shape_keys` of the current config)."""
  keys = shape_keys(current) if keys is None else keys

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
    """The config dict saved with a checkpoint, upgraded with keys older runs lack."""
    return upgrade_config(self.restore_json("config", step))

  def restore_state(self, abstract_state, step=None, config_dict=None):
    """Restores into `abstract_state` (a pytree of `jax.ShapeDtypeStruct`).

    Leaves without a sharding are restored onto this process's first device, so
    a run trained on many devices can be sampled on one. With `config_dict`, first compares it with the saved config and raises
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
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state = jax.tree.map(
        lambda x: x if getattr(x, "sharding", None) is not None
        else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), abstract_state)
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
