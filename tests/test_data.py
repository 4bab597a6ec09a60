import jax
import numpy as np
import pytest

from meanflow_jax.data import PointSource, load_points
from meanflow_jax.errors import DataError


def test_load_points_errors(tmp_path):
  np.save(tmp_path / "rank3.npy", np.zeros((4, 2, 2)))
  with pytest.raises(DataError, match=r"rank 2 \[N, D\]; got shape \(4, 2, 2\)"):
    load_points(str(tmp_path / "rank3.npy"))
  x = np.zeros((5, 2))
  x[3, 1] = np.nan
  np.save(tmp_path / "nan.npy", x)
  with pytest.raises(DataError, match=r"1 non-finite values.*first rows \[3\]"):
    load_points(str(tmp_path / "nan.npy"))
  np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
  with pytest.raises(DataError, match="expected numbers"):
    load_points(str(tmp_path / "str.npy"))
  with pytest.raises(DataError, match="no such file"):
    load_points(str(tmp_path / "missing.npy"))
  np.save(tmp_path / "ok.npy", np.arange(6.0).reshape(3, 2))
  np.testing.assert_array_equal(load_points(str(tmp_path / "ok.npy")), np.arange(6.0).reshape(3, 2))


def test_point_source_is_deterministic_per_step(tmp_path):
  a = PointSource(batch_size=16, key=jax.random.key(3))
  b = PointSource(batch_size=16, key=jax.random.key(3))
  np.testing.assert_array_equal(a.batch(7), b.batch(7))
  assert not np.array_equal(a.batch(7), a.batch(8))
  assert a.dim == 2
  # Per-sample draws: a smaller batch is a prefix of a larger one.
  big = PointSource(batch_size=64, key=jax.random.key(3))
  np.testing.assert_array_equal(big.batch(7)[:16], a.batch(7))
  pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
  np.save(tmp_path / "p.npy", pts)
  c = PointSource(batch_size=8, key=jax.random.key(0), path=str(tmp_path / "p.npy"))
  batch = np.asarray(c.batch(2))
  assert batch.shape == (8, 3) and c.dim == 3
  assert all(any(np.array_equal(row, p) for p in pts) for row in batch)


def test_unknown_mixture():
  with pytest.raises(DataError, match="unknown built-in mixture"):
    PointSource(batch_size=4, key=jax.random.key(0), mixture_name="ring9")
