"""A U-Net for pixels in the style of DDPM++ (Song et al. 2021), as u_theta(z, r, t | y).

The MeanFlow paper's CIFAR-10 model is of this family (base width 128, channel
multipliers (2, 2, 2), 4 residual blocks per resolution, attention at 16x16).
Every residual block adds the conditioning c = e(t) + e(t - r) + e(y), through
its own Dense, as a per-channel bias before its second GroupNorm (DDPM++'s
choice; a scale and shift would add 4.3M parameters). Residual branches and
the output convolution start at zero, and residual sums are scaled by
1/sqrt(2) as in DDPM++, so activations do not grow with depth.
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from meanflow_jax.models.dit import SelfAttention, at_least_float32
from meanflow_jax.models.embeddings import conditioning, guidance_embedding, parameterise

VARIANTS = {
    # The paper's CIFAR-10 network (55,798,275 parameters on 32x32x3).
    "cifar10": dict(base_channels=128, channel_mult=(2, 2, 2), num_res_blocks=4,
                    attn_resolutions=(16,), dropout=0.2, head_channels=64),
    # A CPU-sized network for 8x8 digits and 28x28 MNIST.
    "small": dict(base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attn_resolutions=(), dropout=0.0, head_channels=32),
}

_SKIP_SCALE = float(np.sqrt(0.5))
_named = nn.with_logical_partitioning
_lecun = nn.linear.default_kernel_init
_zeros = nn.initializers.zeros_init()


def _conv(features, kernel, name, dtype, names=(None, None, "conv_in", "conv_out"),
          kernel_init=_lecun):
  """Same-padded convolution with axis-named kernel `[k, k, in, out]` and bias `[out]`."""
  return nn.Conv(features, (kernel, kernel), dtype=dtype, name=name,
                 kernel_init=_named(kernel_init, names), bias_init=_named(_zeros, names[-1:]))


def _group_norm(channels, name, dtype):
  """GroupNorm with min(32, C/4) groups (at least 4 channels a group, for narrow nets)."""
  groups = math.gcd(channels, max(1, min(32, channels // 4)))
  return nn.GroupNorm(groups, epsilon=1e-6, dtype=dtype, name=name,
                      scale_init=_named(nn.initializers.ones_init(), ("norm",)),
                      bias_init=_named(_zeros, ("norm",)))


def _downsample(x):
  """2x2 average pooling `[B, H, W, C]` -> `[B, H/2, W/2, C]`."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample(x):
  """Nearest-neighbour 2x upsampling `[B, H, W, C]` -> `[B, 2H, 2W, C]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-Conv, + conditioning bias, GroupNorm-SiLU-Dropout-Conv, plus a skip.

  Optionally halves (`resample="down"`) or doubles (`"up"`) the spatial size,
  BigGAN-style, on both the branch and the skip.
  """
  features: int
  dropout: float = 0.0
  resample: str = ""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train):
    """x `[B, H, W, Cin]`, emb `[B, E]` (after SiLU) -> `[B, H', W', features]`."""
    stream_dtype = at_least_float32(self.dtype)
    h = nn.silu(_group_norm(x.shape[-1], "norm1", stream_dtype)(x))
    if self.resample:
      resample = _downsample if self.resample == "down" else _upsample
      h, x = resample(h), resample(x)
    h = _conv(self.features, 3, "conv1", self.dtype)(h)
    h = h + nn.Dense(self.features, dtype=self.dtype, name="cond",
                     kernel_init=_named(_lecun, ("embed", "conv_out")),
                     bias_init=_named(_zeros, ("conv_out",)))(emb)[:, None, None, :]
    h = _group_norm(self.features, "norm2", stream_dtype)(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = _conv(self.features, 3, "conv2", self.dtype, kernel_init=_zeros)(h)
    if x.shape[-1] != self.features:
      x = _conv(self.features, 1, "skip", self.dtype)(x)
    # The sum stays in float32 under bf16 convolutions: small updates to the
    # stream would round away in bf16.
    return (x.astype(stream_dtype) + h) * _SKIP_SCALE


class AttnBlock(nn.Module):
  """GroupNorm then multi-head self-attention over the H x W positions, residual."""
  head_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    heads = max(1, c // self.head_channels)
    a = _group_norm(c, "norm", at_least_float32(self.dtype))(x).reshape(b, h * w, c)
    a = SelfAttention(heads, self.dtype, out_init=_zeros, name="attn")(a)
    return (x + a.reshape(b, h, w, c)) * _SKIP_SCALE


class UNet(nn.Module):
  """u_theta(z, r, t | y) for images `[B, H, W, C]`: a DDPM++-style U-Net.

  Level i runs at resolution H / 2^i with `base_channels * channel_mult[i]`
  channels and `num_res_blocks` residual blocks (one more on the way up, each
  fed a skip connection); a residual block halves (doubles) the resolution
  between levels. The lowest level has a ResBlock-Attention-ResBlock middle.
  Each time enters as `base_channels` sinusoidal features and a two-layer MLP
  of width 4 * base_channels.
  The defaults are the paper's CIFAR-10 network ("cifar10"): 55,798,275
  parameters on 32x32x3 unconditionally (`VARIANTS`).

  Attributes:
    base_channels: channels of the input convolution.
    channel_mult: channel multiplier of each level; its length sets the levels,
      and H and W must divide by 2^(levels - 1).
    num_res_blocks: residual blocks per level on the way down.
    attn_resolutions: spatial sizes (H of the level) that get self-attention
      after each residual block on the way down, and once on the way up.
    dropout: dropout rate inside the residual blocks (only with `train=True`,
      from the 'dropout' rng).
    head_channels: channels per attention head.
    num_classes: 0 for an unconditional model; else labels in [0, num_classes),
      and the label `num_classes` is the null class.
    time_scale: multiplier of t and t - r before the sinusoids.
    dtype: computation dtype of the Dense/Conv layers (params stay float32);
      the embeddings, norms and output convolution run in at least float32.
    guided, v_head, prediction: iMF's guidance conditions, its v output convolution
      ("conv_out_v") and x-prediction, as in `MLP`.
  """
  base_channels: int = 128
  channel_mult: Sequence[int] = (2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.2
  head_channels: int = 64
  num_classes: int = 0
  time_scale: float = 1000.0
  dtype: Any = jnp.float32
  guided: bool = False
  v_head: bool = False
  prediction: str = "u"

  @nn.compact
  def __call__(self, z, r, t, y=None, *, omega=None, t_min=None, t_max=None, train=False):
    """z `[B, H, W, C]`, r `[B]`, t `[B]`, y int `[B]` or None, guidance conditions `[B]`
    or None -> u `[B, H, W, C]`, or (u, v) with `v_head`."""
    if z.ndim != 4:
      raise ValueError(f"the U-Net takes images z [B, H, W, C]; got shape {tuple(z.shape)}.")
    b, height, width, channels = z.shape
    factor = 2 ** (len(self.channel_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(
          f"a U-Net with {len(self.channel_mult)} levels halves the image "
          f"{len(self.channel_mult) - 1} times, so H and W must divide by {factor}; got "
          f"{height}x{width}. Use fewer entries in channel_mult or pad the images.")

    emb_dim = 4 * self.base_channels
    c = conditioning(t, r, y, features=emb_dim, freq_dim=self.base_channels,
                     scale=self.time_scale, num_classes=self.num_classes)
    g = guidance_embedding(b, omega, t_min, t_max, guided=self.guided, features=emb_dim,
                           freq_dim=self.base_channels, scale=self.time_scale)
    emb = nn.silu(c if g is None else c + g)

    block = lambda features, name, resample="": ResBlock(
        features, self.dropout, resample, self.dtype, name=name)
    attn = lambda name: AttnBlock(self.head_channels, self.dtype, name=name)

    h = _conv(self.base_channels, 3, "conv_in", self.dtype,
              names=(None, None, None, "conv_out"))(z).astype(at_least_float32(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mult):
      if level:
        h = block(h.shape[-1], f"down{level}", "down")(h, emb, train)
        skips.append(h)
      for i in range(self.num_res_blocks):
        h = block(self.base_channels * mult, f"enc{level}_{i}")(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f"enc{level}_{i}_attn")(h)
        skips.append(h)

    h = block(h.shape[-1], "mid1")(h, emb, train)
    h = attn("mid_attn")(h)
    h = block(h.shape[-1], "mid2")(h, emb, train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = block(self.base_channels * mult, f"dec{level}_{i}")(h, emb, train)
      # One attention per level on the way up (as in DDPM++), after its last block.
      if h.shape[1] in self.attn_resolutions:
        h = attn(f"dec{level}_attn")(h)
      if level:
        h = block(h.shape[-1], f"up{level}", "up")(h, emb, train)

    out_dtype = at_least_float32(self.dtype)
    h = nn.silu(_group_norm(h.shape[-1], "out_norm", out_dtype)(h))
    head = lambda name: parameterise(
        _conv(channels, 3, name, out_dtype, names=(None, None, "conv_in", None),
              kernel_init=_zeros)(h), z, t, self.prediction)
    return (head("conv_out"), head("conv_out_v")) if self.v_head else head("conv_out")
