import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from meanflow_jax import models
from meanflow_jax.models.embeddings import sinusoidal_embedding


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
  params = model.init(jax.random.key(1), z, r, t, y)
  out = model.apply(params, z, r, t, y)
  assert out.shape == (5, 3)
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised head


def test_mlp_jvp_matches_finite_differences():
  model = models.build("mlp", width=32, depth=2, time_dim=16, time_scale=1.0)
  k = jax.random.split(jax.random.key(2), 4)
  z = jax.random.normal(k[0], (8, 2))
  params = model.init(k[1], z, jnp.zeros(8), jnp.ones(8))
  # Perturb the zero head so the output depends on the inputs.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(k[2], p.shape), params)
  v = jax.random.normal(k[3], (8, 2))
  r, t = jnp.full(8, 0.2), jnp.full(8, 0.6)
  f = lambda z, r, t: model.apply(params, z, r, t)
  _, du = jax.jvp(f, (z, r, t), (v, jnp.zeros(8), jnp.ones(8)))
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    f64 = lambda z, t: model.apply(p64, z, r.astype(jnp.float64), t)
    h = 1e-6
    z64, v64, t64 = z.astype(jnp.float64), v.astype(jnp.float64), t.astype(jnp.float64)
    fd = (f64(z64 + h * v64, t64 + h) - f64(z64 - h * v64, t64 - h)) / (2 * h)
  np.testing.assert_allclose(du, fd, rtol=1e-3, atol=1e-4)


def test_registry():
  assert "mlp" in models.available()
  with pytest.raises(ValueError, match="unknown model 'mlq'"):
    models.build("mlq")


def test_registry_variants_and_overrides():
  assert models.available() == ["dit", "mlp", "unet"]
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
  variables = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros(1), jnp.zeros(1))
  assert models.param_count(model, (2,)) == sum(p.size for p in jax.tree.leaves(variables))
  # Boxed values carry their logical axis names; unbox gives plain arrays.
  assert nn.get_partition_spec(variables)["params"]["in"]["kernel"] == P(None, "embed")
  assert all(isinstance(p, jax.Array) for p in jax.tree.leaves(nn.unbox(variables)))
