import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from meanflow_jax import models
from meanflow_jax.models.embeddings import sinusoidal_embedding
from tests.helpers import compiled


def test_sinusoidal_embedding():
  t = jnp.array([0.0, 0.5])
  e = sinusoidal_embedding(t, 8, scale=2.0, max_period=10.0)
  freqs = 10.0 ** (-np.arange(4) / 4)
  np.testing.assert_allclose(e[1], np.concatenate([np.sin(1.0 * freqs), np.cos(1.0 * freqs)]),
                             rtol=1e-6)
  np.testing.assert_allclose(e[0], [0] * 4 + [1] * 4)


@pytest.mark.parametrize("num_classes", [0, 10])
def test_mlp_shapes_and_zero_output_at_init(num_classes):
  model = models.build("mlp", width=32, depth=2, time_dim=16, num_classes=num_classes)
  z = jax.random.normal(jax.random.key(0), (5, 3))
  t, r = jnp.full(5, 0.7), jnp.full(5, 0.2)
  y = jnp.arange(5) if num_classes else None
  params = jax.jit(model.init)(jax.random.key(1), z, r, t, y)
  out = compiled.apply(model)(params, z, r, t, y)
  assert out.shape == (5, 3)
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised head


# Slow: the same check in float64, conditional, is fast
# (test_image_models.py::test_jvp_matches_central_differences_in_float64[mlp]).
@pytest.mark.slow
def test_mlp_jvp_matches_finite_differences():
  model = models.build("mlp", width=32, depth=2, time_dim=16, time_scale=1.0)
  k = jax.random.split(jax.random.key(2), 4)
  z = jax.random.normal(k[0], (8, 2))
  params = jax.jit(model.init)(k[1], z, jnp.zeros(8), jnp.ones(8))
  # Perturb the zero head so the output depends on the inputs.
  params = compiled.perturb(params, k[2], 0.1)
  v = jax.random.normal(k[3], (8, 2))
  r, t = jnp.full(8, 0.2), jnp.full(8, 0.6)
  f = lambda z, r, t: model.apply(params, z, r, t)
  _, du = jax.jit(lambda: jax.jvp(f, (z, r, t), (v, jnp.zeros(8), jnp.ones(8))))()
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    f64 = jax.jit(lambda z, t: model.apply(p64, z, r.astype(jnp.float64), t))
    h = 1e-6
    z64, v64, t64 = z.astype(jnp.float64), v.astype(jnp.float64), t.astype(jnp.float64)
    fd = (f64(z64 + h * v64, t64 + h) - f64(z64 - h * v64, t64 - h)) / (2 * h)
  np.testing.assert_allclose(du, fd, rtol=1e-3, atol=1e-4)


def test_registry():
  assert "mlp" in models.available()
  with pytest.raises(ValueError, match="unknown model 'mlq'"):
    models.build("mlq")


def test_registry_variants_and_overrides():
  assert models.available() == ["dit", "imf_dit", "mlp", "unet"]
  assert models.variants("imf_dit")[:4] == ["B/2", "B/4", "B/8", "M/2"]
  assert models.variants("mlp") == []
  assert models.variants("unet") == ["cifar10", "small"]
  assert len(models.variants("dit")) == 15 and {"S/8", "B/4", "XL/2"} <= set(models.variants("dit"))
  model = models.build("dit", "XL/2", num_classes=1000, depth=2)  # overrides win over the preset
  assert (model.hidden_size, model.num_heads, model.patch_size, model.depth) == (1152, 16, 2, 2)
  assert models.build("unet", "small", base_channels=16).channel_mult == (1, 2)
  assert models.build("mlp", width=8) == models.build("mlp", None, width=8)  # old form still works
  with pytest.raises(ValueError, match=r"unknown variant 'XXL/2' of model 'dit'; available: \["):
    models.build("dit", "XXL/2")
  with pytest.raises(ValueError, match="unknown variant 'small' of model 'mlp'; available: none"):
    models.build("mlp", "small")
  with pytest.raises(ValueError, match=r"unknown argument\(s\) \['widht'\] for model 'mlp'"):
    models.build("mlp", widht=8)
  with pytest.raises(ValueError, match="unknown model 'vit'"):
    models.variants("vit")


def test_param_count_uses_shapes_only():
  model = models.build("mlp", width=8, depth=1, time_dim=4, num_classes=3)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros(1),
                                  jnp.zeros(1))
  assert models.param_count(model, (2,)) == sum(p.size for p in jax.tree.leaves(variables))
  # Boxed values carry their logical axis names; unbox gives plain arrays.
  assert nn.get_partition_spec(variables)["params"]["in"]["kernel"] == P(None, "embed")
  assert all(isinstance(p, jax.Array) for p in jax.tree.leaves(nn.unbox(variables)))


# ----------------------------------------------------------------------------- iMF heads


IMAGE_MODELS = {
    "mlp": (dict(width=16, depth=1, time_dim=8), (6,)),
    "dit": (dict(patch_size=2, hidden_size=32, depth=1, num_heads=2), (4, 4, 1)),
    "unet": (dict(base_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                  dropout=0.0), (4, 4, 1)),
}
NEW_NAMES = {"mlp": {"out_v"}, "dit": {"final_v"}, "unet": {"conv_out_v"}}


def _init(name, shapes_only=False, **kw):
  """(model, parameters, inputs): the parameters are flax's init, or with `shapes_only`
  their `jax.ShapeDtypeStruct`s (nothing compiled)."""
  args, shape = IMAGE_MODELS[name]
  m = models.build(name, num_classes=3, **args, **kw)
  z = jax.random.normal(jax.random.key(0), (2, *shape))
  t, r, y = jnp.array([0.9, 0.02]), jnp.array([0.3, 0.0]), jnp.array([1, 3])
  init = jax.eval_shape if shapes_only else (lambda f, *a: jax.jit(f)(*a))
  return m, nn.meta.unbox(init(m.init, jax.random.key(1), z, r, t, y)), (z, r, t, y)


@pytest.mark.parametrize("name", list(IMAGE_MODELS))
def test_v_head_and_guidance_add_parameters_and_keep_the_old_ones(name):
  """Checkpoints of models built before stay loadable: without the new options the
  parameter tree is what it was; the options only add their own entries."""
  _, plain, _ = _init(name, shapes_only=True)
  _, full, (z, r, t, y) = _init(name, shapes_only=True, v_head=True, guided=True)
  old, new = set(plain["params"]), set(full["params"])
  assert old < new
  assert new - old == NEW_NAMES[name] | {"omega_embed", "tmin_embed", "tmax_embed"}
  for k in old:
    assert jax.tree.map(jnp.shape, plain["params"][k]) == jax.tree.map(jnp.shape,
                                                                      full["params"][k])


@pytest.mark.parametrize("name", list(IMAGE_MODELS))
def test_x_prediction_is_u_of_the_predicted_data(name):
  """prediction="x": u = (z - x) / max(t, 0.05) with x the network's output, on the same
  parameters; finite with a finite du/dt at t -> 0."""
  m_u, _, (z, r, t, y) = _init(name, shapes_only=True)
  m_x, _, _ = _init(name, shapes_only=True, prediction="x")
  params = compiled.random_params(m_u, z, r, t, y, scale=0.1)  # no zero head: x depends on z
  x_out = compiled.apply(m_u)(params, z, r, t, y)  # the same network, read as x
  floor = jnp.maximum(t, 0.05).reshape((-1,) + (1,) * (z.ndim - 1))
  np.testing.assert_allclose(compiled.apply(m_x)(params, z, r, t, y), (z - x_out) / floor,
                             rtol=1e-5, atol=1e-5)
  tiny = jnp.zeros_like(t)
  _, du = jax.jit(lambda: jax.jvp(lambda tt: m_x.apply(params, z, tiny, tt, y), (tiny,),
                                  (jnp.ones_like(t),)))()
  assert bool(jnp.all(jnp.isfinite(du)))
  with pytest.raises(ValueError, match="prediction must be one of"):
    _init(name, shapes_only=True, prediction="eps")
