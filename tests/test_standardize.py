"""Standardised vector data: statistics, exact mixture moments, the round trip through a
trained run, old runs, and the random mixture family."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanflow_jax import analytic, evaluate, training
from meanflow_jax.data import points
from meanflow_jax.errors import CheckpointMismatchError
from meanflow_jax.metrics import toy
from meanflow_jax.training import actions, checkpoint, inference, loop
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def rotated():
  """A 3-D mixture of rotated anisotropic modes (drawn when a test asks, not when the
  module is collected: each worker collects every module)."""
  return points.random_mixture(jax.random.key(0), dim=3, num_modes=4, scale=2.0,
                               offset=(1.0, -2.0, 0.5), anisotropy=5.0, mode_std=0.4)


def test_points_statistics_equal_numpy(tmp_path):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(500, 3)) * [3.0, 0.01, 1.0] + [10.0, -5.0, 0.0]).astype(np.float32)
  x[:, 2] = 7.0  # a constant column: shifted, not divided by 0
  np.save(tmp_path / "p.npy", x)
  stats = points.points_standardization(x)
  np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats.std[:2], x[:, :2].astype(np.float64).std(0), rtol=1e-6)
  assert stats.std[2] == 1.0
  source = points.PointSource(batch_size=64, key=jax.random.key(1), path=str(tmp_path / "p.npy"),
                              standardize=True)
  plain = points.PointSource(batch_size=64, key=jax.random.key(1), path=str(tmp_path / "p.npy"))
  assert plain.stats is None
  np.testing.assert_allclose(source.batch(3), (plain.batch(3) - stats.mean) / stats.std,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats.invert(stats.apply(x)), x, rtol=1e-6, atol=1e-5)
  assert points.Standardization.from_json(json.loads(json.dumps(stats.to_json()))) \
      ._asdict().keys() == stats._asdict().keys()
  back = points.stats_from_json(json.loads(json.dumps(points.stats_to_json(stats))))
  np.testing.assert_array_equal(back.mean, stats.mean)
  np.testing.assert_array_equal(back.std, stats.std)


def test_mixture_exact_moments(rotated):
  mean, var = analytic.ring_mixture(num_modes=8, radius=2.0, std=0.2).moments()
  np.testing.assert_allclose(mean, [0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(var, [2.0 ** 2 / 2 + 0.2 ** 2] * 2, rtol=1e-6)
  mean, var = points.two_modes(dim=3, separation=4.0, std=0.25).moments()
  np.testing.assert_allclose(var, [2.0 ** 2 + 0.25 ** 2, 0.25 ** 2, 0.25 ** 2], rtol=1e-6)
  stats = points.mixture_standardization(rotated)
  x, _ = rotated.sample(jax.random.key(1), 400_000)
  np.testing.assert_allclose(stats.mean, np.asarray(x).mean(0), atol=0.01)
  np.testing.assert_allclose(stats.std, np.asarray(x).std(0), rtol=0.01)
  # The source of a built-in mixture standardises with the exact moments.
  source = points.PointSource(batch_size=8, key=jax.random.key(0), standardize=True)
  np.testing.assert_allclose(source.stats.std, [np.sqrt(2.04)] * 2, rtol=1e-6)


def test_standardized_mixture_is_the_law_of_standardized_points(rotated):
  """Change of variables, exactly: p'(apply(x)) = p(x) prod(std), and moments (0, 1)."""
  stats = points.mixture_standardization(rotated)
  st = rotated.standardized(stats.mean, stats.std)
  x, _ = rotated.sample(jax.random.key(2), 256)
  np.testing.assert_allclose(st.log_prob(stats.apply(x)),
                             rotated.log_prob(x) + np.log(stats.std).sum(), rtol=1e-5, atol=1e-4)
  mean, var = st.moments()
  np.testing.assert_allclose(mean, 0.0, atol=1e-5)
  np.testing.assert_allclose(var, 1.0, rtol=1e-5)
  # Isotropic modes without axes, per-dimension std: stds become [K, D].
  ring = analytic.ring_mixture()
  sr = ring.standardized(jnp.array([0.5, 0.0]), jnp.array([2.0, 0.5]))
  assert sr.stds.shape == (8, 2) and sr.axes is None
  np.testing.assert_allclose(sr.log_prob((x[:, :2] - jnp.array([0.5, 0.0])) / jnp.array([2.0, 0.5])),
                             ring.log_prob(x[:, :2]) + np.log(2.0 * 0.5), rtol=1e-5, atol=1e-4)


def test_anisotropic_velocity_is_the_posterior_mean_and_the_flow_reaches_the_data(rotated):
  # v(z, t) = E[eps - x | z_t = z], by self-normalised importance sampling.
  t, z = 0.6, jnp.array([[0.5, -1.5, 0.2]])
  x, _ = rotated.sample(jax.random.key(3), 400_000)
  eps = (z - (1 - t) * x) / t
  w = jax.nn.softmax(-0.5 * jnp.sum(eps ** 2, -1))
  np.testing.assert_allclose(rotated.velocity(z, t)[0], jnp.sum(w[:, None] * (eps - x), 0),
                             atol=0.02)
  # The exact flow carries N(0, I) to the mixture: its moments and its log-density.
  noise = jax.random.normal(jax.random.key(4), (20_000, 3))
  flowed = jax.jit(lambda e: rotated.flow_map(e, 1.0, 0.0, 128))(noise)
  mean, var = rotated.moments()
  np.testing.assert_allclose(flowed.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(flowed.var(0), var, rtol=0.05)
  assert abs(float(rotated.log_prob(flowed).mean() - rotated.log_prob(x[:20_000]).mean())) < 0.05


def test_random_mixture_family():
  m = points.random_mixture(jax.random.key(5), dim=10, num_modes=16, scale=7.5, offset=-3.0,
                            anisotropy=4.0, mode_std=0.3, concentration=1.0)
  assert m.means.shape == (16, 10) and m.stds.shape == (16, 10) and m.axes.shape == (16, 10, 10)
  np.testing.assert_allclose(m.weights.sum(), 1.0, rtol=1e-6)
  assert float(m.weights.min()) > 0 and float(m.weights.max() / m.weights.min()) > 2
  np.testing.assert_allclose(m.scale(), 7.5, rtol=1e-5)
  np.testing.assert_allclose(m.moments()[0], -3.0, atol=1e-5)
  np.testing.assert_allclose(m.stds.max(1) / m.stds.min(1), 4.0, rtol=1e-5)
  eye = jnp.einsum("kde,kdf->kef", m.axes, m.axes)
  np.testing.assert_allclose(eye, jnp.broadcast_to(jnp.eye(10), eye.shape), atol=1e-5)
  for scale in (0.5, 10.0):
    np.testing.assert_allclose(points.random_mixture(jax.random.key(6), scale=scale).scale(),
                               scale, rtol=1e-5)
  splits = {s for s, _, _ in points.FAMILY.values()}
  assert splits == {"tune", "heldout"}
  user = points.family_mixture("user7")
  assert user.dim == 2 and user.weights.shape == (7,)
  np.testing.assert_allclose(user.scale(), 4.0, rtol=1e-5)
  sizes = {p["num_modes"] for _, _, p in points.FAMILY.values()}
  assert min(sizes) == 2 and max(sizes) == 16
  assert {p["dim"] for _, _, p in points.FAMILY.values()} == {2, 10}


def _points_far_away(tmp_path):
  """Two clusters scaled by 100 and moved by 1000: far from the noise N(0, I)."""
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(size=(500, 2)) * [1.0, 0.5] + [2.0, 0.0],
                      rng.normal(size=(500, 2)) * 0.5 - [2.0, 0.0]])
  path = str(tmp_path / "far.npy")
  np.save(path, (x * 100 + 1000).astype(np.float32))
  return path, (x * 100 + 1000)


def _far_config(path, standardize, workdir):
  c = tiny_config(**{"data.source": "points", "data.path": path,
                     "data.standardize": standardize, "train.steps": 60,
                     "train.checkpoint_every": 60, "train.log_every": 20,
                     "train.ema_decays": (0.9,)})
  training.train(c, workdir)
  return c


@pytest.mark.slow  # 60 training steps end to end; the statistics and scoring are tested fast
def test_trained_run_round_trip(tmp_path):
  """Training sees standardised x; samples come back in data space. Measured at 60 steps:
  1-NFE samples' mean within 0.02 std of the data's, std ratio 0.9 to 1.3; without
  standardisation the mean stays near the noise's, about 1000 away (20 data stds)."""
  path, x = _points_far_away(tmp_path)
  mean, std = x.mean(0), x.std(0)
  config = _far_config(path, True, str(tmp_path / "std"))
  source = loop.make_source(config)
  batch, _ = source.batch(0)
  assert np.abs(batch).max() < 10  # what the network sees
  np.testing.assert_allclose(source.stats.mean, mean, rtol=1e-5)
  run = inference.load_run(str(tmp_path / "std"), params="raw")
  np.testing.assert_allclose(run.data_stats.std, std, rtol=1e-5)
  eps = jax.random.normal(jax.random.key(0), (2000, 2))
  sample = inference.make_sampler(run.config, run.model, run.params,
                                  data_stats=run.data_stats)
  s = np.asarray(sample(eps, 1))
  assert np.all(np.abs(s.mean(0) - mean) < 0.25 * std), (s.mean(0), mean, std)
  assert np.all((s.std(0) > 0.6 * std) & (s.std(0) < 1.6 * std)), (s.std(0), std)
  # Without the statistics the sampler returns the network's own space.
  raw = np.asarray(inference.make_sampler(run.config, run.model, run.params)(eps, 1))
  assert np.all(np.abs(raw.mean(0)) < 1.0)
  # The training-time previews are in data space too.
  model = training.build_model(config)
  mesh = loop.sharding.make_mesh(-1, 1)
  preview = actions.Preview(config, model, source, mesh, loop.make_prior(config, source), "",
                            None).samples
  p = preview(run.params)
  assert np.all(np.abs(p.mean(0) - mean) < 0.25 * std)

  _far_config(path, False, str(tmp_path / "plain"))
  plain = inference.load_run(str(tmp_path / "plain"), params="raw")
  assert plain.data_stats is None
  s = np.asarray(inference.make_sampler(plain.config, plain.model, plain.params)(eps, 1))
  assert np.all(np.abs(s.mean(0) - mean) > 3 * std), (s.mean(0), mean, std)
  # A run keeps the standardisation it started with.
  with pytest.raises(CheckpointMismatchError, match="standardised"):
    training.train(tiny_config(**{"data.source": "points", "data.path": path,
                                  "data.standardize": True, "train.steps": 80,
                                  "train.checkpoint_every": 60, "train.log_every": 20,
                                  "train.ema_decays": (0.9,)}), str(tmp_path / "plain"))


def _drop_key(item_dir, path):
  """Removes the dotted key `path` from a checkpoint's JSON item (Orbax's `metadata` file),
  as a run saved before that key existed would hold it."""
  f = os.path.join(item_dir, "metadata")
  with open(f) as fh:
    saved = json.load(fh)
  *parents, last = path.split(".")
  node = saved
  for k in parents:
    node = node[k]
  del node[last]
  with open(f, "w") as fh:
    json.dump(saved, fh)


def test_old_config_loads_unstandardised(tmp_path):
  assert checkpoint.upgrade_config({"data": {"path": ""}})["data"]["standardize"] is False
  c = tiny_config(**{"train.steps": 10, "train.checkpoint_every": 10, "train.log_every": 10,
                     "data.standardize": False})
  training.train(c, str(tmp_path))
  step = tmp_path / "checkpoints" / "10"
  _drop_key(step / "config", "data.standardize")
  _drop_key(step / "meta", "data_stats")
  run = inference.load_run(str(tmp_path))
  assert run.config.data.standardize is False and run.data_stats is None
  # Resuming it with today's default (standardise) would change its data: refused.
  with pytest.raises(CheckpointMismatchError, match="data.standardize changed"):
    training.train(tiny_config(**{"train.steps": 20, "train.checkpoint_every": 10,
                                  "train.log_every": 10}), str(tmp_path))


def test_evaluate_toy_on_points_scores_in_data_space(tmp_path):
  """A points run of a far-away mixture is scored against the mixture passed in; the exact
  reference is the flow of the standardised mixture, mapped back (so its images are
  distributed as the data, in data space)."""
  mix = points.random_mixture(jax.random.key(7), dim=2, num_modes=3, scale=50.0,
                              offset=(300.0, -100.0), anisotropy=2.0, mode_std=0.3)
  path = str(tmp_path / "mix.npy")
  np.save(path, np.asarray(mix.sample(jax.random.key(8), 5000)[0]))
  c = tiny_config(**{"data.source": "points", "data.path": path, "train.steps": 20,
                     "train.checkpoint_every": 20, "train.log_every": 10})
  training.train(c, str(tmp_path / "run"))
  ev = evaluate.evaluate_toy(str(tmp_path / "run"), [1], num=2000, mixture=mix, flow_steps=64)
  mean, var = mix.moments()
  np.testing.assert_allclose(ev.exact.mean(0), mean, atol=0.1 * float(mix.scale()))
  assert abs(float(mix.log_prob(jnp.asarray(ev.exact)).mean())
             - float(mix.log_prob(mix.sample(jax.random.key(9), 2000)[0]).mean())) < 0.3
  row = ev.rows[0]
  assert row["exact_low_density_frac"] < 0.03 and row["exact_mode_tv"] < 0.05, row
  # Twenty steps from a far-away start: in data space, the samples are near the data.
  assert row["transport_rms"] < 1.5, row


def test_map_slopes_of_exact_maps():
  """Linear maps: the largest singular value; two modes: the exact map's slope at eps = 0 is
  std exp(sep^2 / (8 std^2)) (the 1-D quantile map of axis 0, as in the obstruction study)."""
  a = jnp.array([[3.0, 1.0], [0.0, 0.5]])
  eps = jax.random.normal(jax.random.key(10), (5, 2))
  np.testing.assert_allclose(toy.map_slopes(lambda e: e @ a.T, eps),
                             np.linalg.norm(np.asarray(a), 2), rtol=1e-5)
  two = points.two_modes(dim=2, separation=2.0, std=0.5)
  slope = toy.map_slopes(lambda e: two.flow_map(e, 1.0, 0.0, 256), jnp.zeros((1, 2)))
  np.testing.assert_allclose(slope, 0.5 * np.exp(2.0 ** 2 / (8 * 0.5 ** 2)), rtol=1e-3)


def test_toy_v1_keeps_every_value_before_the_mixture_family_tuning():
  """configs/toy.py:v1 reproduces the runs of BENCHMARKS sections 1-12; the default is the
  tuned config (standardised, p 0.1, sigma 2.5, half the pairs r != t, lr 4e-3)."""
  from configs import toy
  old, new = toy.get_config("v1"), toy.get_config()
  got = lambda c: (c.data.standardize, c.time.mu, c.time.sigma, c.time.ratio_r_neq_t,
                   c.loss.p, c.optimizer.lr, c.train.steps, c.model.mlp.width)
  assert got(old) == (False, -2.0, 2.0, 0.75, 0.5, 2e-3, 12_000, 256)
  assert got(new) == (True, -2.0, 2.5, 0.5, 0.1, 4e-3, 12_000, 256)
  with pytest.raises(ValueError, match="variants"):
    toy.get_config("v2")
