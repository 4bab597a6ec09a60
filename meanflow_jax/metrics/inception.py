"""Inception-v3 pool3 features for FID: the network, its preprocessing, reference stats.

The network is the FID variant of Inception-v3: TensorFlow's 2015-12-05 Inception
graph, the one every published FID uses, in the PyTorch port of pytorch-fid
(torchvision's `Inception3` layout with the FID blocks: average pools that exclude
the padding from their count, and a max pool in the pool branch of the last block).
Its output here is the 2048-d global average pool ("pool3"); the 1008-way
classifier is left out.

Weights. No package ships them and nothing here downloads them. The standard file is
`pt_inception-2015-12-05-6726825d.pth` from the pytorch-fid GitHub releases

  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

(pytorch-fid's port of TensorFlow's `inception-2015-12-05.tgz`).
Download it yourself, then convert it once, on a machine with `torch`:

  python scripts/convert_inception_weights.py \
      --torch pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The `.npz` holds one array per flax parameter, keyed by its path
(`Mixed_5b/branch1x1/conv/kernel`, `Mixed_5b/branch1x1/bn/scale`, `.../bn/bias`,
`.../bn/mean`, `.../bn/var`); `load_params` reads it.

Preprocessing, as pytorch-fid does it on uint8 images:
  1. images in [-1, 1] become uint8 values by floor(clip(127.5 x + 127.5, 0, 255) + 0.5),
     i.e. rounding halves up: the common `(x * 127.5 + 128).clip(0, 255).astype(uint8)`
     of diffusion sampling code, written as a rounding;
     it differs from round-half-to-even (np.rint) only on exact ties k + 0.5 with
     k even, which float32 inputs rarely hit.
     uint8 images are taken as they are.
  2. v = u / 255, one channel repeated to three.
  3. bilinear resize to 299 x 299 without antialiasing (see `preprocess`).
  4. network input 2 v - 1, in [-1, 1].
FID values depend on these choices (uint8 rounding, resize kernel): values from
pipelines that resize differently (TensorFlow's own FID code, clean-fid) are close
but not identical.
"""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

from meanflow_jax.errors import CheckpointMismatchError, DataError, MeanFlowError
from meanflow_jax.metrics.frechet import gaussian_stats

FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPSILON = 1e-3  # the TF graph's batch-norm epsilon, not flax's or PyTorch's default
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
CONVERTER = "scripts/convert_inception_weights.py"


class MissingFileError(MeanFlowError, FileNotFoundError):
  """A weights or statistics file that is not there, with what to do about it."""


# ----------------------------------------------------------------------------- layers


def _pad(ph, pw):
  """PyTorch's `padding=(ph, pw)` (both sides of each axis) as flax/lax pairs."""
  return ((ph, ph), (pw, pw))


def avg_pool_exclude_pad(x, window=3, stride=1, padding=((1, 1), (1, 1))):
  """Average pool whose divisor counts only the unpadded inputs (count_include_pad=False).

  Args:
    x: `[N, H, W, C]`.
    window, stride: square window and stride.
    padding: ((top, bottom), (left, right)) zeros added before pooling.
  Returns:
    `[N, H', W', C]`: sum of the window over the number of real pixels in it, so a
    corner of a 3x3 stride-1 pool averages 4 values, not 9 with 5 zeros.
  """
  dims, strides = (1, window, window, 1), (1, stride, stride, 1)
  pads = ((0, 0),) + tuple(padding) + ((0, 0),)
  total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads)
  return total / count


def max_pool(x, window=3, stride=2, padding=((0, 0), (0, 0))):
  """Max pool `[N, H, W, C]` -> `[N, H', W', C]`; padding is -inf, as in PyTorch."""
  pads = ((0, 0),) + tuple(padding) + ((0, 0),)
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), pads)


class FrozenBatchNorm(nn.Module):
  """Inference batch norm: (x - mean) / sqrt(var + 1e-3) * scale + bias over the last axis.

  All four vectors live in 'params' so one flat weight file holds the whole network.
  """
  features: int

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    mult = scale * lax.rsqrt(var + BN_EPSILON)
    return x * mult + (bias - mean * mult)


class BasicConv2d(nn.Module):
  """Convolution without bias, frozen batch norm, ReLU.

  `[N, H, W, Cin]` -> `[N, H', W', features]`; padding as ((top, bottom), (left, right)).
  """
  features: int
  kernel_size: tuple = (1, 1)
  strides: int = 1
  padding: tuple = ((0, 0), (0, 0))

  @nn.compact
  def __call__(self, x):
    # HIGHEST: accelerators would otherwise run the convolutions in bf16/TF32 passes,
    # and FID moves with the features' round-off.
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding=self.padding,
                use_bias=False, precision=lax.Precision.HIGHEST, name="conv")(x)
    return nn.relu(FrozenBatchNorm(self.features, name="bn")(x))


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b..d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pad excluded)."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, name="branch1x1")(x)
    b5 = BasicConv2d(48, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=_pad(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, name="branch_pool")(avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block (Mixed_6b..e) with factorised 7x7 convolutions; avg pool excludes padding."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row, col = dict(kernel_size=(1, 7), padding=_pad(0, 3)), dict(kernel_size=(7, 1),
                                                                  padding=_pad(3, 0))
    b1 = BasicConv2d(192, name="branch1x1")(x)
    b7 = BasicConv2d(c7, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, **row, name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, **col, name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, **row, name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, **col, name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, **row, name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, name="branch_pool")(avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=_pad(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=_pad(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block (Mixed_7b, Mixed_7c) with split 1x3/3x1 branches.

  pool: 'avg' (padding excluded) in Mixed_7b; 'max' in Mixed_7c, where the 2015 TF
  graph has a max pool although the published architecture says average.
  """
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    row, col = dict(kernel_size=(1, 3), padding=_pad(0, 1)), dict(kernel_size=(3, 1),
                                                                  padding=_pad(1, 0))
    b1 = BasicConv2d(320, name="branch1x1")(x)
    b3 = BasicConv2d(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv2d(384, **row, name="branch3x3_2a")(b3),
                          BasicConv2d(384, **col, name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv2d(384, **row, name="branch3x3dbl_3a")(bd),
                          BasicConv2d(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = avg_pool_exclude_pad(x)
    elif self.pool == "max":
      pooled = max_pool(x, 3, 1, _pad(1, 1))
    else:
      raise ValueError(f"pool must be 'avg' or 'max'; got {self.pool!r}.")
    bp = BasicConv2d(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-v3 up to its global average pool.

  Module names follow torchvision/pytorch-fid, so a PyTorch key
  `Mixed_5b.branch1x1.conv.weight` is the flax path `Mixed_5b/branch1x1/conv/kernel`.
  Spatial sizes for a 299 input: 149, 147, 147, pool 73, 73, 71, pool 35 (Mixed_5*),
  17 (Mixed_6*), 8 (Mixed_7*).
  """

  @nn.compact
  def __call__(self, x):
    """x `[N, H, W, 3]` preprocessed to [-1, 1] (H, W >= 75; 299 for FID) -> pool3 `[N, 2048]`."""
    x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=_pad(1, 1), name="Conv2d_2b_3x3")(x)
    x = max_pool(x)
    x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = max_pool(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------- preprocessing


def to_uint8(images):
  """[-1, 1] floats `[...]` -> uint8 `[...]`: floor(clip(127.5 x + 127.5, 0, 255) + 0.5)."""
  u = jnp.clip(jnp.asarray(images, jnp.float32) * 127.5 + 127.5, 0.0, 255.0)
  return jnp.floor(u + 0.5).astype(jnp.uint8)


def preprocess(images):
  """Images `[N, H, W, C]` (C = 1 or 3) -> network input `[N, 299, 299, 3]` in [-1, 1].

  Float images are read as [-1, 1] and quantised with `to_uint8`; uint8 images are
  used as they are. The resize is `jax.image.resize(..., 'bilinear', antialias=False)`:
  half-pixel centres with the 2-tap triangle kernel, renormalised at the border, which
  is PyTorch's `F.interpolate(mode='bilinear', align_corners=False)` as pytorch-fid
  calls it: the same formula, equal to float32 round-off (~1e-6 when upsampling, the
  usual case; a few 1e-5 when downsampling, where neither antialiases). Resize and
  2 v - 1 commute (the resize weights sum to 1).
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(f"images must have shape [N, H, W, 1 or 3]; got {images.shape}.")
  u = images if images.dtype == jnp.uint8 else to_uint8(images)
  v = u.astype(jnp.float32) / 255.0
  if v.shape[-1] == 1:
    v = jnp.repeat(v, 3, axis=-1)
  n = v.shape[0]
  if v.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    v = jax.image.resize(v, (n, INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
  return 2.0 * v - 1.0


# ----------------------------------------------------------------------------- weights


@functools.lru_cache(maxsize=None)
def expected_shapes():
  """{flax path 'Mixed_5b/branch1x1/conv/kernel': shape} of every network parameter."""
  abstract = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))
  flat = traverse_util.flatten_dict(abstract["params"], sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _unflatten(flat):
  return {"params": traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")}


def shape_mismatches(flat, want):
  """What keeps weights `flat` {path: array} from fitting a network's `want` {path: shape}:
  "" if nothing, else the counts and first few missing keys, unexpected keys and wrong
  shapes, for an error message."""
  missing = sorted(set(want) - set(flat))
  unexpected = sorted(set(flat) - set(want))
  wrong = [f"{k}: {tuple(np.shape(flat[k]))}, expected {want[k]}" for k in sorted(want)
           if k in flat and tuple(np.shape(flat[k])) != want[k]]
  return "; ".join(f"{len(v)} {name} (first: {', '.join(v[:5])})" for name, v in
                   (("missing", missing), ("unexpected", unexpected),
                    ("with wrong shapes", wrong)) if v)


def check_params(flat, source="the weights"):
  """Raises `CheckpointMismatchError` unless `flat` {path: array} fits the network exactly
  (`shape_mismatches`)."""
  problems = shape_mismatches(flat, expected_shapes())
  if problems:
    raise CheckpointMismatchError(
        f"{source} do not fit the FID Inception network: {problems}. Convert "
        f"{WEIGHTS_FILE} with {CONVERTER} (see meanflow_jax/metrics/inception.py).")


def load_params(path):
  """Network variables {'params': ...} from a converted `.npz` (see the module docstring)."""
  if not os.path.isfile(path):
    raise MissingFileError(
        f"Inception weights file {path!r} not found. Download {WEIGHTS_FILE} from the "
        f"pytorch-fid GitHub releases and convert it with `python {CONVERTER} --torch "
        f"{WEIGHTS_FILE} --out {path}` (instructions in meanflow_jax/metrics/inception.py).")
  try:
    with np.load(path) as f:
      flat = {k: f[k] for k in f.files}
  except Exception as e:  # np.load raises several types for a file that is not an npz
    raise CheckpointMismatchError(f"{path} is not a readable .npz of Inception weights: {e}")
  check_params(flat, source=path)
  return _unflatten(flat)


def init_random_params(key):
  """Random network variables (for tests): He-normal kernels, batch norms near identity.

  He scaling keeps activations O(1) through the 94 ReLU layers, so features of random
  weights are far from zero and numerical comparisons of them mean something.
  """
  shapes = sorted(expected_shapes().items())
  sizes = [int(np.prod(shape)) for _, shape in shapes]
  # Two draws for all 470 arrays: one eager draw per array would compile one
  # random-number program per distinct shape (tens of seconds on a CPU).
  key_normal, key_uniform = jax.random.split(key)
  normal = np.asarray(jax.random.normal(key_normal, (sum(sizes),)))
  uniform = np.asarray(jax.random.uniform(key_uniform, (sum(sizes),), minval=0.5, maxval=1.5))
  offsets = np.cumsum([0] + sizes)
  flat = {}
  for (k, shape), a, b in zip(shapes, offsets[:-1], offsets[1:]):
    kind = k.rsplit("/", 1)[-1]
    if kind == "kernel":
      fan_in = shape[0] * shape[1] * shape[2]
      flat[k] = normal[a:b].reshape(shape) * np.sqrt(2.0 / fan_in)
    elif kind in ("scale", "var"):
      flat[k] = uniform[a:b].reshape(shape)
    else:  # bias, mean
      flat[k] = 0.1 * normal[a:b].reshape(shape)
  return _unflatten(flat)


_TORCH_SUFFIXES = {("conv", "weight"): "conv/kernel", ("bn", "weight"): "bn/scale",
                   ("bn", "bias"): "bn/bias", ("bn", "running_mean"): "bn/mean",
                   ("bn", "running_var"): "bn/var"}
# Left out: the classifier, the auxiliary head of torchvision's training-time model,
# and PyTorch's batch-norm step counters.
_TORCH_SKIPPED_PREFIXES = ("fc.", "AuxLogits.")


def convert_torch_state_dict(state_dict):
  """pytorch-fid state dict {name: numpy array} -> {flax path: float32 array}, checked.

  `A.B.conv.weight` `[O, I, kh, kw]` -> `A/B/conv/kernel` `[kh, kw, I, O]`;
  `bn.weight/bias/running_mean/running_var` -> `bn/scale/bias/mean/var`.
  """
  flat, unknown = {}, []
  for name, value in state_dict.items():
    if name.startswith(_TORCH_SKIPPED_PREFIXES) or name.endswith("num_batches_tracked"):
      continue
    parts = name.split(".")
    suffix = _TORCH_SUFFIXES.get(tuple(parts[-2:]))
    if suffix is None:
      unknown.append(name)
      continue
    value = np.asarray(value, np.float32)
    if suffix == "conv/kernel":
      if value.ndim != 4:
        raise CheckpointMismatchError(f"{name} has shape {value.shape}; a conv weight is 4-d.")
      value = value.transpose(2, 3, 1, 0)
    flat["/".join(parts[:-2] + [suffix])] = value
  if unknown:
    raise CheckpointMismatchError(
        f"{len(unknown)} PyTorch keys have no place in the network (first: "
        f"{', '.join(unknown[:5])}); is this the FID Inception state dict {WEIGHTS_FILE}?")
  check_params(flat, source="the converted PyTorch weights")
  return flat


# ---------------------------------------------------------------------------- features


@jax.jit
def _features(params, images):
  # The parameters are an argument, not a closure, so ~90 MB of weights are not baked
  # into the program as constants.
  return InceptionV3().apply(params, preprocess(images))


def make_feature_fn(params, batch_size=100, devices=None):
  """A function images `[N, H, W, C]` -> pool3 features `[N, 2048]` float32 numpy.

  Images are float in [-1, 1] or uint8, C = 1 or 3, any N. They go through the
  network in batches of exactly `batch_size` (the last one padded with zeros and
  its padding dropped), so there is one compilation per image shape and dtype. Each
  batch is split over `devices` (default: this process's devices; the batch is
  rounded up to a multiple of their number), the weights replicated on them.

  Args:
    params: variables from `load_params` or `init_random_params`.
    batch_size: images per device call.
  Returns:
    features(images, progress=False); progress shows a tqdm bar over batches.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
  devices = list(devices or jax.local_devices())
  batch_size += (-batch_size) % len(devices)
  mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  params = jax.device_put(params, jax.sharding.NamedSharding(mesh,
                                                             jax.sharding.PartitionSpec()))

  def features(images, progress=False):
    images = np.asarray(images)
    if images.dtype != np.uint8:
      images = images.astype(np.float32)  # float64 input would compile a second program
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise DataError(f"images must have shape [N, H, W, 1 or 3]; got {images.shape}.")
    n = images.shape[0]
    out = np.empty((n, FEATURE_DIM), np.float32)
    starts = range(0, n, batch_size)
    if progress:
      from tqdm import tqdm
      starts = tqdm(starts, desc="Inception features", unit="batch")
    pending = None
    for i in starts:
      x = images[i:i + batch_size]
      k = x.shape[0]
      if k < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - k,) + x.shape[1:], x.dtype)])
      result = (i, k, _features(params, jax.device_put(x, rows)))
      # Fetch the previous batch only after dispatching this one, so the host copy
      # overlaps the device's work.
      if pending is not None:
        j, m, f = pending
        out[j:j + m] = np.asarray(f)[:m]
      pending = result
    if pending is not None:
      j, m, f = pending
      out[j:j + m] = np.asarray(f)[:m]
    return out

  return features


# ------------------------------------------------------------------------------- stats


def reference_stats(features):
  """(mu `[F]`, sigma `[F, F]`) float64 of features `[N, F]`: mean and unbiased covariance."""
  return gaussian_stats(features)


def _check_stats(mu, sigma, dim, source):
  if mu.ndim != 1 or sigma.shape != mu.shape * 2:
    raise DataError(f"{source}: mu must be [F] and sigma [F, F]; got {mu.shape} and "
                    f"{sigma.shape}.")
  if dim is not None and mu.shape[0] != dim:
    raise DataError(f"{source}: statistics of {mu.shape[0]}-d features; expected {dim}-d "
                    "(Inception pool3 statistics are 2048-d).")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise DataError(f"{source}: mu or sigma has NaN or inf.")


def save_stats(path, mu, sigma):
  """Writes mu `[F]`, sigma `[F, F]` as float64 to the `.npz` `path` (keys 'mu', 'sigma')."""
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  _check_stats(mu, sigma, None, "save_stats")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a bare name
    np.savez(f, mu=mu, sigma=sigma)
  os.replace(tmp, path)  # a concurrent reader sees the old file or the new one, whole


def load_stats(path, dim=FEATURE_DIM):
  """(mu `[F]`, sigma `[F, F]`) float64 from a `.npz` with keys 'mu', 'sigma'.

  The format of pytorch-fid's `--save-stats` and most published reference
  statistics. `dim`: the expected F (None: any).
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"statistics file {path!r} not found; write one with "
                           "save_stats(path, *reference_stats(features)).")
  try:
    with np.load(path) as f:
      keys = list(f.files)
      if "mu" not in keys or "sigma" not in keys:
        raise DataError(f"{path} lacks {[k for k in ('mu', 'sigma') if k not in keys]}: "
                        f"has {keys}; FID statistics files hold 'mu' and 'sigma'.")
      mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
  except DataError:
    raise
  except Exception as e:  # np.load raises several types for a file that is not an npz
    raise DataError(f"{path} is not a readable .npz of statistics: {e}")
  _check_stats(mu, sigma, dim, path)
  return mu, sigma
