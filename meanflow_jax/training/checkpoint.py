"""Orbax checkpoints of the train state, with the run's config and checksums beside it."""
import contextlib
import functools
import logging
import os
import re
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from meanflow_jax.errors import (CheckpointDamagedError, CheckpointMismatchError,
                                 CheckpointWriteError, RunNotFoundError)
from meanflow_jax.training import distributed


CHECKSUMS = "checksums"  # the item of a checkpoint that holds its arrays' checksums

# Config keys (and sections) that fix the structure or shapes of the state, or what
# the parameters mean (the prior they map from): a checkpoint whose saved config
# differs in these cannot be restored into this run.
# The section of the model in use (e.g. "model.dit") is added by `shape_keys`.
SHAPE_KEYS = ("model.name", "model.variant", "model.num_classes", "model.prediction", "objective",
              "prior.name",
              "prior.factor", "prior.noise_std",
              "train.ema_decays", "optimizer.name", "optimizer.grad_clip")

# Keys added after the first release, with the values that runs saved before them
# were trained with (data.source is derived from data.path).
_LEGACY = {"model": {"variant": "", "num_classes": 0, "dtype": "float32", "prediction": "u",
                     "remat": False},
           "imf": {"s_max": 7.0, "beta": 1.0, "tangent": "model"},
           "time": {"subset_jvp": False},
           "loss": {"features": "", "features_weight": 1.0, "v_weight": 1.0},
           "mesh": {"data": -1, "fsdp": 1},
           "train": {"sample_every": 0, "sample_nfe": 0, "init_from": "", "prefetch": 0,
                     "stop_check_every": 1, "profile_steps": []},
           "data": {"flip": False, "latent_scale": 0.18215, "mixture_dim": 2,
                    "mixture_separation": 4.0, "mixture_std": 0.25, "standardize": False},
           "prior": {"name": "gaussian", "coupling": "independent", "factor": 2,
                     "noise_std": 0.5, "fit_examples": 10_000},
           "guidance": {"label_dropout": 0.1, "omega": 1.0, "kappa": 0.0, "t_min": 0.0,
                        "t_max": 1.0},
           "sample": {"grid_per_class": 10, "omega": 1.0, "t_min": 0.0, "t_max": 1.0}}

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


# --- Checksums ------------------------------------------------------------------------------
# Every save stores, beside the state, two 32-bit checksums of each array and restores
# verify them. They are sums of integers mod 2^32 computed where the arrays live (one
# jitted pass, per shard, then a sum of 3 numbers a leaf across devices): no copy of the
# state to a host and no gather of sharded arrays, which SHA-256 of each leaf's bytes would
# need on a model that no process holds whole. Integer sums do not depend on the order they
# are added in, so a state saved from 8 devices over 2 processes gives the same checksums
# restored on 1 device.

_K = 0x9E3779B9  # any odd constant: keeps s2's index hash apart from s1's weights


def _fmix(h):
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 in which each input bit
  flips about half the output bits. For jax and NumPy uint32 arrays alike (NumPy's
  products wrap mod 2^32 as XLA's do)."""
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> np.uint32(13))
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> np.uint32(16))


def _row_major_index(shape):
  """uint32 `shape`: each element's row-major position mod 2^32, built per axis (a
  reshape of an iota would regather a sharded array's shards)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(
        stride % 2 ** 32)
    stride *= shape[axis]
  return index


def _words(x):
  """`x` as uint32 words as it is stored: 32-bit elements as they are, 8- and 16-bit ones
  widened, 64-bit ones as two words (a trailing axis of 2)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    x = jnp.stack([x.real, x.imag], axis=-1)
  bits = x.dtype.itemsize * 8
  if bits >= 32:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32)


def _leaf_sums(x):
  """uint32 `[3]`: `(s1, s2, bad)` of one array, whatever its sharding; `bad` is 1 if an
  element is not finite (never for integer arrays), else 0.

  With `u_i` the array's words in row-major order,
    s1 = sum_i u_i * (fmix(i) | 1),   s2 = sum_i fmix(u_i ^ fmix(i ^ K))   (mod 2^32).
  An odd weight is invertible mod 2^32, so any change of a single word (every flipped
  bit) changes s1; s2 is a pseudo-random function of each word and its place, so other
  damage escapes both with a chance of about 2^-64.

  The three sums are one variadic reduction: one pass over the array and one loop to
  compile per leaf, where three separate sums took three (a 12 x 768 DiT's state, 521M
  words: 0.28 s against 2.76 s a call on CPU, `scripts/bench_checksums.py`).
  """
  u = _words(x)
  index = _row_major_index(u.shape)
  w1 = u * (_fmix(index) | jnp.uint32(1))
  w2 = _fmix(u ^ _fmix(index ^ jnp.uint32(_K)))
  if jnp.issubdtype(x.dtype, jnp.inexact):
    bad = jnp.logical_not(jnp.isfinite(x)).astype(jnp.uint32)
    # 64-bit and complex leaves have trailing axes of words that their elements do not
    bad = jax.lax.broadcast_in_dim(bad, u.shape, tuple(range(bad.ndim)))
  else:
    bad = jnp.zeros(u.shape, jnp.uint32)
  zero = jnp.uint32(0)
  # s1 and s2 add up mod 2^32; the third is a max (any non-finite word), which cannot wrap
  sums = jax.lax.reduce((w1, w2, bad), (zero, zero, zero),
                        lambda a, b: (a[0] + b[0], a[1] + b[1], jnp.maximum(a[2], b[2])),
                        tuple(range(u.ndim)))
  return jnp.stack(sums)


def leaf_checksums(x):
  """uint32 `[2]`: `(s1, s2)` of one array (see `_leaf_sums`)."""
  return _leaf_sums(x)[:2]


def _fingerprint(tree):
  sums = [_leaf_sums(x) for x in jax.tree.leaves(tree)]
  return [s[2] == 0 for s in sums], [s[:2] for s in sums]


@functools.lru_cache(maxsize=None)
def _fingerprint_fn(out_sharding):
  return jax.jit(_fingerprint) if out_sharding is None else jax.jit(
      _fingerprint, out_shardings=out_sharding)


# States of at most this many 32-bit words (32 MiB) are summed on the host: compiling the
# jitted pass takes 1 to 2 s whatever the size (a reduction per leaf), which is most of
# what loading a small run costs, while NumPy sums a toy or digits state (5M words) in
# about 35 ms. NumPy's cost grows with the state and is paid at every save (0.76 s at
# 2^24 words), the compile once per process: past a few saves of a larger state the
# jitted pass costs less.
HOST_WORDS = 1 << 23


def _host_sums(x):
  """NumPy's `_leaf_sums` of a host array whose elements are one word each."""
  x = np.asarray(x)
  if x.dtype == np.bool_ or x.dtype.itemsize == 4:
    u = x.astype(np.uint32) if x.dtype == np.bool_ else x.view(np.uint32)
  else:  # widened like `_words`
    u = x.view(np.dtype(f"uint{x.dtype.itemsize * 8}")).astype(np.uint32)
  index = np.arange(u.size, dtype=np.uint32).reshape(u.shape)  # row-major, mod 2^32
  with np.errstate(over="ignore"):
    s1 = np.sum(u * (_fmix(index) | np.uint32(1)), dtype=np.uint32)
    s2 = np.sum(_fmix(u ^ _fmix(index ^ np.uint32(_K))), dtype=np.uint32)
  bad = jnp.issubdtype(x.dtype, jnp.floating) and not np.isfinite(x).all()
  return np.array([s1, s2, bad], np.uint32)


def _fits_host(leaves):
  """Whether `_host_sums` applies: one process holding every array whole, elements of
  one word, and not more than `HOST_WORDS` of them."""
  if jax.process_count() > 1:
    return False
  for x in leaves:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return False
    # Keys, complex and 64-bit elements (several words each) are left to the device.
    if not any(jnp.issubdtype(x.dtype, kind) for kind in (jnp.floating, jnp.integer, jnp.bool_)
               ) or np.dtype(x.dtype).itemsize > 4:
      return False
  return sum(int(np.size(x)) for x in leaves) <= HOST_WORDS


def state_checksums(tree, out_sharding=None, on_host=None):
  """`({path: finite}, {path: [s1, s2]})` of every leaf of `tree` (see `leaf_checksums`),
  keyed by `jax.tree_util.keystr` paths, from one jitted pass over the tree, or for a
  small state held by one process (`on_host=None`: `_fits_host`) from NumPy on the
  host; both give the same numbers.

  `out_sharding`: where the few results go; in a multi-process run a replicated
  sharding of the run's mesh, so that every process reads them.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [jax.tree_util.keystr(p) for p, _ in flat]
  leaves = [x for _, x in flat]
  if on_host is None:
    on_host = _fits_host(leaves)
  if on_host:
    sums = [_host_sums(x) for x in jax.device_get(leaves)]
    finite, sums = [s[2] == 0 for s in sums], [s[:2] for s in sums]
  else:
    finite, sums = jax.device_get(_fingerprint_fn(out_sharding)(tree))
  return ({p: bool(f) for p, f in zip(paths, finite)},
          {p: [int(a), int(b)] for p, (a, b) in zip(paths, sums)})


# --- Errors in one line ---------------------------------------------------------------------

def _short(error, limit=200):
  """`Type: first line of the message`, cut at `limit` characters."""
  lines = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {lines[0] if lines else ''}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def os_cause(error):
  """The operating system's reason ("No space left on device [errno 28]") found in
  `error`'s chain (Orbax and TensorStore wrap it, the latter in text), or None."""
  seen, stack = set(), [error]
  while stack:
    e = stack.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    code = e.errno if isinstance(e, OSError) and e.errno else None
    if code is None:
      m = re.search(r"os_error_code='?(\d+)", str(e)) or re.search(r"\[Errno (\d+)\]", str(e))
      code = int(m.group(1)) if m else None
    if code:
      return f"{os.strerror(code)} [errno {code}]"
    stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return None


_UNCOLLECTED = ("Future exception was never retrieved", "Task exception was never retrieved")


def _orbax_errors(record):
  """False for the error logs (with tracebacks) of Orbax's threads and of the asyncio
  tasks it abandons on a failure; a failed save or read is reported once, by
  `Checkpointer`, with its cause."""
  return not (record.levelno >= logging.ERROR and (
      "orbax" in (record.pathname or "")
      or (record.name == "asyncio" and record.getMessage().startswith(_UNCOLLECTED))))


_LOGGERS = ("absl", "asyncio", "")  # those Orbax's logs pass; "": the root's handlers


def _add_filter(f):
  for logger in map(logging.getLogger, _LOGGERS):
    logger.addFilter(f)
    for handler in logger.handlers:
      handler.addFilter(f)


def _remove_filter(f):
  for logger in map(logging.getLogger, _LOGGERS):
    logger.removeFilter(f)
    for handler in logger.handlers:
      handler.removeFilter(f)


_FAILED = []  # not empty once a read or write of a checkpoint failed in this process
_HOOKED = []


def _drop_closed_loop_callbacks():
  """Installs (once) an unraisable hook that drops "RuntimeError: Event loop is closed".

  After a failed read or write, TensorStore completes the other operations of that
  Orbax call, and their callbacks find Orbax's event loop closed: harmless, but each
  prints that traceback (dozens, burying the one line that says what failed), some
  before the failure reaches us. Every other unraisable error goes on as before.
  """
  if _HOOKED:
    return
  _HOOKED.append(True)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax():
  """Around Orbax's reads and writes: its error logs are dropped (`_orbax_errors`); after
  a failure they stay dropped, as Orbax's threads and abandoned tasks log on."""
  _drop_closed_loop_callbacks()
  _add_filter(_orbax_errors)
  try:
    yield
  except Exception:
    _FAILED.append(True)
    raise
  finally:
    if not _FAILED:
      _remove_filter(_orbax_errors)


# --- Checkpoints ----------------------------------------------------------------------------

class Restored(NamedTuple):
  """A checkpoint that read back whole (see `Checkpointer.restore_intact`)."""
  step: int
  state: Any       # None when only the JSON items were asked for
  config: dict     # the config saved with it, upgraded (`upgrade_config`)
  meta: dict
  damaged: tuple   # ((step, what is wrong), ...): the newer steps that did not read back


class _Damaged(Exception):
  """A checkpoint step that does not read back whole; the message says what is wrong."""


def warn(message):
  """A one-line warning on stderr (process 0 only)."""
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Checkpointer:
  """Saves and restores `TrainState`s under `directory/<step>/{state,config,meta,checksums}`.

  `meta` holds what sampling needs besides the config (the data's shape), so a
  run can be sampled without its training data; `checksums` those of every array
  of `state` (see `state_checksums`). With `read_only` nothing is written (sampling).
  """

  def __init__(self, directory, *, max_to_keep=3, read_only=False):
    self.directory = os.path.abspath(directory)
    # Not Orbax's own read_only, which logs three warnings each time: a manager that
    # neither creates nor saves writes nothing.
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep,
                                           create=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "config", "meta", CHECKSUMS))
    self._failed = False

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step, state, config_dict, meta, checksums=None):
    """Writes `state` with the JSON-able `config_dict` and `meta` and returns once all
    of it is on disk.

    `checksums`: `state_checksums(state)[1]`, if the caller has it already; they
    must describe this `state` (computed before a step donates its buffers).
    Raises CheckpointWriteError, one line with the cause and the folder, if any of it
    could not be written (a full disk, say): the earlier checkpoints are untouched.
    """
    if checksums is None:
      checksums = state_checksums(state)[1]
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_dict),
        meta=ocp.args.JsonSave(meta),
        **{CHECKSUMS: ocp.args.JsonSave({"version": 1, "leaves": checksums})})
    try:
      with _quiet_orbax():
        self.manager.save(int(step), args=args, force=True)
        # Waited for here, not at the next save: a failed write stops the run at the step
        # that failed, before it trains on. The arrays are copied to the host before the
        # wait either way; the wait is the writing (measured in BENCHMARKS.md, Reliability).
        self.manager.wait_until_finished()
    except Exception as e:  # Orbax raises many types, wrapping the cause
      self._failed = True
      earlier = [s for s in _committed(self.directory) if s < int(step)]
      cause = os_cause(e) or _short(e)
      raise CheckpointWriteError(
          f"could not write checkpoint {int(step)} to {self.directory}: {cause}. Training "
          f"stopped there; "
          + (f"the earlier checkpoints (latest: step {earlier[-1]}) are intact" if earlier
             else "no earlier checkpoint exists")
          + ". Free space (or train in another --workdir) and rerun to resume.") from e

  def restore_json(self, name, step=None):
    """The JSON item `name` ("config" or "meta") of a checkpoint (unverified)."""
    step = self.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
    return out[name]

  def restore_config(self, step=None):
    """The config dict saved with a checkpoint, upgraded with keys older runs lack."""
    return upgrade_config(self.restore_json("config", step))

  def mismatch(self, step, saved, config_dict):
    """CheckpointMismatchError naming every shape key in which the `saved` config of
    `step` differs from `config_dict`, or None."""
    diffs = config_mismatches(saved, config_dict)
    if not diffs:
      return None
    return CheckpointMismatchError(
        f"checkpoint {os.path.join(self.directory, str(step))} was written for another "
        "model:\n  " + "\n  ".join(diffs)
        + "\nUse a new --workdir, or the config the checkpoint was trained with.")

  def restore_state(self, abstract_state, step=None, config_dict=None):
    """Restores step `step` (default: the newest) into `abstract_state` (a pytree of
    `jax.ShapeDtypeStruct`), verified as `restore_intact` does.

    Leaves without a sharding are restored onto this process's first device, so
    a run trained on many devices can be sampled on one. With `config_dict`, first
    compares it with the saved config and raises `CheckpointMismatchError` naming
    every key that differs. Raises CheckpointDamagedError if the step is damaged.
    """
    step = self.latest_step() if step is None else step

    def check(s, saved, meta):
      error = config_dict is not None and self.mismatch(s, saved, config_dict)
      if error:
        raise error

    return self.restore_intact(lambda saved, meta: abstract_state, check=check,
                               step=step).state

  def restore_intact(self, target=None, *, check=None, step=None, out_sharding=None):
    """The newest checkpoint that reads back whole, or None if there is none at all.

    From the newest step down, each is read and verified: its config and meta, then
    (with `target`) its arrays against the checksums saved with them, and that they are
    finite and of the step they are filed under. Steps that fail are damaged: passed
    over, never deleted, and listed in the result's `damaged`. Checkpoints written
    before checksums existed have no `checksums` item: they load unverified (only
    finite and of their step), so old runs still sample and resume.

    Args:
      target: `target(saved_config, meta) -> abstract state` (a pytree of
        `jax.ShapeDtypeStruct`): Orbax's restore target; leaves without a sharding go
        to this process's first device. None: only the JSON items (state None).
      check: `check(step, saved_config, meta)`, called before the arrays are read;
        what it raises (a checkpoint of another model) is the user's to fix, not
        damage, and ends the search.
      step: this step only, or CheckpointDamagedError.
      out_sharding: as in `state_checksums` (a multi-process run's replicated one).
    Raises:
      CheckpointDamagedError naming each damaged step and what is wrong with it, if
      none reads back whole; RunNotFoundError for a `step` that does not exist.
    """
    steps = self.all_steps()
    if step is not None:
      if int(step) not in steps:
        raise RunNotFoundError(f"{self.directory} has no checkpoint {step}; it has steps "
                               f"{steps or 'none'}.")
      steps = [int(step)]
    damaged = []
    for s in reversed(steps):
      try:
        return Restored(s, *self._read(s, target, check, out_sharding), tuple(damaged))
      except _Damaged as e:
        damaged.append((s, str(e)))
    if not damaged:
      return None
    where = lambda s: os.path.join(self.directory, str(s))
    if step is not None:
      raise CheckpointDamagedError(f"checkpoint {where(step)} is damaged ({damaged[0][1]}).")
    raise CheckpointDamagedError(
        "no checkpoint reads back whole: " + "; ".join(f"{where(s)} is damaged ({what})"
                                                       for s, what in damaged)
        + ". Nothing was deleted: put back intact copies, or move the step folders away to "
        "start afresh.")

  def _read(self, step, target, check, out_sharding):
    """(state, saved config, meta) of `step`, verified; raises _Damaged saying what is not."""
    problem, saved, meta = None, None, None
    try:
      with _quiet_orbax():
        items = self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
      saved, meta = upgrade_config(items["config"]), items["meta"]
      if not isinstance(meta, dict):
        problem = "its meta is not a JSON object"
    except Exception as e:  # a missing item, undecodable bytes, bad JSON: many types
      problem = f"its config or meta cannot be read: {_short(e)}"
    _agree(problem)
    if check is not None:
      check(step, saved, meta)
    checksums = None
    if os.path.isdir(os.path.join(self.directory, str(step), CHECKSUMS)):
      try:
        with _quiet_orbax():
          checksums = self.restore_json(CHECKSUMS, step)["leaves"]
      except Exception as e:
        problem = f"its checksums cannot be read: {_short(e)}"
    _agree(problem)
    if target is None:
      return None, saved, meta
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda x: x if getattr(x, "sharding", None) is not None
        else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), target(saved, meta))
    state = None
    try:
      with _quiet_orbax():
        state = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:
      problem = f"its arrays cannot be read: {_short(e)}"
    _agree(problem)
    got = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    if got != jax.tree.map(lambda x: (x.shape, x.dtype), abstract):
      raise _Damaged("it holds arrays of other shapes than this config's state")
    finite, found = state_checksums(state, out_sharding)
    if checksums is not None:
      bad = sorted(p for p in set(found) | set(checksums) if found.get(p) != checksums.get(p))
      if bad:
        differ = "differs" if len(bad) == 1 else "differ"
        raise _Damaged(f"{len(bad)} of its {len(found)} arrays {differ} from the checksums "
                       f"saved with them: {bad[0]}" + (", ..." if len(bad) > 1 else ""))
    not_finite = [p for p, ok in finite.items() if not ok]
    if not_finite:
      raise _Damaged(f"it holds non-finite values: {not_finite[0]}"
                     + (", ..." if len(not_finite) > 1 else ""))
    if hasattr(state, "step") and int(state.step) != step:
      raise _Damaged(f"it holds the state of step {int(state.step)}")
    return state, saved, meta

  def set_aside(self, step, folder):
    """Moves checkpoint `step` to `folder/<step>` (`<step>.1`, ... if taken) and forgets
    it, so that a run resumed from an earlier step can save that step again.

    Process 0 moves it; every process must call this. Returns the new place.
    """
    source = os.path.join(self.directory, str(step))
    dest = os.path.join(folder, str(step))
    n = 0
    while os.path.exists(dest):
      n += 1
      dest = os.path.join(folder, f"{step}.{n}")
    if jax.process_index() == 0:
      os.makedirs(folder, exist_ok=True)
      os.rename(source, dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set_aside_{step}")
    self.manager.reload()
    return dest

  def wait(self):
    if not self._failed:  # a failed save was reported; waiting would raise it again
      self.manager.wait_until_finished()

  def close(self):
    if self._failed:
      with _quiet_orbax(), contextlib.suppress(Exception):
        self.manager.close()
    else:
      self.manager.close()


def _committed(directory):
  """The steps with a finished checkpoint folder in `directory`."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _agree(problem):
  """Raises _Damaged(problem) if any process found one: all processes of a run must
  take the same path through the steps (the reads and checksums are collective)."""
  if jax.process_count() > 1 and distributed.any_process(problem is not None):
    problem = problem or "another process could not read it"
  if problem:
    raise _Damaged(problem)
