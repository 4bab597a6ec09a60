"""The optimiser registry: Muon orthogonalises matrix updates; the rest get AdamW."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from meanflow_jax.training import train_state as ts
from tests.test_training import override


def _first_update(name, grads, **values):
  opt = override(default.get_config(), dict({"optimizer.name": name}, **values)).optimizer
  tx = ts.make_optimizer(opt, 100)
  params = jax.tree.map(jnp.zeros_like, grads)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_muon_whitens_the_matrix_update_and_adams_the_bias():
  # An ill-conditioned matrix gradient: singular values 100 ... 1.
  u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(32, 32)))
  v, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))
  g_kernel = (u[:, :16] * np.logspace(2, 0, 16)) @ v.T
  g_bias = np.linspace(-2.0, 3.0, 16)
  grads = {"kernel": jnp.asarray(g_kernel, jnp.float32), "bias": jnp.asarray(g_bias, jnp.float32)}
  up = _first_update("muon", grads, **{"optimizer.lr": 1e-3, "optimizer.muon_lr": 0.02})
  s = np.linalg.svd(np.asarray(up["kernel"]), compute_uv=False)
  assert s.max() / s.min() < 3.0  # Newton-Schulz: all directions move alike (was 100x)
  # Its direction is the gradient's (descent): the update lies against the gradient.
  assert float(jnp.sum(up["kernel"] * grads["kernel"])) < 0
  # The bias is Adam's (optax's Muon runs Nesterov Adam, NAdam, on non-matrices) with the
  # config's lr, b1 and b2.
  nadam = optax.nadam(1e-3, b1=0.9, b2=0.95)
  want, _ = nadam.update(grads["bias"], nadam.init(grads["bias"]))
  np.testing.assert_allclose(up["bias"], want, rtol=1e-5)
  assert np.all(np.sign(up["bias"]) == -np.sign(g_bias))
  adam = _first_update("adamw", grads, **{"optimizer.lr": 1e-3})
  s_adam = np.linalg.svd(np.asarray(adam["kernel"]), compute_uv=False)
  assert s_adam.max() / s_adam.min() > 3.0  # what Muon changed


def test_muon_lr_scales_only_the_matrices():
  grads = {"kernel": jnp.ones((4, 3)) * jnp.arange(1.0, 4.0), "bias": jnp.ones((3,))}
  a = _first_update("muon", grads, **{"optimizer.muon_lr": 0.02})
  b = _first_update("muon", grads, **{"optimizer.muon_lr": 0.04})
  np.testing.assert_allclose(b["kernel"], 2 * a["kernel"], rtol=1e-5)
  np.testing.assert_allclose(b["bias"], a["bias"], rtol=1e-6)


@pytest.mark.slow  # end to end; the optimiser and the x field have their unit tests
def test_muon_and_x_prediction_train_save_and_resume(tmp_path):
  """Muon's state (optax masks its two halves: leaves with no array) shards, saves and
  restores; an x-prediction iMF run trains through the loop and resumes."""
  from meanflow_jax import training
  from meanflow_jax.training import inference
  from tests.test_training import tiny_config
  c = tiny_config(**{"objective": "imf", "optimizer.name": "muon", "model.prediction": "x",
                     "train.steps": 4, "train.checkpoint_every": 2, "train.log_every": 2,
                     "time.ratio_r_neq_t": 0.5})
  training.train(c, str(tmp_path))
  c.train.steps = 6
  training.train(c, str(tmp_path))
  run = inference.load_run(str(tmp_path))
  assert run.model.prediction == "x" and run.model.v_head
  x = inference.make_sampler(run.config, run.model, run.params)(jnp.ones((4, 2)), 2)
  assert x.shape == (4, 2) and bool(jnp.all(jnp.isfinite(x)))
