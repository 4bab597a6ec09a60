"""Test shortcuts that compile one program where eager JAX compiles one per op and shape.

An eager `model.apply` compiles every primitive of the network separately, and an eager
`jax.random.normal(key, p.shape)` over a parameter tree compiles the generator once per
distinct shape: on a 2-core CPU these small compilations, not the arithmetic, were most
of several model tests' time.
"""
import jax


def perturb(params, key, scale):
  """`params` + `scale` N(0, 1) draws, each leaf from `key` itself (the same draws as the
  eager `jax.tree.map(lambda p: p + scale * jax.random.normal(key, p.shape), params)`)."""
  return jax.jit(lambda p: jax.tree.map(lambda a: a + scale * jax.random.normal(key, a.shape),
                                        p))(params)


def apply(model, **kwargs):
  """`model.apply` as one compiled program; keyword arguments are bound (static)."""
  return jax.jit(lambda variables, *args: model.apply(variables, *args, **kwargs))


def random_params(model, *example_args, scale=0.1, seed=0):
  """Parameters of `model` for `example_args`, each entry `scale` N(0, 1) drawn on the host:
  the shapes come from `jax.eval_shape` of `model.init`, so nothing is compiled. For tests
  that need a generic network (every output depending on every input), not flax's init."""
  import flax.linen as nn
  import numpy as np
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *example_args))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
