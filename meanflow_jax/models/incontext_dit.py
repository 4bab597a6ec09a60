"""The in-context-conditioned DiT of Improved MeanFlow (iMF, Geng et al. 2025), as
u_theta(z, r, t | y, omega, t_min, t_max) with an optional auxiliary v head.

Conditions are not injected by adaLN but written into the sequence: before the patch
tokens stand prefix tokens, one group per condition (class 8, omega 4, t_min 2, t_max 2,
h = t - r 4 = 20 tokens), each group a learned token bank (N(0, 1/D)) plus that
condition's embedding (sinusoid + MLP; a label table). Blocks are pre-RMSNorm with
QK-RMSNorm, 1-D rotary positions over the whole sequence, SwiGLU (hidden 8D/3) and
zero-initialised per-channel residual gates, so each block starts as the identity. A
shared trunk of `depth - head_depth` blocks splits into a u head and a v head of
`head_depth` blocks each; each head ends in RMSNorm and a zero-initialised linear map
of the patch tokens back to pixels. The network sees h, not t (the reference's choice:
it is noise-unconditional where h = 0).

Attention is einsum + softmax (no fused kernel) so that `jax.jvp` differentiates it.
"""
from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from meanflow_jax.models.dit import at_least_float32
from meanflow_jax.models.embeddings import TimeEmbedding, parameterise

# (hidden size, depth = blocks a sample passes through, heads); the v head adds
# head_depth more. Parameter counts on 32x32x4 latents with 1000 classes, training
# (u + v heads) / sampling (without the v head's blocks): B/2 145,596,960 / 88,948,256,
# M/2 230,570,016 / 173,921,312, L/2 509,752,352 / 409,071,648, XL/2 711,113,760 /
# 610,433,056 (tests/test_incontext_dit.py).
SIZES = {"B": (768, 12, 12), "M": (768, 24, 12), "L": (1024, 32, 16), "XL": (1024, 48, 16)}
VARIANTS = {f"{size}/{p}": dict(hidden_size=d, depth=n, num_heads=h, patch_size=p)
            for size, (d, n, h) in SIZES.items() for p in (2, 4, 8)}

_named = nn.with_logical_partitioning
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros_init()
_ones = nn.initializers.ones_init()


def rope(x, positions, base=10000.0):
  """Rotary position embedding of `x [B, N, H, Dh]` at integer `positions [N]`: pairs of
  channels (i, i + Dh/2) rotated by positions * base^(-2i/Dh)."""
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[:, None].astype(jnp.float32) * freqs[None]  # [N, Dh/2]
  cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
  a, b = x[..., :half], x[..., half:]
  return jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1).astype(x.dtype)


def _rms_norm(name, dtype, axis_name="norm"):
  return nn.RMSNorm(1e-6, dtype=dtype, name=name, scale_init=_named(_ones, (axis_name,)))


class Block(nn.Module):
  """Pre-RMSNorm block: gated attention (QK-RMSNorm, RoPE), gated SwiGLU; `[B, N, D]`."""
  num_heads: int
  mlp_hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, positions):
    dim = x.shape[-1]
    if dim % self.num_heads:
      raise ValueError(f"width {dim} does not divide into {self.num_heads} heads.")
    hd = dim // self.num_heads
    norm_dtype = at_least_float32(self.dtype)
    dense = lambda shape, names, name, axis=-1: nn.DenseGeneral(
        shape, axis=axis, use_bias=False, dtype=self.dtype, name=name,
        kernel_init=_named(_xavier, names))
    # Zero-initialised per-channel gates: the block is the identity at init.
    gate = lambda name: self.param(name, _named(_zeros, ("embed",)), (dim,), jnp.float32)

    h = _rms_norm("norm1", norm_dtype)(x)
    qkv = dense((3, self.num_heads, hd), ("embed", None, "heads", "kv"), "qkv")(h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = rope(_rms_norm("q_norm", norm_dtype, "kv")(q), positions)
    k = rope(_rms_norm("k_norm", norm_dtype, "kv")(k), positions)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * hd ** -0.5
    weights = nn.softmax(logits.astype(at_least_float32(logits.dtype)), axis=-1)
    a = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    a = dense(dim, ("heads", "kv", "embed"), "attn_out", axis=(-2, -1))(a)
    x = x + gate("attn_gate") * a

    h = _rms_norm("norm2", norm_dtype)(x)
    w = dense(2 * self.mlp_hidden, ("embed", "mlp"), "fc_gate_up")(h)
    g, up = jnp.split(w, 2, axis=-1)
    h = dense(dim, ("mlp", "embed"), "fc_down")(nn.silu(g) * up)
    return x + gate("mlp_gate") * h


class InContextDiT(nn.Module):
  """iMF's DiT for images `[B, H, W, C]`: conditions as prefix tokens.

  Attributes:
    patch_size: side p of the square patches.
    hidden_size: token width D.
    depth: blocks a sample passes through (trunk + u head).
    num_heads: attention heads (D / num_heads channels each, even for RoPE).
    head_depth: blocks of each head (u, and v with `v_head`); the trunk has
      depth - head_depth.
    mlp_ratio: SwiGLU hidden width over D (8/3: the parameters of a 4x GELU MLP).
    num_classes: 0 unconditional; else labels in [0, num_classes), null = num_classes.
    prefix_tokens: tokens per condition group (class, omega, t_min, t_max, h).
    time_scale: multiplier of the conditions before the sinusoids.
    dtype: matmul dtype; norms, softmax, gates and outputs in at least float32.
    guided, v_head, prediction: iMF's guidance conditions, its v head and x-prediction.
    remat: recompute each block's activations in the backward pass (`nn.remat`).
  """
  patch_size: int = 2
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  head_depth: int = 8
  mlp_ratio: float = 8.0 / 3.0
  num_classes: int = 0
  prefix_tokens: Tuple[int, ...] = (8, 4, 2, 2, 4)
  time_scale: float = 1000.0
  dtype: Any = jnp.float32
  guided: bool = False
  v_head: bool = False
  prediction: str = "u"
  remat: bool = False

  @nn.compact
  def __call__(self, z, r, t, y=None, *, omega=None, t_min=None, t_max=None, train=False):
    """z `[B, H, W, C]`, r, t `[B]`, y int `[B]` or None, guidance conditions `[B]` or None
    -> u like z, or (u, v) with `v_head`."""
    del train  # no dropout
    if z.ndim != 4:
      raise ValueError(f"the in-context DiT takes images z [B, H, W, C]; got {tuple(z.shape)}.")
    if not 0 <= self.head_depth <= self.depth:
      raise ValueError(f"head_depth {self.head_depth} must lie in [0, depth = {self.depth}].")
    if len(self.prefix_tokens) != 5:
      raise ValueError(f"prefix_tokens takes 5 group sizes (class, omega, t_min, t_max, h); "
                       f"got {self.prefix_tokens}.")
    if not self.guided and any(v is not None for v in (omega, t_min, t_max)):
      raise ValueError("this model has no guidance conditions (built with guided=False).")
    b, height, width, channels = z.shape
    p, dim = self.patch_size, self.hidden_size
    if height % p or width % p:
      raise ValueError(f"patch size {p} needs H and W divisible by {p}; got {height}x{width}.")
    gh, gw = height // p, width // p
    out_dtype = at_least_float32(self.dtype)

    n_class, n_omega, n_tmin, n_tmax, n_h = self.prefix_tokens
    ones = jnp.ones((b,), jnp.float32)
    groups = [("h", n_h, TimeEmbedding(dim, 256, self.time_scale, name="h_embed")(t - r))]
    if self.guided:
      omega = ones if omega is None else omega
      t_min = 0.0 * ones if t_min is None else t_min
      t_max = ones if t_max is None else t_max
      groups += [(name, n, TimeEmbedding(dim, 256, self.time_scale, name=f"{name}_embed")(v))
                 for name, n, v in (("omega", n_omega, 1.0 - 1.0 / omega),
                                    ("tmin", n_tmin, t_min), ("tmax", n_tmax, t_max))]
    if self.num_classes:
      y = jnp.full((b,), self.num_classes, jnp.int32) if y is None else y
      table = nn.Embed(self.num_classes + 1, dim, name="y_embed",
                       embedding_init=_named(nn.initializers.normal(1.0), ("vocab", "embed")))
      groups.insert(0, ("y", n_class, table(y)))
    prefix = []
    for name, n, emb in groups:
      bank = self.param(f"{name}_tokens", _named(nn.initializers.normal(dim ** -0.5),
                                                 (None, "embed")), (n, dim), jnp.float32)
      prefix.append(bank[None] + emb[:, None].astype(jnp.float32))  # [B, n, D]

    patches = z.reshape(b, gh, p, gw, p, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, gh * gw, p * p * channels)
    x = nn.Dense(dim, dtype=self.dtype, name="patch_embed",
                 kernel_init=_named(_xavier, ("patch", "embed")),
                 bias_init=_named(_zeros, ("embed",)))(patches).astype(jnp.float32)
    x = jnp.concatenate(prefix + [x], axis=1)
    n_prefix = x.shape[1] - gh * gw
    positions = jnp.arange(x.shape[1])
    hidden = int(dim * self.mlp_ratio)
    cls = nn.remat(Block) if self.remat else Block
    block = lambda name: cls(self.num_heads, hidden, self.dtype, name=name)

    for i in range(self.depth - self.head_depth):
      x = block(f"block{i}")(x, positions)

    def head(prefix_name, final_name):
      h = x
      for i in range(self.head_depth):
        h = block(f"{prefix_name}{i}")(h, positions)
      h = _rms_norm(f"{final_name}_norm", out_dtype)(h[:, n_prefix:])
      h = nn.Dense(p * p * channels, dtype=out_dtype, name=final_name,
                   kernel_init=_named(_zeros, ("embed", "patch")),
                   bias_init=_named(_zeros, ("patch",)))(h)
      h = h.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
      return parameterise(h.reshape(b, height, width, channels), z, t, self.prediction)

    u = head("u_block", "final")
    return (u, head("v_block", "final_v")) if self.v_head else u
