"""A residual MLP for low-dimensional data, conditioned on (t, t - r) and a label."""
import flax.linen as nn
import jax.numpy as jnp

from meanflow_jax.models.embeddings import TimeEmbedding, guidance_embedding, parameterise

_named = nn.with_logical_partitioning
_zeros = nn.initializers.zeros


def _dense(features, names, name, kernel_init=nn.linear.default_kernel_init):
  """`nn.Dense` whose kernel is tagged with axis `names` (in, out) and bias with (out,).

  flax's own default initialisers, so the axis names left the initial values unchanged.
  """
  return nn.Dense(features, name=name, kernel_init=_named(kernel_init, names),
                  bias_init=_named(_zeros, names[-1:]))


class MLP(nn.Module):
  """u_theta(z, r, t | y) for vector data `[B, D]`.

  Both times enter through sinusoidal embeddings (the paper's best conditioning is
  on (t, t - r)); their sum modulates each residual block with a scale and a shift.

  Attributes:
    width: hidden width.
    depth: number of residual blocks.
    time_dim: width of the time embeddings.
    time_scale: multiplier of t before the sinusoids.
    num_classes: 0 for an unconditional model; else labels in [0, num_classes),
      and the label `num_classes` is the null class.
    guided: whether the guidance scale omega and interval [t_min, t_max] are conditions
      (iMF; "omega_embed", "tmin_embed", "tmax_embed").
    v_head: whether a second output layer ("out_v") returns iMF's auxiliary
      instantaneous velocity: the call then returns (u, v).
    prediction: "u" (the output is u) or "x" (pixel MeanFlow: u = (z - x) / t, see
      `embeddings.parameterise`).
  """
  width: int = 256
  depth: int = 4
  time_dim: int = 128
  time_scale: float = 1000.0
  num_classes: int = 0
  guided: bool = False
  v_head: bool = False
  prediction: str = "u"

  @nn.compact
  def __call__(self, z, r, t, y=None, *, omega=None, t_min=None, t_max=None, train=False):
    """z `[B, D]`, r `[B]`, t `[B]`, y int `[B]` or None (null class), guidance
    conditions `[B]` or None (omega = 1 on [0, 1]) -> u `[B, D]`, or (u, v) with `v_head`."""
    c = TimeEmbedding(self.width, self.time_dim, self.time_scale, name="t_embed")(t)
    c = c + TimeEmbedding(self.width, self.time_dim, self.time_scale, name="h_embed")(t - r)
    if self.num_classes:
      if y is None:
        y = jnp.full(z.shape[:1], self.num_classes, jnp.int32)  # null class
      c = c + nn.Embed(self.num_classes + 1, self.width, name="y_embed",
                       embedding_init=_named(nn.linear.default_embed_init, ("vocab", "embed")))(y)
    g = guidance_embedding(z.shape[0], omega, t_min, t_max, guided=self.guided,
                           features=self.width, freq_dim=self.time_dim, scale=self.time_scale)
    c = nn.silu(c if g is None else c + g)
    h = _dense(self.width, (None, "embed"), "in")(z)
    for i in range(self.depth):
      mod = _dense(2 * self.width, ("embed", "mlp"), f"mod{i}")(c)
      scale, shift = jnp.split(mod, 2, axis=-1)
      a = nn.LayerNorm(use_scale=False, use_bias=False, name=f"norm{i}")(h)
      a = nn.silu(a * (1 + scale) + shift)
      a = nn.silu(_dense(self.width, ("embed", "mlp"), f"fc{i}a")(a))
      h = h + _dense(self.width, ("mlp", "embed"), f"fc{i}b")(a)
    h = nn.silu(nn.LayerNorm(name="out_norm", scale_init=_named(nn.initializers.ones, ("norm",)),
                             bias_init=_named(_zeros, ("norm",)))(h))
    u = parameterise(_dense(z.shape[-1], ("embed", None), "out", kernel_init=_zeros)(h), z, t,
                     self.prediction)
    if not self.v_head:
      return u
    v = _dense(z.shape[-1], ("embed", None), "out_v", kernel_init=_zeros)(h)
    return u, parameterise(v, z, t, self.prediction)
