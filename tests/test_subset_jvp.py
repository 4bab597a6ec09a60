"""The step that runs its JVP on the r != t rows alone: the fixed row layout, and losses,
gradients and train steps equal to the JVP on every row for the same (x, eps, t, r, y)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits, toy
from meanflow_jax import objectives, paths, timesteps
from meanflow_jax.data import images
from meanflow_jax.objectives import imf, losses
from meanflow_jax.objectives.meanflow import MeanFlow
from meanflow_jax.training import builders
from meanflow_jax.training import train_state as ts
from meanflow_jax.training.train_step import train_step
from tests.helpers import xla


@pytest.mark.parametrize("b, ratio, k, groups", [(256, 0.25, 64, 64), (32, 0.5, 16, 16),
                                                 (20, 0.3, 6, 2), (16, 0.0, 0, 16),
                                                 (16, 1.0, 16, 16), (10, 0.26, 3, 1)])
def test_fixed_rows_count_and_spread(b, ratio, k, groups):
  rows = timesteps.fixed_rows(b, ratio)
  assert (rows.count, rows.groups) == (k, groups)
  mask = rows.mask()
  assert mask.sum() == k
  # Every shard count dividing the groups holds the same number of r != t rows.
  for shards in (d for d in (1, 2, 4, 8) if groups % d == 0 and b % d == 0):
    assert {int(m.sum()) for m in np.split(mask, shards)} == {k // shards}


def test_split_and_merge_are_inverse_and_keep_batch_order():
  rows = timesteps.fixed_rows(12, 1 / 3)  # groups of 3 rows, the first of each r != t
  a = jnp.arange(24.0).reshape(12, 2)
  jvp, plain = rows.split(a)
  np.testing.assert_array_equal(jvp[:, 0], [0, 6, 12, 18])
  np.testing.assert_array_equal(plain[:, 0], [2, 4, 8, 10, 14, 16, 20, 22])
  np.testing.assert_array_equal(rows.merge(jvp, plain), a)
  merged = losses.by_rows(rows, {"y": jnp.arange(12)}, lambda c, a: (a * 0 + c["y"][:, None],),
                          lambda c, a: (a * 0 - c["y"][:, None],), a)[0]
  np.testing.assert_array_equal(merged[:, 0], np.where(rows.mask(), 1, -1) * np.arange(12))


def test_times_on_fixed_rows_are_the_coins_times():
  """The rows fix which samples keep r != t; every sample's two times stay its own."""
  key = jax.random.key(3)
  rows = timesteps.fixed_rows(64, 0.25)
  t, r = timesteps.sample_t_r(key, 64, rows=rows)
  t_all, r_all = timesteps.sample_t_r(key, 64, ratio_r_neq_t=1.0)
  mask = rows.mask()
  np.testing.assert_array_equal(t, t_all)
  np.testing.assert_array_equal(r[mask], r_all[mask])
  np.testing.assert_array_equal(r[~mask], t[~mask])
  assert bool(np.all(r[mask] < t[mask]))


def _setup(objective, b=16, ratio=0.25, classes=True, model_name="mlp"):
  """(config, model, params, x, y): a small class-conditional MLP on 2-D points, or the
  digits DiT (one block of 32) on 8x8 images."""
  if model_name == "mlp":
    c = toy.get_config()
    c.model.mlp.width, c.model.mlp.depth = 64, 2
    x = jax.random.normal(jax.random.key(11), (b, 2)) * 2.0
    y = jax.random.randint(jax.random.key(12), (b,), 0, 10)
  else:
    c = digits.get_config()
    c.model.dit.hidden_size, c.model.dit.depth, c.model.dit.num_heads = 32, 1, 2
    x, y = (jnp.asarray(a) for a in images.make_image_source("digits", batch_size=b,
                                                               seed=0).batch(0))
  c.objective = objective
  c.model.num_classes = 10 if classes else 0
  c.time.ratio_r_neq_t = ratio
  model = ts.build_model(c)
  ones = jnp.ones((b,))
  params = jax.jit(model.init)(jax.random.key(0), x, ones, ones, y if classes else None)
  return c, model, params, x, y


@pytest.mark.parametrize("objective, classes, model_name", [
    ("meanflow", True, "mlp"), ("imf", True, "mlp"), ("imf", False, "mlp"),
    pytest.param("meanflow", True, "dit", marks=pytest.mark.slow)])
def test_loss_and_gradients_equal_the_full_jvp(objective, classes, model_name):
  """Same (x, eps, t, r, y, conditions): the subset JVP's loss and gradient equal those of
  the JVP on every row (1e-6), class-conditional (labels split with the rows) or not."""
  c, model, params, x, y = _setup(objective, classes=classes, model_name=model_name)
  if objective == "meanflow" and classes:  # MeanFlow's guided target (both passes) too
    c.guidance.omega, c.guidance.kappa = 1.0, 0.5
  b = x.shape[0]
  obj = objectives.get(objective)
  rows = timesteps.fixed_rows(b, c.time.ratio_r_neq_t)
  key_eps, key_t, key_target = jax.random.split(jax.random.key(7), 3)
  eps = jax.random.normal(key_eps, x.shape)
  t, r = timesteps.sample_t_r(key_t, b, rows=rows)

  def call(p, z, r, t, cond):
    cond = dict(cond)
    return model.apply(p, z, r, t, cond.pop("y", None), **cond)

  cond = {"y": y} if classes else {}
  is_null = jnp.arange(b) % 5 == 0 if classes else None
  if classes:
    cond = {"y": jnp.where(is_null, 10, y)}
  unbound = lambda z, r, t, cc: call(params, z, r, t, cc)
  kw = dict(t=t, r=r, y=y if classes else None, is_null=is_null, guidance_cfg=c.guidance,
            imf_cfg=c.imf, num_classes=10 if classes else 0)
  # Jitted: run op by op, the network's passes and JVPs took most of the test's time.
  targets = lambda **split: jax.jit(lambda: obj.targets(key_target, unbound, x, eps, cond=cond,
                                                        **split, **kw))()
  cond_full, v_full = targets()
  cond_sub, v_sub = targets(rows=rows)

  def loss(p, subset):
    net = lambda z, r, t, cc=None: call(p, z, r, t, (cond_sub if subset else cond_full)
                                        if cc is None else cc)
    extra = dict(rows=rows, cond=cond_sub) if subset else {}
    return obj.loss(net, x, eps, t=t, r=r, v=v_sub if subset else v_full, loss_cfg=c.loss,
                    **extra)

  # Two programs compared with each other, each run once: compiled fast.
  grad = lambda subset: jax.jit(jax.value_and_grad(lambda p: loss(p, subset), has_aux=True),
                                compiler_options=xla.FAST_OPTIONS)(params)
  (l_full, m_full), g_full = grad(False)
  (l_sub, m_sub), g_sub = grad(True)
  assert float(l_full) > 0
  np.testing.assert_allclose(l_sub, l_full, rtol=1e-6)
  np.testing.assert_allclose(m_sub["mse"], m_full["mse"], rtol=1e-6)
  for a, g in zip(jax.tree.leaves(g_sub), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(a, g, rtol=1e-5, atol=1e-6)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_full)) > 1e-3


class _FullJvpOnFixedRows(MeanFlow):
  """MeanFlow on the fixed rows' times with the JVP on every row: the step before."""
  name = "meanflow_full_jvp"

  def row_split(self, b, time_cfg):
    return None

  def sample_times(self, key, b, time_cfg):
    return timesteps.sample_t_r(key, b, distribution=time_cfg.distribution, mu=time_cfg.mu,
                                sigma=time_cfg.sigma,
                                rows=timesteps.fixed_rows(b, time_cfg.ratio_r_neq_t))


# Slow: the guided (kappa 0.5) loss and gradient of the subset JVP equal the full JVP's in
# test_loss_and_gradients_equal_the_full_jvp, the FLOP saving is test_reflow.py's
# test_flop_counts, and kappa 0's target equals the two-pass formula below; this is the
# whole step (times drawn by the objective, optimiser, EMA) on top of those.
@pytest.mark.slow
@pytest.mark.parametrize("kappa", [0.5, 0.0])
def test_train_step_equals_the_full_jvp_step(kappa):
  """The whole step, guidance on (kappa 0: the unconditional pass alone): the same loss
  and gradient norm as the JVP on every row, and fewer FLOPs."""
  c, model, params, x, y = _setup("meanflow", b=32)
  c.guidance.omega, c.guidance.kappa = (1.0, 0.5) if kappa else (2.0, 0.0)
  tx = ts.make_optimizer(c.optimizer, 10)
  state = jax.jit(functools.partial(ts.init_state, model=model, tx=tx, example_x=x[:1],
                                    num_ema=1))(jax.random.key(0))
  objectives.register(_FullJvpOnFixedRows())
  try:
    out = {}
    for name in ("meanflow", "meanflow_full_jvp"):
      step = functools.partial(train_step, apply_fn=model.apply, tx=tx, objective=name,
                               time_cfg=c.time, loss_cfg=c.loss, ema_decays=(0.9,),
                               guidance_cfg=c.guidance, num_classes=10)
      # Compiled fast: two programs compared with each other; the FLOP count is of the HLO
      # after XLA's passes, which these options leave as they are.
      compiled = jax.jit(step, compiler_options=xla.FAST_OPTIONS).lower(
          state, (x, y), jax.random.key(1)).compile()
      _, m = compiled(state, (x, y), jax.random.key(1))
      out[name] = (float(m["loss"]), float(m["grad_norm"]), float(m["frac_r_neq_t"]),
                   compiled.cost_analysis()["flops"])
  finally:
    objectives.registry._REGISTRY.pop("meanflow_full_jvp")
  sub, full = out["meanflow"], out["meanflow_full_jvp"]
  np.testing.assert_allclose(sub[:2], full[:2], rtol=1e-5)
  assert sub[2] == full[2] == 0.25
  assert sub[3] < 0.9 * full[3]


def test_kappa_zero_target_equals_the_two_pass_target():
  """With kappa = 0, v~ from u(z | null) alone equals the formula with both passes."""
  c, model, params, x, y = _setup("meanflow")
  c.guidance.omega, c.guidance.kappa, c.guidance.t_max = 3.0, 0.0, 0.8
  b = x.shape[0]
  eps = jax.random.normal(jax.random.key(1), x.shape)
  t = jnp.linspace(0.05, 0.95, b)
  is_null = jnp.arange(b) % 4 == 0
  net = jax.jit(lambda z, r, t, cc: model.apply(params, z, r, t, cc["y"]))
  calls = []
  counted = lambda z, r, t, cc: calls.append(z.shape[0]) or net(z, r, t, cc)
  _, v = objectives.Objective().targets(None, counted, x, eps, t=t, r=t, y=y, is_null=is_null,
                                        cond={}, guidance_cfg=c.guidance, imf_cfg=None,
                                        num_classes=10)
  assert calls == [b]  # one pass of B rows, not 2B
  z = paths.interpolate(x, eps, t)
  u_null = net(z, t, t, {"y": jnp.full_like(y, 10)})
  expected = losses.guided_velocity(eps - x, net(z, t, t, {"y": y}), u_null, t, omega=3.0,
                                    kappa=0.0, t_interval=(0.0, 0.8), is_null=is_null)
  np.testing.assert_allclose(v, expected, rtol=1e-6, atol=1e-6)


# The same claim on a smaller MLP at the same ratio is fast: tests/test_reflow.py::
# test_flop_counts (subset JVP 1.05 to 1.15 of flow matching's FLOPs, full JVP 1.2 to 1.5).
@pytest.mark.slow
def test_step_flops_near_the_floor_at_the_papers_ratio():
  """MLP at ratio 0.25, no guidance: MeanFlow's step over flow matching's in XLA's FLOP
  count is near 3.25 / 3 with the subset JVP and near 4 / 3 without."""
  flops = {}
  for name, subset in (("meanflow", True), ("meanflow", False), ("flow_matching", True)):
    c = toy.get_config()
    c.objective, c.time.ratio_r_neq_t, c.time.subset_jvp = name, 0.25, subset
    model = ts.build_model(c)
    tx = ts.make_optimizer(c.optimizer, 10)
    state = jax.eval_shape(builders.init_fn(c, model, tx, (2,)), jax.random.key(0))
    batch = (jax.ShapeDtypeStruct((256, 2), jnp.float32), jax.ShapeDtypeStruct((256,), jnp.int32))
    # XLA's FLOP count is of the HLO after its passes; LLVM's optimisation (off here)
    # does not change it.
    compiled = jax.jit(builders.step_function(c, model, tx),
                       compiler_options=xla.FAST_OPTIONS).lower(
                           state, batch, jax.random.key(0)).compile()
    flops[(name, subset)] = compiled.cost_analysis()["flops"]
  fm = flops[("flow_matching", True)]
  assert flops[("meanflow", True)] / fm < 1.12
  assert flops[("meanflow", False)] / fm > 1.25


def test_old_runs_keep_the_coin_per_sample():
  """A config saved before time.subset_jvp upgrades to the coins it trained with."""
  from meanflow_jax.training import checkpoint
  saved = toy.get_config().to_dict()
  del saved["time"]["subset_jvp"]
  assert checkpoint.upgrade_config(saved)["time"]["subset_jvp"] is False
  rows = objectives.get("meanflow").row_split(8, toy.get_config().time)
  assert rows == timesteps.fixed_rows(8, toy.get_config().time.ratio_r_neq_t)
  assert imf.ImprovedMeanFlow.reads[:2] == ("time.ratio_r_neq_t", "time.subset_jvp")


@pytest.mark.parametrize("name", ["dit", pytest.param("imf_dit", marks=pytest.mark.slow)])
def test_remat_keeps_parameters_and_gradients(name):
  """model.remat recomputes the blocks in the backward pass: the same parameter tree and
  the same loss gradient as without it."""
  c = digits.get_config()
  c.model.name = name
  section = c.model[name]
  section.patch_size, section.hidden_size, section.depth, section.num_heads = 4, 32, 2, 2
  if name == "imf_dit":
    section.head_depth = 1
  x, y = (jnp.asarray(a) for a in images.make_image_source("digits", batch_size=8,
                                                             seed=0).batch(0))
  t = jnp.linspace(0.1, 0.9, 8)
  grads = []
  for remat in (False, True):
    c.model.remat = remat
    model = ts.build_model(c)
    assert model.remat is remat
    # Zero-initialised gates and heads would make every block's gradient 0: perturb them
    # (in one compiled program: eager draws compile one program per parameter shape).
    def init(key):
      leaves, tree = jax.tree.flatten(model.init(key, x, t, t, y))
      keys = jax.random.split(jax.random.key(1), len(leaves))
      return jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape)
                                       for a, k in zip(leaves, keys)])

    params = jax.jit(init, compiler_options=xla.FAST_OPTIONS)(jax.random.key(0))
    out = lambda p: jax.tree.leaves(model.apply(p, x, 0.5 * t, t, y))[0]
    grads.append(jax.jit(jax.grad(lambda p: jnp.sum(out(p) * x)),
                         compiler_options=xla.FAST_OPTIONS)(params))
  assert jax.tree.structure(grads[0]) == jax.tree.structure(grads[1])
  block = [g for path, g in jax.tree_util.tree_leaves_with_path(grads[0])
           if "block0" in jax.tree_util.keystr(path)]
  assert block and max(float(jnp.max(jnp.abs(g))) for g in block) > 1e-4
  for a, b in zip(*(jax.tree.leaves(g) for g in grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
