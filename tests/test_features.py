"""The extra loss term in a frozen network's features (pMF's perceptual-loss slot)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanflow_jax import objectives
from meanflow_jax.errors import CheckpointMismatchError, ConfigError
from meanflow_jax.objectives import features, imf
from meanflow_jax.training import builders, validate
from test_training import digits_config, override, tiny_config

B, D = 6, 3
A = jnp.array([[0.5, -0.2, 0.1], [0.3, 0.7, -0.4], [-0.6, 0.2, 0.9]])


def _u(z, r, t):
  """A closed-form field: u = A z + (t + 2 r) (its JVP is exact and simple)."""
  return z @ A.T + (t + 2.0 * r)[:, None]


def _draw():
  k = jax.random.split(jax.random.key(3), 4)
  x, eps = jax.random.normal(k[0], (B, D)), jax.random.normal(k[1], (B, D))
  t = jax.random.uniform(k[2], (B,), minval=0.1, maxval=1.0)
  r = t * jax.random.uniform(k[3], (B,))
  return x, eps, t, r


def _phi(x):  # a fixed non-linear "feature network"
  return jnp.tanh(x @ jnp.array([[1.0, -2.0], [0.5, 0.3], [-1.0, 0.7]]))


def _expected_extra(x, eps, t, u, weight):
  z = (1 - t)[:, None] * x + t[:, None] * eps
  x_hat = z - t[:, None] * u
  return weight * np.mean((np.asarray(_phi(x_hat)) - np.asarray(_phi(x))) ** 2, axis=1)


def test_meanflow_loss_adds_the_feature_term_at_the_x_field():
  x, eps, t, r = _draw()
  base, _ = objectives.meanflow_loss(_u, x, eps, t=t, r=r, p=0.0)
  loss, m = objectives.meanflow_loss(_u, x, eps, t=t, r=r, p=0.0,
                                     extra=features.term(_phi, 0.5))
  z = (1 - t)[:, None] * x + t[:, None] * eps
  want = _expected_extra(x, eps, t, _u(z, r, t), 0.5)
  np.testing.assert_allclose(float(loss) - float(base), want.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(m["feature_loss"]), want.mean(), rtol=1e-5)
  assert want.mean() > 1e-3  # the term is not trivially zero here


def test_flow_matching_and_imf_losses_add_the_same_term():
  x, eps, t, r = _draw()
  z = (1 - t)[:, None] * x + t[:, None] * eps
  v_fn = lambda z, t: _u(z, t, t)
  base, _ = objectives.flow_matching_loss(v_fn, x, eps, t=t)
  loss, _ = objectives.flow_matching_loss(v_fn, x, eps, t=t, extra=features.term(_phi, 2.0))
  np.testing.assert_allclose(float(loss) - float(base),
                             _expected_extra(x, eps, t, v_fn(z, t), 2.0).mean(), rtol=1e-5)
  net = lambda z, r, t: (_u(z, r, t), -_u(z, t, t))
  v_c = jnp.ones_like(x)
  kw = dict(r=r, t=t, v_c=v_c, v_tilde=eps - x, p=0.0)
  base, _ = imf.imf_loss(net, x, eps, **kw)
  loss, _ = imf.imf_loss(net, x, eps, extra=features.term(_phi, 1.0), **kw)
  np.testing.assert_allclose(float(loss) - float(base),
                             _expected_extra(x, eps, t, _u(z, r, t), 1.0).mean(), rtol=1e-5)


def test_feature_term_differentiates_through_the_prediction_only():
  x, eps, t, _ = _draw()
  x_hat = x + 0.3
  g_hat, g_x = jax.grad(lambda a, b: features.feature_distance(_phi, a, b).sum(),
                        argnums=(0, 1))(x_hat, x)
  assert float(jnp.abs(g_hat).sum()) > 0 and float(jnp.abs(g_x).sum()) == 0.0
  np.testing.assert_allclose(features.feature_distance(_phi, x, x), 0.0, atol=0)


def test_unknown_or_unused_feature_settings_are_refused():
  with pytest.raises(ConfigError, match=r"loss.features must be one of \['classifier'"):
    validate.check_config(digits_config(**{"loss.features": "lpips"}))
  defaults = tiny_config()
  with pytest.raises(ConfigError, match="loss.features_weight"):
    validate.check_config(tiny_config(**{"loss.features_weight": 2.0}), defaults)
  with pytest.raises(ConfigError, match="loss.features_weight must be finite and > 0"):
    validate.check_config(digits_config(**{"loss.features": "classifier",
                                          "loss.features_weight": 0.0}))
  with pytest.raises(ConfigError, match="needs labelled images"):
    features.from_config(tiny_config(**{"loss.features": "classifier"}))


def test_user_registered_network_reaches_the_train_step(monkeypatch):
  monkeypatch.setattr(features, "_REGISTRY", dict(features._REGISTRY))
  seen = []

  def builder(config):
    seen.append(config.data.source)
    return lambda x: jnp.mean(x, axis=(1, 2))  # [B, H, W, C] -> [B, C]
  features.register("pooled", builder)
  with pytest.raises(ValueError, match="registered already"):
    features.register("pooled", builder)
  from meanflow_jax import training
  # One compiled step; without a network the step is built with no term (the last line).
  c = digits_config(**{"loss.features": "pooled", "loss.features_weight": 3.0})
  validate.check_config(c)
  model = training.build_model(c)
  tx = training.make_optimizer(c.optimizer, c.train.steps)
  state = jax.jit(builders.init_fn(c, model, tx, (8, 8, 1)))(jax.random.key(0))
  # Only the term is returned: XLA drops the backward pass and the update as dead code.
  step = jax.jit(lambda *a: builders.step_function(c, model, tx)(*a)[1]["feature_loss"])
  x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1), minval=-1, maxval=1)
  y = jnp.arange(16) % 10
  assert float(step(state, (x, y), jax.random.key(2))) > 0 and seen == ["digits"]
  assert builders.step_function(override(c, {"loss.features": "", "loss.features_weight": 1.0}),
                                model, tx).keywords["feature_loss"] is None


@pytest.mark.slow  # two runs end to end; the term's wiring is tested fast above
def test_classifier_features_train_on_digits_and_a_changed_term_is_not_resumed(tmp_path):
  # The digits classifier comes from the user's cache, as in the evaluation tests (its
  # training and caching are tested in test_frechet_classifier.py).
  from meanflow_jax import training
  c = digits_config(**{"loss.features": "classifier", "loss.features_weight": 0.5,
                       "train.steps": 4, "train.log_every": 2, "train.checkpoint_every": 2})
  training.train(c, str(tmp_path / "run"))
  import json
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert all(np.isfinite(r["feature_loss"]) and r["feature_loss"] > 0 for r in rows), rows
  with pytest.raises(CheckpointMismatchError, match="loss.features was 'classifier'"):
    training.train(override(c, {"loss.features": "", "loss.features_weight": 1.0,
                                "train.steps": 6}), str(tmp_path / "run"))
