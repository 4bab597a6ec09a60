"""The scripts as a user runs them: bad input gives one clear line, not a traceback."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from meanflow_jax import evaluate, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.mlp.width=16", "--config.model.mlp.depth=1",
        "--config.model.mlp.time_dim=8", "--config.train.batch_size=16",
        "--config.train.log_every=5", "--config.train.checkpoint_every=10"]


def run(script, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=3600)


def assert_clean_error(proc, *needles):
  assert proc.returncode != 0
  err = proc.stderr.strip().splitlines()
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert err and err[-1].startswith("error:"), proc.stderr[-2000:]
  for n in needles:
    assert n in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  work = tmp_path_factory.mktemp("run")
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(work),
             "--config.train.steps=10", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return work


def test_unknown_config_key(tmp_path):
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path),
             "--config.train.stepz=5")
  assert_clean_error(proc, "unknown config key", "stepz", "steps", "configs/default.py")
  assert not (tmp_path / "checkpoints").exists()


def test_data_file_with_wrong_rank(tmp_path):
  np.save(tmp_path / "x.npy", np.zeros((10, 2, 2), np.float32))
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path / "w"),
             "--config.data.source=points", f"--config.data.path={tmp_path / 'x.npy'}", "--config.train.steps=2", *TINY)
  assert_clean_error(proc, "rank 2 [N, D]", "(10, 2, 2)")


def test_data_file_with_nans(tmp_path):
  x = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
  x[4, 0] = np.nan
  np.save(tmp_path / "x.npy", x)
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path / "w"),
             "--config.data.source=points", f"--config.data.path={tmp_path / 'x.npy'}", "--config.train.steps=2", *TINY)
  assert_clean_error(proc, "non-finite", "first rows [4]")


def test_train_outputs(trained):
  assert len(open(trained / "metrics.jsonl").read().splitlines()) == 2  # log_every 5 of 10
  assert (trained / "config.json").exists() and (trained / "checkpoints" / "10").is_dir()


# Slow (a second process): resumes are exact in-process fast (test_training.py's
# test_resume_is_exact, test_sigterm_saves_and_resume_matches_a_straight_run).
@pytest.mark.slow
def test_train_rerun_of_a_finished_run_adds_nothing(trained):
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(trained),
             "--config.train.steps=10", *TINY)
  assert proc.returncode == 0 and len(open(trained / "metrics.jsonl").read().splitlines()) == 2


def test_sample_writes_npy_and_png(trained, tmp_path):
  out = tmp_path / "s.npy"
  proc = run("sample.py", "--workdir", str(trained), "--nfe", "2", "--num", "64", "--seed", "3",
             "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  x = np.load(out)
  assert x.shape == (64, 2) and np.isfinite(x).all()
  assert (tmp_path / "s.png").stat().st_size > 1000
  # The same noise passed explicitly gives the same samples.
  eps = np.asarray(paths.sample_noise(jax.random.key(3), 64, (2,)))
  np.save(tmp_path / "eps.npy", eps)
  proc = run("sample.py", "--workdir", str(trained), "--nfe", "2", "--noise",
             str(tmp_path / "eps.npy"), "--out", str(tmp_path / "s2.npy"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "s2.npy"), x, rtol=1e-5, atol=1e-6)


def test_sample_with_noise_of_wrong_shape(trained, tmp_path):
  np.save(tmp_path / "eps.npy", np.zeros((8, 3), np.float32))
  proc = run("sample.py", "--workdir", str(trained), "--nfe", "1", "--noise",
             str(tmp_path / "eps.npy"), "--out", str(tmp_path / "s.npy"))
  assert_clean_error(proc, "[M, 2]", "(8, 3)")
  assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("content", ["missing", "nan"])
def test_sample_with_missing_or_nan_noise(trained, tmp_path, content):
  noise = tmp_path / "eps.npy"
  if content == "nan":
    np.save(noise, np.full((4, 2), np.nan, np.float32))
  proc = run("sample.py", "--workdir", str(trained), "--noise", str(noise),
             "--out", str(tmp_path / "s.npy"))
  assert_clean_error(proc, "no such file" if content == "missing" else "non-finite")


def test_sample_without_a_run(tmp_path):
  proc = run("sample.py", "--workdir", str(tmp_path), "--out", str(tmp_path / "s.npy"))
  assert_clean_error(proc, "no checkpoints")


@pytest.fixture(scope="module")
def evaluated(trained):
  proc = run("evaluate.py", "--workdir", str(trained), "--nfe", "1", "2", "--num", "500")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.load(open(trained / "eval.json"))


def test_evaluate_writes_json_and_png(trained, evaluated):
  assert [r["nfe"] for r in evaluated] == [1, 2]
  for r in evaluated:
    assert 0 <= r["mode_tv"] <= 1 and 0 <= r["low_density_frac"] <= 1
    assert r["transport_rms"] > 0 and r["sample_s"] > 0
    # The exact map's own samples sit on ring8 (about 1 % below the 1 % density level).
    assert r["exact_low_density_frac"] < 0.05 and r["exact_mode_tv"] < 0.15, r
  assert (trained / "eval.png").stat().st_size > 1000


# The library's evaluate_toy against the closed forms and training's own evaluations is
# fast (test_metrics.py, test_eval_in_training.py); that the script reports the same
# numbers is a second evaluation of the same run.
@pytest.mark.slow
def test_evaluate_script_reports_what_the_library_computes(trained, evaluated):
  # The script reports what the library computes for the same run, noise and seed.
  direct = evaluate.evaluate_toy(str(trained), [1, 2], num=500).rows
  for a, b in zip(evaluated, direct):
    assert a.keys() == b.keys()
    assert a["sample_s"] > 0 and a["samples_per_s"] > 0
    for k in set(a) - {"sample_s", "samples_per_s"}:  # timings differ from run to run
      assert a[k] == (pytest.approx(b[k], rel=1e-5) if isinstance(a[k], float) else b[k])


DIGITS_TINY_VALUES = {"model.dit.hidden_size": 32, "model.dit.depth": 1,
                      "model.dit.num_heads": 2, "model.dit.patch_size": 4,
                      "train.batch_size": 16, "train.log_every": 5,
                      "train.checkpoint_every": 5, "train.steps": 5}
DIGITS_TINY = [f"--config.{k}={v}" for k, v in DIGITS_TINY_VALUES.items()]  # as flags


def _digits_run(tmp_path_factory, name, **overrides):
  """A 5-step run of `configs/digits.py` with DIGITS_TINY_VALUES and `overrides`, trained
  in this process (what train.py runs, without a process's imports): the scripts under
  test only read it."""
  from configs import digits
  from meanflow_jax import training
  from tests.test_training import override
  work = tmp_path_factory.mktemp(name)
  training.train(override(digits.get_config(), DIGITS_TINY_VALUES | overrides), str(work))
  return work


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  return _digits_run(tmp_path_factory, "digits")


@pytest.fixture(scope="module")
def digits_fm_run(tmp_path_factory):
  """The same run trained with flow matching, whose step (no JVP) compiles in less time:
  for the checks of sample.py's input, which do not depend on the objective."""
  return _digits_run(tmp_path_factory, "digits_fm", objective="flow_matching")


@pytest.mark.slow  # three sample.py runs of a DiT; labels reaching the network are tested fast
# in test_image_models.py, the labels' flags below
def test_sample_images_by_class_and_labels(digits_run, tmp_path):
  proc = run("sample.py", "--workdir", str(digits_run), "--nfe", "1", "--num", "20",
             "--out", str(tmp_path / "a.npy"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  a = np.load(tmp_path / "a.npy")
  assert a.shape == (20, 8, 8, 1) and np.isfinite(a).all()
  assert (tmp_path / "a.png").stat().st_size > 1000
  # Classes in turn by default: the same as asking for labels 0..9, 0..9 explicitly.
  np.save(tmp_path / "y.npy", np.arange(20) % 10)
  proc = run("sample.py", "--workdir", str(digits_run), "--nfe", "1", "--labels",
             str(tmp_path / "y.npy"), "--out", str(tmp_path / "b.npy"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "b.npy"), a, rtol=1e-5, atol=1e-6)
  proc = run("sample.py", "--workdir", str(digits_run), "--nfe", "2", "--class", "7", "--num",
             "4", "--out", str(tmp_path / "c.npy"))
  assert proc.returncode == 0 and np.load(tmp_path / "c.npy").shape == (4, 8, 8, 1)


def _sample_bad_input(workdir, tmp_path, args, needle):
  np.save(tmp_path / "labels.npy", np.arange(4))
  np.save(tmp_path / "bad.npy", np.zeros(4, np.float32))
  np.save(tmp_path / "noise.npy", np.zeros((4, 8, 8, 3), np.float32))
  files = {"LABELS": "labels.npy", "BADLABELS": "bad.npy", "NOISE": "noise.npy",
           "MISSING": "missing.npy"}
  args = [str(tmp_path / files[a]) if a in files else a for a in args]
  proc = run("sample.py", "--workdir", str(workdir), *args, "--out", str(tmp_path / "s.npy"))
  assert_clean_error(proc, needle)
  assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("args,needle", [
    (["--class", "11"], "classes must lie in [0, 10]"),
    (["--labels", "BADLABELS"], "int array [M]"),
    (["--noise", "NOISE"], "[M, 8, 8, 1]"),
])
def test_sample_images_bad_input(digits_fm_run, tmp_path, args, needle):
  _sample_bad_input(digits_fm_run, tmp_path, args, needle)


@pytest.mark.parametrize("args,needle", [
    (["--labels", "LABELS", "--class", "3"], "not both"),
    (["--labels", "MISSING"], "no such file"),
])
def test_sample_input_is_checked_before_the_run_is_read(tmp_path, args, needle):
  """No run in the workdir: these errors come first, before its checkpoint is read."""
  _sample_bad_input(tmp_path / "no_run", tmp_path, args, needle)


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_evaluate_images_writes_table_and_grid(digits_run, classifier_cache):
  env = dict(os.environ, MEANFLOW_JAX_CACHE=classifier_cache)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"),
                         "--workdir", str(digits_run), "--nfe", "1", "2", "--num", "150"],
                        capture_output=True, text=True, cwd=ROOT, timeout=3600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.load(open(digits_run / "eval.json"))
  assert [r["nfe"] for r in rows] == [1, 2, ""]
  assert all(0.0 <= r["agreement"] <= 1.0 and r["clf_fd"] > 0 for r in rows)
  assert rows[-1]["classifier_heldout_accuracy"] > 0.95
  assert "| meanflow | 1 |" in open(digits_run / "eval.md").read()
  assert (digits_run / "eval.png").stat().st_size > 1000
  assert any(f.startswith("classifier-") for f in os.listdir(classifier_cache))


@pytest.mark.slow  # Inception at 299 x 299 on CPU: three compilations of it
def test_evaluate_images_with_fid_from_reference_statistics(digits_run, tmp_path,
                                                            classifier_cache):
  """--inception (here random weights in the converted format) and --ref add a fid column;
  statistics of the run's own 1-NFE samples as --ref give an FID of zero at 1 NFE, and
  at 2 NFE the distance computed here from the same samples."""
  from flax import traverse_util

  from meanflow_jax.metrics import inception
  from meanflow_jax.training import inference
  params = inception.init_random_params(jax.random.key(0))
  np.savez(tmp_path / "w.npz", **{k: np.asarray(v) for k, v in
                                  traverse_util.flatten_dict(params["params"], sep="/").items()})
  # The samples evaluate.py draws: noise fold_in(key(0), i), class i mod 10.
  r = inference.load_run(str(digits_run))
  eps = paths.sample_noise(jax.random.key(0), 12, r.data_shape)
  x = inference.make_sampler(r.config, r.model, r.params)(eps, 1, np.arange(12) % 10)
  # Batches of 5, as evaluate.py's --batch 5 below: one Inception program for both, which
  # the session's compilation cache then compiles once.
  features = inception.make_feature_fn(params, batch_size=5)(np.asarray(x))
  inception.save_stats(str(tmp_path / "ref.npz"), *inception.reference_stats(features))
  env = dict(os.environ, MEANFLOW_JAX_CACHE=classifier_cache)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"),
                         "--workdir", str(digits_run), "--nfe", "1", "2", "--num", "12",
                         "--batch", "5", "--inception", str(tmp_path / "w.npz"), "--ref",
                         str(tmp_path / "ref.npz")],
                        capture_output=True, text=True, cwd=ROOT, timeout=3600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.load(open(digits_run / "eval.json"))
  assert [r["nfe"] for r in rows] == [1, 2, ""]
  assert abs(rows[0]["fid"]) < 1e-3
  # At 2 NFE: the Frechet distance of those samples' features to the reference.
  from meanflow_jax.metrics import frechet
  x2 = inference.make_sampler(r.config, r.model, r.params)(eps, 2, np.arange(12) % 10)
  f2 = inception.make_feature_fn(params, batch_size=5)(np.asarray(x2))
  want = frechet.frechet_distance(*inception.reference_stats(f2),
                                  *inception.load_stats(str(tmp_path / "ref.npz")))
  assert rows[1]["fid"] == pytest.approx(want, rel=1e-3, abs=1e-4)
  assert rows[0]["samples_per_s"] > 0 and "| fid |" in open(digits_run / "eval.md").read()
  proc = run("evaluate.py", "--workdir", str(digits_run), "--num", "12", "--inception",
             str(tmp_path / "nothere.npz"))
  assert_clean_error(proc, "nothere.npz", "convert_inception_weights.py")


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_fid_stats_of_an_image_array(tmp_path):
  """scripts/fid_stats.py on a 5-image .npy (random Inception weights): mu and sigma of the
  features computed here; a missing weights file stops before the data is read."""
  from flax import traverse_util

  from meanflow_jax.metrics import inception
  params = inception.init_random_params(jax.random.key(0))
  np.savez(tmp_path / "w.npz", **{k: np.asarray(v) for k, v in
                                  traverse_util.flatten_dict(params["params"], sep="/").items()})
  x = np.random.default_rng(0).integers(0, 256, size=(5, 12, 12, 3), dtype=np.uint8)
  np.save(tmp_path / "x.npy", x)
  proc = run("fid_stats.py", "--source", "array", "--path", str(tmp_path / "x.npy"),
             "--inception", str(tmp_path / "w.npz"), "--out", str(tmp_path / "s.npz"),
             "--batch", "5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  mu, sigma = inception.load_stats(str(tmp_path / "s.npz"))
  features = inception.make_feature_fn(params, batch_size=5)(x)
  np.testing.assert_allclose(mu, features.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False),
                             rtol=1e-4, atol=1e-7)
  proc = run("fid_stats.py", "--source", "array", "--path", str(tmp_path / "x.npy"),
             "--inception", str(tmp_path / "none.npz"), "--out", str(tmp_path / "t.npz"))
  assert_clean_error(proc, "none.npz")
  assert not (tmp_path / "t.npz").exists()
