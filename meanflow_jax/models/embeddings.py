"""Embeddings shared by the networks."""
import math

import flax.linen as nn
import jax.numpy as jnp


def sinusoidal_embedding(t, dim, scale=1000.0, max_period=10000.0):
  """[sin, cos](scale * t * w_k), w_k = max_period^(-k / (dim/2)); t `[B]` -> `[B, dim]`.

  `scale` stretches t in [0, 1] over many periods of the fastest frequency, so
  that nearby times (and small gaps t - r) stay distinguishable.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  t = t.astype(jnp.promote_types(t.dtype, jnp.float32))  # keep f64 in tests, lift bf16
  angles = scale * t[:, None] * freqs[None].astype(t.dtype)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeEmbedding(nn.Module):
  """Sinusoidal features of a time, then a two-layer MLP: `[B]` -> `[B, features]`.

  Parameters carry logical axis names ("time" -> "mlp" -> "embed"); the
  initial values are those of plain `nn.Dense`.
  """
  features: int
  freq_dim: int = 256
  scale: float = 1000.0

  @nn.compact
  def __call__(self, t):
    h = sinusoidal_embedding(t, self.freq_dim, self.scale)
    h = nn.silu(_named_dense(self.features, ("time", "mlp"), name="fc1")(h))
    return _named_dense(self.features, ("mlp", "embed"), name="fc2")(h)


def _named_dense(features, names, name):
  """`nn.Dense` with default initialisers, kernel and bias tagged with axis `names`."""
  return nn.Dense(
      features, name=name,
      kernel_init=nn.with_logical_partitioning(nn.linear.default_kernel_init, names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[-1:]))


GUIDANCE_KEYS = ("omega", "t_min", "t_max")


def guidance_embedding(b, omega, t_min, t_max, *, guided, features, freq_dim, scale):
  """emb(1 - 1/omega) + emb(t_min) + emb(t_max) `[B, features]` of a guidance-conditioned
  model (iMF), or None for a model without guidance conditions.

  Called inside a module's compact `__call__` (submodules "omega_embed", "tmin_embed",
  "tmax_embed"). omega enters as 1 - 1/omega in [0, 1) (the paper's embedding: omega = 1,
  no guidance, is 0). Missing conditions are those of no guidance: omega = 1 on [0, 1].

  Raises:
    ValueError: conditions given to a model built without them (`guided=False`).
  """
  given = [k for k, v in zip(GUIDANCE_KEYS, (omega, t_min, t_max)) if v is not None]
  if not guided:
    if given:
      raise ValueError(f"this model has no guidance conditions (built with guided=False); "
                       f"got {given}.")
    return None
  ones = jnp.ones((b,), jnp.float32)
  omega = ones if omega is None else omega
  t_min = 0.0 * ones if t_min is None else t_min
  t_max = ones if t_max is None else t_max
  emb = lambda name, v: TimeEmbedding(features, freq_dim, scale, name=name)(v)
  return emb("omega_embed", 1.0 - 1.0 / omega) + emb("tmin_embed", t_min) + emb("tmax_embed", t_max)


def parameterise(out, z, t, prediction):
  """The average velocity from a network output: `out` itself ("u"), or, for x-prediction
  (pixel MeanFlow), u = (z - x) / max(t, X_PREDICTION_T_FLOOR) with x = `out`.

  Why the floor: at t -> 0, z_t -> x and (z - x) / t is 0/0; the network's errors would be
  amplified 1/t. Below the floor the network predicts x' = z - t_floor u instead of the
  data, still a linear reparameterisation of u with a bounded gain (1 / t_floor = 20).
  The floor is constant in t there, so du/dt of the JVP stays finite.
  """
  if prediction == "u":
    return out
  if prediction == "x":
    t = jnp.maximum(t, X_PREDICTION_T_FLOOR).astype(out.dtype)
    return (z.astype(out.dtype) - out) / t.reshape(t.shape + (1,) * (out.ndim - 1))
  raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}.")


PREDICTIONS = ("u", "x")
X_PREDICTION_T_FLOOR = 0.05


def conditioning(t, r, y, *, features, freq_dim, scale, num_classes):
  """c = emb(t) + emb(t - r) + emb(y), `[B, features]`, before the nonlinearity.

  Called inside a module's compact `__call__`, so the submodules ("t_embed",
  "h_embed", "y_embed") belong to that module. The paper conditions on (t, t - r).
  With `num_classes`, y None means the null class `num_classes` for every sample.
  Label vectors start at unit variance: DiT's 0.02 leaves the label ~50x weaker
  than the time embeddings, and on a short budget (digits, 600 steps) a DiT then
  ignored the class (classifier agreement 10 %, against 100 % with 1.0).
  """
  c = TimeEmbedding(features, freq_dim, scale, name="t_embed")(t)
  c = c + TimeEmbedding(features, freq_dim, scale, name="h_embed")(t - r)
  if num_classes:
    if y is None:
      y = jnp.full(t.shape[:1], num_classes, jnp.int32)
    c = c + nn.Embed(num_classes + 1, features, name="y_embed",
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                 ("vocab", "embed")))(y)
  return c
