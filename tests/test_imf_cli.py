"""iMF through the scripts as a user runs them: train, sample at a guidance scale chosen
now, sweep omega in evaluation, resume; and the unconditional (toy) case."""
import json

import numpy as np
import pytest

from tests.test_cli import DIGITS_TINY, TINY, assert_clean_error, run

IMF_DIT_TINY = ["--config.model.name=imf_dit", "--config.model.imf_dit.hidden_size=32",
                "--config.model.imf_dit.depth=2", "--config.model.imf_dit.num_heads=2",
                "--config.model.imf_dit.head_depth=1", "--config.model.imf_dit.patch_size=4",
                "--config.optimizer.warmup_steps=0",  # so 5 steps move the gates visibly
                *[a for a in DIGITS_TINY if not a.startswith("--config.model.dit")]]


@pytest.fixture(scope="module")
def imf_digits(tmp_path_factory):
  work = tmp_path_factory.mktemp("imf_digits")
  proc = run("train.py", "--config", "configs/digits_imf.py", "--workdir", str(work),
             *IMF_DIT_TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return work


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_trains_resumes_and_logs_both_heads(imf_digits):
  rows = [json.loads(l) for l in open(imf_digits / "metrics.jsonl")]
  assert {"u_loss", "v_loss"} <= set(rows[-1]) and rows[-1]["step"] == 5
  proc = run("train.py", "--config", "configs/digits_imf.py", "--workdir", str(imf_digits),
             *IMF_DIT_TINY[:-1], "--config.train.steps=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in open(imf_digits / "metrics.jsonl")]
  assert rows[-1]["step"] == 8
  assert (imf_digits / "checkpoints" / "8").is_dir()


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_sample_at_a_guidance_scale_chosen_now(imf_digits, tmp_path):
  out = {}
  for name, args in {"w1": ["--omega", "1"], "w4": ["--omega", "4", "--interval", "0.2,0.8"],
                     "default": []}.items():
    proc = run("sample.py", "--workdir", str(imf_digits), "--nfe", "1", "--num", "20",
               "--params", "raw", "--out", str(tmp_path / f"{name}.npy"), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out[name] = np.load(tmp_path / f"{name}.npy")
    assert out[name].shape == (20, 8, 8, 1) and np.all(np.isfinite(out[name]))
  assert np.abs(out["w4"] - out["w1"]).max() > 1e-6  # omega is a condition of the network
  assert (tmp_path / "w4.png").stat().st_size > 1000
  # Outside the trained range [1, 1 + imf.s_max = 4]: a warning, and samples all the same.
  proc = run("sample.py", "--workdir", str(imf_digits), "--nfe", "1", "--num", "4",
             "--omega", "12", "--out", str(tmp_path / "far.npy"))
  assert proc.returncode == 0 and "outside the range this run was trained on [1, 4]" in \
      proc.stderr, proc.stderr[-2000:]
  # Bad values: one line from the script; the checks it runs, in this process.
  assert_clean_error(run("sample.py", "--workdir", str(imf_digits), "--nfe", "1", "--num",
                         "4", "--out", str(tmp_path / "bad.npy"), "--interval", "0.2"),
                     "--interval takes two numbers")
  from meanflow_jax.errors import ConfigError
  from meanflow_jax.training import inference
  config = inference.load_config(str(imf_digits))
  for omega, interval, needle in [(0.5, None, "omega must be >= 1"),
                                  (None, (0.7, 0.2), "0 <= t_min <= t_max <= 1")]:
    with pytest.raises(ConfigError, match=needle):
      inference.check_guidance(config, omega, interval)


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_evaluate_sweeps_omega_from_one_model(imf_digits, tmp_path):
  proc = run("evaluate.py", "--workdir", str(imf_digits), "--nfe", "1", "2", "--num", "40",
             "--omega", "1,3", "--batch", "20")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [r for r in json.load(open(imf_digits / "eval.json")) if r["nfe"] != ""]
  assert [(r["nfe"], r["omega"]) for r in rows] == [(1, 1.0), (1, 3.0), (2, 1.0), (2, 3.0)]
  assert all(np.isfinite(r["clf_fd"]) and 0 <= r["agreement"] <= 1 for r in rows)
  assert rows[0]["clf_fd"] != rows[1]["clf_fd"]
  assert (imf_digits / "eval_omega.png").stat().st_size > 1000
  # Intervals sweep too: one row per (nfe, omega, interval), from the same model and noise.
  proc = run("evaluate.py", "--workdir", str(imf_digits), "--nfe", "1", "--num", "40",
             "--omega", "3", "--interval", "0,1", "--interval", "0.4,0.6", "--batch", "20")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [r for r in json.load(open(imf_digits / "eval.json")) if r["nfe"] != ""]
  assert [(r["omega"], r["t_min"], r["t_max"]) for r in rows] == [(3, 0, 1), (3, 0.4, 0.6)]
  assert rows[0]["clf_fd"] != rows[1]["clf_fd"]
  assert "| t_min | t_max |" in open(imf_digits / "eval.md").read()
  from meanflow_jax import evaluate
  from meanflow_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="0 <= t_min <= t_max <= 1"):  # before any sample
    evaluate.evaluate_images(str(imf_digits), [1], num=4, intervals=[(0, 1), (0.8, 0.2)])


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_compare_samples_puts_runs_side_by_side(imf_digits, tmp_path):
  out = tmp_path / "cmp.png"
  proc = run("compare_samples.py", "--out", str(out), "--run", f"{imf_digits}:1:1",
             "--run", f"{imf_digits}:2:3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.stat().st_size > 1000 and "2 panels" in proc.stdout
  assert_clean_error(run("compare_samples.py", "--out", str(out), "--run", str(imf_digits)),
                     "--run takes WORKDIR:NFE[:OMEGA]")


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_unconditional_imf_trains_and_refuses_a_guidance_scale(tmp_path):
  work = tmp_path / "toy_imf"
  proc = run("train.py", "--config", "configs/toy_imf.py", "--workdir", str(work),
             "--config.train.steps=6", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run("evaluate.py", "--workdir", str(work), "--nfe", "1", "2", "--num", "200")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [r["nfe"] for r in json.load(open(work / "eval.json"))] == [1, 2]
  assert_clean_error(run("sample.py", "--workdir", str(work), "--nfe", "1", "--omega", "2",
                         "--out", str(tmp_path / "x.npy")),
                     "needs a class-conditional run of an objective that takes it")


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_dryrun_counts_the_imf_step_in_forward_passes(tmp_path):
  """FLOPs of each objective's step in forward passes of its own network: flow matching
  3 (forward + backward), MeanFlow 4 (+ the JVP's tangent), iMF 6 (+ the guidance pass of
  2B rows; no third pass)."""
  out = tmp_path / "dry.json"
  proc = run("dryrun.py", "--config", "configs/digits_imf.py", "--batch", "16",
             "--objectives", "imf,meanflow,flow_matching", "--out", str(out),
             *[a for a in DIGITS_TINY if a.startswith("--config.model")])
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.load(open(out))
  passes = {o: got[o]["forward_passes"] for o in ("imf", "meanflow", "flow_matching")}
  assert 5.5 < passes["imf"] < 6.6 and 3.6 < passes["meanflow"] < 4.6, passes
  assert 2.6 < passes["flow_matching"] < 3.5, passes
  assert got["flop_ratio_imf_meanflow"] > 1.0
