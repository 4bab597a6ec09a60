"""iMF's in-context DiT: the paper's parameter counts, the prefix conditions, identity
blocks at init, and a JVP through it."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanflow_jax import models
from tests.helpers import compiled, xla

# Each program runs a few times: compiled without LLVM's optimisation (`xla.FAST_OPTIONS`).
fast_jit = functools.partial(jax.jit, compiler_options=xla.FAST_OPTIONS)

# REFERENCE.md (32x32x4 latents, 1000 classes): training (u + v heads) / sampling.
# XL/2 training reads 710,113,760 there; the sampling count, and the v head being the
# 8 blocks of L/2's width like L/2's own (100,680,704), give 711,113,760: 0.14 % apart.
PAPER = {"B/2": (145_596_960, 88_948_256), "M/2": (230_570_016, 173_921_312),
         "L/2": (509_752_352, 409_071_648), "XL/2": (710_113_760, 610_433_056)}


@pytest.mark.parametrize("variant", list(PAPER))
def test_parameter_counts_within_one_percent_of_the_paper(variant):
  m = models.build("imf_dit", variant, num_classes=1000, guided=True, v_head=True)
  train = models.param_count(m, (32, 32, 4))
  sample = models.param_count(m, (32, 32, 4), exclude=("v_block",))
  want_train, want_sample = PAPER[variant]
  assert abs(train / want_train - 1) < 0.01 and abs(sample / want_sample - 1) < 0.01
  if variant != "XL/2":
    assert (train, sample) == PAPER[variant]  # exactly, where REFERENCE.md is consistent


def _small(**kw):
  return models.build("imf_dit", patch_size=2, hidden_size=32, depth=2, num_heads=2,
                      head_depth=1, num_classes=10, **kw)


def test_prefix_conditions_reach_the_output_and_blocks_start_as_identity():
  m = _small(guided=True, v_head=True)
  z = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  t, r = jnp.full((4,), 0.7), jnp.full((4,), 0.2)
  y = jnp.arange(4)
  params = nn.meta.unbox(fast_jit(m.init)(jax.random.key(1), z, r, t, y))
  apply = fast_jit(lambda p, z, r, t, y, **kw: m.apply(p, z, r, t, y, **kw))
  # Every condition passed explicitly: one compiled program for all the calls below.
  conditions = lambda omega, t_min=jnp.zeros(4), t_max=jnp.ones(4): dict(
      omega=omega, t_min=t_min, t_max=t_max)
  two = jnp.full((4,), 2.0)
  u, v = apply(params, z, r, t, y, **conditions(two))
  assert u.shape == v.shape == z.shape
  np.testing.assert_array_equal(u, 0.0)  # zero-initialised output layers
  names = set(params["params"])
  assert {"y_tokens", "omega_tokens", "tmin_tokens", "tmax_tokens", "h_tokens",
          "block0", "u_block0", "v_block0", "final", "final_v"} <= names
  assert float(jnp.abs(params["params"]["block0"]["attn_gate"]).max()) == 0.0
  # With random output layers, each condition changes u.
  p = compiled.perturb(params, jax.random.key(2), 0.1)
  full = lambda z, r, t, y, omega, **kw: apply(p, z, r, t, y, **conditions(omega, **kw))[0]
  base = full(z, r, t, y, two)
  for kw in ({"omega": jnp.full((4,), 4.0)}, {"omega": two, "t_min": t * 0.5},
             {"omega": two, "t_max": t * 0.9}):
    assert float(jnp.abs(full(z, r, t, y, **kw) - base).max()) > 1e-4
  assert float(jnp.abs(full(z, r, t, (y + 1) % 10, two) - base).max()) > 1e-4
  # h = t - r, not t: the same gap at another t changes u only through z.
  same_h = full(z, r + 0.1, t + 0.1, y, two)
  np.testing.assert_allclose(same_h, base, rtol=1e-5, atol=1e-6)
  # Shapes suffice to raise it: traced abstractly, nothing is compiled or run.
  plain = _small()
  with pytest.raises(ValueError, match="no guidance conditions"):
    jax.eval_shape(lambda: plain.apply(plain.init(jax.random.key(1), z, r, t, y), z, r, t, y,
                                       omega=jnp.ones((4,))))


def test_jvp_through_the_network_matches_finite_differences():
  # time_scale 10: at 1000 the fastest sinusoid turns 1000 rad per unit of t, too fast for
  # a central difference of step 1e-3 in float32 to follow.
  m = _small(guided=True, v_head=True, time_scale=10.0)
  z = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  t, r, y = jnp.array([0.8, 0.6]), jnp.array([0.1, 0.6]), jnp.array([3, 10])
  params = nn.meta.unbox(fast_jit(m.init)(jax.random.key(1), z, r, t, y))
  params = compiled.perturb(params, jax.random.key(2), 0.05)
  u = lambda tt: m.apply(params, z, r, tt, y)[0]
  f = fast_jit(u)
  _, du = fast_jit(lambda: jax.jvp(u, (t,), (jnp.ones_like(t),)))()
  h = 1e-3
  fd = (f(t + h) - f(t - h)) / (2 * h)
  np.testing.assert_allclose(du, fd, rtol=2e-2, atol=2e-3)
