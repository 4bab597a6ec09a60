import functools
import json
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from meanflow_jax import sampling, training
from meanflow_jax.data import PointSource
from meanflow_jax.errors import CheckpointMismatchError, ConfigError, Interrupted, NonFiniteError
from meanflow_jax.training import builders
from meanflow_jax.training.train_state import init_state
from tests.helpers import compiled, xla


def tiny_config(**overrides):
  c = default.get_config()
  c.model.mlp.width = 32
  c.model.mlp.depth = 1
  c.model.mlp.time_dim = 16
  c.train.batch_size = 32
  c.train.steps = 40
  c.train.log_every = 10
  c.train.checkpoint_every = 20
  c.optimizer.lr = 1e-3
  return override(c, overrides)


def override(c, overrides):
  """Sets dotted keys ("train.steps") of config `c`."""
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("objective", ["meanflow", "flow_matching"])
def test_train_writes_logs_and_checkpoints(tmp_path, objective):
  state = training.train(tiny_config(objective=objective), str(tmp_path))
  assert int(state.step) == 40
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  assert all(np.isfinite(r["loss"]) for r in rows)
  expected_frac = 0.25 if objective == "meanflow" else 0.0
  assert abs(np.mean([r["frac_r_neq_t"] for r in rows]) - expected_frac) < 0.1
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]
  run = training.load_run(str(tmp_path))
  assert run.config.objective == objective and run.data_shape == (2,)
  for a, b in zip(_leaves(run.params), _leaves(state.ema_params[0])):
    np.testing.assert_array_equal(a, b)


def test_resume_is_exact(tmp_path):
  """20 steps, stop, rerun to 40 == 40 steps straight: parameters and losses, bit for bit."""
  straight = training.train(tiny_config(), str(tmp_path / "a"))
  training.train(tiny_config(**{"train.steps": 20}), str(tmp_path / "b"))
  resumed = training.train(tiny_config(), str(tmp_path / "b"))
  assert int(resumed.step) == 40
  for a, b in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  rows_a = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
  rows_b = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
  assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


# Slow: flow matching's loss is exact against a closed form fast (test_objectives.py), its
# sampler against the exact field (test_objective_registry.py), and its runs train fast
# (test_train_writes_logs_and_checkpoints[flow_matching], test_reflow.py's run); this is
# 300 steps of learning.
@pytest.mark.slow
def test_flow_matching_loss_decreases_on_the_mixture(tmp_path):
  # The MeanFlow loss is not a fixed regression target (u_tgt moves with the network),
  # so its value need not fall; its quality is tested against the exact map instead.
  # Unstandardised ring8 (variance 2.04 a dimension), on which the 0.8 was measured: the
  # starting loss E||eps - x||^2 = 2 + 2 Var x falls from 6.1 to 4 with standardised data.
  training.train(tiny_config(**{"objective": "flow_matching", "train.steps": 300,
                                "train.log_every": 50, "model.mlp.width": 64,
                                "loss.p": 0.0, "data.standardize": False}), str(tmp_path))
  losses = [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl")]
  assert losses[-1] < 0.8 * losses[0]


def test_non_finite_loss_stops_with_the_step_and_keeps_last_checkpoint(tmp_path):
  training.train(tiny_config(**{"train.steps": 20}), str(tmp_path))
  # Resume with a learning rate that blows the parameters up.
  c = tiny_config(**{"optimizer.lr": 1e30, "train.steps": 60})
  with pytest.raises(NonFiniteError, match=r"at step (\d+).*last checkpoint \(step 20\)") as info:
    training.train(c, str(tmp_path), allow_changes=("optimizer.lr",))
  assert 21 <= int(re.search(r"at step (\d+)", str(info.value)).group(1)) <= 60
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20"]
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert all(np.isfinite(r["loss"]) for r in rows)


def test_checkpoint_of_another_model_is_refused(tmp_path):
  training.train(tiny_config(**{"train.steps": 20}), str(tmp_path))
  with pytest.raises(CheckpointMismatchError, match="model.mlp.width: checkpoint has 32"):
    training.train(tiny_config(**{"model.mlp.width": 48}), str(tmp_path))


def test_unknown_objective_is_refused(tmp_path):
  with pytest.raises(ConfigError, match="objective"):
    training.train(tiny_config(objective="diffusion"), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_sampler_nfe_and_objective(tmp_path):
  training.train(tiny_config(**{"train.steps": 10, "train.checkpoint_every": 10}), str(tmp_path))
  config, model, params = training.load_run(str(tmp_path), params="raw")[:3]
  eps = jax.random.normal(jax.random.key(0), (16, 2))
  sample = training.make_sampler(config, model, params)
  direct = sampling.meanflow_sample(lambda z, r, t: model.apply(params, z, r, t), eps, 2)
  np.testing.assert_allclose(sample(eps, 2), direct, rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match="nfe must be >= 1"):
    sample(eps, 0)


def signal_at_batch(monkeypatch, step):
  """Sends this process a SIGTERM as the toy data's batch `step` is built; returns the
  real `PointSource.batch` (to restore it)."""
  real_batch = PointSource.batch

  def batch_then_signal(self, s):
    if s == step:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_batch(self, s)

  monkeypatch.setattr(PointSource, "batch", batch_then_signal)
  return real_batch


def test_sigterm_saves_and_resume_matches_a_straight_run(tmp_path, monkeypatch):
  """A SIGTERM between logs (step 15 of log_every 10) saves, and a rerun continues exactly."""
  # The signal is sent as batch 14 is built: in the loop, so that it lands at step 15
  # (built ahead, it would land a few steps earlier; tests/test_prefetch.py covers that).
  cfg = tiny_config(**{"train.log_every": 10, "train.checkpoint_every": 40,
                       "train.prefetch": 0})
  straight = training.train(cfg, str(tmp_path / "a"))
  real_batch = signal_at_batch(monkeypatch, 14)
  with pytest.raises(Interrupted, match="after step 15") as info:
    training.train(cfg, str(tmp_path / "b"))
  assert info.value.exit_code == 128 + signal.SIGTERM
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["15"]
  monkeypatch.setattr(PointSource, "batch", real_batch)
  # A half-written last line (a kill during a write) must not block the resume.
  with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
    f.write('{"step": 16, "lo')
  resumed = training.train(cfg, str(tmp_path / "b"))
  for a, b in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  rows_a = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
  rows_b = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
  assert [r["step"] for r in rows_b] == [10, 20, 30, 40]
  # Steps 11-15 and 16-20 were logged in two pieces; the later rows match exactly.
  assert [r["loss"] for r in rows_a[2:]] == [r["loss"] for r in rows_b[2:]]


@pytest.mark.parametrize("key,value,needle", [
    ("optimizer.name", "sgd", "optimizer.name = 'sgd'"),
    ("time.distribution", "beta", "time.distribution"),
    ("train.batch_size", 0, "train.batch_size must be positive"),
    ("train.ema_decays", (1.5,), "train.ema_decays"),
    ("model.name", "dit9", "model.name"),
])
def test_bad_config_values_fail_before_anything_is_written(tmp_path, key, value, needle):
  with pytest.raises(ConfigError, match=re.escape(needle)):
    training.train(tiny_config(**{key: value}), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_ema_count_change_is_a_mismatch(tmp_path):
  training.train(tiny_config(**{"train.steps": 20}), str(tmp_path))
  with pytest.raises(CheckpointMismatchError, match="train.ema_decays"):
    training.train(tiny_config(**{"train.ema_decays": (0.99, 0.999)}), str(tmp_path))


# Slow (600 steps): MeanFlow's target, identity and loss are exact against closed forms
# fast (test_objectives.py), and a tiny DiT learns digits with it fast
# (test_image_models.py::test_tiny_models_learn_digits_with_the_meanflow_loss).
@pytest.mark.slow
def test_meanflow_learns_the_one_step_map_of_a_gaussian(tmp_path):
  """A few hundred steps bring 1-NFE samples close to the exact map of the same noise.

  Measured: 0.12. An untrained (zero) network returns the noise itself (2.24); one
  that outputs the data mean scores 1.0.
  """
  c = tiny_config(**{"data.mixture": "gaussian", "train.steps": 600, "train.batch_size": 128,
                     "model.mlp.width": 64, "model.mlp.depth": 2, "model.mlp.time_scale": 1.0,
                     "optimizer.lr": 3e-3, "train.checkpoint_every": 600, "train.log_every": 100,
                     "loss.p": 0.5, "time.distribution": "uniform", "time.ratio_r_neq_t": 0.5,
                     "train.ema_decays": (0.95,)})  # an EMA that forgets the init in 600 steps
  training.train(c, str(tmp_path))
  from meanflow_jax import evaluate
  (row,) = evaluate.evaluate_toy(str(tmp_path), [1], num=4000).rows
  assert row["transport_rms"] < 0.2, row


def digits_config(**overrides):
  """A tiny class-conditional DiT on the real 8x8 digits, with training-time guidance."""
  c = tiny_config(**{"data.source": "digits", "model.name": "dit", "model.num_classes": 10,
                     "model.dit.patch_size": 4, "model.dit.hidden_size": 32,
                     "model.dit.depth": 1, "model.dit.num_heads": 2, "model.dit.mlp_ratio": 2.0,
                     "model.dit.time_scale": 100.0, "guidance.omega": 1.0,
                     "guidance.kappa": 0.5, "train.batch_size": 16, "train.steps": 20})
  return override(c, overrides)


# End to end (a DiT run twice and resumed): exact resume is tested fast on the toy run
# (test_resume_is_exact), labels reaching the network in test_image_models.py.
@pytest.mark.slow
@pytest.mark.parametrize("objective", ["meanflow", "flow_matching"])
def test_conditional_image_run_resumes_exactly_and_samples_classes(tmp_path, objective):
  straight = training.train(digits_config(objective=objective), str(tmp_path / "a"))
  training.train(digits_config(objective=objective, **{"train.steps": 10}), str(tmp_path / "b"))
  resumed = training.train(digits_config(objective=objective), str(tmp_path / "b"))
  for a, b in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  run = training.load_run(str(tmp_path / "a"), params="raw")
  assert run.data_shape == (8, 8, 1) and run.num_classes == 10
  sample = training.make_sampler(run.config, run.model, run.params)
  eps = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  y = np.array([0, 3, 9, 10])  # 10: the null class, unconditional
  x = np.asarray(sample(eps, 1, y))
  assert x.shape == (4, 8, 8, 1) and np.isfinite(x).all()
  # The labels reach the network: class 3 and the null class give other images.
  x_other = np.asarray(sample(eps, 1, np.array([0, 4, 9, 0])))
  np.testing.assert_array_equal(x[[0, 2]], x_other[[0, 2]])
  assert np.abs(x[1] - x_other[1]).max() > 1e-6 and np.abs(x[3] - x_other[3]).max() > 1e-6
  with pytest.raises(ConfigError, match=r"labels must lie in \[0, 10\]"):
    sample(eps, 1, np.array([0, 1, 2, 11]))
  with pytest.raises(ConfigError, match="labels must have shape"):
    sample(eps, 1, np.array([0, 1]))


def test_guided_target_uses_the_null_class_and_the_interval():
  """With omega = 1, kappa = 0 the guided step equals the plain conditional step; with
  guidance outside every sampled t (an empty interval at t = 0) it does too."""
  # The class-conditional MLP on labelled points: the guidance is the same whatever the
  # network, and its four programs compile in a fraction of a DiT's time.
  c = tiny_config(**{"loss.p": 0.0, "model.num_classes": 10, "guidance.omega": 1.0,
                     "guidance.kappa": 0.5, "train.batch_size": 16})  # p = 1: every loss ~1
  model = training.build_model(c)
  tx = training.make_optimizer(c.optimizer, c.train.steps)
  state = jax.jit(lambda k: init_state(k, model, tx, np.zeros((1, 2), np.float32), 1))(
      jax.random.key(0))
  # Random weights, output layer included, and a label table and modulation large enough
  # that u(z, t, t | y) differs clearly between classes.
  params = compiled.perturb(state.params, jax.random.key(3), 0.1)["params"]
  strong = compiled.perturb({k: params[k] for k in ("y_embed", "mod0")}, jax.random.key(4), 1.0)
  state = state.replace(params={"params": {**params, **strong}})
  x = jax.random.normal(jax.random.key(2), (16, 2))
  y = jnp.arange(16) % 10

  def step(**g):
    cfg = c.guidance.copy_and_resolve_references()
    for k, v in g.items():
      cfg[k] = v
    fn = functools.partial(training.train_step, apply_fn=model.apply, tx=tx, objective="meanflow",
                           time_cfg=c.time, loss_cfg=c.loss, ema_decays=(0.9,),
                           guidance_cfg=cfg, num_classes=10)
    # Four programs run once each and compared with each other: compiled fast, and only
    # the loss returned, so that XLA drops the backward pass and the update as dead code.
    jitted = jax.jit(lambda *a: fn(*a)[1]["loss"], compiler_options=xla.FAST_OPTIONS)
    return float(jitted(state, (x, y), jax.random.key(1)))

  plain = step(omega=1.0, kappa=0.0)
  assert step(omega=1.0, kappa=0.5, t_min=0.0, t_max=0.0) == pytest.approx(plain, rel=1e-6)
  assert abs(step(omega=1.0, kappa=0.5) - plain) > 1e-4 * abs(plain)
  assert abs(step(omega=2.0, kappa=0.0) - plain) > 1e-4 * abs(plain)


@pytest.mark.parametrize("key,value,needle", [
    ("model.num_classes", 5, "has 10 classes"),
    ("data.source", "array", "reads data.path"),
    ("guidance.label_dropout", 0.0, "needs the null class"),
    ("guidance.t_max", 1.5, "guidance.t_max"),
    ("model.variant", "Q/3", "model.variant"),
    ("model.dit.patch_size", 3, "does not fit data of shape (8, 8, 1)"),
    ("model.dit.num_heads", 0, "model.dit.num_heads must be positive"),
])
def test_bad_image_configs_fail_before_anything_is_written(tmp_path, key, value, needle):
  with pytest.raises(ConfigError, match=re.escape(needle)):
    training.train(digits_config(**{key: value}), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_guided_target_velocity_per_sample():
  """A stub network whose output is its label shows which label each term used:
  v~ = omega v_t + kappa y + (1 - omega - kappa) null inside the interval, else v_t."""
  import ml_collections
  from meanflow_jax.training.train_step import guided_target_velocity
  stub = lambda params, z, r, t, y: jnp.broadcast_to(
      y.astype(jnp.float32)[:, None, None, None], z.shape)
  x = jnp.zeros((4, 2, 2, 1))
  eps = jnp.ones((4, 2, 2, 1))  # v_t = eps - x = 1
  t = jnp.array([0.2, 0.5, 0.9, 0.5])
  y = jnp.array([3, 3, 3, 7])
  is_null = jnp.array([False, False, False, True])
  g = ml_collections.ConfigDict(dict(omega=0.5, kappa=0.25, t_min=0.0, t_max=0.8))
  v = guided_target_velocity(stub, None, x, eps, t, y, is_null, g, num_classes=10)
  inside = 0.5 * 1 + 0.25 * 3 + 0.25 * 10
  np.testing.assert_allclose(v[:, 0, 0, 0], [inside, inside, 1.0, 1.0], rtol=1e-6)


def test_zero_dropout_and_no_attention_override_a_preset():
  c = digits_config(**{"model.name": "unet", "model.variant": "cifar10",
                       "model.unet.dropout": 0.0, "model.unet.attn_resolutions": ()})
  model = training.build_model(c)
  assert model.dropout == 0.0 and tuple(model.attn_resolutions) == ()
  c = digits_config(**{"model.name": "unet", "model.variant": "cifar10"})
  model = training.build_model(c)
  assert model.dropout == 0.2 and tuple(model.attn_resolutions) == (16,)


def test_resume_on_other_data_is_refused(tmp_path):
  """Points of another dimension (as digits after MNIST: the check reads the data's shape,
  whatever the source); flow matching on the MLP, the cheapest step that writes a run."""
  rng = np.random.default_rng(0)
  for d in (2, 3):
    np.save(tmp_path / f"x{d}.npy", rng.normal(size=(64, d)).astype(np.float32))
  run = lambda d, steps: training.train(tiny_config(**{
      "objective": "flow_matching", "data.source": "points",
      "data.path": str(tmp_path / f"x{d}.npy"), "train.steps": steps,
      "train.checkpoint_every": 5}), str(tmp_path / "run"))
  run(2, 5)
  with pytest.raises(CheckpointMismatchError, match=r"data_shape \[2\], not \[3\]"):
    run(3, 10)


def test_configs_saved_before_image_support_are_upgraded():
  from meanflow_jax.training import checkpoint
  old = {"objective": "meanflow", "data": {"path": "", "mixture": "ring8"},
         "model": {"name": "mlp", "mlp": {"width": 32}}}
  new = checkpoint.upgrade_config(old)
  assert new["data"]["source"] == "mixture" and new["model"]["num_classes"] == 0
  assert new["guidance"]["omega"] == 1.0 and new["model"]["variant"] == ""
  assert new["model"]["dtype"] == "float32" and new["train"]["sample_every"] == 0
  assert new["mesh"] == {"data": -1, "fsdp": 1}
  assert checkpoint.upgrade_config({"data": {"path": "x.npy"}})["data"]["source"] == "points"
  # Keys of models not in use do not block a resume.
  current = dict(new, model=dict(new["model"], dit={"depth": 3}))
  assert checkpoint.config_mismatches(new, current) == []


def test_the_step_is_traced_once_over_a_run(tmp_path, monkeypatch):
  """Compiled once ahead of time: 40 steps with logs and checkpoints trace it once."""
  traces = []
  real = builders.train_step

  def counted(*args, **kwargs):
    traces.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(builders, "train_step", counted)
  training.train(tiny_config(), str(tmp_path))
  assert len(traces) == 1


@pytest.mark.slow  # a DiT run end to end; the model's bfloat16 computation with float32
# parameters and output is tested fast in test_image_models.py
def test_bfloat16_matmuls_keep_float32_parameters(tmp_path):
  state = training.train(digits_config(**{"model.dtype": "bfloat16", "train.steps": 5,
                                          "train.checkpoint_every": 5}), str(tmp_path))
  assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {"float32"}
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert all(np.isfinite(r["loss"]) for r in rows)
