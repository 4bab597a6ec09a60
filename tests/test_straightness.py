"""Straightness metrics against closed forms for Gaussian data.

Data N(m, s^2 I) in D dims with the independent coupling (analytic.Gaussian) has
trajectories z_t = (1-t) m + S(t) eps, S(t) = sqrt((1-t)^2 s^2 + t^2), and
int_0^1 S'(t)^2 dt = 1 + s^2 - pi s / 2; so per noise sample

    straightness integrand  ((1 - s) - S'(t))^2 ||eps||^2 -> s (2 - pi/2) ||eps||^2
    one Euler step's gap    ||s eps||^2
    coupling loss           D (1 + s^2 - S'(t)^2) in expectation -> D pi s / 2.

The monotone coupling (analytic.StraightGaussian) makes all of them 0.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanflow_jax import analytic
from meanflow_jax.metrics import straightness as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 2
MEAN = jnp.array([1.0, -1.0])
STRAIGHT = 2 - np.pi / 2
# Moment-matched noise: batch means of quadratic forms are exact Gaussian expectations.
EPS = st.moment_matched_noise(jax.random.key(0), 256, (D,))
PAIRS = st.moment_matched_noise(jax.random.key(1), 256, (2 * D,))  # (xi, eps) jointly


def _gaussian_fn(fn, **kw):
  """jit(fn) of a Gaussian's velocity with (mean, std) traced: one compile for every s."""
  return jax.jit(lambda mean, s, *args: fn(analytic.Gaussian(mean, s).velocity, *args, **kw))


REPORT = _gaussian_fn(st.trajectory_report, num_steps=64)
PER_SAMPLE = {n: _gaussian_fn(st.straightness, num_steps=n, reduce=False) for n in (8, 16, 64)}


@pytest.mark.parametrize("s", [0.25, 0.5, 1.0, 2.0])
def test_independent_gaussian_straightness_is_exact_per_sample(s):
  per = PER_SAMPLE[64](MEAN, s, EPS)
  np.testing.assert_allclose(per, s * STRAIGHT * jnp.sum(EPS ** 2, -1), rtol=2e-5)


def test_straightness_error_shrinks_with_steps():
  exact = 0.25 * STRAIGHT * jnp.sum(EPS ** 2, -1)
  err = [float(jnp.max(jnp.abs(PER_SAMPLE[n](MEAN, 0.25, EPS) / exact - 1))) for n in (8, 16)]
  # RK4 trajectories and Simpson in t: fourth order, ~16x per halving.
  assert err[1] < err[0] / 8, err
  assert err[1] < 1e-3


@pytest.mark.parametrize("s", [0.25, 0.5, 2.0])
def test_independent_gaussian_report_matches_closed_forms(s):
  r = REPORT(MEAN, s, EPS)
  displacement = D * (1 - s) ** 2 + float(jnp.sum(MEAN ** 2))  # E||(1-s) eps - m||^2
  np.testing.assert_allclose(r["straightness"], D * s * STRAIGHT, rtol=1e-4)
  np.testing.assert_allclose(r["displacement"], displacement, rtol=1e-5)
  np.testing.assert_allclose(r["curvature"], D * s * STRAIGHT / displacement, rtol=1e-4)
  assert float(r["path_length_ratio"]) > 1.0
  # The same number through the one-number API.
  np.testing.assert_allclose(st.curvature(analytic.Gaussian(MEAN, s).velocity, EPS),
                             r["curvature"], rtol=1e-5)


def test_path_length_ratio_of_a_centred_gaussian():
  # With m = 0 paths are radial, z_t = S(t) eps: they move in to S_min = s / sqrt(1 + s^2)
  # and out again, an arc of (s + 1 - 2 S_min) ||eps|| against a chord of |1 - s| ||eps||.
  s = 0.5
  exact = (1 + s - 2 * s / np.sqrt(1 + s ** 2)) / (1 - s)
  r = REPORT(jnp.zeros(D), s, EPS)
  np.testing.assert_allclose(r["path_length_ratio"], exact, rtol=1e-4)


@pytest.mark.parametrize("s", [0.25, 0.5, 1.0, 2.0])
def test_coupling_straightness_of_independent_pairs(s):
  xi, eps = PAIRS[:, :D], PAIRS[:, D:]
  got = st.coupling_straightness(analytic.Gaussian(MEAN, s).velocity, MEAN + s * xi, eps)
  np.testing.assert_allclose(got, D * np.pi * s / 2, rtol=1e-5)


def test_coupling_straightness_monte_carlo_within_four_sigma():
  # Plain Gaussian draws: the mean is the closed form up to the Monte Carlo error.
  s, n = 0.5, 20_000
  k_x, k_e = jax.random.split(jax.random.key(2))
  x = MEAN + s * jax.random.normal(k_x, (n, D))
  eps = jax.random.normal(k_e, (n, D))
  per = st.coupling_straightness(analytic.Gaussian(MEAN, s).velocity, x, eps, num_times=16,
                                 reduce=False)
  sem = float(jnp.std(per)) / np.sqrt(n)
  assert abs(float(jnp.mean(per)) - D * np.pi * s / 2) < 4 * sem


@pytest.mark.parametrize("s", [0.25, 2.0])
def test_one_step_gaps_of_the_independent_gaussian(s):
  g = analytic.Gaussian(MEAN, s)
  phi = lambda e: g.flow_map(e, 1.0, 0.0)
  # One Euler step: u = v(eps, 1) = eps - m, while eps - Phi(eps) = (1 - s) eps - m.
  euler = st.one_step_gap(st.euler_u(g.velocity), EPS, phi, reduce=False)
  np.testing.assert_allclose(euler, s ** 2 * jnp.sum(EPS ** 2, -1), rtol=1e-5)
  np.testing.assert_allclose(st.one_step_gap(st.euler_u(g.velocity), EPS, phi), D * s ** 2,
                             rtol=1e-5)
  # The exact average velocity lands on the endpoint.
  assert float(st.one_step_gap(g.average_velocity, EPS, phi)) < 1e-10


def test_straight_gaussian_is_straight_with_exact_fields():
  sg = analytic.StraightGaussian(MEAN, jnp.array([0.5, 2.0]))
  x = sg.coupling(EPS)
  r = jax.jit(lambda e: st.trajectory_report(sg.velocity, e, 8))(EPS)
  assert float(r["straightness"]) < 1e-10
  assert float(r["curvature"]) < 1e-10
  np.testing.assert_allclose(r["path_length_ratio"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(r["displacement"], jnp.mean(jnp.sum((EPS - x) ** 2, -1)), rtol=1e-5)
  assert float(st.coupling_straightness(sg.velocity, x, EPS)) < 1e-10
  phi = lambda e: sg.flow_map(e, 1.0, 0.0)
  np.testing.assert_allclose(phi(EPS), x, rtol=1e-6, atol=1e-6)
  assert float(st.one_step_gap(st.euler_u(sg.velocity), EPS, phi)) < 1e-10
  assert float(st.one_step_gap(sg.average_velocity, EPS, phi)) < 1e-10
  # The velocity at a point of a path is that path's eps - x, and flow maps compose.
  t = jnp.linspace(0.0, 1.0, EPS.shape[0])
  z_t = (1 - t[:, None]) * x + t[:, None] * EPS
  np.testing.assert_allclose(sg.velocity(z_t, t), EPS - x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sg.flow_map(sg.flow_map(EPS, 1.0, 0.6), 0.6, 0.2),
                             sg.flow_map(EPS, 1.0, 0.2), rtol=1e-5, atol=1e-5)


def test_straight_gaussian_satisfies_the_meanflow_identity():
  # u = v - (t - r) (v . d_z u + d_t u): the total derivative of u along the flow.
  sg = analytic.StraightGaussian(MEAN, 0.3)
  k_z, k_t, k_r = jax.random.split(jax.random.key(3), 3)
  z = jax.random.normal(k_z, (64, D))
  t = jax.random.uniform(k_t, (64,))
  r = t * jax.random.uniform(k_r, (64,))
  v = sg.velocity(z, t)
  u, du_dt = jax.jvp(sg.average_velocity, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
  np.testing.assert_allclose(u, v - (t - r)[:, None] * du_dt, rtol=1e-5, atol=1e-5)
  # Here du/dt = 0 and u = v: what makes one step exact.
  np.testing.assert_allclose(du_dt, 0.0, atol=1e-5)


def test_straight_gaussian_same_endpoints_as_the_independent_coupling():
  s = 0.5
  sg, g = analytic.StraightGaussian(MEAN, s), analytic.Gaussian(MEAN, s)
  np.testing.assert_allclose(sg.flow_map(EPS, 1.0, 0.0), g.flow_map(EPS, 1.0, 0.0), rtol=1e-6)
  np.testing.assert_allclose(sg.log_prob(EPS), g.log_prob(EPS), rtol=1e-6)
  x = sg.sample(jax.random.key(4), 50_000)
  np.testing.assert_allclose(jnp.mean(x, 0), MEAN, atol=0.01)
  np.testing.assert_allclose(jnp.std(x, 0), [s, s], rtol=0.02)
  # In between, the marginals differ: std (1-t) s + t here, S(t) there.
  t = 0.5
  z = sg.flow_map(EPS, 1.0, t)
  np.testing.assert_allclose(jnp.std(z, 0), (1 - t) * s + t, rtol=1e-5)
  assert abs(float(jnp.std(g.flow_map(EPS, 1.0, t)[:, 0])) - (1 - t) * s - t) > 0.05


def test_ring_mixture_is_curved():
  mix = analytic.ring_mixture()
  r = jax.jit(lambda e: st.trajectory_report(mix.velocity, e, 32))(EPS)
  # Each of its modes alone, N(m_k, 0.2^2 I), is nearly straight: the curvature comes
  # from the paths turning towards the mode they end in.
  one_mode = REPORT(mix.means[0], 0.2, EPS)
  assert float(r["straightness"]) > 1.0
  assert float(r["curvature"]) > 10 * float(one_mode["curvature"])
  assert float(r["path_length_ratio"]) > 1.2


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_trajectory_on_images(method, order):
  # One Gaussian per pixel: [B, 4, 4, 1] noise, a [16]-dimensional Gaussian underneath.
  g = analytic.Gaussian(jnp.linspace(-1.0, 1.0, 16), 0.2)
  v_fn = lambda z, t: g.velocity(z.reshape(z.shape[0], -1), t).reshape(z.shape)
  eps = jax.random.normal(jax.random.key(5), (8, 4, 4, 1))
  exact = g.flow_map(eps.reshape(8, -1), 1.0, 0.0).reshape(eps.shape)
  run = jax.jit(st.trajectory, static_argnums=(0, 2, 3))
  times, states, velocities = run(v_fn, eps, 8, method)
  assert times.shape == (9,) and states.shape == velocities.shape == (9, 8, 4, 4, 1)
  assert float(times[0]) == 1.0 and float(times[-1]) == 0.0
  np.testing.assert_array_equal(states[0], eps)
  np.testing.assert_allclose(velocities[3], v_fn(states[3], jnp.full(8, times[3])), rtol=1e-5,
                             atol=1e-6)
  errs = [float(jnp.max(jnp.abs(run(v_fn, eps, n, method)[1][-1] - exact))) for n in (8, 16)]
  assert errs[1] < errs[0] / 2 ** order * 1.5, errs
  # Straightness sums over every non-batch axis: the same as the flattened [B, 16].
  flat = st.straightness(g.velocity, eps.reshape(8, -1), 8, method, reduce=False)
  np.testing.assert_allclose(st.straightness(v_fn, eps, 8, method, reduce=False), flat,
                             rtol=1e-5)


def test_input_errors():
  v_fn = analytic.Gaussian(MEAN, 0.5).velocity
  with pytest.raises(ValueError, match="batch"):
    st.trajectory(v_fn, jnp.zeros(4))
  with pytest.raises(ValueError, match="num_steps"):
    st.straightness(v_fn, EPS, num_steps=0)
  with pytest.raises(ValueError, match="unknown method 'midpoint'"):
    st.trajectory_report(v_fn, EPS, method="midpoint")
  with pytest.raises(ValueError, match="v_fn returned shape"):
    st.straightness(lambda z, t: z[:, :1], EPS)
  with pytest.raises(ValueError, match="equal shapes"):
    st.coupling_straightness(v_fn, EPS[:10], EPS)
  with pytest.raises(ValueError, match="num_times"):
    st.coupling_straightness(v_fn, EPS, EPS, num_times=0)
  with pytest.raises(ValueError, match="flow_map_fn returned shape"):
    st.one_step_gap(st.euler_u(v_fn), EPS, lambda e: e[:, 0])
  with pytest.raises(ValueError, match="more samples than dimensions"):
    st.moment_matched_noise(jax.random.key(0), 4, (4,))


def test_moment_matched_noise():
  e = st.moment_matched_noise(jax.random.key(6), 100, (2, 3))
  assert e.shape == (100, 2, 3)
  flat = e.reshape(100, -1)
  np.testing.assert_allclose(jnp.mean(flat, 0), 0.0, atol=1e-5)
  np.testing.assert_allclose(flat.T @ flat / 100, jnp.eye(6), atol=1e-4)


# Slow (the script in a process of its own): every column's closed form is checked on the
# library's functions fast above; this checks the script's table and picture.
@pytest.mark.slow
def test_study_script_table_equals_closed_forms(tmp_path):
  out = tmp_path / "study"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "study_straight_gaussians.py"),
       "--out", str(out), "--stds", "0.25,2", "--dims", "2", "--num", "64",
       "--num_steps", "32"], capture_output=True, text=True, cwd=ROOT, timeout=3600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (out / "trajectories.png").stat().st_size > 10_000
  lines = (out / "table.md").read_text().strip().splitlines()
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  rows = [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]
  assert [(r["coupling"], float(r["s"])) for r in rows] == [
      ("independent", 0.25), ("independent", 2.0), ("ot", 0.25), ("ot", 2.0)]
  for r in rows:
    s, ind = float(r["s"]), r["coupling"] == "independent"
    expected = {"straightness": D * s * STRAIGHT, "coupling_straightness": D * np.pi * s / 2,
                "euler_gap": D * s ** 2, "curvature": s * STRAIGHT / ((1 - s) ** 2 + 1)}
    for col, value in expected.items():
      value = value if ind else 0.0
      np.testing.assert_allclose(float(r[col]), value, atol=2e-5 + 1e-4 * value, err_msg=col)
      np.testing.assert_allclose(float(r[col + "_exact"]), value, atol=1e-5, err_msg=col)
    if not ind:
      assert float(r["path_length_ratio"]) == 1.0
