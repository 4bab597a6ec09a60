"""Diffusion Transformer (DiT, Peebles & Xie 2023) with adaLN-Zero, as u_theta(z, r, t | y).

The image `[B, H, W, C]` is cut into p x p patches (a convolution with kernel =
stride = p), each patch becomes a token with a fixed 2-D sin-cos position, and
`depth` transformer blocks process the `H W / p^2` tokens. Every block is
modulated by the conditioning c = e(t) + e(t - r) + e(y): shift and scale after
each LayerNorm and a gate on each residual branch, all three regressed from c
by a zero-initialised Dense (adaLN-Zero), so each block is the identity at init.

Attention is written out (einsum + softmax) because fused kernels usually have
no forward-mode rule, and the MeanFlow target is a `jax.jvp` of this network.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from meanflow_jax.models.embeddings import conditioning, guidance_embedding, parameterise

# depth, hidden size, heads of the paper's sizes (M is MeanFlow's; the rest are DiT's).
SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "M": (16, 1024, 16),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCH_SIZES = (2, 4, 8)
VARIANTS = {
    f"{size}/{patch}": dict(depth=depth, hidden_size=width, num_heads=heads, patch_size=patch)
    for size, (depth, width, heads) in SIZES.items() for patch in PATCH_SIZES
}

_named = nn.with_logical_partitioning
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros_init()


def _dense(features, names, name, dtype, kernel_init=_xavier):
  """Dense with a kernel tagged `names` (in, out) and a bias tagged (out,)."""
  return nn.Dense(features, dtype=dtype, name=name, kernel_init=_named(kernel_init, names),
                  bias_init=_named(_zeros, names[-1:]))


def at_least_float32(dtype):
  """The dtype of norms, softmax, residual streams and outputs: bf16 -> f32, f64 stays f64."""
  return jnp.promote_types(dtype, jnp.float32)


def sincos_position_embedding(dim, grid_h, grid_w):
  """Fixed 2-D sin-cos positions `[grid_h * grid_w, dim]`, row-major like the tokens.

  The first half of the features encodes the row, the second half the column,
  each as [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (dim/4)).
  """
  if dim % 4:
    raise ValueError(f"the 2-D sin-cos position embedding needs dim % 4 == 0; got {dim}.")
  quarter = dim // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)

  def one_axis(pos):  # [N] -> [N, dim/2]
    angles = pos[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  emb = np.concatenate([one_axis(rows.reshape(-1)), one_axis(cols.reshape(-1))], axis=1)
  return emb.astype(np.float32)


def modulate(x, shift, scale):
  """adaLN: x (1 + scale) + shift, with per-sample shift/scale `[B, D]` over tokens `[B, N, D]`."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
  """Multi-head dot-product self-attention: `[B, N, D]` -> `[B, N, D]`.

  Plain einsum + softmax (no fused kernel) so that `jax.jvp` differentiates it.
  The logits and softmax run in at least float32 whatever `dtype` the
  projections use.

  Attributes:
    num_heads: number of heads; D must divide by it.
    dtype: computation dtype of the projections.
    out_init: initialiser of the output projection (zeros where the branch
      should start as the identity, e.g. in a U-Net without gates).
  """
  num_heads: int
  dtype: Any = jnp.float32
  out_init: Any = _xavier

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f"width {dim} does not divide into {self.num_heads} heads.")
    head_dim = dim // self.num_heads
    qkv = nn.DenseGeneral(
        (3, self.num_heads, head_dim), dtype=self.dtype, name="qkv",
        kernel_init=_named(_xavier, ("embed", None, "heads", "kv")),
        bias_init=_named(_zeros, (None, "heads", "kv")))(x)  # [B, N, 3, H, Dh]
    q, k, v = qkv[:, :, 0] * head_dim ** -0.5, qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    weights = jax.nn.softmax(logits.astype(at_least_float32(logits.dtype)), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    return nn.DenseGeneral(
        dim, axis=(-2, -1), dtype=self.dtype, name="out",
        kernel_init=_named(self.out_init, ("heads", "kv", "embed")),
        bias_init=_named(_zeros, ("embed",)))(out)


class DiTBlock(nn.Module):
  """adaLN-Zero transformer block: gated attention and MLP residuals, `[B, N, D]`."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    """x `[B, N, D]` tokens, c `[B, D]` conditioning (already through SiLU)."""
    dim = x.shape[-1]
    # Zero init: gates are 0 at init, so the block starts as the identity.
    mod = _dense(6 * dim, ("embed", "mlp"), "adaln", self.dtype, kernel_init=_zeros)(c)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(1e-6, use_bias=False, use_scale=False,
                                     dtype=at_least_float32(self.dtype), name=name)
    h = modulate(norm("norm1")(x), shift_a, scale_a)
    x = x + gate_a[:, None] * SelfAttention(self.num_heads, self.dtype, name="attn")(h)
    h = modulate(norm("norm2")(x), shift_m, scale_m)
    h = _dense(int(dim * self.mlp_ratio), ("embed", "mlp"), "fc1", self.dtype)(h)
    h = _dense(dim, ("mlp", "embed"), "fc2", self.dtype)(nn.gelu(h, approximate=True))
    return x + gate_m[:, None] * h


class DiT(nn.Module):
  """u_theta(z, r, t | y) for images `[B, H, W, C]`: DiT with adaLN-Zero.

  Sizes of the paper (`VARIANTS`, e.g. "XL/2"): S 12x384 (6 heads), B 12x768
  (12), M 16x1024 (16), L 24x1024 (16), XL 28x1152 (16); patch 2, 4 or 8.
  With 1000 classes on 32x32x4 latents: B/2 131,091,472, M/2 308,019,216,
  L/2 459,137,040, XL/2 676,440,592 parameters (the paper: 131M, 308M, 459M, 676M).

  Attributes:
    patch_size: side p of the square patches; H and W must divide by it.
    hidden_size: token width D (divisible by 4 and by `num_heads`).
    depth: number of transformer blocks.
    num_heads: attention heads.
    mlp_ratio: hidden width of the block MLP over D.
    num_classes: 0 for an unconditional model; else labels in [0, num_classes),
      and the label `num_classes` is the null class.
    time_scale: multiplier of t and t - r before the sinusoids.
    dtype: computation dtype of the Dense/Conv layers (params stay float32);
      the embeddings, norms, softmax and output layer run in at least float32.
    guided, v_head, prediction: iMF's guidance conditions, its v output layer
      ("final_v") and x-prediction, as in `MLP`.
    remat: recompute each block's activations in the backward pass (`nn.remat`) instead
      of keeping them: less memory for one more forward of the blocks; same parameters.
  """
  patch_size: int
  hidden_size: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  num_classes: int = 0
  time_scale: float = 1000.0
  dtype: Any = jnp.float32
  guided: bool = False
  v_head: bool = False
  prediction: str = "u"
  remat: bool = False

  @nn.compact
  def __call__(self, z, r, t, y=None, *, omega=None, t_min=None, t_max=None, train=False):
    """z `[B, H, W, C]`, r `[B]`, t `[B]`, y int `[B]` or None, guidance conditions `[B]`
    or None -> u `[B, H, W, C]`, or (u, v) with `v_head`.

    `train` is accepted for the common interface; DiT has no dropout.
    """
    del train
    if z.ndim != 4:
      raise ValueError(f"DiT takes images z [B, H, W, C]; got shape {tuple(z.shape)}.")
    b, height, width, channels = z.shape
    p, dim = self.patch_size, self.hidden_size
    if height % p or width % p:
      raise ValueError(f"DiT with patch size {p} needs H and W divisible by {p}; "
                       f"got {height}x{width}.")
    gh, gw = height // p, width // p

    c = conditioning(t, r, y, features=dim, freq_dim=256, scale=self.time_scale,
                     num_classes=self.num_classes)
    g = guidance_embedding(b, omega, t_min, t_max, guided=self.guided, features=dim,
                           freq_dim=256, scale=self.time_scale)
    c = nn.silu(c if g is None else c + g)

    x = nn.Conv(dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed",
                kernel_init=_named(_xavier, (None, None, "conv_in", "embed")),
                bias_init=_named(_zeros, ("embed",)))(z)
    # Adding the float32 positions keeps the residual stream in float32 under bf16.
    x = x.reshape(b, gh * gw, dim) + sincos_position_embedding(dim, gh, gw)
    block = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, self.dtype, name=f"block{i}")(x, c)

    out_dtype = at_least_float32(self.dtype)
    shift, scale = jnp.split(
        _dense(2 * dim, ("embed", "mlp"), "final_adaln", out_dtype, kernel_init=_zeros)(c),
        2, axis=-1)
    x = modulate(nn.LayerNorm(1e-6, use_bias=False, use_scale=False, dtype=out_dtype,
                              name="final_norm")(x), shift, scale)

    def head(name):
      out = _dense(p * p * channels, ("embed", "patch"), name, out_dtype, kernel_init=_zeros)(x)
      # Unpatchify: token (i, j) holds the p x p x C pixels of patch row i, column j.
      out = out.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
      return parameterise(out.reshape(b, height, width, channels), z, t, self.prediction)

    return (head("final"), head("final_v")) if self.v_head else head("final")
