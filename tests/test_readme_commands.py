"""Every `python scripts/...` command of README.md does what it says.

Fast: each README train command's config, built as scripts/train.py builds it (the same
config flags), passes validation and yields the data the command names. Slow: every
README command runs, in the README's order, on a tiny budget (tiny overrides appended)
in a directory holding the inputs the commands name; each must exit 0 and write what it
says it writes. Commands that cannot run here are listed in SKIPPED with the reason.
"""
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

import jax
from flax import traverse_util

from configs import default
from meanflow_jax.errors import DataError
from meanflow_jax.metrics import inception
from meanflow_jax.models import vae as vae_lib
from meanflow_jax.training import loop, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
  """argv lists of the `python scripts/...` lines in README.md's fenced code blocks
  (continuation lines joined, comments dropped), in README order."""
  text = open(os.path.join(ROOT, "README.md")).read()
  commands = []
  for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #", 1)[0].strip()
      if line.startswith("python scripts/"):
        commands.append(shlex.split(line)[1:])
  return commands


def _flag(argv, name):
  """The last value of `--name V` / `--name=V` in argv (absl's rule), or None."""
  value = None
  for i, a in enumerate(argv):
    if a == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
    elif a.startswith(f"--{name}="):
      value = a.split("=", 1)[1]
  return value


# Commands that cannot run on this machine, by a substring of the command, with the reason.
SKIPPED = {
    "--coordinator_address=host0:1234": "needs N hosts (tests/test_multiprocess.py runs two "
                                        "processes of one host)",
    "--distributed_auto": "a template ('--config ... --workdir ...') for a cluster JAX detects",
    "convert_inception_weights.py": "needs pytorch-fid's Inception weights, which are never "
                                    "downloaded",
    "fid_stats.py --source cifar10": "needs tensorflow-datasets' CIFAR-10 and the converted "
                                     "Inception weights",
    "--workdir runs/cifar10 --nfe": "evaluates a CIFAR-10 run, which cannot be trained here "
                                    "(no tensorflow-datasets), with the Inception weights",
    "convert_vae_weights.py": "needs the published SD-VAE weights (and torch); the ImageNet "
                              "recipe below runs on random ones",
}
# README commands expected to stop with one line of error here, with a needle of it.
EXPECTED_ERRORS = {"configs/cifar10.py": "tensorflow-datasets"}

MLP = ["--config.model.mlp.width=16", "--config.model.mlp.depth=1",
       "--config.model.mlp.time_dim=8"]
DIT = ["--config.model.dit.hidden_size=32", "--config.model.dit.depth=1",
       "--config.model.dit.num_heads=2"]
SHORT = ["--config.train.batch_size=16", "--config.train.steps=4", "--config.train.log_every=2",
         "--config.train.checkpoint_every=4", "--config.train.sample_every=0"]


UNET = ["--config.model.unet.base_channels=16", "--config.model.unet.num_res_blocks=1"]
IMF_DIT = ["--config.model.imf_dit.hidden_size=32", "--config.model.imf_dit.depth=2",
           "--config.model.imf_dit.num_heads=2", "--config.model.imf_dit.head_depth=1"]


def _model_args(argv, flag="config"):
  name = os.path.basename((_flag(argv, flag) or "configs/toy.py").split(":")[0])
  return {"toy.py": MLP, "toy_imf.py": MLP, "cifar10.py": UNET,
          "imagenet_imf.py": IMF_DIT}.get(name, DIT)


def _for(flag, args):
  """`args` (--config.x=v flags) for the config file of flag `flag` instead."""
  return [a.replace("--config.", f"--{flag}.", 1) for a in args]


def tiny_args(argv):
  """Flags appended to a README command so that it runs in seconds (absl: the last wins)."""
  script = os.path.basename(argv[0])
  if script == "train.py":
    extra = _model_args(argv) + SHORT
    if "--config.prior.name=lowfreq" in argv:
      extra.append("--config.prior.fit_examples=64")
    if _flag(argv, "config.train.eval_every"):
      extra.append("--config.train.eval_num=8")
    if _flag(argv, "config.train.profile_steps"):
      # Long enough for the README's traced steps (a second tuple flag would be appended
      # to the first by ml_collections, not replace it).
      extra += ["--config.train.steps=16", "--config.train.checkpoint_every=16"]
    return extra
  return {
      "sample.py": [],
      "compare_samples.py": [],
      "evaluate.py": ["--num", "8", "--batch", "4"] if _flag(argv, "vae") else ["--num", "200"],
      "encode_latents.py": ["--size", "64", "--batch", "4"],
      "fid_stats.py": ["--size", "64", "--batch", "8"],
      "make_pairs.py": ["--num", "256", "--nfe", "4"],
      "bench_nfe.py": _model_args(argv) + SHORT + ["--num", "200", "--mf_nfe", "1",
                                                    "--fm_nfe", "1,2"] + (
          _for("imf_config", _model_args(argv, "imf_config") + SHORT)
          if _flag(argv, "imf_config") else []),
      "study_straight_gaussians.py": ["--stds", "0.5", "--dims", "2", "--num", "64",
                                      "--num_steps", "8"],
      "study_obstruction.py": ["--dims", "2", "--separations", "1,4", "--steps", "4",
                               "--num", "200", "--flow_steps", "16", "--nfe", "1"] + MLP,
      "study_priors.py": DIT + SHORT + ["--num", "100", "--num_paths", "16",
                                        "--path_steps", "4", "--fm_nfe", "1,2"],
      "study_reflow.py": MLP + ["--config.train.sample_every=0", "--fm_steps", "8",
                                "--reflow_steps", "4", "--num_pairs", "256", "--pair_nfe", "4",
                                "--nfe", "1,2", "--num", "200", "--num_paths", "32",
                                "--path_steps", "4"],
      "dryrun.py": DIT + ["--batch", "16", "--data_shape", "8,8,4"],
      "dryrun_eval.py": DIT + ["--batch", "8", "--num", "16", "--latent_shape", "4,4,4"],
      "bench_train_step.py": ["--steps", "2", "--warmup", "1", "--block", "1",
                              "--models", "mlp,paper"],
      "bench_prefetch.py": ["--steps", "4", "--examples", "128", "--delay_ms", "0,20"],
  }[script]


def _skip_reason(argv):
  line = " ".join(argv)
  return next((why for needle, why in SKIPPED.items() if needle in line), None)


def test_the_readme_has_the_commands_this_test_knows():
  commands = readme_commands()
  scripts = {os.path.basename(c[0]) for c in commands}
  assert {"train.py", "sample.py", "evaluate.py", "make_pairs.py"} <= scripts
  assert sum(os.path.basename(c[0]) == "train.py" for c in commands) >= 10
  for argv in commands:
    if _skip_reason(argv) is None:
      tiny_args(argv)  # KeyError: a script this test has no tiny budget for


# ----------------------------------------------------------------------------- inputs


POINTS_DIM = 3  # not the built-in mixture's 2: the shape shows which data a run reads


def write_inputs(where, latents=False):
  """The files README commands name, tiny: points.npy, eps.npy, labels.npy, latents.npz,
  my_images/ (12x12, not the digits' 8x8), runs/pairs.npz, and for the ImageNet recipe
  imagenet/train/ (JPEGs of any size), random SD-VAE (4 levels, narrow) and Inception
  weights, and with `latents` the latents its encoding writes; `{data.path: data shape}`."""
  rng = np.random.default_rng(0)
  for k in range(2):
    os.makedirs(where / "imagenet" / "train" / f"n0{k}", exist_ok=True)
    for i in range(4):
      size = (80 + 16 * i, 64 + 8 * k)
      Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(
          where / "imagenet" / "train" / f"n0{k}" / f"{i}.JPEG")
  vae_config = vae_lib.VAEConfig(channels=(16, 16, 32, 32), groups=8)
  vae_lib.save_params(str(where / "sd_vae_ft_mse.npz"),
                      vae_lib.init_random_params(jax.random.key(0), vae_config), vae_config)
  flat = traverse_util.flatten_dict(inception.init_random_params(jax.random.key(1))["params"],
                                    sep="/")
  np.savez(where / "inception_fid.npz", **{k: np.asarray(v) for k, v in flat.items()})
  if latents:
    np.save(where / "imagenet256_latents.npy", rng.normal(size=(8, 8, 8, 4)).astype(np.float32))
    np.save(where / "imagenet256_latents.labels.npy", np.arange(8) % 2)
  np.save(where / "points.npy", rng.normal(size=(64, POINTS_DIM)).astype(np.float32))
  np.save(where / "eps.npy", rng.normal(size=(32, 2)).astype(np.float32))
  np.save(where / "labels.npy", np.arange(22) % 11)  # 10: the null class (unconditional)
  np.savez(where / "latents.npz", images=rng.normal(size=(32, 8, 8, 4)).astype(np.float32),
           labels=np.arange(32) % 10)
  for k in range(2):
    os.makedirs(where / "my_images" / f"class{k}", exist_ok=True)
    for i in range(8):
      Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), mode="L").save(
          where / "my_images" / f"class{k}" / f"{i}.png")
  os.makedirs(where / "runs", exist_ok=True)
  x = rng.normal(size=(64, POINTS_DIM)).astype(np.float32)
  np.savez(where / "runs" / "pairs.npz", x=x, eps=rng.normal(size=x.shape).astype(np.float32))
  return {"points.npy": (POINTS_DIM,), "latents.npz": (8, 8, 4), "my_images/": (12, 12, 1),
          "runs/pairs.npz": (POINTS_DIM,), "imagenet256_latents.npy": (8, 8, 4)}


# ----------------------------------------------------------------------------- fast


def build_config(argv):
  """(config, override keys) of a train command, parsed by ml_collections' config flags
  exactly as scripts/train.py parses them (config files resolved from the repository)."""
  args = ["train.py"]
  for i, a in enumerate(argv):
    if a == "--config":
      args.append(f"--config={os.path.join(ROOT, argv[i + 1])}")
    elif a.startswith("--config."):
      args.append(a)
  fv = flags.FlagValues()
  # sys_argv: the config flag defines its --config.KEY flags from these arguments.
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=args)
  fv(args)
  return fv["config"].value, set(config_flags.get_override_values(fv["config"]))


TRAIN = [c for c in readme_commands() if c[0] == "scripts/train.py" and _skip_reason(c) is None]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  where = tmp_path_factory.mktemp("inputs")
  return where, write_inputs(where, latents=True)


@pytest.mark.parametrize("argv", TRAIN, ids=lambda c: _flag(c, "workdir"))
def test_readme_train_command_validates_and_reads_its_data(argv, inputs, monkeypatch):
  where, shapes = inputs
  monkeypatch.chdir(where)
  config, overrides = build_config(argv)
  validate.check_config(config, defaults=default.get_config(), overrides=overrides)
  validate.check_data_path(config)
  expected = next((n for k, n in EXPECTED_ERRORS.items() if k in " ".join(argv)), None)
  if expected and importlib.util.find_spec("tensorflow_datasets") is None:
    with pytest.raises(DataError, match=expected):
      loop.make_source(config)
    return
  source = loop.make_source(config)
  if config.data.path:
    # The run reads the file it names, not a built-in set of the same kind.
    assert tuple(source.shape) == shapes[config.data.path], (config.data.path, source.shape)


# ----------------------------------------------------------------------------- slow


def _outputs(argv, stdout):
  """Paths a README command says it writes (relative to its directory); [] for those that
  print their results."""
  script, workdir, out = os.path.basename(argv[0]), _flag(argv, "workdir"), _flag(argv, "out")
  if script == "train.py":
    return [f"{workdir}/{n}" for n in ("config.json", "metrics.jsonl", "checkpoints",
                                        "tensorboard")] + (
        [f"{workdir}/profile"] if _flag(argv, "config.train.profile_steps") else []) + (
        [f"{workdir}/best/best.json"] if _flag(argv, "config.train.eval_keep_best") else [])
  if script == "encode_latents.py":
    return [out, out[:-len(".npy")] + ".labels.npy"]
  if script == "fid_stats.py":
    return [out]
  if script == "compare_samples.py":
    return [out]
  if script == "sample.py":
    # + a PNG beside it: a scatter for 2-D points, a grid for images.
    return [out, out[:-len(".npy")] + ".png"]
  if script == "evaluate.py":
    return [f"{workdir}/eval.{e}" for e in ("json", "md", "png")]
  if script == "make_pairs.py":
    return [out]
  if script == "bench_nfe.py":
    return [f"{workdir}/bench.{e}" for e in ("md", "json", "png")] + [f"{workdir}/bench_speed.md"]
  if script.startswith("study_"):
    name = {"study_straight_gaussians.py": "straight_gaussians"}.get(script, script[6:-3])
    return [f"results/{name}/table.md"]
  if script == "bench_train_step.py":
    return ["runs/bench_train_step.md"]
  if script == "bench_prefetch.py":
    return ["runs/bench_prefetch.md"]
  if script == "dryrun_eval.py":
    assert "PFLOP in all" in stdout, stdout[-2000:]
    return []
  assert "TFLOP/step" in stdout, stdout[-2000:]  # dryrun prints its figures
  return []


@pytest.mark.slow
def test_every_readme_command_runs_on_a_tiny_budget(tmp_path):
  write_inputs(tmp_path)
  env = dict(os.environ, PYTHONPATH=ROOT)
  failures, skipped, ran, trained = [], [], 0, {}
  for argv in readme_commands():
    reason = _skip_reason(argv)
    if reason:
      skipped.append((" ".join(argv), reason))
      continue
    if os.path.basename(argv[0]) == "train.py":
      # A user follows the README top to bottom: two different runs in one workdir would
      # make the second a refused resume (or, worse, a silent one).
      workdir = _flag(argv, "workdir")
      if trained.setdefault(workdir, argv) != argv:
        failures.append(f"README trains {workdir} twice:\n  {' '.join(trained[workdir])}\n"
                        f"  {' '.join(argv)}")
        continue
    args = [os.path.join(ROOT, argv[0])] + [
        os.path.join(ROOT, a) if a.startswith("configs/") else a for a in argv[1:]]
    proc = subprocess.run([sys.executable, *args, *tiny_args(argv)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    ran += 1
    line = " ".join(argv)
    expected = next((n for k, n in EXPECTED_ERRORS.items() if k in line), None)
    if expected and importlib.util.find_spec("tensorflow_datasets") is None:
      lines = proc.stderr.strip().splitlines()
      if not (proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ")
              and expected in lines[0]):
        failures.append(f"{line}\n  expected one line of error naming {expected!r}; got "
                        f"exit {proc.returncode}:\n{proc.stderr[-1500:]}")
      continue
    if proc.returncode != 0:
      failures.append(f"{line}\n  exit {proc.returncode}:\n{proc.stderr[-1500:]}")
      continue
    missing = [p for p in _outputs(argv, proc.stdout) if not os.path.exists(tmp_path / p)]
    if missing:
      failures.append(f"{line}\n  did not write {missing}")
  print("skipped README commands:\n" + "\n".join(f"  {c}: {r}" for c, r in skipped))
  assert not failures, "\n\n".join(failures)
  # Every reason to skip is used (one may cover a command the README repeats).
  assert ran >= 25 and {r for _, r in skipped} == set(SKIPPED.values()), (ran, skipped)
