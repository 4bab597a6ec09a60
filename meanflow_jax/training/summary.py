"""TensorBoard event files for training logs, written without TensorFlow.

`SummaryWriter` writes scalars and images with tensorboardX's protos and record
writer; `read_scalars` and `read_images` read them back for tests and tools. An
event file is a sequence of TFRecords, each laid out as

  uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little-endian), where `data` is a serialized `Event` proto.
"""
import glob
import itertools
import os
import struct
import time

import numpy as np
from tensorboardX import summary as tbx_summary
from tensorboardX.crc32c import crc32c
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary

EVENT_FILE_PATTERN = "events.out.tfevents.*"

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")

# Files are named by the second and host and opened with "wb", so two writers
# opened in the same second would clobber each other's file; a per-process counter
# and the pid keep every file name unique (zero-padded, so that name order is the
# order the files were opened in).
_FILE_COUNTER = itertools.count()


def masked_crc32c(data):
  """The CRC-32C of `data` masked as TFRecord stores it (bytes -> uint32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


def to_image_uint8(array):
  """An image as uint8 `[H, W, 3]`, the layout tensorboardX encodes (dataformats HWC).

  Args:
    array: uint8 in [0, 255] or float in [0, 1], shape `[H, W]`, `[H, W, 1]` or
      `[H, W, 3]`. Gray images are repeated into three channels.

  Returns:
    uint8 `[H, W, 3]`.
  """
  x = np.asarray(array)
  if x.ndim not in (2, 3):
    raise ValueError(f"image must be [H, W] or [H, W, C]; got shape {x.shape}")
  if x.ndim == 3 and x.shape[-1] not in (1, 3):
    raise ValueError(f"image must have 1 or 3 channels (HWC); got shape {x.shape}")
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"image must not be empty; got shape {x.shape}")
  if x.ndim == 2:
    x = x[..., None]
  if x.dtype != np.uint8:
    x = _float_to_uint8(x)
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _float_to_uint8(x):
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"image must be uint8 in [0, 255] or float in [0, 1]; got {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError("image has non-finite values")
  # Generated samples overshoot [0, 1] a little; clipping keeps them from wrapping
  # around in the uint8 cast.
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _to_float(tag, value):
  v = np.asarray(value)
  if v.size != 1 or not np.issubdtype(v.dtype, np.number):
    raise ValueError(f"scalar {tag!r} must be one number; got {v.dtype} of shape {v.shape}")
  return float(v.reshape(()))


class SummaryWriter:
  """Writes scalars and images to a TensorBoard event file in `logdir`.

  Writes are synchronous (no queue or thread), so after `flush()` every event is on
  disk. With `enabled=False` every method does nothing and nothing is created on
  disk, so that all processes of a multi-host run can call it and only process 0
  writes:

    with SummaryWriter(workdir, enabled=jax.process_index() == 0) as w:
      w.scalars(step, {"train/loss": loss})
  """

  def __init__(self, logdir, enabled=True):
    self.logdir = os.fspath(logdir)
    self.enabled = enabled
    self._writer = None
    self._closed = False
    if enabled:
      os.makedirs(self.logdir, exist_ok=True)
      suffix = f".{os.getpid()}.{next(_FILE_COUNTER):06d}"
      self._writer = EventsWriter(os.path.join(self.logdir, "events"), suffix)

  def _live(self):
    if self._closed:
      raise ValueError(f"SummaryWriter for {self.logdir} is closed")
    return self._writer is not None

  def _write(self, step, summary):
    event = Event(wall_time=time.time(), step=int(step), summary=summary)
    self._writer.write_event(event)

  def scalars(self, step, values):
    """Writes one scalar per key of `values` (tag -> number) at `step`.

    Non-finite values are written as they are: TensorBoard shows them.
    """
    if not self._live():
      return
    floats = {tag: _to_float(tag, v) for tag, v in values.items()}
    # One event per step holds all its scalars: TensorBoard splits them by tag.
    parts = [tbx_summary.scalar(tag, v).value for tag, v in floats.items()]
    self._write(step, Summary(value=[v for part in parts for v in part]))

  def image(self, step, tag, array):
    """Writes one image (see `to_image_uint8` for the accepted arrays) at `step`."""
    if not self._live():
      return
    self._write(step, tbx_summary.image(tag, to_image_uint8(array), dataformats="HWC"))

  def flush(self):
    """Writes buffered events to disk, so that readers see them."""
    if self._live():
      self._writer.flush()

  def close(self):
    """Flushes and closes the file; closing twice is fine."""
    if self._writer is not None and not self._closed:
      self._writer.close()
    self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


class WandbWriter:
  """The `SummaryWriter` calls (scalars, image, flush, close) sent to a Weights & Biases
  run instead of an event file; `enabled=False` does nothing (processes other than 0).

  wandb is imported only here (`pip install '.[wandb]'`); WANDB_MODE=offline keeps the
  run on disk (under `directory`/wandb) for a later `wandb sync`.
  """

  def __init__(self, directory, project, name, config, enabled=True):
    self._run = None
    if not enabled:
      return
    try:
      import wandb
    except ImportError:
      from meanflow_jax.errors import ConfigError
      raise ConfigError("logging.wandb = True needs the wandb package: pip install "
                        "'.[wandb]' (or set logging.wandb = False).") from None
    os.makedirs(directory, exist_ok=True)
    # resume="allow" with the workdir's own id: a resumed run continues the same wandb run.
    self._run = wandb.init(project=project, name=name, dir=directory, config=config,
                           id=_wandb_id(directory), resume="allow")

  def scalars(self, step, values):
    if self._run is not None:
      self._run.log({tag: _to_float(tag, v) for tag, v in values.items()}, step=int(step))

  def image(self, step, tag, array):
    if self._run is not None:
      import wandb
      self._run.log({tag: wandb.Image(to_image_uint8(array))}, step=int(step))

  def flush(self):
    pass  # wandb writes on its own schedule; finish() at close writes the rest

  def close(self):
    if self._run is not None:
      self._run.finish()
      self._run = None


def _wandb_id(directory):
  """A wandb run id kept in `directory`/wandb_id, made once per workdir."""
  path = os.path.join(directory, "wandb_id")
  if not os.path.exists(path):
    with open(path, "w") as f:
      f.write(os.urandom(6).hex())
  with open(path) as f:
    return f.read().strip()


class Writers:
  """Several writers (TensorBoard, wandb) called as one."""

  def __init__(self, *writers):
    self.writers = writers

  def scalars(self, step, values):
    for w in self.writers:
      w.scalars(step, values)

  def image(self, step, tag, array):
    for w in self.writers:
      w.image(step, tag, array)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def read_records(path):
  """The payloads of the TFRecords in the file at `path`, in order.

  Raises ValueError on a record whose length or data fails its CRC. A truncated
  last record, what a killed writer leaves, ends the file without an error.
  """
  with open(path, "rb") as f:
    buf = f.read()
  out, pos = [], 0
  while pos + _HEADER.size <= len(buf):
    length, length_crc = _HEADER.unpack_from(buf, pos)
    if masked_crc32c(buf[pos:pos + 8]) != length_crc:
      raise ValueError(f"{path}: corrupt record length at byte {pos}")
    start = pos + _HEADER.size
    end = start + length
    if end + _FOOTER.size > len(buf):
      break
    data = buf[start:end]
    if masked_crc32c(data) != _FOOTER.unpack_from(buf, end)[0]:
      raise ValueError(f"{path}: corrupt record data at byte {pos}")
    out.append(data)
    pos = end + _FOOTER.size
  return out


def read_events(logdir):
  """The `Event` protos of all event files in `logdir`, file by file in name order."""
  paths = sorted(glob.glob(os.path.join(logdir, EVENT_FILE_PATTERN)))
  return [Event.FromString(r) for p in paths for r in read_records(p)]


def _summary_values(logdir, kind):
  """(step, value) of every summary value of oneof `kind`, grouped by tag."""
  out = {}
  for event in read_events(logdir):
    for v in event.summary.value:
      if v.WhichOneof("value") == kind:
        out.setdefault(v.tag, []).append((event.step, getattr(v, kind)))
  return out


def read_scalars(logdir):
  """Scalars in `logdir`: tag -> [(step, value)] in the order they were written.

  Values are the float32 that the file stores, as Python floats.
  """
  return _summary_values(logdir, "simple_value")


def read_images(logdir):
  """Images in `logdir`: tag -> [(step, (height, width))] in the order they were written."""
  images = _summary_values(logdir, "image")
  return {tag: [(step, (im.height, im.width)) for step, im in vs]
          for tag, vs in images.items()}
