"""Mesh and shardings: FSDP for large parameters, and the same step on 1 and 8 devices."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from meanflow_jax.errors import ConfigError
from meanflow_jax.training import sharding
from tests.helpers import xla

HERE = os.path.dirname(os.path.abspath(__file__))


class _Mesh:  # the mesh's shape is all the spec rules read
  shape = {"data": 4, "fsdp": 2}


def test_mesh_spec_shards_large_divisible_axes_only():
  spec = lambda logical, shape: sharding._mesh_spec(P(*logical), shape, _Mesh(),
                                                    sharding.RULES, min_size=1024)
  assert spec(("embed", "mlp"), (128, 512)) == P("fsdp", None)
  assert spec(("mlp", "embed"), (512, 128)) == P(None, "fsdp")
  assert spec(("embed",), (128,)) == P()            # small: replicated
  assert spec(("embed", "mlp"), (129, 512)) == P(None, None)  # 129 does not divide by 2
  assert spec((), (4096,)) == P()                   # no names: replicated
  # Both channel axes of a conv kernel map to fsdp: only the first takes it.
  assert spec((None, None, "embed", "conv_out"), (3, 3, 64, 64)) == P(None, None, "fsdp", None)
  assert spec((None, None, "embed", "conv_out"), (3, 3, 63, 64)) == P(None, None, None, "fsdp")


def test_make_mesh_checks_the_device_count():
  n = len(jax.devices())
  assert sharding.make_mesh().shape == {"data": n, "fsdp": 1}
  with pytest.raises(ConfigError, match="does not use the"):
    sharding.make_mesh(data=n + 1, fsdp=1)


@pytest.mark.parametrize("model,prior", [
    # The priors' own tests pair noise per global batch; the fast suite keeps one prior.
    ("dit", "gaussian"), pytest.param("dit", "ot", marks=pytest.mark.slow),
    pytest.param("dit", "lowfreq", marks=pytest.mark.slow),
    # The U-Net's 8-device program takes minutes to compile on 2 cores.
    pytest.param("unet", "gaussian", marks=pytest.mark.slow)])
def test_sharded_step_on_8_devices_equals_one_device(model, prior):
  """A (data 4, fsdp 2) mesh of fake CPU devices: the same losses and parameters
  (the U-Net with dropout 0.3: its masks are drawn for the global batch; minibatch
  OT assigns the noise over the global batch, not per device)."""
  proc = subprocess.run([sys.executable, os.path.join(HERE, "helpers", "sharded_step.py"),
                         "4", "2", model, prior], capture_output=True, text=True, timeout=3600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8 and out["fsdp_sharded_leaves"] > 0
  assert out["losses_1"] == pytest.approx(out["losses_n"], rel=1e-5)
  assert out["max_param_diff"] < 1e-5


@pytest.mark.slow  # end to end (minutes of CPU); `make test-slow`
def test_train_on_8_devices_then_resume_on_one(tmp_path):
  """5 steps on a (data 4, fsdp 2) mesh of fake devices, then 5 more on one device,
  equal a straight 10-step single-device run to float tolerance. Only the 8-device run
  needs a process of its own; the single-device runs train here."""
  from configs import digits
  from meanflow_jax import training
  from tests.test_training import override
  tiny = {"model.dit.hidden_size": 32, "model.dit.depth": 1, "model.dit.num_heads": 2,
          "model.dit.patch_size": 4, "train.batch_size": 16, "train.log_every": 5,
          "train.checkpoint_every": 5}
  root = os.path.dirname(HERE)
  env = xla.env(8)  # compared at rtol 1e-4: the fast-compile rounding is far inside it
  proc = subprocess.run([sys.executable, os.path.join(root, "scripts", "train.py"),
                         "--config", "configs/digits.py", "--workdir", str(tmp_path / "b"),
                         *(f"--config.{k}={v}" for k, v in tiny.items()),
                         "--config.train.steps=5", "--config.mesh.data=4",
                         "--config.mesh.fsdp=2"],
                        capture_output=True, text=True, timeout=3600, env=env, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]

  config = lambda: override(digits.get_config(), {**tiny, "train.steps": 10})
  training.train(config(), str(tmp_path / "b"))  # resumed at step 5 on one device
  training.train(config(), str(tmp_path / "a"))
  a = training.load_run(str(tmp_path / "a"), params="raw").params
  b = training.load_run(str(tmp_path / "b"), params="raw").params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_dryrun_compiles_from_shapes_on_8_fake_devices(tmp_path):
  root = os.path.dirname(HERE)
  out = tmp_path / "dry.json"
  proc = subprocess.run([sys.executable, os.path.join(root, "scripts", "dryrun.py"), "--config",
                         "configs/digits.py", "--fake_devices", "8", "--mesh", "4,2", "--batch",
                         "64", "--config.model.dit.depth=1", "--config.model.dit.hidden_size=64",
                         # One objective: the FLOP ratio of two is test_reflow.py's
                         # test_flop_counts (and test_imf_cli.py's, slow, through this script).
                         "--objectives", "meanflow", "--out", str(out)],
                        capture_output=True, text=True, timeout=3600, cwd=root, env=xla.env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.load(open(out))
  assert got["mesh"] == {"data": 4, "fsdp": 2} and got["batch"] == 64
  # The guided MeanFlow step (kappa 0.5: two passes for the target, the JVP, the backward)
  # is about six forward passes of the network.
  assert got["meanflow"]["temp_gib"] > 0
  assert 5.0 < got["meanflow"]["forward_passes"] < 7.0, got["meanflow"]
  bad = subprocess.run([sys.executable, os.path.join(root, "scripts", "dryrun.py"), "--config",
                        "configs/imagenet_dit.py:B/2"], capture_output=True, text=True,
                       timeout=3600, cwd=root)
  assert bad.returncode == 2 and "give --data_shape" in bad.stderr


SAMPLER_SCRIPT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from configs import digits
from meanflow_jax import paths
from meanflow_jax.training import inference, train_state as ts
c = digits.get_config()
c.model.dit.hidden_size, c.model.dit.depth, c.model.dit.num_heads = 32, 1, 2
model = ts.build_model(c)
params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32),
                             np.ones(1, np.float32), np.ones(1, np.float32), np.zeros(1, np.int32))
eps = paths.sample_noise(jax.random.key(1), 13, (8, 8, 1))  # 13: padded to 16 on 8 devices
# The output layer starts at zero (u = 0, samples = noise): perturb every weight.
leaves, tree = jax.tree.flatten(params)
keys = jax.random.split(jax.random.key(2), len(leaves))
params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])
y = np.arange(13) % 11
out = {}
for name, devices in (("one", jax.devices()[:1]), ("eight", None)):
  sample = inference.make_sampler(c, model, params, devices=devices)
  out[name] = np.asarray(sample(eps, 2, y)).tolist()
out["moved"] = float(np.abs(np.asarray(out["one"]) - np.asarray(eps)).mean())
print(json.dumps({"devices": len(jax.devices()), **out}))
"""


def test_sampler_split_over_8_devices_equals_one_device():
  root = os.path.dirname(HERE)
  proc = subprocess.run([sys.executable, "-c", SAMPLER_SCRIPT, root], capture_output=True,
                        text=True, timeout=3600, env=xla.env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  one, eight = np.asarray(out["one"]), np.asarray(out["eight"])
  assert out["devices"] == 8 and one.shape == (13, 8, 8, 1) and out["moved"] > 0.01
  np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-6)
