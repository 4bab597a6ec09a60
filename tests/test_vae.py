"""The Stable Diffusion VAE with random weights: layers, shapes, batching, sharding, weights I/O.

A tiny config (widths 16, 32, 32; 8 groups) runs on 16 x 16 images; the standard
config is checked through shapes only (`jax.eval_shape`). The PyTorch names and
shapes are written here from diffusers' `AutoencoderKL` constructor, independently of
the flax modules. Where `torch` and `diffusers` are installed, two more tests compare
encoder and decoder outputs with diffusers' own network on shared random weights.
"""
import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from meanflow_jax.errors import CheckpointMismatchError, DataError, MeanFlowError
from meanflow_jax.models import vae
from tests.helpers import xla

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = vae.VAEConfig(channels=(16, 32, 32), groups=8)
SD = vae.VAEConfig()
# diffusers' AutoencoderKL for sd-vae-ft-mse: sum(p.numel() for p in vae.parameters()).
SD_PARAMS = 83_653_863


def torch_shapes(config):
  """{diffusers AutoencoderKL state-dict name: shape} for `config`, from its constructor."""
  ch, lat = config.channels, config.latent_channels
  out = {}

  def conv(name, cin, cout, k):
    out[f"{name}.weight"], out[f"{name}.bias"] = (cout, cin, k, k), (cout,)

  def norm(name, c):
    out[f"{name}.weight"], out[f"{name}.bias"] = (c,), (c,)

  def resnet(name, cin, cout):
    norm(f"{name}.norm1", cin)
    conv(f"{name}.conv1", cin, cout, 3)
    norm(f"{name}.norm2", cout)
    conv(f"{name}.conv2", cout, cout, 3)
    if cin != cout:
      conv(f"{name}.conv_shortcut", cin, cout, 1)

  def mid(name, c):
    resnet(f"{name}.resnets.0", c, c)
    norm(f"{name}.attentions.0.group_norm", c)
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
      out[f"{name}.attentions.0.{proj}.weight"] = (c, c)
      out[f"{name}.attentions.0.{proj}.bias"] = (c,)
    resnet(f"{name}.resnets.1", c, c)

  conv("encoder.conv_in", config.image_channels, ch[0], 3)
  cin = ch[0]
  for i, c in enumerate(ch):
    for j in range(config.layers_per_block):
      resnet(f"encoder.down_blocks.{i}.resnets.{j}", cin, c)
      cin = c
    if i < len(ch) - 1:
      conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c, 3)
  mid("encoder.mid_block", ch[-1])
  norm("encoder.conv_norm_out", ch[-1])
  conv("encoder.conv_out", ch[-1], 2 * lat, 3)
  conv("quant_conv", 2 * lat, 2 * lat, 1)
  conv("post_quant_conv", lat, lat, 1)
  conv("decoder.conv_in", lat, ch[-1], 3)
  mid("decoder.mid_block", ch[-1])
  cin = ch[-1]
  for i, c in enumerate(reversed(ch)):
    for j in range(config.layers_per_block + 1):
      resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin, c)
      cin = c
    if i < len(ch) - 1:
      conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", c, c, 3)
  norm("decoder.conv_norm_out", ch[0])
  conv("decoder.conv_out", ch[0], config.image_channels, 3)
  return out


def flat_params(variables):
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(variables["params"], sep="/").items()}


def torch_name(path):
  """Flax path -> diffusers state-dict name (the inverse of the converter's rename)."""
  module, leaf = path.rsplit("/", 1)
  name = re.sub(r"_(\d+)(?=/|$)", r".\1", module).replace("/", ".")
  name = re.sub(r"\.to_out$", ".to_out.0", name)
  return f"{name}.{'bias' if leaf == 'bias' else 'weight'}"


def torch_layout(path, value):
  """A flax array in PyTorch's layout: conv HWIO -> OIHW, Dense [I, O] -> Linear [O, I]."""
  if path.endswith("/kernel"):
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def to_torch(flat):
  """Flax {path: array} -> diffusers-style state dict {name: numpy}."""
  return {torch_name(k): np.ascontiguousarray(torch_layout(k, v)) for k, v in flat.items()}


@pytest.fixture(scope="module")
def params():
  return vae.init_random_params(jax.random.key(0), TINY)


@pytest.fixture(scope="module")
def images():
  """Five 16 x 16 RGB images in [-1, 1]."""
  rng = np.random.default_rng(0)
  return rng.uniform(-1, 1, size=(5, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def latents():
  """Five unscaled 4 x 4 x 4 latents."""
  return np.random.default_rng(1).normal(size=(5, 4, 4, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def apply_fns():
  model = vae.AutoencoderKL(TINY)
  return (jax.jit(lambda p, x: model.apply(p, x, method=model.encode)),
          jax.jit(lambda p, z: model.apply(p, z, method=model.decode)))


# ------------------------------------------------------------------------- structure


def test_parameter_count_of_the_standard_config():
  assert vae.param_count(SD) == SD_PARAMS
  assert sum(math.prod(s) for s in torch_shapes(SD).values()) == SD_PARAMS
  shapes = vae.expected_shapes(SD)
  count = lambda prefix: sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))
  assert count("encoder/") == 34_163_592 and count("decoder/") == 49_490_179
  assert count("quant_conv/") == 8 * 8 + 8 and count("post_quant_conv/") == 4 * 4 + 4


@pytest.mark.parametrize("config", [SD, TINY], ids=["sd", "tiny"])
def test_flax_names_and_shapes_are_the_torch_ones_renamed(config):
  want = torch_shapes(config)
  got = {torch_name(k): torch_layout(k, np.empty(s, np.bool_)).shape
         for k, s in vae.expected_shapes(config).items()}
  assert got == want


def test_standard_config_maps_256_images_to_32x32x4_latents():
  model = vae.AutoencoderKL(SD)
  p = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  mean, logvar = jax.eval_shape(lambda p, x: model.apply(p, x, method=model.encode), p,
                                jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32))
  assert mean.shape == logvar.shape == (2, 32, 32, 4)
  out = jax.eval_shape(lambda p, z: model.apply(p, z, method=model.decode), p,
                       jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32))
  assert out.shape == (2, 256, 256, 3) and out.dtype == jnp.float32
  assert SD.factor == 8 and TINY.factor == 4


# ---------------------------------------------------------------------------- layers


def test_downsample_pads_bottom_and_right_only():
  x = np.arange(16.0, dtype=np.float32).reshape(1, 4, 4, 1)
  layer = vae.Downsample(1)
  variables = {"params": {"conv": {"kernel": np.ones((3, 3, 1, 1), np.float32),
                                   "bias": np.zeros(1, np.float32)}}}
  got = np.asarray(jax.jit(layer.apply)(variables, x))[0, :, :, 0]
  padded = np.pad(x[0, :, :, 0], ((0, 1), (0, 1)))
  want = np.array([[padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].sum() for j in range(2)]
                   for i in range(2)])
  np.testing.assert_array_equal(got, want)  # e.g. the corner: 10 + 11 + 14 + 15 = 50


def test_upsample_is_nearest_neighbour_then_conv():
  x = np.random.default_rng(0).normal(size=(1, 3, 2, 2)).astype(np.float32)
  kernel = np.zeros((3, 3, 2, 2), np.float32)
  kernel[1, 1] = np.eye(2)  # the identity tap: the output is the upsampled input
  variables = {"params": {"conv": {"kernel": kernel, "bias": np.zeros(2, np.float32)}}}
  got = np.asarray(jax.jit(vae.Upsample(2).apply)(variables, x))
  np.testing.assert_array_equal(got, x.repeat(2, axis=1).repeat(2, axis=2))


def test_resnet_and_attention_match_numpy():
  rng = np.random.default_rng(0)
  cfg = vae.VAEConfig(groups=2, eps=1e-6)
  x = rng.normal(1.0, 2.0, size=(2, 3, 5, 4)).astype(np.float64)

  def group_norm(h, scale, bias):
    n, hh, ww, c = h.shape
    g = h.reshape(n, hh, ww, 2, c // 2)
    g = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-6)
    return g.reshape(h.shape) * scale + bias

  def conv3x3(h, kernel, bias):
    hp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(np.einsum("nhwi,io->nhwo", hp[:, a:a + h.shape[1], b:b + h.shape[2]], kernel[a, b])
              for a in range(3) for b in range(3))
    return out + bias

  silu = lambda h: h / (1 + np.exp(-h))
  def random_params(module):  # shapes from the module, values from numpy
    shapes = jax.eval_shape(module.init, jax.random.key(0), x.astype(np.float32))
    return {k: 0.3 * rng.normal(size=v.shape) + (k.endswith("scale")) for k, v in
            traverse_util.flatten_dict(shapes["params"], sep="/").items()}

  block = vae.ResnetBlock(cfg, 6)
  p = random_params(block)
  h = conv3x3(silu(group_norm(x, p["norm1/scale"], p["norm1/bias"])), p["conv1/kernel"],
              p["conv1/bias"])
  h = conv3x3(silu(group_norm(h, p["norm2/scale"], p["norm2/bias"])), p["conv2/kernel"],
              p["conv2/bias"])
  want = x @ p["conv_shortcut/kernel"][0, 0] + p["conv_shortcut/bias"] + h
  variables = {"params": traverse_util.unflatten_dict(
      {k: v.astype(np.float32) for k, v in p.items()}, sep="/")}
  got = jax.jit(block.apply)(variables, x.astype(np.float32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)

  attn = vae.Attention(cfg)
  p = random_params(attn)
  h = group_norm(x, p["group_norm/scale"], p["group_norm/bias"]).reshape(2, 15, 4)
  q, k, v = (h @ p[f"{n}/kernel"] + p[f"{n}/bias"] for n in ("to_q", "to_k", "to_v"))
  logits = q @ k.transpose(0, 2, 1) / 2.0  # sqrt(C) = 2
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  want = x + ((w @ v) @ p["to_out/kernel"] + p["to_out/bias"]).reshape(x.shape)
  variables = {"params": traverse_util.unflatten_dict(
      {k: v.astype(np.float32) for k, v in p.items()}, sep="/")}
  got = jax.jit(attn.apply)(variables, x.astype(np.float32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- network


def test_encode_decode_shapes_determinism_and_batch_invariance(params, images, latents,
                                                                apply_fns):
  encode, decode = apply_fns
  mean, logvar = encode(params, images)
  assert mean.shape == logvar.shape == (5, 4, 4, 4)
  assert np.all(np.asarray(logvar) >= -30) and np.all(np.asarray(logvar) <= 20)
  out = np.asarray(decode(params, latents))
  assert out.shape == (5, 16, 16, 3) and out.dtype == np.float32
  assert np.all(np.isfinite(out)) and out.std() > 1e-2
  np.testing.assert_array_equal(np.asarray(encode(params, images)[0]), np.asarray(mean))
  np.testing.assert_array_equal(np.asarray(decode(params, latents)), out)
  # Each sample alone gives what it gives in the batch (GroupNorm is per sample).
  alone = np.concatenate([np.asarray(decode(params, latents[i:i + 1])) for i in range(5)])
  np.testing.assert_allclose(alone, out, rtol=1e-5, atol=1e-5 * np.abs(out).max())
  alone = np.concatenate([np.asarray(encode(params, images[i:i + 1])[0]) for i in range(5)])
  np.testing.assert_allclose(alone, mean, rtol=1e-5, atol=1e-5 * np.abs(mean).max())
  # __call__ is decode(encode(x).mean).
  model = vae.AutoencoderKL(TINY)
  np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(params, images)),
                             np.asarray(decode(params, mean)), rtol=1e-5, atol=1e-5)


def test_make_decoder_and_encoder_batching(params, images, latents, apply_fns):
  encode, decode = apply_fns
  scaled = latents * TINY.scale
  want = np.clip(np.asarray(decode(params, latents)), -1, 1)
  assert 0.05 < np.mean(np.abs(want) < 1)  # not all clipped: the comparison means something
  d2 = vae.make_decoder(params, TINY, batch_size=2)  # batches [0, 1], [2, 3], [4, pad]
  got2 = d2(scaled, progress=True)
  got5 = vae.make_decoder(params, TINY, batch_size=5)(scaled)
  assert got2.shape == (5, 16, 16, 3) and got2.dtype == np.float32
  np.testing.assert_allclose(got2, got5, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got5, want, rtol=1e-5, atol=1e-5)
  assert d2(scaled[:0]).shape == (0, 16, 16, 3)
  with pytest.raises(DataError, match="latents must have shape"):
    d2(scaled[..., :3])

  mean, logvar = (np.asarray(a) for a in encode(params, images))
  e2 = vae.make_encoder(params, TINY, batch_size=2)
  m2, l2 = e2(images)
  m5, l5 = vae.make_encoder(params, TINY, batch_size=5)(images)
  for got in (m2, m5):
    np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-5 * np.abs(mean).max())
  for got in (l2, l5):
    np.testing.assert_allclose(got, logvar, rtol=1e-5, atol=1e-5 * np.abs(logvar).max())
  assert e2(images[:0])[0].shape == (0, 4, 4, 4)
  with pytest.raises(DataError, match="multiples of 4"):
    e2(images[:, :15])
  with pytest.raises(ValueError, match="batch_size"):
    vae.make_decoder(params, TINY, batch_size=0)


SHARDED = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from meanflow_jax.models import vae
cfg = vae.VAEConfig(channels=(16, 32, 32), groups=8)
params = vae.init_random_params(jax.random.key(0), cfg)
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, size=(5, 16, 16, 3)).astype(np.float32)
z = 0.18215 * rng.normal(size=(5, 4, 4, 4)).astype(np.float32)
one, every = jax.devices()[:1], jax.devices()
m1, l1 = vae.make_encoder(params, cfg, 3, devices=one)(x)
m8, l8 = vae.make_encoder(params, cfg, 3, devices=every)(x)  # 3 -> batches of 8
d1 = vae.make_decoder(params, cfg, 3, devices=one)(z)
d8 = vae.make_decoder(params, cfg, 3, devices=every)(z)
diff = lambda a, b: float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-6))
print(json.dumps({"devices": len(every), "mean": diff(m1, m8), "logvar": diff(l1, l8),
                  "images": diff(d1, d8), "shapes": [list(m8.shape), list(d8.shape)]}))
"""


# Slow (8 fake devices in a process of its own): the 8-device split of the samplers is
# fast (test_sharding.py::test_sampler_split_over_8_devices_equals_one_device), and the
# VAE's outputs do not depend on the batch size (fast, above).
@pytest.mark.slow
def test_sharded_over_8_devices_equals_one_device():
  env = dict(xla.env(devices=8), JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", SHARDED, ROOT], capture_output=True, text=True,
                       env=env, timeout=3600)
  assert run.returncode == 0, run.stderr
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  assert result["shapes"] == [[5, 4, 4, 4], [5, 16, 16, 3]]
  for name in ("mean", "logvar", "images"):
    assert result[name] < 1e-5, result


# --------------------------------------------------------------------------- weights


def test_converter_round_trip_and_old_attention_names(params):
  flat = flat_params(params)
  sd = to_torch(flat)
  got = vae.convert_torch_state_dict(sd, TINY)
  assert got.keys() == flat.keys()
  for k in flat:
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], flat[k])

  # Before diffusers 0.14: query/key/value/proj_attn, some stored as 1x1 convs.
  renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  old = {}
  for name, value in sd.items():
    for new, before in renames.items():
      if f".attentions.0.{new}." in name:
        name = name.replace(f".{new}.", f".{before}.")
        if value.ndim == 2:
          value = value[:, :, None, None]
    old[name] = value
  assert "decoder.mid_block.attentions.0.proj_attn.weight" in old
  got = vae.convert_torch_state_dict(old, TINY)
  for k in flat:
    np.testing.assert_array_equal(got[k], flat[k])


def test_converter_refuses_unknown_keys_and_wrong_shapes(params):
  sd = to_torch(flat_params(params))
  extra = dict(sd, **{"encoder.down_blocks.0.attentions.0.to_q.weight": np.zeros((16, 16))})
  with pytest.raises(CheckpointMismatchError, match="1 PyTorch keys have no place.*"
                     r"encoder\.down_blocks\.0\.attentions\.0\.to_q\.weight"):
    vae.convert_torch_state_dict(extra, TINY)
  with pytest.raises(CheckpointMismatchError, match="no place.*num_batches"):
    vae.convert_torch_state_dict(dict(sd, num_batches=np.zeros(())), TINY)
  wrong = dict(sd, **{"decoder.conv_out.weight": np.zeros((3, 16, 3, 5), np.float32)})
  with pytest.raises(CheckpointMismatchError,
                     match=r"decoder/conv_out/kernel: \(3, 5, 16, 3\), expected \(3, 3, 16, 3\)"):
    vae.convert_torch_state_dict(wrong, TINY)
  with pytest.raises(CheckpointMismatchError, match="conv weight is 4-d"):
    vae.convert_torch_state_dict(dict(sd, **{"quant_conv.weight": np.zeros((8, 8))}), TINY)
  short = {k: v for k, v in sd.items() if not k.startswith("post_quant_conv.")}
  with pytest.raises(CheckpointMismatchError, match="2 missing.*convert_vae_weights.py"):
    vae.convert_torch_state_dict(short, TINY)
  # The standard config's weights are not the tiny one's.
  with pytest.raises(CheckpointMismatchError, match="wrong shapes"):
    vae.convert_torch_state_dict(sd)


def test_save_load_round_trip_and_errors(params, tmp_path):
  path = str(tmp_path / "w" / "tiny_vae")  # no .npz suffix: kept as given
  vae.save_params(path, params, TINY)
  assert os.listdir(tmp_path / "w") == ["tiny_vae"]
  loaded, config = vae.load_params(path)
  assert config == TINY and isinstance(config.channels, tuple)
  flat, got = flat_params(params), flat_params(loaded)
  assert got.keys() == flat.keys()
  for k in flat:
    np.testing.assert_array_equal(got[k], flat[k])

  # No __config__: taken as the standard config, which these arrays do not fit.
  np.savez(tmp_path / "bare.npz", **flat)
  with pytest.raises(CheckpointMismatchError, match="bare.npz do not fit.*wrong shapes"):
    vae.load_params(str(tmp_path / "bare.npz"))
  np.savez(tmp_path / "badcfg.npz", __config__=np.array("{not json"), **flat)
  with pytest.raises(CheckpointMismatchError, match="__config__"):
    vae.load_params(str(tmp_path / "badcfg.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(CheckpointMismatchError, match="not a readable"):
    vae.load_params(str(tmp_path / "junk.npz"))
  with pytest.raises(CheckpointMismatchError, match="do not fit"):
    vae.save_params(str(tmp_path / "x.npz"), params, vae.VAEConfig(channels=(16, 32), groups=8))


def test_missing_weights_file_says_how_to_get_it(tmp_path):
  path = str(tmp_path / "sd_vae_ft_mse.npz")
  with pytest.raises(FileNotFoundError) as e:
    vae.load_params(path)
  assert isinstance(e.value, MeanFlowError)
  message = str(e.value)
  assert "\n" not in message
  for text in (path, "scripts/convert_vae_weights.py", "diffusion_pytorch_model.safetensors",
               "stabilityai/sd-vae-ft-mse"):
    assert text in message


def test_converter_script_without_torch_says_what_to_install(tmp_path):
  """The script's one-line error (exit 2) when neither safetensors nor PyTorch imports."""
  code = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None; "
          f"sys.argv = ['convert', '--torch', 'w.bin', '--out', {str(tmp_path / 'o.npz')!r}]; "
          f"runpy.run_path({os.path.join(ROOT, 'scripts', 'convert_vae_weights.py')!r}, "
          "run_name='__main__')")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  (tmp_path / "w.bin").write_bytes(b"")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
  assert run.returncode == 2, run.stderr
  assert "pip install torch" in run.stderr and "Traceback" not in run.stderr


# ----------------------------------------------------------------- against diffusers


def _diffusers_vae(config, state_dict):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  n = len(config.channels)
  model = diffusers.AutoencoderKL(
      in_channels=config.image_channels, out_channels=config.image_channels,
      down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
      block_out_channels=config.channels, layers_per_block=config.layers_per_block,
      latent_channels=config.latent_channels, norm_num_groups=config.groups,
      scaling_factor=config.scale).eval()
  # strict: also checks the names and shapes of `torch_shapes` against diffusers'
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                        strict=True)
  return torch, model


@pytest.mark.parametrize("config, size", [(TINY, 16), (SD, 32)], ids=["tiny", "sd"])
def test_matches_diffusers_on_the_same_weights(config, size):
  """diffusers' AutoencoderKL on shared random weights (needs torch and diffusers)."""
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  params = vae.init_random_params(jax.random.key(2), config)
  sd = to_torch(flat_params(params))
  torch, model = _diffusers_vae(config, sd)
  assert sum(p.numel() for p in model.parameters()) == vae.param_count(config)
  assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == torch_shapes(config)

  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, size=(2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    dist = model.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
    mean_t = dist.mean.permute(0, 2, 3, 1).numpy()
    logvar_t = dist.logvar.permute(0, 2, 3, 1).numpy()
    z = mean_t + 0.5 * rng.normal(size=mean_t.shape).astype(np.float32)
    out_t = model.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).sample
    out_t = out_t.permute(0, 2, 3, 1).numpy()

  params = {"params": traverse_util.unflatten_dict(vae.convert_torch_state_dict(sd, config),
                                                   sep="/")}
  mean, logvar = vae.make_encoder(params, config, batch_size=2)(x)
  out = vae.make_decoder(params, config, batch_size=2)(z * config.scale)
  model = vae.AutoencoderKL(config)
  unclipped = np.asarray(jax.jit(lambda p, z: model.apply(p, z, method=model.decode))(params, z))
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  errors = {"mean": rel(mean, mean_t), "logvar": rel(logvar, logvar_t),
            "decoded (relative, unclipped)": rel(unclipped, out_t),
            "decoded (clipped)": float(np.abs(out - np.clip(out_t, -1, 1)).max())}
  print("max errors against diffusers:", errors)
  assert max(errors.values()) < 1e-4, errors


def test_converter_script_reads_diffusers_files(tmp_path):
  """The script on a diffusers `save_pretrained` folder (.safetensors) and a `.bin`."""
  pytest.importorskip("safetensors")
  params = vae.init_random_params(jax.random.key(3), SD)
  torch, model = _diffusers_vae(SD, to_torch(flat_params(params)))
  model.save_pretrained(str(tmp_path / "sd-vae"))
  torch.save(model.state_dict(), str(tmp_path / "vae.bin"))
  flat = flat_params(params)
  script = os.path.join(ROOT, "scripts", "convert_vae_weights.py")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  for source in (tmp_path / "sd-vae" / vae.WEIGHTS_FILE, tmp_path / "vae.bin"):
    out = str(tmp_path / "converted.npz")
    run = subprocess.run([sys.executable, script, "--torch", str(source), "--out", out],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert f"{SD_PARAMS:,} weights" in run.stdout
    loaded, config = vae.load_params(out)
    assert config == SD
    got = flat_params(loaded)
    assert got.keys() == flat.keys()
    for k in flat:
      np.testing.assert_array_equal(got[k], flat[k])
    os.remove(out)
