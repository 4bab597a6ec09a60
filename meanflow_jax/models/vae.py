"""The Stable Diffusion VAE (AutoencoderKL of `sd-vae-ft-mse` / `sd-vae-ft-ema`) in flax.

Latent MeanFlow models on ImageNet 256 train on the latents of this autoencoder:
256 x 256 x 3 images <-> 32 x 32 x 4 latents (a factor 8 per side), and decode their
samples with it before FID. The network is the KL autoencoder of latent diffusion as
diffusers' `AutoencoderKL` builds it: a convolutional encoder and decoder of ResNet
blocks with one single-head self-attention block at the lowest resolution, GroupNorm
and SiLU throughout, and 1x1 `quant_conv` / `post_quant_conv` around the latents
(83,653,863 parameters for the standard config).

Weights. Nothing here downloads them. Fetch diffusers' `diffusion_pytorch_model.safetensors`
(or the older `diffusion_pytorch_model.bin`) of the Hugging Face model
`stabilityai/sd-vae-ft-mse` (or `stabilityai/sd-vae-ft-ema`) yourself and convert it once:

  python scripts/convert_vae_weights.py \
      --torch diffusion_pytorch_model.safetensors --out sd_vae_ft_mse.npz

The `.npz` holds one array per flax parameter, keyed by its path with '/'
(`encoder/down_blocks_0/resnets_1/conv1/kernel`, `decoder/mid_block/attentions_0/to_q/bias`,
...), plus `__config__`, the `VAEConfig` as JSON; `load_params` reads it.
Module names mirror diffusers' so that a PyTorch key is its flax path by a rename:
`encoder.down_blocks.0.resnets.1.conv1.weight` -> `encoder/down_blocks_0/resnets_1/conv1/kernel`.

Conventions:
  * images are NHWC float32 in [-1, 1]; latents are NHWC (`[N, H/8, W/8, 4]`);
  * `encode` returns the *unscaled* posterior mean and log-variance (clipped to
    [-30, 20]); the latents a diffusion model trains on are `mean * config.scale`
    (0.18215), the posterior's mean rather than a sample of it;
  * `decode` takes *unscaled* latents; `make_decoder` takes scaled ones (it divides
    by `config.scale`) and returns images clipped to [-1, 1];
  * everything is computed in float32; convolutions and the attention's products run at
    `Precision.HIGHEST` unless asked otherwise, so that accelerators do not silently use
    bf16/TF32 passes and decoded images do not depend on the device kind.
"""
import functools
import json
import math
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from meanflow_jax.errors import CheckpointMismatchError, DataError
from meanflow_jax.metrics.inception import MissingFileError, shape_mismatches

__all__ = ["AutoencoderKL", "VAEConfig", "MissingFileError", "check_params",
           "convert_torch_state_dict", "expected_shapes", "init_random_params", "load_params",
           "make_decoder", "make_encoder", "param_count", "save_params"]

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
HUB_MODEL = "stabilityai/sd-vae-ft-mse"
CONVERTER = "scripts/convert_vae_weights.py"
CONFIG_KEY = "__config__"


class VAEConfig(NamedTuple):
  """Architecture of the autoencoder; the defaults are Stable Diffusion's (sd-vae-ft-*).

  channels: width of each resolution level, highest resolution first; the encoder
    halves the resolution between levels, so images are 2^(len(channels) - 1) times
    larger per side than latents.
  layers_per_block: ResNet blocks per encoder level (the decoder has one more).
  latent_channels, image_channels: channels of latents and images.
  groups, eps: GroupNorm groups (dividing every width) and epsilon.
  scale: the latent scale factor: diffusion models see `mean * scale`.
  """
  channels: tuple = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  image_channels: int = 3
  groups: int = 32
  eps: float = 1e-6
  scale: float = 0.18215

  @property
  def factor(self):
    """Image size / latent size per side: 2^(levels - 1)."""
    return 2 ** (len(self.channels) - 1)


# ------------------------------------------------------------------------------ layers


def _conv(features, kernel, precision, name, strides=1, padding=None):
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides, padding=pad, precision=precision,
                 name=name)


def _norm(config, name):
  # Two-pass variance, as PyTorch computes it: E[x^2] - E[x]^2 loses digits on
  # activations with a large mean.
  return nn.GroupNorm(num_groups=config.groups, epsilon=config.eps, use_fast_variance=False,
                      name=name)


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-conv3x3 twice plus the input (1x1 `conv_shortcut` if widths differ).

  `[N, H, W, Cin]` -> `[N, H, W, features]`.
  """
  config: VAEConfig
  features: int
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    h = nn.silu(_norm(self.config, "norm1")(x))
    h = _conv(self.features, 3, self.precision, "conv1")(h)
    h = nn.silu(_norm(self.config, "norm2")(h))
    h = _conv(self.features, 3, self.precision, "conv2")(h)
    if x.shape[-1] != self.features:
      x = _conv(self.features, 1, self.precision, "conv_shortcut")(x)
    return x + h


class Attention(nn.Module):
  """Single-head self-attention over the H*W positions, with a residual connection.

  x + to_out(softmax(q k^T / sqrt(C)) v), q, k, v = to_q/k/v(GroupNorm(x)).
  `[N, H, W, C]` -> `[N, H, W, C]`; the softmax is taken in float32.
  """
  config: VAEConfig
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    n, height, width, c = x.shape
    h = _norm(self.config, "group_norm")(x).reshape(n, height * width, c)
    dense = functools.partial(nn.Dense, c, precision=self.precision)
    q, k, v = dense(name="to_q")(h), dense(name="to_k")(h), dense(name="to_v")(h)
    logits = jnp.einsum("nqc,nkc->nqk", q, k, precision=self.precision) / math.sqrt(c)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    h = jnp.einsum("nqk,nkc->nqc", weights, v, precision=self.precision)
    return x + dense(name="to_out")(h).reshape(n, height, width, c)


class Downsample(nn.Module):
  """Halves H and W: zero-pad bottom and right by one, conv3x3 stride 2 (VALID).

  The asymmetric pad is diffusers' (and the original LDM code's); symmetric padding
  would shift every output pixel by half an input pixel.
  """
  features: int
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.features, 3, self.precision, "conv", strides=2, padding="VALID")(x)


class Upsample(nn.Module):
  """Doubles H and W: nearest-neighbour x2, then conv3x3 (padding 1)."""
  features: int
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.features, 3, self.precision, "conv")(x)


class MidBlock(nn.Module):
  """ResNet block, attention, ResNet block at the lowest resolution (width kept)."""
  config: VAEConfig
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c, p = x.shape[-1], self.precision
    x = ResnetBlock(self.config, c, p, name="resnets_0")(x)
    x = Attention(self.config, p, name="attentions_0")(x)
    return ResnetBlock(self.config, c, p, name="resnets_1")(x)


class DownBlock(nn.Module):
  """`num_layers` ResNet blocks to `features`, then a Downsample unless the last level."""
  config: VAEConfig
  features: int
  num_layers: int
  downsample: bool
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_layers):
      x = ResnetBlock(self.config, self.features, self.precision, name=f"resnets_{j}")(x)
    if self.downsample:
      x = Downsample(self.features, self.precision, name="downsamplers_0")(x)
    return x


class UpBlock(nn.Module):
  """`num_layers` ResNet blocks to `features`, then an Upsample unless the last level."""
  config: VAEConfig
  features: int
  num_layers: int
  upsample: bool
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_layers):
      x = ResnetBlock(self.config, self.features, self.precision, name=f"resnets_{j}")(x)
    if self.upsample:
      x = Upsample(self.features, self.precision, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """Images `[N, H, W, image_channels]` -> moments `[N, H/f, W/f, 2 latent_channels]`."""
  config: VAEConfig
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    cfg, p = self.config, self.precision
    x = _conv(cfg.channels[0], 3, p, "conv_in")(x)
    for i, c in enumerate(cfg.channels):
      last = i == len(cfg.channels) - 1
      x = DownBlock(cfg, c, cfg.layers_per_block, not last, p, name=f"down_blocks_{i}")(x)
    x = MidBlock(cfg, p, name="mid_block")(x)
    x = nn.silu(_norm(cfg, "conv_norm_out")(x))
    return _conv(2 * cfg.latent_channels, 3, p, "conv_out")(x)


class Decoder(nn.Module):
  """Latents `[N, h, w, latent_channels]` -> images `[N, h f, w f, image_channels]`."""
  config: VAEConfig
  precision: Any = lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, z):
    cfg, p = self.config, self.precision
    x = _conv(cfg.channels[-1], 3, p, "conv_in")(z)
    x = MidBlock(cfg, p, name="mid_block")(x)
    widths = tuple(reversed(cfg.channels))
    for i, c in enumerate(widths):
      last = i == len(widths) - 1
      x = UpBlock(cfg, c, cfg.layers_per_block + 1, not last, p, name=f"up_blocks_{i}")(x)
    x = nn.silu(_norm(cfg, "conv_norm_out")(x))
    return _conv(cfg.image_channels, 3, p, "conv_out")(x)


class AutoencoderKL(nn.Module):
  """The KL autoencoder: `encode` images -> (mean, logvar), `decode` latents -> images.

  `model.apply(variables, x, method=model.encode)`; `method=model.decode` for latents.
  `__call__` (encode, then decode the mean) exists so that `model.init` creates both halves.
  """
  config: VAEConfig = VAEConfig()
  precision: Any = lax.Precision.HIGHEST

  def setup(self):
    c2 = 2 * self.config.latent_channels
    self.encoder = Encoder(self.config, self.precision)
    self.decoder = Decoder(self.config, self.precision)
    self.quant_conv = nn.Conv(c2, (1, 1), precision=self.precision)
    self.post_quant_conv = nn.Conv(self.config.latent_channels, (1, 1),
                                   precision=self.precision)

  def encode(self, x):
    """Images `[N, H, W, 3]` in [-1, 1] -> (mean, logvar), each `[N, H/f, W/f, 4]`, unscaled."""
    moments = self.quant_conv(self.encoder(x))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    """Unscaled latents `[N, h, w, 4]` -> images `[N, h f, w f, 3]` (about [-1, 1], unclipped)."""
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x):
    mean, _ = self.encode(x)
    return self.decode(mean)


# ----------------------------------------------------------------------------- weights


def _example_images(config):
  s = config.factor  # the smallest image size: parameters do not depend on it
  return jax.ShapeDtypeStruct((1, s, s, config.image_channels), jnp.float32)


@functools.lru_cache(maxsize=None)
def expected_shapes(config=VAEConfig()):
  """{flax path 'encoder/conv_in/kernel': shape} of every parameter, from `jax.eval_shape`."""
  abstract = jax.eval_shape(AutoencoderKL(config).init, jax.random.key(0),
                            _example_images(config))
  flat = traverse_util.flatten_dict(abstract["params"], sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def param_count(config=VAEConfig()):
  """Number of parameters (83,653,863 for the standard config)."""
  return sum(math.prod(s) for s in expected_shapes(config).values())


def _flatten(variables):
  params = variables["params"] if "params" in variables else variables
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _unflatten(flat):
  return {"params": traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")}


def check_params(flat, config=VAEConfig(), source="the weights"):
  """Raises `CheckpointMismatchError` unless `flat` {path: array} fits `config` exactly.

  Lists the first few missing keys, unexpected keys and wrong shapes.
  """
  problems = shape_mismatches(flat, expected_shapes(config))
  if problems:
    raise CheckpointMismatchError(
        f"{source} do not fit the VAE {config}: {problems}. Convert diffusers' "
        f"{WEIGHTS_FILE} of {HUB_MODEL} with {CONVERTER} (see meanflow_jax/models/vae.py).")


def save_params(path, params, config=VAEConfig()):
  """Writes `params` ({'params': tree} or the tree) and `config` to the `.npz` `path`.

  One float32 array per parameter path, plus `__config__`: the config as a JSON string
  (a 0-d array, readable without pickle). Written to a temporary file and renamed, so
  a reader sees the old file or the new one, whole.
  """
  flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
  check_params(flat, config, source="the parameters to save")
  flat[CONFIG_KEY] = np.array(json.dumps(config._asdict()))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a bare name
    np.savez(f, **flat)
  os.replace(tmp, path)


def _config_from_json(text, source):
  try:
    fields = json.loads(str(text))
    fields["channels"] = tuple(fields["channels"])
    return VAEConfig(**fields)
  except Exception as e:  # bad JSON, unknown or missing fields
    raise CheckpointMismatchError(f"{source}: its {CONFIG_KEY} entry is not a VAEConfig: {e}")


def load_params(path):
  """(variables {'params': ...}, VAEConfig) from a `.npz` of `save_params` or the converter.

  A file without `__config__` is taken as the standard Stable Diffusion config.
  """
  if not os.path.isfile(path):
    raise MissingFileError(
        f"VAE weights file {path!r} not found. Download {WEIGHTS_FILE} of {HUB_MODEL} (Hugging "
        f"Face) and convert it with `python {CONVERTER} --torch {WEIGHTS_FILE} --out {path}` "
        "(instructions in meanflow_jax/models/vae.py).")
  try:
    with np.load(path, allow_pickle=False) as f:
      flat = {k: f[k] for k in f.files}
  except Exception as e:  # np.load raises several types for a file that is not an npz
    raise CheckpointMismatchError(f"{path} is not a readable .npz of VAE weights: {e}")
  config = VAEConfig()
  if CONFIG_KEY in flat:
    config = _config_from_json(flat.pop(CONFIG_KEY), path)
  check_params(flat, config, source=path)
  return _unflatten(flat), config


def init_random_params(key, config=VAEConfig()):
  """Random variables {'params': ...} (for tests), shaped by `model.init` (`jax.eval_shape`).

  Kernels are LeCun-normal (variance 1 / fan-in, flax's default), which keeps
  activations O(1) through the residual blocks: decoding random latents gives finite
  images of order 1 to 10. Biases are 0.1 N(0, 1) and norm scales 1 + 0.1 N(0, 1)
  rather than flax's 0 and 1, so that a name mapping that swapped two norms or two
  biases would show in a comparison.
  """
  shapes = sorted(expected_shapes(config).items())
  sizes = [math.prod(shape) for _, shape in shapes]
  # One draw for all arrays: compiling `model.init` or one draw per array costs
  # tens of seconds on a CPU (a random-number program per parameter), the network
  # itself a second.
  normal = np.asarray(jax.random.normal(key, (sum(sizes),)))
  offsets = np.cumsum([0] + sizes)
  flat = {}
  for (k, shape), a, b in zip(shapes, offsets[:-1], offsets[1:]):
    x = normal[a:b].reshape(shape)
    if k.endswith("/kernel"):
      flat[k] = x / np.sqrt(math.prod(shape[:-1]))
    elif k.endswith("/scale"):
      flat[k] = 1.0 + 0.1 * x
    else:  # bias
      flat[k] = 0.1 * x
  return _unflatten(flat)


# PyTorch module names that are linear layers (attention projections) and group norms;
# every other weight is a convolution.
_LINEARS = ("to_q", "to_k", "to_v", "to_out")
_NORMS = ("norm1", "norm2", "group_norm", "conv_norm_out")
# Older diffusers files (before 0.14) name the attention projections differently, and
# newer ones hold the output projection in a list (`to_out.0`; `to_out.1` is a dropout).
_RENAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out"}


def _flax_path(name):
  """`encoder.down_blocks.0.resnets.1.conv1.weight` -> (`encoder/down_blocks_0/resnets_1/conv1`,
  `weight`); None for a name that does not have that form."""
  parts = name.split(".")
  if len(parts) < 2 or parts[-1] not in ("weight", "bias"):
    return None
  module, leaf = parts[:-1], parts[-1]
  if module[-2:] == ["to_out", "0"]:
    module = module[:-1]
  module = [_RENAMES.get(m, m) for m in module]
  out = []
  for m in module:
    if m.isdigit():
      if not out:
        return None
      out[-1] = f"{out[-1]}_{m}"
    else:
      out.append(m)
  return "/".join(out), leaf


def convert_torch_state_dict(state_dict, config=VAEConfig()):
  """diffusers AutoencoderKL state dict {name: array} -> {flax path: float32 numpy}, checked.

  Conv `weight` `[O, I, kh, kw]` -> `kernel` `[kh, kw, I, O]`; Linear `weight` `[O, I]` (or
  a 1x1 conv `[O, I, 1, 1]`, as older files store the attention) -> `kernel` `[I, O]`;
  GroupNorm `weight`/`bias` -> `scale`/`bias`. Takes the current attention names
  (`to_q`, `to_k`, `to_v`, `to_out.0`) and the older ones (`query`, `key`, `value`,
  `proj_attn`).

  Raises:
    CheckpointMismatchError: a key with no place in the network, listing them; a
      missing parameter or a wrong shape (`check_params`).
  """
  want = expected_shapes(config)
  flat, unknown = {}, []
  for name, value in state_dict.items():
    mapped = _flax_path(name)
    if mapped is None:
      unknown.append(name)
      continue
    module, leaf = mapped
    kind = module.rsplit("/", 1)[-1]
    value = np.asarray(value, np.float32)
    if leaf == "bias":
      path = f"{module}/bias"
    elif kind in _NORMS:
      path = f"{module}/scale"
    elif kind in _LINEARS:
      path = f"{module}/kernel"
      if value.ndim == 4 and value.shape[2:] == (1, 1):
        value = value[:, :, 0, 0]
      if value.ndim != 2:
        raise CheckpointMismatchError(f"{name} has shape {value.shape}; a linear weight is "
                                      "[O, I] (or [O, I, 1, 1]).")
      value = value.T
    else:
      path = f"{module}/kernel"
      if value.ndim != 4:
        raise CheckpointMismatchError(f"{name} has shape {value.shape}; a conv weight is 4-d.")
      value = value.transpose(2, 3, 1, 0)
    if path not in want:
      unknown.append(name)
      continue
    flat[path] = np.ascontiguousarray(value)
  if unknown:
    raise CheckpointMismatchError(
        f"{len(unknown)} PyTorch keys have no place in the VAE {config} (first: "
        f"{', '.join(unknown[:5])}); is this diffusers' AutoencoderKL state dict "
        f"({WEIGHTS_FILE} of {HUB_MODEL})?")
  check_params(flat, config, source="the converted PyTorch weights")
  return flat


# ---------------------------------------------------------------------- batched calls


def _batched(fn, params, batch_size, devices, out_sizes):
  """Runs `fn(params, x)` over inputs in fixed-size batches sharded over `devices`.

  Returns run(x [N, ...], progress, desc) -> tuple of numpy arrays [N, ...].
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
  devices = list(jax.local_devices() if devices is None else devices)
  # A batch splits evenly over the devices: round it up to a multiple of their number.
  per_call = -(-batch_size // len(devices)) * len(devices)
  mesh = Mesh(np.array(devices), ("batch",))
  data, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)
  # The parameters are an argument, not a closure: 330 MB of weights are not baked into
  # the program as constants.
  jitted = jax.jit(fn, in_shardings=(replicated, data), out_shardings=data)

  def run(x, progress, desc):
    n = x.shape[0]
    outs = None
    starts = range(0, n, per_call)
    if progress:
      from tqdm import tqdm
      starts = tqdm(starts, desc=desc, unit="batch")
    pending = None

    def fetch(item):
      nonlocal outs
      j, m, ys = item
      ys = [np.asarray(y) for y in ys]
      if outs is None:
        outs = [np.empty((n,) + y.shape[1:], np.float32) for y in ys]
      for o, y in zip(outs, ys):
        o[j:j + m] = y[:m]

    for i in starts:
      xb = x[i:i + per_call]
      k = xb.shape[0]
      if k < per_call:
        xb = np.concatenate([xb, np.zeros((per_call - k,) + xb.shape[1:], xb.dtype)])
      result = (i, k, jitted(params, jax.device_put(xb, data)))
      # Fetch the previous batch only after dispatching this one, so the host copy
      # overlaps the devices' work.
      if pending is not None:
        fetch(pending)
      pending = result
    if pending is not None:
      fetch(pending)
    if outs is None:  # N = 0
      outs = [np.zeros((0,) + s(x.shape), np.float32) for s in out_sizes]
    return tuple(outs)

  return run


def make_decoder(params, config=VAEConfig(), batch_size=64, devices=None,
                 precision=lax.Precision.HIGHEST):
  """A function scaled latents `[N, h, w, latent_channels]` -> images `[N, h f, w f, 3]`.

  decode(latents, progress=False) divides by `config.scale`, runs the decoder and
  returns float32 numpy clipped to [-1, 1]. Latents go through in batches of
  `batch_size` (rounded up to a multiple of the device count; the last batch padded
  with zeros, its padding dropped), each split over `devices` (default: all local
  devices) along the batch axis, parameters replicated. One compilation per latent shape.
  """
  model = AutoencoderKL(config, precision)

  def fn(params, latents):
    images = model.apply(params, latents / config.scale, method=model.decode)
    return (jnp.clip(images, -1.0, 1.0),)

  f = config.factor
  run = _batched(fn, params, batch_size, devices,
                 [lambda s: (s[1] * f, s[2] * f, config.image_channels)])

  def decode(latents, progress=False):
    latents = np.asarray(latents, np.float32)
    if latents.ndim != 4 or latents.shape[-1] != config.latent_channels:
      raise DataError(f"latents must have shape [N, h, w, {config.latent_channels}]; got "
                      f"{latents.shape}.")
    return run(latents, progress, "VAE decode")[0]

  return decode


def make_encoder(params, config=VAEConfig(), batch_size=64, devices=None,
                 precision=lax.Precision.HIGHEST):
  """A function images `[N, H, W, 3]` in [-1, 1] -> (mean, logvar), each `[N, H/f, W/f, 4]`.

  encode(images, progress=False) returns the unscaled posterior mean and log-variance
  as float32 numpy; the training latents are `mean * config.scale`. Batching and
  sharding as in `make_decoder`. H and W must be multiples of f = 2^(levels - 1).
  """
  model = AutoencoderKL(config, precision)

  def fn(params, images):
    return model.apply(params, images, method=model.encode)

  f = config.factor
  shape = lambda s: (s[1] // f, s[2] // f, config.latent_channels)
  run = _batched(fn, params, batch_size, devices, [shape, shape])

  def encode(images, progress=False):
    images = np.asarray(images, np.float32)
    if (images.ndim != 4 or images.shape[-1] != config.image_channels
        or images.shape[1] % f or images.shape[2] % f):
      raise DataError(f"images must have shape [N, H, W, {config.image_channels}] with H and W "
                      f"multiples of {f}; got {images.shape}.")
    return run(images, progress, "VAE encode")

  return encode
