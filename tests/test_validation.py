"""No setting silently does nothing, no value that wrecks a run passes, no resume changes
what a run is, and the scripts answer bad arguments with one line instead of a traceback."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import default, digits, toy
from meanflow_jax import training
from meanflow_jax.errors import CheckpointMismatchError, ConfigError
from meanflow_jax.training import checkpoint, train_state, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.mlp.width": 16, "model.mlp.depth": 1, "model.mlp.time_dim": 8,
        "train.batch_size": 16, "train.steps": 10, "train.log_every": 5,
        "train.checkpoint_every": 5}
TINY_FLAGS = [f"--config.{k}={v}" for k, v in TINY.items()] + [
    "--config.train.sample_every=0", "--config.optimizer.warmup_steps=0"]


def override(c, values):
  """Sets dotted keys ("train.steps") of config `c`; returns it."""
  for k, v in values.items():
    *path, last = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = v
  return c


def check(c, overrides=None):
  """check_config as scripts/train.py runs it: against configs/default.py."""
  validate.check_config(c, defaults=default.get_config(), overrides=overrides)


# ----------------------------------------------------------------------------- unread keys


def test_the_readme_points_command_is_refused_naming_the_fix():
  c = override(toy.get_config(), {"data.path": "points.npy"})
  with pytest.raises(ConfigError) as info:
    check(c, overrides={"data.path"})
  message = str(info.value)
  assert "data.path = 'points.npy' is set" in message
  assert "data.source = 'mixture' does not read it" in message
  assert "--config.data.source=points" in message
  assert "\n" not in message
  check(override(c, {"data.source": "points"}), overrides={"data.path", "data.source"})


@pytest.mark.parametrize("base,values,key,decider", [
    ("digits", {"data.mixture": "two_modes"}, "data.mixture", "data.source = 'digits'"),
    ("toy", {"data.mixture_std": 0.5}, "data.mixture_std", "data.mixture = 'ring8'"),
    ("digits", {"data.mixture_dim": 3}, "data.mixture_dim", "data.source = 'digits'"),
    ("toy", {"data.flip": True}, "data.flip", "data.source = 'mixture'"),
    ("digits", {"data.latent_scale": 1.0}, "data.latent_scale", "data.source = 'digits'"),
    ("toy", {"prior.factor": 4}, "prior.factor", "prior.name = 'gaussian'"),
    ("toy", {"prior.fit_examples": 100}, "prior.fit_examples", "prior.name = 'gaussian'"),
    ("toy", {"model.dit.depth": 3}, "model.dit.depth", "model.name = 'mlp'"),
    ("digits", {"model.mlp.width": 64}, "model.mlp.width", "model.name = 'dit'"),
    ("toy", {"model.unet.dropout": 0.1}, "model.unet.dropout", "model.name = 'mlp'"),
    ("toy", {"model.dtype": "bfloat16"}, "model.dtype", "model.name = 'mlp'"),
    ("toy", {"guidance.omega": 2.0}, "guidance.omega", "model.num_classes = 0"),
    ("toy", {"guidance.label_dropout": 0.2}, "guidance.label_dropout", "model.num_classes = 0"),
    ("digits", {"guidance.kappa": 0.0, "guidance.t_max": 0.5}, "guidance.t_max",
     "guidance.kappa = 0.0"),
    ("toy", {"time.distribution": "uniform", "time.mu": 0.5}, "time.mu",
     "time.distribution = 'uniform'"),
    ("toy", {"objective": "flow_matching", "time.ratio_r_neq_t": 0.5}, "time.ratio_r_neq_t",
     "objective = 'flow_matching'"),
    ("toy", {"loss.p": 0.0, "loss.c": 0.1}, "loss.c", "loss.p = 0.0"),
    ("toy", {"optimizer.name": "adam", "optimizer.weight_decay": 0.1},
     "optimizer.weight_decay", "optimizer.name = 'adam'"),
    ("toy", {"train.sample_every": 0, "train.sample_nfe": 4}, "train.sample_nfe",
     "train.sample_every = 0"),
    ("toy", {"sample.method": "heun"}, "sample.method", "objective = 'meanflow'"),
    ("digits", {"sample.num_plot": 100}, "sample.num_plot", "data.source = 'digits'"),
    ("toy", {"sample.grid_per_class": 4}, "sample.grid_per_class", "data.source = 'mixture'"),
    # iMF's keys with MeanFlow, MeanFlow's fixed guidance with iMF, guidance at sampling
    # without classes, Muon's rate with AdamW.
    ("digits", {"imf.s_max": 3.0}, "imf.s_max", "objective = 'meanflow'"),
    ("digits", {"sample.omega": 3.0}, "sample.omega", "objective = 'meanflow'"),
    ("digits", {"objective": "imf", "guidance.kappa": 0.5}, "guidance.kappa",
     "objective = 'imf'"),
    ("toy", {"objective": "imf", "sample.t_min": 0.3}, "sample.t_min", "model.num_classes = 0"),
    ("toy", {"imf.tangent": "target"}, "imf.tangent", "objective = 'meanflow'"),
    ("digits", {"loss.v_weight": 0.5}, "loss.v_weight", "objective = 'meanflow'"),
    ("toy", {"optimizer.muon_lr": 0.05}, "optimizer.muon_lr", "optimizer.name = 'adamw'"),
])
def test_a_set_key_that_the_run_does_not_read_is_an_error(base, values, key, decider):
  c = override({"toy": toy, "digits": digits}[base].get_config(), values)
  with pytest.raises(ConfigError, match=re.escape(key)) as info:
    check(c, overrides=set(values))
  assert decider in str(info.value), str(info.value)
  assert "does not read it" in str(info.value)


def test_imf_tangent_is_read_by_unconditional_imf_too():
  """The tangent is a choice of every iMF run; the guidance draws only of conditional ones."""
  c = override(toy.get_config(), {"objective": "imf", "imf.tangent": "target"})
  check(c, overrides={"objective", "imf.tangent"})
  c.imf.s_max = 3.0
  with pytest.raises(ConfigError, match="imf.s_max"):
    check(c, overrides={"objective", "imf.tangent", "imf.s_max"})


def test_a_v_weight_of_zero_is_refused_where_the_v_head_is_read():
  """loss.v_weight = 0 leaves the v head untrained: refused where the run reads it (the
  paper's tangent; guidance drawn above 1), taken where nothing does."""
  base = {"objective": "imf", "guidance.kappa": 0.0, "loss.v_weight": 0.0}
  for extra in ({}, {"imf.tangent": "target"}, {"imf.s_max": 0.0}):
    c = override(digits.get_config(), dict(base, **extra))
    with pytest.raises(ConfigError, match=r"loss.v_weight = 0 leaves the v head untrained"):
      check(c, overrides=set(base) | set(extra))
  ok = dict(base, **{"imf.tangent": "target", "imf.s_max": 0.0})
  check(override(digits.get_config(), ok), overrides=set(ok))
  with pytest.raises(ConfigError, match="v head untrained"):  # unconditional, model tangent
    check(override(toy.get_config(), {"objective": "imf", "loss.v_weight": 0.0}),
          overrides={"objective", "loss.v_weight"})
  check(override(toy.get_config(), {"objective": "imf", "loss.v_weight": 0.0,
                                    "imf.tangent": "target"}),
        overrides={"objective", "loss.v_weight", "imf.tangent"})


def test_keys_the_file_set_for_a_choice_the_command_line_changed_are_not_errors():
  # configs/toy.py sets time.ratio_r_neq_t for MeanFlow; the README trains flow matching
  # from it with --config.objective=flow_matching: the file's setting is moot, not wrong.
  c = override(toy.get_config(), {"objective": "flow_matching", "loss.p": 0.0})
  check(c, overrides={"objective", "loss.p"})
  # Without knowing what the command line set, every key that differs from the defaults counts.
  with pytest.raises(ConfigError, match="time.ratio_r_neq_t"):
    check(c)
  # Set on the command line itself, it is an error.
  c.time.ratio_r_neq_t = 0.5
  with pytest.raises(ConfigError, match="time.ratio_r_neq_t"):
    check(c, overrides={"objective", "loss.p", "time.ratio_r_neq_t"})
  # A file whose own choices leave its key unread is an error too.
  c = override(toy.get_config(), {"data.path": "points.npy"})
  with pytest.raises(ConfigError, match="data.path"):
    check(c, overrides=set())


def _shipped():
  from configs import cifar10, digits_imf, imagenet_dit, imagenet_imf, mnist, mnist_imf, toy_imf
  yield "toy", toy.get_config()
  yield "toy_imf", toy_imf.get_config()
  yield "digits", digits.get_config()
  yield "digits_imf", digits_imf.get_config()
  for variant in mnist.VARIANTS:
    yield f"mnist:{variant}", mnist.get_config(variant)
    yield f"mnist_imf:{variant}", mnist_imf.get_config(variant)
  yield "cifar10", cifar10.get_config()
  for variant in imagenet_dit.GUIDANCE:
    yield f"imagenet_dit:{variant}", override(imagenet_dit.get_config(variant),
                                              {"data.path": "latents.npz"})
  for variant in imagenet_imf.SAMPLING:
    yield f"imagenet_imf:{variant}", override(imagenet_imf.get_config(variant),
                                              {"data.path": "latents.npz"})


@pytest.mark.parametrize("name,config", list(_shipped()), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_every_shipped_config_reads_every_key_it_sets(name, config):
  check(config, overrides=set())


def test_the_rule_table_names_real_keys_only():
  keys = set(validate.flatten(default.get_config().to_dict()))
  sections = {k.rsplit(".", 1)[0] for k in keys} | {k.split(".")[0] for k in keys}
  for rule in validate.READ_WHEN:
    for k in rule.keys + rule.by:
      assert k in keys or k in sections or k == "data.standardize", k


# ----------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("values,key", [
    ({"optimizer.grad_clip": -1.0}, "optimizer.grad_clip"),
    ({"optimizer.b1": 2.0}, "optimizer.b1"),
    ({"optimizer.b2": 1.0}, "optimizer.b2"),
    ({"optimizer.weight_decay": -5.0}, "optimizer.weight_decay"),
    ({"optimizer.warmup_steps": -10}, "optimizer.warmup_steps"),
    ({"optimizer.lr": 0.0}, "optimizer.lr"),
    ({"optimizer.lr": math.inf}, "optimizer.lr"),
    ({"time.mu": math.nan}, "time.mu"),
    ({"time.sigma": math.inf}, "time.sigma"),
    ({"loss.p": math.nan}, "loss.p"),
    ({"seed": -1}, "seed"),
    ({"model.mlp.width": 0}, "model.mlp.width"),
    ({"model.mlp.depth": 0}, "model.mlp.depth"),
    ({"model.mlp.time_dim": -2}, "model.mlp.time_dim"),
    ({"model.mlp.time_scale": 0.0}, "model.mlp.time_scale"),
    ({"data.mixture": "two_modes", "data.mixture_dim": 0}, "data.mixture_dim"),
    ({"data.mixture": "two_modes", "data.mixture_std": 0.0}, "data.mixture_std"),
    ({"data.mixture": "two_modes", "data.mixture_separation": -1.0},
     "data.mixture_separation"),
    ({"mesh.fsdp": 0}, "mesh.fsdp"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "mesh"),
    ({"sample.num_plot": 0}, "sample.num_plot"),
])
def test_values_that_wreck_a_run_are_refused(values, key):
  c = override(toy.get_config(), values)
  with pytest.raises(ConfigError, match=re.escape(key)):
    check(c, overrides=set(values))
  with pytest.raises(ConfigError, match=re.escape(key)):
    validate.check_config(c)  # ranges hold without the defaults too


@pytest.mark.parametrize("values,key", [
    ({"guidance.omega": 0.0}, "guidance.omega"),
    ({"guidance.omega": -1.0}, "guidance.omega"),
    ({"guidance.kappa": -0.5}, "guidance.kappa"),
    ({"model.dit.hidden_size": 0}, "model.dit.hidden_size"),
    ({"model.dit.num_heads": -2}, "model.dit.num_heads"),
    ({"model.dit.mlp_ratio": 0.0}, "model.dit.mlp_ratio"),
    ({"data.flip": True, "data.source": "latents", "data.path": "l.npz",
      "data.latent_scale": 0.0}, "data.latent_scale"),
    ({"prior.name": "lowfreq", "prior.factor": 0}, "prior.factor"),
    ({"prior.name": "lowfreq", "prior.noise_std": -1.0}, "prior.noise_std"),
    ({"sample.grid_per_class": 0}, "sample.grid_per_class"),
    ({"objective": "imf", "guidance.kappa": 0.0, "sample.omega": 0.5}, "sample.omega"),
    ({"objective": "imf", "guidance.kappa": 0.0, "sample.t_min": 0.7, "sample.t_max": 0.6},
     "sample.t_min"),
    ({"objective": "imf", "guidance.kappa": 0.0, "imf.s_max": -1.0}, "imf.s_max"),
    ({"objective": "imf", "guidance.kappa": 0.0, "imf.tangent": "v"}, "imf.tangent"),
    ({"objective": "imf", "guidance.kappa": 0.0, "loss.v_weight": -0.5}, "loss.v_weight"),
    ({"model.prediction": "eps"}, "model.prediction"),
    ({"optimizer.name": "lion"}, "optimizer.name"),
])
def test_image_values_that_wreck_a_run_are_refused(values, key):
  c = override(digits.get_config(), values)
  with pytest.raises(ConfigError, match=re.escape(key)):
    check(c, overrides=set(values))


@pytest.mark.parametrize("values,key", [
    ({"model.unet.dropout": 1.0}, "model.unet.dropout"),
    ({"model.unet.channel_mult": ()}, "model.unet.channel_mult"),
    ({"model.unet.channel_mult": (1, 0)}, "model.unet.channel_mult"),
    ({"model.unet.base_channels": 0}, "model.unet.base_channels"),
    ({"model.unet.attn_resolutions": (0,)}, "model.unet.attn_resolutions"),
])
def test_unet_values_that_wreck_a_run_are_refused(values, key):
  from configs import cifar10
  c = override(cifar10.get_config(), values)
  with pytest.raises(ConfigError, match=re.escape(key)):
    check(c, overrides=set(values))


def test_zero_width_is_a_value_not_the_preset():
  # 0 used to mean "the preset" and trained width 256 silently.
  c = override(toy.get_config(), {"model.mlp.width": 0})
  with pytest.raises(ConfigError, match=re.escape("model.mlp.width must be positive (>= 1); "
                                                  "got 0")):
    validate.check_config(c)
  # Unset keys of a model section are None in configs/default.py: the preset gives them.
  d = default.get_config()
  assert d.model.dit.hidden_size is None and d.model.unet.dropout is None
  c = override(default.get_config(), {"model.name": "dit", "model.variant": "B/2",
                                      "model.dit.depth": 2})
  model = train_state.build_model(c)
  assert (model.hidden_size, model.depth, model.patch_size) == (768, 2, 2)


def test_old_configs_with_zero_for_the_preset_still_load():
  old = {"model": {"name": "dit", "variant": "B/2",
                   "dit": {"patch_size": 0, "hidden_size": 0, "depth": 3, "num_heads": 0,
                           "mlp_ratio": 0.0, "time_scale": 0.0},
                   "unet": {"base_channels": 0, "channel_mult": [], "num_res_blocks": 0,
                            "attn_resolutions": [-1], "dropout": -1.0, "time_scale": 0.0}}}
  new = checkpoint.upgrade_config(old)
  assert new["model"]["dit"] == {"patch_size": None, "hidden_size": None, "depth": 3,
                                 "num_heads": None, "mlp_ratio": None, "time_scale": None}
  assert set(new["model"]["unet"].values()) == {None}
  model = train_state.build_model(ml_collections.ConfigDict(new))
  assert (model.hidden_size, model.depth, model.num_heads) == (768, 3, 12)
  # What is saved now compares equal with what an old run saved.
  current = default.get_config().to_dict()
  current["model"].update(name="dit", variant="B/2")
  current["model"]["dit"]["depth"] = 3
  assert checkpoint.config_mismatches(new, current, keys=("model.dit",)) == []


# ----------------------------------------------------------------------------- resumes


def tiny(**values):
  c = override(default.get_config(), TINY)
  if "standardize" in c.data:
    # Standardised, another mixture moves the data's moments too, which a resume refuses
    # whatever it is allowed to change; this test is about the config's keys.
    c.data.standardize = False
  return override(c, values)


@pytest.fixture(scope="module")
def five_steps(tmp_path_factory):
  """A run of 5 steps, trained once; each test resumes a copy of it."""
  work = tmp_path_factory.mktemp("five")
  training.train(tiny(**{"train.steps": 5}), str(work))
  return work


@pytest.mark.parametrize("key,value", [("seed", 1), ("data.mixture", "gaussian"),
                                       ("loss.p", 0.5), ("optimizer.lr", 1e-3)])
def test_a_resume_that_changes_what_the_run_is_is_refused_unless_asked(five_steps, tmp_path,
                                                                        key, value):
  tmp_path = tmp_path / "run"
  shutil.copytree(five_steps, tmp_path)
  saved = open(tmp_path / "config.json").read()
  with pytest.raises(CheckpointMismatchError) as info:
    training.train(tiny(**{key: value}), str(tmp_path))
  message = str(info.value)
  assert key in message and f"--allow_resume_change={key}" in message, message
  assert open(tmp_path / "config.json").read() == saved
  state = training.train(tiny(**{key: value}), str(tmp_path), allow_changes=(key,))
  assert int(state.step) == 10
  assert json.load(open(tmp_path / "config.json"))[key.split(".")[0]] != json.loads(saved)[
      key.split(".")[0]]


def test_a_resume_that_changes_imfs_draws_or_tangent_is_refused_unless_asked():
  """iMF's section says what its target is, as loss.* and guidance.* do for MeanFlow."""
  from meanflow_jax.training import loop
  saved = tiny(objective="imf").to_dict()
  for key, value in (("imf.tangent", "target"), ("imf.s_max", 3.0), ("loss.v_weight", 0.5)):
    changed = tiny(**{"objective": "imf", key: value})
    with pytest.raises(CheckpointMismatchError, match=re.escape(key)):
      loop._check_resume_meta({}, {}, 5, "w", changed, saved_config=saved)
    loop._check_resume_meta({}, {}, 5, "w", changed, saved_config=saved, allow_changes=(key,))


def test_a_resume_may_change_the_length_intervals_and_sampling(five_steps, tmp_path):
  tmp_path = tmp_path / "run"
  shutil.copytree(five_steps, tmp_path)
  state = training.train(tiny(**{"train.steps": 10, "train.log_every": 2, "train.max_to_keep": 5,
                                 "sample.num_plot": 100, "train.checkpoint_every": 10}),
                         str(tmp_path))
  assert int(state.step) == 10


def test_allow_changes_must_name_config_keys(tmp_path):
  with pytest.raises(ConfigError, match="seeds"):
    training.train(tiny(), str(tmp_path / "w"), allow_changes=("seeds",))
  assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- the scripts


def run(script, *args, cwd=ROOT):
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args],
                        capture_output=True, text=True, cwd=cwd,
                        env=dict(os.environ, PYTHONPATH=ROOT))


def assert_one_line_error(proc, *needles):
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  for n in needles:
    assert n in lines[0], lines[0]


def test_cli_readme_points_command_without_the_source(tmp_path):
  np.save(tmp_path / "points.npy", np.zeros((10, 2), np.float32))
  proc = run("train.py", "--config", os.path.join(ROOT, "configs/toy.py"), "--workdir",
             "runs/mine", "--config.data.path=points.npy", *TINY_FLAGS, cwd=tmp_path)
  assert_one_line_error(proc, "data.path", "data.source = 'mixture' does not read it",
                        "--config.data.source=points")
  assert not (tmp_path / "runs").exists()


def test_cli_gradient_ascent_is_refused(tmp_path):
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path / "w"),
             "--config.optimizer.grad_clip=-1", *TINY_FLAGS)
  assert_one_line_error(proc, "optimizer.grad_clip", "-1")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("case", ["missing", "syntax", "argument", "bad_argument"])
def test_cli_config_file_errors(tmp_path, case):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n  pass\n")
  path = {"missing": str(tmp_path / "nope.py"), "syntax": str(bad),
          "argument": "configs/digits.py:XL/2", "bad_argument": "configs/imagenet_dit.py:H/2"}
  needles = {"missing": ["nope.py", "no such file"], "syntax": ["bad.py", "line 1"],
             "argument": ["configs/digits.py", "no argument", "XL/2"],
             "bad_argument": ["unknown variant 'H/2'"]}
  proc = run("train.py", "--config", path[case], "--workdir", str(tmp_path / "w"),
             "--config.train.steps=2")
  assert_one_line_error(proc, *needles[case])


def test_cli_workdir_that_is_a_file(tmp_path):
  (tmp_path / "f").write_text("x")
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path / "f"),
             *TINY_FLAGS)
  assert_one_line_error(proc, "--workdir", "not a directory")


def test_cli_points_from_a_text_file(tmp_path):
  np.savetxt(tmp_path / "x.csv", np.zeros((10, 2)), delimiter=",")
  proc = run("train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path / "w"),
             "--config.data.source=points", f"--config.data.path={tmp_path / 'x.csv'}",
             *TINY_FLAGS)
  assert_one_line_error(proc, "x.csv", "not a .npy file", "numpy.save")
  assert "pickled" not in proc.stderr


@pytest.mark.slow  # three CLI runs; the refusal itself is tested in process above
def test_cli_resume_with_another_seed_names_the_flag(tmp_path):
  work = str(tmp_path / "w")
  args = ["--config", "configs/toy.py", "--workdir", work, *TINY_FLAGS]
  # The first run trains here (the flags' config); the two resumes go through the CLI.
  training.train(override(toy.get_config(), {**TINY, "train.sample_every": 0,
                                             "optimizer.warmup_steps": 0, "train.steps": 5}),
                 work)
  proc = run("train.py", *args, "--config.seed=1")
  assert_one_line_error(proc, "seed", "--allow_resume_change=seed")
  proc = run("train.py", *args, "--config.seed=1", "--allow_resume_change=seed")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(os.path.join(work, "config.json")))["seed"] == 1


def test_cli_sample_out_that_is_a_directory(tmp_path):
  (tmp_path / "d.npy").mkdir()
  for out in (tmp_path, tmp_path / "d.npy"):
    proc = run("sample.py", "--workdir", str(tmp_path / "nope"), "--out", str(out))
    assert_one_line_error(proc, "--out", "is a directory")


@pytest.mark.parametrize("batch", ["0", "-1"])
def test_cli_evaluate_batch_must_be_positive(tmp_path, batch):
  proc = run("evaluate.py", "--workdir", str(tmp_path), "--batch", batch)
  assert_one_line_error(proc, "--batch", batch)
