"""Coupled (x, eps) pairs from a file: the data of a reflow run.

Reflow (rectified flow) re-pairs noise with a trained model's own outputs,
x = Phi(eps), and trains again on those pairs; their straight paths cross less
than those of independent pairs, so the new flow is straighter.
"""
import os

import numpy as np

from meanflow_jax.data import images
from meanflow_jax.errors import DataError


def load_pairs(path):
  """(x `[N, ...]`, eps like x, labels int `[N]` or None, num_classes) from a `.npz`
  with arrays "x" and "eps" (and optionally "y"), validated."""
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file (write pairs with scripts/make_pairs.py).")
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in ("x", "eps") if k not in f.files]
      if missing:
        raise DataError(f"{path}: needs arrays 'x' and 'eps' (and optionally 'y'); it has "
                        f"{f.files}.")
      x, eps = np.asarray(f["x"], np.float32), np.asarray(f["eps"], np.float32)
      y = np.asarray(f["y"]) if "y" in f.files else None
  except (ValueError, OSError) as e:
    raise DataError(f"{path}: not a readable .npz ({e}).") from e
  if x.shape != eps.shape or x.ndim < 2 or x.shape[0] < 1:
    raise DataError(f"{path}: x and eps must be equal-shape batches [N, ...]; got "
                    f"{x.shape} and {eps.shape}.")
  for name, a in (("x", x), ("eps", eps)):
    bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(1)
    if bad.any():
      raise DataError(f"{path}: {bad.sum()} rows of {name} hold NaN or inf, first rows "
                      f"{np.nonzero(bad)[0][:5].tolist()}.")
  labels, k = images.check_labels(y, x.shape[0], None, path) if y is not None else (None, 0)
  return x, eps, labels, k


class PairSource(images.ImageSource):
  """Batches `(x [B, ...], y [B], eps [B, ...])` of stored pairs, in the epoch order of
  `ImageSource` (a function of seed and step only)."""

  def __init__(self, x, eps, labels, num_classes, *, batch_size, seed):  # pylint: disable=super-init-not-called
    if int(batch_size) < 1 or int(seed) < 0:
      raise DataError(f"batch size must be >= 1 and seed >= 0; got {batch_size}, {seed}.")
    self.images, self.eps = x, eps
    self.labels, self._num_classes = labels, num_classes
    self.batch_size, self.seed = int(batch_size), int(seed)
    self.flip, self.scale = False, 1.0
    self._epochs = {}

  def batch(self, step, shard=(0, 1)):
    rows, _ = self.rows(step, shard)
    y = self.labels[rows] if self.labels is not None else np.zeros(len(rows), np.int32)
    return self.images[rows], y, self.eps[rows]
