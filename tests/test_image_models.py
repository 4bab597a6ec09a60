"""Image networks (DiT, U-Net): sizes, interface, forward-mode derivatives, axis names, training.

XLA compilation, not running, dominates on CPU: each tiny network is initialised
once (a module-scoped fixture), every apply goes through one cached `jax.jit`, and
everything compiles without LLVM optimisation (`_jit`), which takes 2-4x less
compile time (init of the tiny U-Net: 9 s -> 2 s) for ~2x slower tiny programs.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from meanflow_jax import models, objectives, timesteps

# Widths small enough for CPU; the U-Net has attention only in its middle, to
# keep its graph (and compile time) small. Parameters do not depend on the image size.
# time_scale = 1: with the default 1000, 150 Adam steps on digits make the plain
# MeanFlow loss of these networks (and of the MLP) grow 6-77x instead of falling;
# with 1 or 10 it falls to ~0.4x, with 100 to ~0.5x.
TINY = {
    "mlp": dict(width=32, depth=2, time_dim=16, time_scale=1.0),
    "dit": dict(patch_size=2, hidden_size=32, depth=2, num_heads=2, time_scale=1.0),
    "unet": dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(), dropout=0.0, head_channels=8, time_scale=1.0),
}
SHAPE = {"mlp": (2,), "dit": (8, 8, 1), "unet": (8, 8, 1)}  # one sample's shape
AXIS_NAMES = {None, "embed", "mlp", "heads", "kv", "patch", "conv_in", "conv_out", "vocab",
              "norm", "time"}


_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _tiny(name, **overrides):
  return models.build(name, **{**TINY[name], **overrides})


def _inputs(key, shape, batch=3, num_classes=0):
  """z `[B, *shape]`, r <= t `[B]`, y (or None) from one key."""
  k_z, k_t, k_y = jax.random.split(key, 3)
  z = jax.random.normal(k_z, (batch, *shape))
  t = jax.random.uniform(k_t, (batch,), minval=0.3, maxval=0.9)
  y = jax.random.randint(k_y, (batch,), 0, num_classes) if num_classes else None
  return z, 0.5 * t, t, y


def _perturb(params, key, scale=0.1):
  """params + scale * N(0, 1), one draw for all leaves: zero-initialised layers become non-zero."""
  flat, unravel = ravel_pytree(params)
  return unravel(flat + scale * jax.random.normal(key, flat.shape, flat.dtype))


def _drop_labels(variables):
  """The variables of the unconditional twin: the same tree without the label table."""
  return {"params": {k: v for k, v in variables["params"].items() if k != "y_embed"}}


@functools.partial(_jit, static_argnames=("model", "train"))
def _apply(model, variables, z, r, t, y=None, train=False, rngs=None):
  return model.apply(variables, z, r, t, y, train=train, rngs=rngs)


@pytest.fixture(scope="module")
def tiny_variables():
  """name -> boxed variables of the conditional (10 classes) tiny network, made once."""
  cache = {}

  def get(name):
    if name not in cache:
      z, r, t, y = _inputs(jax.random.key(0), SHAPE[name], num_classes=10)
      cache[name] = _jit(_tiny(name, num_classes=10).init)(jax.random.key(1), z, r, t, y)
    return cache[name]

  return get


@pytest.mark.parametrize("variant, expected", [
    ("B/2", 131e6), ("M/2", 308e6), ("L/2", 459e6), ("XL/2", 676e6)])
def test_dit_parameter_counts_match_the_paper(variant, expected):
  count = models.param_count(models.build("dit", variant, num_classes=1000), (32, 32, 4))
  assert abs(count - expected) / expected < 0.01, count


def test_unet_cifar10_has_about_55m_parameters():
  count = models.param_count(models.build("unet", "cifar10"), (32, 32, 3))
  assert 50e6 <= count <= 60e6, count
  assert count == models.param_count(models.build("unet"), (32, 32, 3))  # defaults = paper


@pytest.mark.parametrize("name", ["dit", "unet"])
def test_output_shapes_and_zero_output_at_init(name, tiny_variables):
  cond_vars = tiny_variables(name)
  for num_classes in (0, 10):
    model = _tiny(name, num_classes=num_classes)
    variables = cond_vars if num_classes else _drop_labels(cond_vars)
    if not num_classes:  # the unconditional init makes exactly that tree
      z, r, t, _ = _inputs(jax.random.key(0), (8, 8, 1))
      shapes = jax.eval_shape(model.init, jax.random.key(1), z, r, t)
      assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, variables)
    # The second spatial size (MNIST's) once, on the conditional network: one compile less.
    for i, shape in enumerate([(8, 8, 1), (28, 28, 1)] if num_classes else [(8, 8, 1)]):
      z, r, t, y = _inputs(jax.random.fold_in(jax.random.key(2), i), shape,
                           num_classes=num_classes)
      u = _apply(model, variables, z, r, t, y)  # boxed variables work as they are
      assert u.shape == z.shape and u.dtype == jnp.float32
      np.testing.assert_array_equal(u, 0.0)  # zero-initialised output layer


@pytest.mark.parametrize("name", ["dit", "unet"])
def test_label_and_times_change_the_output(name, tiny_variables):
  model = _tiny(name, num_classes=10)
  params = _perturb(nn.unbox(tiny_variables(name)), jax.random.key(3))
  z, r, t, _ = _inputs(jax.random.key(4), (8, 8, 1))
  u = lambda y, r=r: _apply(model, params, z, r, t, y)
  base = u(jnp.zeros(3, jnp.int32))
  assert not np.allclose(base, u(jnp.ones(3, jnp.int32)))
  np.testing.assert_array_equal(u(None), u(jnp.full(3, 10, jnp.int32)))  # None = null class
  assert not np.allclose(base, u(jnp.full(3, 10, jnp.int32)))
  assert not np.allclose(base, u(jnp.zeros(3, jnp.int32), r=t))  # through t - r


# The U-Net's float64 program is the costliest to compile (12 s): slow; its forward pass,
# shapes and conditioning stay fast, and the JVP rule is the same for every network.
@pytest.mark.parametrize("name", ["mlp", "dit", pytest.param("unet", marks=pytest.mark.slow)])
def test_jvp_matches_central_differences_in_float64(name, tiny_variables):
  with jax.enable_x64(True):
    # The MLP has no dtype attribute: it computes in its params' dtype.
    model = _tiny(name, num_classes=10, **({} if name == "mlp" else {"dtype": jnp.float64}))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), nn.unbox(tiny_variables(name)))
    params = _perturb(params, jax.random.key(5))
    z, r, t, y = _inputs(jax.random.key(6), SHAPE[name], batch=2, num_classes=10)
    z, r, t = z.astype(jnp.float64), r.astype(jnp.float64), t.astype(jnp.float64)
    v = jax.random.normal(jax.random.key(7), z.shape, jnp.float64)

    @_jit
    def jvp_and_differences(params):
      f = lambda z, r, t, y: model.apply(params, z, r, t, y)
      _, du_dt = jax.jvp(lambda z, r, t: f(z, r, t, y), (z, r, t),
                         (v, jnp.zeros_like(r), jnp.ones_like(t)))
      h = 1e-5  # both shifted points in one batch: one forward pass to compile
      both = lambda a, b: jnp.concatenate([a, b])
      u_pm = f(both(z + h * v, z - h * v), both(r, r), both(t + h, t - h), both(y, y))
      return du_dt, (u_pm[:2] - u_pm[2:]) / (2 * h)

    du_dt, fd = jvp_and_differences(params)
  assert du_dt.dtype == jnp.float64
  assert np.linalg.norm(du_dt) > 1e-3  # the comparison is not trivially 0 = 0
  # Measured: 1e-10 to 5e-10 (the O(h^2) error of the differences).
  assert np.linalg.norm(du_dt - fd) / np.linalg.norm(du_dt) < 1e-8


@pytest.mark.parametrize("name", ["mlp", "dit", "unet"])
def test_every_parameter_has_logical_axis_names(name):
  extra = dict(attn_resolutions=(4,)) if name == "unet" else {}  # attention at level 1 too
  model = _tiny(name, num_classes=10, **extra)
  x = jax.ShapeDtypeStruct((3, *SHAPE[name]), jnp.float32)
  t = jax.ShapeDtypeStruct((3,), jnp.float32)
  y = jax.ShapeDtypeStruct((3,), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x, t, t, y)
  boxed = jax.tree.leaves(variables["params"], is_leaf=lambda a: isinstance(a, nn.Partitioned))
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(variables["params"]))[0]
  assert len(boxed) == len(flat)
  for box, (path, leaf) in zip(boxed, flat):
    where = jax.tree_util.keystr(path)
    assert isinstance(box, nn.Partitioned), where
    assert len(box.names) == leaf.ndim and set(box.names) <= AXIS_NAMES, (where, box.names)
    if leaf.ndim >= 2:
      assert any(box.names), where
  specs = nn.get_partition_spec(variables)["params"]
  assert specs["t_embed"]["fc1"]["kernel"] == jax.sharding.PartitionSpec("time", "mlp")
  if name == "unet":
    assert {"enc1_0_attn", "dec1_attn", "mid_attn"} <= set(specs) and "dec0_attn" not in specs


def test_dropout_only_when_training(tiny_variables):
  model = _tiny("unet", num_classes=10, dropout=0.5)
  params = _perturb(nn.unbox(tiny_variables("unet")), jax.random.key(8))
  z, r, t, y = _inputs(jax.random.key(9), (8, 8, 1), num_classes=10)
  train = lambda key: _apply(model, params, z, r, t, y, train=True, rngs={"dropout": key})
  a, b = train(jax.random.key(10)), train(jax.random.key(11))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, train(jax.random.key(10)))
  # Evaluation takes no rng and is the network without dropout.
  evaluate = _apply(model, params, z, r, t, y)
  np.testing.assert_array_equal(evaluate, _apply(_tiny("unet", num_classes=10), params, z, r, t, y))
  assert not np.allclose(a, evaluate)


@pytest.mark.parametrize("name", ["dit", "unet"])
def test_bfloat16_computation_keeps_float32_params_and_output(name, tiny_variables):
  model16 = _tiny(name, num_classes=10, dtype=jnp.bfloat16)
  z, r, t, y = _inputs(jax.random.key(12), (8, 8, 1), num_classes=10)
  shapes = jax.eval_shape(model16.init, jax.random.key(0), z, r, t, y)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  params = _perturb(nn.unbox(tiny_variables(name)), jax.random.key(13))
  u32 = _apply(_tiny(name, num_classes=10), params, z, r, t, y)
  u16 = _apply(model16, params, z, r, t, y)
  assert u16.dtype == jnp.float32
  assert np.linalg.norm(u16 - u32) / np.linalg.norm(u32) < 0.05


@pytest.mark.parametrize("name, variant", [("unet", "small"), ("dit", "S/2"), ("dit", "B/4")])
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1)])
def test_presets_fit_digits_and_mnist_sizes(name, variant, shape):
  model = models.build(name, variant, num_classes=10)
  z, r, t, y = _inputs(jax.random.key(0), shape, num_classes=10)
  variables = jax.eval_shape(model.init, jax.random.key(1), z, r, t, y)  # shapes only
  assert jax.eval_shape(model.apply, variables, z, r, t, y).shape == z.shape


def test_bad_spatial_sizes_raise():
  z, r, t, _ = _inputs(jax.random.key(14), (28, 28, 1))
  with pytest.raises(ValueError, match="must divide by 8; got 28x28"):
    jax.eval_shape(_tiny("unet", channel_mult=(1, 2, 2, 2)).init, jax.random.key(0), z, r, t)
  with pytest.raises(ValueError, match="divisible by 8; got 28x28"):
    jax.eval_shape(_tiny("dit", patch_size=8).init, jax.random.key(0), z, r, t)


def _digits():
  """sklearn's 1,797 real 8x8 digits in [-1, 1], `[N, 8, 8, 1]`, and their labels."""
  datasets = pytest.importorskip("sklearn.datasets")
  digits = datasets.load_digits()
  x = digits.images.astype(np.float32) / 8.0 - 1.0  # pixel values are 0..16
  return jnp.asarray(x[..., None]), jnp.asarray(digits.target, jnp.int32)


# The DiT keeps the point fast; the U-Net's 100 steps (its forward pass and JVP are
# tested fast above) run with `make test-slow`.
@pytest.mark.parametrize("name, num_classes", [
    ("dit", 10), pytest.param("unet", 0, marks=pytest.mark.slow)])
def test_tiny_models_learn_digits_with_the_meanflow_loss(name, num_classes, tiny_variables):
  x_all, y_all = _digits()
  model = _tiny(name, num_classes=num_classes)
  params = nn.unbox(tiny_variables(name))
  params = params if num_classes else _drop_labels(params)
  assert 10_000 < sum(p.size for p in jax.tree.leaves(params)) < 100_000
  batch, steps = 32, 100
  k_eval, k_batches, k_train = jax.random.split(jax.random.key(15), 3)
  tx = optax.adam(2e-3)
  opt_state = tx.init(params)

  @_jit
  def step(params, opt_state, key, idx):
    """One Adam step on the plain squared MeanFlow error (p = 0, so the loss measures the fit).

    Returns the loss before the update too, so evaluation reuses this one compilation.
    """
    def loss_fn(params):
      k_noise, k_times = jax.random.split(key)
      x, y = x_all[idx], (y_all[idx] if num_classes else None)
      eps = jax.random.normal(k_noise, x.shape)
      t, r = timesteps.sample_t_r(k_times, batch)
      u_fn = lambda z, r, t: model.apply(params, z, r, t, y)
      return objectives.meanflow_loss(u_fn, x, eps, t=t, r=r, p=0.0)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # A fixed evaluation set: 4 batches of digits with fixed noise and times.
  eval_batches = [(jax.random.fold_in(k_eval, i), jnp.arange(i * batch, (i + 1) * batch))
                  for i in range(4)]
  evaluate = lambda params: np.mean(
      [step(params, opt_state, k, idx)[2] for k, idx in eval_batches])
  train_idx = jax.random.randint(k_batches, (steps, batch), 0, x_all.shape[0])
  before = evaluate(params)
  for i in range(steps):
    params, opt_state, _ = step(params, opt_state, jax.random.fold_in(k_train, i), train_idx[i])
  after = evaluate(params)
  assert np.isfinite(after) and after < 0.6 * before, (before, after)
