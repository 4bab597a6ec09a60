"""The latent pipeline end to end: a folder of images -> VAE latents (resumable) -> a run on
them -> samples decoded by the VAE and scored by FID, the same on 1 and 2 processes."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

import jax
from meanflow_jax import evaluate, latents, training
from meanflow_jax.data import images as image_data
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import inception
from meanflow_jax.models import vae as vae_lib
from meanflow_jax.training import inference
from configs import digits
from tests.helpers import xla
from tests.test_training import override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Four levels, as SD-VAE: 64x64 images <-> 8x8x4 latents, at a fraction of its width.
TINY_VAE = vae_lib.VAEConfig(channels=(16, 16, 32, 32), groups=8)


def test_center_crop_halves_with_a_box_filter_then_cuts_the_middle():
  # 200 x 100 (width x height) of 2x2 blocks: the box halving gives the block values
  # exactly, the bicubic resize to the same size changes nothing, the crop takes the
  # middle 50 columns.
  blocks = np.arange(50 * 100, dtype=np.uint8).reshape(50, 100)
  pixels = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)
  image = Image.fromarray(np.stack([pixels] * 3, -1))
  out = image_data.center_crop(image, 50)
  assert out.shape == (50, 50, 3)
  np.testing.assert_array_equal(out[..., 0], blocks[:, 25:75])
  # A smaller image is enlarged (bicubic) to the size, then cut.
  small = image_data.center_crop(Image.fromarray(np.zeros((10, 30, 3), np.uint8)), 20)
  assert small.shape == (20, 20, 3)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  """A folder of 16 MNIST digits (8 classes x 2) enlarged to 64x64 RGB, random tiny VAE
  and random Inception weights."""
  root = tmp_path_factory.mktemp("latents")
  x, y, _ = image_data.load_mnist()
  folder = root / "images"
  for c in range(8):
    (folder / f"class_{c}").mkdir(parents=True)
    for j, i in enumerate(np.nonzero(y == c)[0][:2]):
      pixels = ((x[i, ..., 0] + 1) * 127.5).round().astype(np.uint8)
      Image.fromarray(pixels).convert("RGB").resize((64, 64), Image.BICUBIC).save(
          folder / f"class_{c}" / f"{j}.png")
  vae_path = str(root / "vae.npz")
  vae_lib.save_params(vae_path, vae_lib.init_random_params(jax.random.key(0), TINY_VAE),
                      TINY_VAE)
  incep = str(root / "inception.npz")
  flat = traverse_util.flatten_dict(inception.init_random_params(jax.random.key(1))["params"],
                                    sep="/")
  np.savez(incep, **{k: np.asarray(v) for k, v in flat.items()})
  return {"root": root, "folder": str(folder), "vae": vae_path, "inception": incep}


def test_encode_folder_writes_latents_and_labels_and_resumes(pipeline, monkeypatch):
  out = str(pipeline["root"] / "full.npy")
  assert latents.encode_folder(pipeline["folder"], out, pipeline["vae"], size=64, batch=4,
                               progress=False) == (16, 16)
  z = np.load(out)
  assert z.shape == (16, 8, 8, 4) and z.dtype == np.float32 and np.all(np.isfinite(z))
  np.testing.assert_array_equal(np.load(latents.labels_path(out)), np.repeat(np.arange(8), 2))
  assert not os.path.exists(latents.progress_path(out))
  # The latents are the VAE's posterior mean of the centre crops.
  files, _, _ = image_data.list_folder(pipeline["folder"])
  params, config = vae_lib.load_params(pipeline["vae"])
  mean, _ = vae_lib.make_encoder(params, config, batch_size=16)(
      image_data.read_center_crops(files, 64))
  np.testing.assert_allclose(z, mean, rtol=1e-5, atol=1e-6)

  # Interrupted while reading the third batch: two batches are on disk and recorded.
  part = str(pipeline["root"] / "part.npy")
  read, calls = image_data.read_center_crops, []

  def failing(files, size):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt("stopped")
    return read(files, size)

  monkeypatch.setattr(image_data, "read_center_crops", failing)
  with pytest.raises(KeyboardInterrupt):
    latents.encode_folder(pipeline["folder"], part, pipeline["vae"], size=64, batch=4,
                          progress=False)
  monkeypatch.setattr(image_data, "read_center_crops", read)
  assert json.load(open(latents.progress_path(part)))["done"] == 8
  # Another job may not finish it; the same job does, with the same latents.
  with pytest.raises(ConfigError, match="size"):
    latents.encode_folder(pipeline["folder"], part, pipeline["vae"], size=32, batch=4,
                          progress=False)
  assert latents.encode_folder(pipeline["folder"], part, pipeline["vae"], size=64, batch=4,
                               progress=False) == (8, 16)
  np.testing.assert_array_equal(np.load(part), z)
  with pytest.raises(ConfigError, match="complete"):
    latents.encode_folder(pipeline["folder"], part, pipeline["vae"], size=64, progress=False)


def test_encode_folder_refuses_bad_sizes_and_outputs(pipeline):
  with pytest.raises(ConfigError, match="multiple of the VAE's downsampling factor 8"):
    latents.encode_folder(pipeline["folder"], str(pipeline["root"] / "x.npy"),
                          pipeline["vae"], size=60)
  with pytest.raises(ConfigError, match=".npy"):
    latents.encode_folder(pipeline["folder"], str(pipeline["root"] / "x.npz"),
                          pipeline["vae"])
  with pytest.raises(FileNotFoundError, match="convert_vae_weights"):
    latents.encode_folder(pipeline["folder"], str(pipeline["root"] / "x.npy"),
                          str(pipeline["root"] / "missing.npz"))


def latents_config(path, steps=4):
  c = digits.get_config()
  return override(c, {"data.source": "latents", "data.path": path, "model.num_classes": 8,
                      "model.dit.hidden_size": 32, "model.dit.depth": 1,
                      "model.dit.num_heads": 2, "train.batch_size": 16, "train.steps": steps,
                      "train.log_every": 2, "train.checkpoint_every": steps,
                      "train.sample_every": 0, "optimizer.warmup_steps": 0})


@pytest.fixture(scope="module")
def latents_run(pipeline):
  out = str(pipeline["root"] / "train_latents.npy")
  latents.encode_folder(pipeline["folder"], out, pipeline["vae"], size=64, batch=8,
                        progress=False)
  workdir = str(pipeline["root"] / "run")
  training.train(latents_config(out), workdir)
  return workdir


@pytest.mark.slow  # the Inception network at 299 x 299 on a CPU (a minute)
def test_a_latents_run_is_decoded_and_scored_by_fid(pipeline, latents_run):
  kw = dict(num=4, batch=2, vae=pipeline["vae"], inception=pipeline["inception"])
  ev = evaluate.evaluate_images(latents_run, [1], **kw)
  (row,) = ev.rows
  assert np.isfinite(row["fid"]) and row["fid"] > 0 and "clf_fd" not in row
  assert np.isfinite(ev.floor["fid"])
  x = ev.samples[1]
  assert x.shape == (4, 64, 64, 3) and x.min() >= -1 and x.max() <= 1
  # The samples are the run's latents decoded: latents / data.latent_scale through the VAE.
  run = training.load_run(latents_run)
  z = run.prior.sample(jax.random.key(0), 4, run.data_shape, np.arange(4))
  z = np.asarray(inference.make_sampler(run.config, run.model, run.params)(z, 1, np.arange(4)))
  params, config = vae_lib.load_params(pipeline["vae"])
  decoded = vae_lib.make_decoder(params, config)(z / 0.18215 * config.scale)
  np.testing.assert_allclose(x, decoded, atol=1e-5)
  # Other batch sizes and process counts: the slow CLI test below.
  # Without the VAE or the Inception weights: what is missing, in one line.
  with pytest.raises(ConfigError, match="--vae"):
    evaluate.evaluate_images(latents_run, [1], num=8, inception=pipeline["inception"])
  with pytest.raises(ConfigError, match="FID"):
    evaluate.evaluate_images(latents_run, [1], num=8, vae=pipeline["vae"])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # 3 processes compile the Inception network (minutes of CPU)
def test_cli_latents_pipeline_fid_identical_for_one_and_two_processes(pipeline, tmp_path):
  py = lambda script, *a: [sys.executable, os.path.join("scripts", script), *a]
  out = str(tmp_path / "latents.npy")
  for cmd in (py("encode_latents.py", "--source", "folder", "--path", pipeline["folder"],
                 "--vae", pipeline["vae"], "--out", out, "--size", "64", "--batch", "8"),
              py("train.py", "--config", "configs/digits.py", "--workdir",
                 str(tmp_path / "run"), "--config.data.source=latents",
                 f"--config.data.path={out}", "--config.model.num_classes=8",
                 "--config.model.dit.hidden_size=32", "--config.model.dit.depth=1",
                 "--config.model.dit.num_heads=2", "--config.train.batch_size=16",
                 "--config.train.steps=4", "--config.train.checkpoint_every=4",
                 "--config.train.sample_every=0", "--config.optimizer.warmup_steps=0")):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=xla.env())
    assert proc.returncode == 0, proc.stderr[-2000:]
  # Reference statistics of the same images, centre-cropped and streamed.
  ref = str(tmp_path / "ref.npz")
  proc = subprocess.run(py("fid_stats.py", "--source", "folder", "--path", pipeline["folder"],
                           "--size", "64", "--batch", "8", "--inception", pipeline["inception"],
                           "--out", ref), cwd=ROOT, capture_output=True, text=True,
                        env=xla.env())
  assert proc.returncode == 0 and "16 centre crops" in proc.stdout, proc.stderr[-2000:]
  mu, sigma = inception.load_stats(ref)
  assert mu.shape == (2048,) and np.all(np.isfinite(sigma))
  evaluate_args = ["--workdir", str(tmp_path / "run"), "--nfe", "1", "--num", "12",
                   "--batch", "4", "--vae", pipeline["vae"], "--inception",
                   pipeline["inception"], "--ref", ref]
  one = subprocess.run(py("evaluate.py", *evaluate_args), cwd=ROOT, capture_output=True,
                       text=True, env=xla.env(2))
  assert one.returncode == 0, one.stderr[-2000:]
  rows_one = json.load(open(tmp_path / "run" / "eval.json"))
  os.remove(tmp_path / "run" / "eval.json")
  port = _free_port()
  procs = [subprocess.Popen(py("evaluate.py", *evaluate_args,
                               f"--coordinator_address=127.0.0.1:{port}",
                               "--num_processes=2", f"--process_id={i}"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=xla.env(1)) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=3600)
    assert p.returncode == 0, err[-2000:]
  rows_two = json.load(open(tmp_path / "run" / "eval.json"))
  # The same samples on 2 devices of one process or 1 device of each of 2 processes: XLA's
  # CPU convolutions round a little differently by batch shape, and 12 samples in 2048-d
  # make the Frechet distance sensitive to that.
  assert len(rows_one) == len(rows_two) == 1
  assert rows_one[0]["fid"] == pytest.approx(rows_two[0]["fid"], rel=1e-4)
  assert os.path.exists(tmp_path / "run" / "eval.png")
  # sample.py decodes a latents run's samples with --vae, and writes latents without.
  x_path = str(tmp_path / "x.npy")
  proc = subprocess.run(py("sample.py", "--workdir", str(tmp_path / "run"), "--nfe", "1",
                           "--num", "8", "--vae", pipeline["vae"], "--out", x_path),
                        cwd=ROOT, capture_output=True, text=True, env=xla.env())
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert np.load(x_path).shape == (8, 64, 64, 3) and os.path.exists(tmp_path / "x.png")
  proc = subprocess.run(py("sample.py", "--workdir", str(tmp_path / "run"), "--nfe", "1",
                           "--num", "8", "--out", str(tmp_path / "z.npy")),
                        cwd=ROOT, capture_output=True, text=True, env=xla.env())
  assert proc.returncode == 0 and np.load(tmp_path / "z.npy").shape == (8, 8, 8, 4)
  assert "pass --vae" in proc.stdout
