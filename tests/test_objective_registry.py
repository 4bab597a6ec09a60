"""Objectives by name: one registry, an unknown name refused at every entry point, and a
new objective added as one object without touching the step, the samplers or evaluation."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanflow_jax import analytic, evaluate, objectives, paths, sampling, training
from meanflow_jax.errors import ConfigError
from meanflow_jax.objectives import registry
from meanflow_jax.training import inference, validate
from meanflow_jax.training.train_state import init_state
from tests.test_training import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAUSS = analytic.Gaussian(mean=jnp.array([1.0, -0.5]), std=0.5)


def test_registered_objectives_declare_what_they_need():
  assert objectives.names() == ["flow_matching", "imf", "meanflow"]
  mf, fm, imf = (objectives.get(n) for n in ("meanflow", "flow_matching", "imf"))
  assert (mf.default_nfe, fm.default_nfe, imf.default_nfe) == (1, 16, 1)
  assert mf.heads == fm.heads == ("u",) and imf.heads == ("u", "v")
  assert imf.conditions == ("omega", "t_min", "t_max") and mf.conditions == fm.conditions == ()
  assert mf.reads == ("time.ratio_r_neq_t", "time.subset_jvp")
  assert fm.reads == ("sample.method",)
  assert fm.methods == sampling.METHODS and mf.methods == (None,)
  assert [fm.sampler_name(m) for m in ("euler", "heun")] == ["fm-euler", "fm-heun"]
  assert mf.sampler_name(None) == "meanflow"
  assert fm.spends(4, "heun") and not fm.spends(3, "heun") and mf.spends(3, None)
  assert not mf.spends(0, None)


def test_times_follow_each_objective():
  cfg = tiny_config().time
  t, r = objectives.get("meanflow").sample_times(jax.random.key(0), 4000, cfg)
  assert bool(jnp.all(r <= t))
  assert abs(float(jnp.mean(r != t)) - cfg.ratio_r_neq_t) < 0.03
  t, r = objectives.get("flow_matching").sample_times(jax.random.key(0), 4000, cfg)
  assert bool(jnp.all(r == t))


def test_generation_steps_equal_the_samplers():
  """Through the registry, at the exact Gaussian fields: MeanFlow's 1 jump and flow
  matching's Euler / Heun are the samplers of `sampling`."""
  eps = jax.random.normal(jax.random.key(1), (64, 2))
  mf = objectives.get("meanflow").generate(GAUSS.average_velocity, eps, 1, None)
  np.testing.assert_allclose(mf, sampling.meanflow_sample(GAUSS.average_velocity, eps, 1))
  v_net = lambda z, r, t: GAUSS.velocity(z, t)
  fm = objectives.get("flow_matching")
  np.testing.assert_allclose(fm.generate(v_net, eps, 4, "heun"),
                             sampling.flow_matching_sample(GAUSS.velocity, eps, 2, "heun"))
  np.testing.assert_allclose(fm.generate(v_net, eps, 3, "euler"),
                             sampling.flow_matching_sample(GAUSS.velocity, eps, 3, "euler"))


def _bad(name):
  c = tiny_config()
  with c.unlocked():
    c.objective = name
  return c


ENTRY_POINTS = {
    "objectives.get": lambda: objectives.get("meanflw"),
    "check_config": lambda: validate.check_config(_bad("meanflw")),
    "train": lambda: training.train(_bad("meanflw"), "/nonexistent/never-written"),
    "draw": lambda: inference.draw("meanflw", None, "euler", None, jnp.zeros((2, 2)), 1, None),
    "sampler_name": lambda: evaluate.sampler_name("meanflw", "euler"),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_unknown_objective_fails_at_every_entry_point(entry):
  with pytest.raises(ConfigError, match=r"objective must be one of \['flow_matching', "
                                        r"'imf', 'meanflow'\]; got 'meanflw'"):
    ENTRY_POINTS[entry]()
  assert not os.path.exists("/nonexistent/never-written")


def test_unknown_objective_is_one_line_from_the_scripts(tmp_path):
  for script, args in (("train.py", ["--workdir", str(tmp_path / "w")]),
                       ("dryrun.py", [])):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--config",
                           "configs/toy.py", "--config.objective=meanflw", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "objective must be one of ['flow_matching', 'imf', 'meanflow']" in proc.stderr
  assert not (tmp_path / "w").exists()


class _Registered:
  """Registers `objective` for one test and removes it after."""

  def __init__(self, objective):
    self.objective = objective

  def __enter__(self):
    return registry.register(self.objective)

  def __exit__(self, *exc):
    registry._REGISTRY.pop(self.objective.name, None)


class _HalfSpeed(registry.Objective):
  """A made-up objective: regress v / 2 and take Euler steps of twice the output. What the
  train step and the sampler do with it shows they go through the registry alone."""
  name = "half_speed"
  default_nfe = 3

  def sample_times(self, key, b, time_cfg):
    t = jax.random.uniform(key, (b,))
    return t, t

  def loss(self, net, x, eps, *, t, r, v, loss_cfg):
    target = 0.5 * ((eps - x) if v is None else v)
    z = (1 - t[:, None]) * x + t[:, None] * eps
    err = jnp.mean(jnp.square(net(z, r, t) - target))
    return err, {"mse": err}

  def generate(self, net, eps, nfe, method):
    v2 = lambda z, t: 2.0 * net(z, t, t)
    return sampling.flow_matching_sample(v2, eps, int(nfe), "euler")


def test_a_new_objective_is_one_registered_object():
  with _Registered(_HalfSpeed()):
    c = tiny_config(**{"objective": "half_speed", "train.steps": 40, "loss.p": 0.0})
    validate.check_config(c)
    model = training.build_model(c)
    tx = training.make_optimizer(c.optimizer, 40)
    state = jax.jit(lambda k: init_state(k, model, tx, np.zeros((1, 2), np.float32), 1))(
        jax.random.key(0))
    x = GAUSS.sample(jax.random.key(2), 16)
    step = jax.jit(lambda s, b, k: training.train_step(
        s, b, k, apply_fn=model.apply, tx=tx, objective="half_speed", time_cfg=c.time,
        loss_cfg=c.loss, ema_decays=(0.9,)))
    _, m = step(state, (x, jnp.zeros(16, jnp.int32)), jax.random.key(3))
    # The network starts at u = 0, so the loss is mean |v_t / 2|^2 of the step's own noise
    # (flow matching's would be four times that).
    key_eps = jax.random.split(jax.random.fold_in(jax.random.key(3), 0), 4)[0]
    eps = paths.sample_noise(key_eps, 16, (2,))
    expected = float(jnp.mean(jnp.square(0.5 * (eps - x))))
    assert float(m["loss"]) == pytest.approx(expected, rel=1e-5)
    # Sampling through the run's sampler takes the objective's own steps.
    net = lambda z, r, t: jnp.ones_like(z)
    out = objectives.get("half_speed").generate(net, jnp.zeros((4, 2)), 3, None)
    np.testing.assert_allclose(out, -2.0 * np.ones((4, 2)), rtol=1e-6)
    drawn = inference.draw("half_speed", _Constant(), None, None, jnp.zeros((4, 2)), 3, None)
    np.testing.assert_allclose(drawn, -2.0 * np.ones((4, 2)), rtol=1e-6)
    assert evaluate.sampler_name("half_speed", None) == "half_speed"
  assert "half_speed" not in objectives.names()


class _Constant:
  """A stand-in model whose `apply` returns ones (u = 1 everywhere)."""

  def apply(self, params, z, r, t, y=None):
    return jnp.ones_like(z)


def test_the_pure_step_imports_no_checkpointing_logging_or_plotting():
  code = ("import sys\nimport meanflow_jax.training.train_step\n"
          "import meanflow_jax.training.builders\n"
          "heavy = [m for m in ('orbax', 'tensorboardX', 'matplotlib') if m in sys.modules]\n"
          "print(heavy)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=3600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"
