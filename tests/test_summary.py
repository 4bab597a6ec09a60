"""TensorBoard event files: written by SummaryWriter, read back by the reader."""
import glob
import math
import os
import struct

import numpy as np
import pytest

from meanflow_jax.training import summary


def _event_files(logdir):
  return sorted(glob.glob(os.path.join(logdir, summary.EVENT_FILE_PATTERN)))


def _record_offsets(buf):
  """Byte offset of every record in an event file's bytes, and the file's length."""
  offsets, pos = [], 0
  while pos < len(buf):
    offsets.append(pos)
    (length,) = struct.unpack_from("<Q", buf, pos)
    pos += 12 + length + 4
  return offsets, pos


def _write_losses(logdir, steps):
  with summary.SummaryWriter(logdir) as w:
    for step in steps:
      w.scalars(step, {"train/loss": 1.0 / (step + 3), "train/lr": 0.1 * step})


def test_crc32c_check_value():
  # The CRC-32C check value of RFC 3720; the mask is TFRecord's.
  assert summary.crc32c(b"123456789") == 0xE3069283
  crc = 0xE3069283
  assert summary.masked_crc32c(b"123456789") == (
      ((crc >> 15) | (crc << 17)) + 0xa282ead8) % 2**32


def test_scalars_round_trip_as_float32(tmp_path):
  steps = [0, 1, 5, 100]
  _write_losses(tmp_path, steps)
  got = summary.read_scalars(tmp_path)
  assert set(got) == {"train/loss", "train/lr"}
  assert got["train/loss"] == [(s, float(np.float32(1.0 / (s + 3)))) for s in steps]
  assert got["train/lr"] == [(s, float(np.float32(0.1 * s))) for s in steps]


def test_scalars_accept_numpy_and_keep_non_finite(tmp_path):
  with summary.SummaryWriter(tmp_path) as w:
    w.scalars(np.int64(7), {"a": np.float32(2.5), "b": np.array([3.0]), "nan": math.nan,
                            "inf": -np.inf})
  got = summary.read_scalars(tmp_path)
  assert got["a"] == [(7, 2.5)] and got["b"] == [(7, 3.0)]
  assert got["inf"] == [(7, -math.inf)]
  assert got["nan"][0][0] == 7 and math.isnan(got["nan"][0][1])


def test_non_scalar_value_raises_before_writing(tmp_path):
  with summary.SummaryWriter(tmp_path) as w:
    with pytest.raises(ValueError, match="'bad' must be one number"):
      w.scalars(0, {"good": 1.0, "bad": np.zeros(3)})
  assert summary.read_scalars(tmp_path) == {}


def test_flush_makes_events_readable_before_close(tmp_path):
  w = summary.SummaryWriter(tmp_path)
  w.scalars(3, {"x": 1.0})
  w.flush()
  assert summary.read_scalars(tmp_path) == {"x": [(3, 1.0)]}
  w.close()
  w.close()
  with pytest.raises(ValueError, match="closed"):
    w.scalars(4, {"x": 2.0})


def test_images_round_trip_size(tmp_path):
  rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  gray = np.linspace(0.0, 1.0, 5 * 7).reshape(5, 7)
  with summary.SummaryWriter(tmp_path) as w:
    w.image(0, "samples", rgb)
    w.image(10, "samples", np.full((8, 2, 1), 1.2, np.float32))
    w.image(10, "gray", gray)
  assert summary.read_images(tmp_path) == {"samples": [(0, (4, 6)), (10, (8, 2))],
                                           "gray": [(10, (5, 7))]}
  assert summary.read_scalars(tmp_path) == {}


def test_to_image_uint8():
  gray = summary.to_image_uint8(np.array([[0.0, 0.5], [1.0, 2.0]]))
  np.testing.assert_array_equal(gray[..., 1], [[0, 128], [255, 255]])
  assert gray.shape == (2, 2, 3) and gray.dtype == np.uint8


@pytest.mark.parametrize("array, match", [
    (np.zeros(4), r"\[H, W\] or \[H, W, C\]"),
    (np.zeros((1, 2, 2, 3)), r"\[H, W\] or \[H, W, C\]"),
    (np.zeros((2, 2, 4)), "1 or 3 channels"),
    (np.zeros((3, 2, 2)), "1 or 3 channels"),
    (np.zeros((0, 2, 3)), "empty"),
    (np.zeros((2, 2), np.int32), "uint8 in"),
    (np.full((2, 2), np.nan), "non-finite"),
])
def test_bad_images_raise(tmp_path, array, match):
  with summary.SummaryWriter(tmp_path) as w:
    with pytest.raises(ValueError, match=match):
      w.image(0, "x", array)


def test_disabled_writer_creates_nothing(tmp_path):
  logdir = tmp_path / "run"
  with summary.SummaryWriter(logdir, enabled=False) as w:
    w.scalars(0, {"loss": 1.0})
    w.image(0, "samples", np.zeros((2, 2, 3), np.uint8))
    w.flush()
  assert not logdir.exists()


def test_writers_in_one_second_keep_separate_files_in_order(tmp_path):
  steps = list(range(12))
  for step in steps:
    _write_losses(tmp_path, [step])
  assert len(_event_files(tmp_path)) == len(steps)
  assert [s for s, _ in summary.read_scalars(tmp_path)["train/loss"]] == steps


@pytest.mark.parametrize("where", ["length", "data"])
def test_corrupt_record_raises(tmp_path, where):
  _write_losses(tmp_path, [0, 1, 2])
  (path,) = _event_files(tmp_path)
  buf = bytearray(open(path, "rb").read())
  offsets, _ = _record_offsets(buf)
  # The second record: the first is the file-version event.
  start = offsets[1]
  (length,) = struct.unpack_from("<Q", buf, start)
  pos = start + 2 if where == "length" else start + 12 + length // 2
  buf[pos] ^= 0x40
  open(path, "wb").write(bytes(buf))
  with pytest.raises(ValueError, match=f"corrupt record {where}"):
    summary.read_scalars(tmp_path)


# How much of the last record a killed writer left: part of its 12 header bytes,
# the header alone, part of its data, or all but one byte of its data CRC.
@pytest.mark.parametrize("keep", [lambda n: 6, lambda n: 12, lambda n: 14, lambda n: n - 1],
                         ids=["header_part", "header", "data_part", "crc_part"])
def test_truncated_tail_is_skipped(tmp_path, keep):
  steps = [0, 1, 2, 3]
  _write_losses(tmp_path, steps)
  (path,) = _event_files(tmp_path)
  buf = open(path, "rb").read()
  offsets, end = _record_offsets(buf)
  assert end == len(buf)
  last = offsets[-1]
  open(path, "wb").write(buf[:last + keep(len(buf) - last)])
  got = summary.read_scalars(tmp_path)
  # The last record holds the scalars of the last step.
  assert [s for s, _ in got["train/loss"]] == steps[:-1]
  assert [s for s, _ in got["train/lr"]] == steps[:-1]
