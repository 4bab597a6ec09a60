"""The FID Inception network with random weights: structure, pools, preprocessing, I/O.

The full network runs at 299 x 299 on three images, compiled for batch sizes 2
(shapes, determinism, padding), 1 and 3 (batch-size invariance); everything else is
shapes, hand computations and small arrays. Where `torch` and `pytorch-fid` are
installed, one more test compares the features with pytorch-fid's own network.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax import lax

from meanflow_jax.errors import CheckpointMismatchError, DataError, MeanFlowError
from meanflow_jax.metrics import inception

# torchvision's Inception3 without fc and AuxLogits (27,161,264 parameters with them,
# as torchvision lists it, minus 2,049,000 for fc and 3,326,696 for AuxLogits).
NUM_WEIGHTS = 21_785_568


def torch_convs():
  """(torch module name, in, out, kh, kw) of every BasicConv2d of pytorch-fid's network.

  Written from torchvision's constructor arguments, independently of the flax modules.
  """
  convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
           ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
           ("Conv2d_4a_3x3", 80, 192, 3, 3)]

  def block(name, rows):
    return [(f"{name}.{branch}", i, o, kh, kw) for branch, i, o, kh, kw in rows]

  for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
    convs += block(name, [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1),
                          ("branch5x5_2", 48, 64, 5, 5), ("branch3x3dbl_1", cin, 64, 1, 1),
                          ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
                          ("branch_pool", cin, pool, 1, 1)])
  convs += block("Mixed_6a", [("branch3x3", 288, 384, 3, 3), ("branch3x3dbl_1", 288, 64, 1, 1),
                              ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)])
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    convs += block(name, [("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c7, 1, 1),
                          ("branch7x7_2", c7, c7, 1, 7), ("branch7x7_3", c7, 192, 7, 1),
                          ("branch7x7dbl_1", 768, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
                          ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1),
                          ("branch7x7dbl_5", c7, 192, 1, 7), ("branch_pool", 768, 192, 1, 1)])
  convs += block("Mixed_7a", [("branch3x3_1", 768, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
                              ("branch7x7x3_1", 768, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
                              ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)])
  for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    convs += block(name, [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1),
                          ("branch3x3_2a", 384, 384, 1, 3), ("branch3x3_2b", 384, 384, 3, 1),
                          ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
                          ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
                          ("branch_pool", cin, 192, 1, 1)])
  return convs


def synthetic_state_dict(seed=0):
  """A PyTorch-style state dict (numpy) with pytorch-fid's names and shapes, random values.

  He-scaled kernels and near-identity batch norms keep activations O(1) through the network.
  """
  rng = np.random.default_rng(seed)
  sd = {}
  for name, i, o, kh, kw in torch_convs():
    w = rng.normal(size=(o, i, kh, kw)) * np.sqrt(2.0 / (i * kh * kw))
    sd[f"{name}.conv.weight"] = w.astype(np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, size=o).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.normal(0.0, 0.1, size=o).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.normal(0.0, 0.1, size=o).astype(np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, size=o).astype(np.float32)
    sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  sd["fc.weight"] = np.zeros((1008, 2048), np.float32)
  sd["fc.bias"] = np.zeros(1008, np.float32)
  return sd


def flat_params(params):
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(params["params"], sep="/").items()}


def flat_to_tree(flat):
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def params():
  return inception.init_random_params(jax.random.key(0))


# ------------------------------------------------------------------------- structure


def test_parameter_count_matches_inception_v3_without_fc():
  convs = torch_convs()
  assert len(convs) == 94
  torch_weights = sum(o * i * kh * kw + 2 * o for _, i, o, kh, kw in convs)  # conv + bn affine
  assert torch_weights == NUM_WEIGHTS
  shapes = inception.expected_shapes()
  assert len(shapes) == 94 * 5
  count = lambda keep: sum(int(np.prod(s)) for k, s in shapes.items() if keep(k))
  assert count(lambda k: not k.endswith(("/mean", "/var"))) == NUM_WEIGHTS
  assert count(lambda k: k.endswith(("/mean", "/var"))) == 2 * sum(c[2] for c in convs)


def test_spatial_sizes_at_299_follow_the_reference_graph():
  """Every stride, padding and concat width: torchvision's documented shapes at 299."""
  model = inception.InceptionV3()
  p = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  _, state = jax.eval_shape(
      lambda p, x: model.apply(p, x, capture_intermediates=True), p,
      jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  inter = state["intermediates"]
  want = {"Conv2d_1a_3x3": (149, 32), "Conv2d_2a_3x3": (147, 32), "Conv2d_2b_3x3": (147, 64),
          "Conv2d_3b_1x1": (73, 80), "Conv2d_4a_3x3": (71, 192), "Mixed_5b": (35, 256),
          "Mixed_5c": (35, 288), "Mixed_5d": (35, 288), "Mixed_6a": (17, 768),
          "Mixed_6b": (17, 768), "Mixed_6c": (17, 768), "Mixed_6d": (17, 768),
          "Mixed_6e": (17, 768), "Mixed_7a": (8, 1280), "Mixed_7b": (8, 2048),
          "Mixed_7c": (8, 2048)}
  for name, (size, channels) in want.items():
    assert inter[name]["__call__"][0].shape == (1, size, size, channels), name
  assert inter["__call__"][0].shape == (1, 2048)


def test_avg_pool_excludes_padding_from_the_count():
  x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # 1 2 3 / 4 5 6 / 7 8 9
  # Corners average 4 real values, edges 6, the centre 9: e.g. (1+2+4+5)/4 = 3.
  want = np.array([[3.0, 3.5, 4.0], [4.5, 5.0, 5.5], [6.0, 6.5, 7.0]])
  got = jax.jit(inception.avg_pool_exclude_pad)(x)
  np.testing.assert_allclose(np.asarray(got)[0, :, :, 0], want, rtol=1e-6)
  # Mixed_7c's max pool (3x3, stride 1, padding 1) ignores the padding too.
  got_max = inception.max_pool(-x, 3, 1, ((1, 1), (1, 1)))
  np.testing.assert_array_equal(np.asarray(got_max)[0, :, :, 0],
                                -np.array([[1, 1, 2], [1, 1, 2], [4, 4, 5]]))


def test_conv_layout_and_asymmetric_padding_match_pytorch_semantics():
  """A converted OIHW 1x7 kernel with padding (0, 3) gives PyTorch's cross-correlation."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 3, 1, 7)).astype(np.float32)  # [O, I, kh, kw]
  x = rng.normal(size=(2, 5, 9, 3)).astype(np.float32)  # NHWC
  layer = inception.BasicConv2d(4, (1, 7), padding=((0, 0), (3, 3)))
  variables = {"params": {"conv": {"kernel": w.transpose(2, 3, 1, 0)},
                          "bn": {"scale": np.ones(4), "bias": np.zeros(4), "mean": np.zeros(4),
                                 "var": np.full(4, 1.0 - inception.BN_EPSILON)}}}
  got = np.asarray(jax.jit(layer.apply)(variables, x))
  want = lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w, (1, 1), ((0, 0), (3, 3)),
                                  dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                  precision=lax.Precision.HIGHEST)
  want = np.maximum(np.asarray(want).transpose(0, 2, 3, 1), 0.0)
  assert got.shape == (2, 5, 9, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- preprocessing


def test_uint8_conversion_rounds_half_up_and_clips():
  x = np.array([-1.2, -1.0, -0.999, -0.5, 0.0, 0.5, 0.999, 1.0, 1.7], np.float32)
  # 127.5 x + 127.5 = [<0, 0, 0.1275, 63.75, 127.5, 191.25, 254.87, 255, >255]
  want = np.array([0, 0, 0, 64, 128, 191, 255, 255, 255], np.uint8)
  got = np.asarray(jax.jit(inception.to_uint8)(x))
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)
  # The same as the common "+128, clip, truncate" of sampling code.
  np.testing.assert_array_equal(got, np.clip(x * 127.5 + 128, 0, 255).astype(np.uint8))


def test_preprocess_constant_image_stays_constant():
  x = np.full((2, 32, 32, 3), 0.3, np.float32)  # 127.5 * 1.3 = 165.75 -> 166
  out = np.asarray(jax.jit(inception.preprocess)(x))
  assert out.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(out, 2 * 166 / 255 - 1, rtol=0, atol=1e-6)
  gray = np.asarray(inception.preprocess(np.full((1, 28, 28, 1), 200, np.uint8)))
  assert gray.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(gray, 2 * 200 / 255 - 1, rtol=0, atol=1e-6)
  with pytest.raises(DataError, match="shape"):
    inception.preprocess(np.zeros((1, 8, 8, 2), np.float32))


def _bilinear_align_corners_false(img, out_h, out_w):
  """PyTorch's documented bilinear (align_corners=False) on `[H, W]`, in numpy."""

  def taps(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0

  r0, r1, a = taps(img.shape[0], out_h)
  c0, c1, b = taps(img.shape[1], out_w)
  rows = img[r0] * (1 - a)[:, None] + img[r1] * a[:, None]
  return rows[:, c0] * (1 - b) + rows[:, c1] * b


# Upsampling agrees to 2e-6; downsampling to the float32 round-off of source
# coordinates near 400 (~3e-5 px), a few 1e-5 in [-1, 1], far below one uint8 level.
@pytest.mark.parametrize("size, atol", [((8, 13), 2e-6), ((400, 350), 1e-4)])
def test_resize_matches_pytorch_bilinear(size, atol):
  """jax.image.resize bilinear without antialias = F.interpolate(align_corners=False)."""
  img = np.random.default_rng(0).integers(0, 256, size=size + (1,)).astype(np.uint8)
  got = np.asarray(inception.preprocess(img[None]))[0, :, :, 0]
  want = 2 * _bilinear_align_corners_false(img[:, :, 0] / 255.0, 299, 299) - 1
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)


# --------------------------------------------------------------------------- network


@pytest.fixture(scope="module")
def images():
  """Three 24x24 RGB images at different brightness, in [-1, 1]."""
  rng = np.random.default_rng(0)
  levels = np.array([-0.6, 0.0, 0.5], np.float32)[:, None, None, None]
  return np.clip(levels + 0.3 * rng.normal(size=(3, 24, 24, 3)), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def features_batch2(params, images):
  return inception.make_feature_fn(params, batch_size=2)(images)


def test_features_shape_determinism_and_padding_invariance(params, images, features_batch2):
  """One compiled program (batch 2): shapes, repeatability, no dependence on batch mates."""
  f = features_batch2  # batches [0, 1] and [2, zero padding]
  fn = inception.make_feature_fn(params, batch_size=2)
  before = inception._features._cache_size()
  assert f.shape == (3, 2048) and f.dtype == np.float32
  assert np.all(np.isfinite(f)) and np.all(f >= 0)  # a mean of ReLU outputs
  assert f.std(0).mean() > 1e-2 * np.abs(f).mean()  # random weights still tell images apart
  np.testing.assert_array_equal(fn(images, progress=True), f)
  # Each image alone (padded with a zero image) and in reverse order: same features.
  alone = np.concatenate([fn(images[i:i + 1]) for i in range(3)])
  np.testing.assert_allclose(alone, f, rtol=1e-5, atol=1e-5 * np.abs(f).max())
  np.testing.assert_allclose(fn(images[::-1])[::-1], f, rtol=1e-5, atol=1e-5 * np.abs(f).max())
  assert fn(images[:0]).shape == (0, 2048)
  assert inception._features._cache_size() == before  # N = 0, 1, 3 reuse one program


@pytest.mark.parametrize("batch_size", [1, 3])
def test_features_do_not_depend_on_batch_size(params, images, features_batch2, batch_size):
  f = inception.make_feature_fn(params, batch_size=batch_size)(images)
  atol = 1e-5 * np.abs(features_batch2).max()
  np.testing.assert_allclose(f, features_batch2, rtol=1e-5, atol=atol)


# ------------------------------------------------------------------------- weights


def test_missing_weights_file_says_how_to_get_it(tmp_path):
  path = str(tmp_path / "inception_fid.npz")
  with pytest.raises(FileNotFoundError) as e:
    inception.load_params(path)
  assert isinstance(e.value, MeanFlowError)
  message = str(e.value)
  assert path in message and "convert_inception_weights.py" in message
  assert inception.WEIGHTS_FILE in message


def test_npz_round_trip_and_mismatch_errors(params, tmp_path):
  flat = flat_params(params)
  path = str(tmp_path / "w.npz")
  np.savez(path, **flat)
  loaded = flat_params(inception.load_params(path))
  assert loaded.keys() == flat.keys()
  for k in flat:
    np.testing.assert_array_equal(loaded[k], flat[k])

  broken = dict(flat)
  del broken["Mixed_5b/branch1x1/bn/var"]
  broken["Mixed_7c/branch_pool/conv/kernel"] = np.zeros((1, 1, 2048, 7), np.float32)
  broken["fc/kernel"] = np.zeros((2048, 1008), np.float32)
  np.savez(path, **broken)
  with pytest.raises(CheckpointMismatchError) as e:
    inception.load_params(path)
  message = str(e.value)
  for text in ("1 missing", "Mixed_5b/branch1x1/bn/var", "1 unexpected", "fc/kernel",
               "Mixed_7c/branch_pool/conv/kernel: (1, 1, 2048, 7), expected (1, 1, 2048, 192)"):
    assert text in message

  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(CheckpointMismatchError, match="not a readable"):
    inception.load_params(str(tmp_path / "junk.npz"))


def test_converter_maps_torch_names_and_layouts():
  sd = synthetic_state_dict()
  flat = inception.convert_torch_state_dict(sd)
  shapes = inception.expected_shapes()
  assert {k: v.shape for k, v in flat.items()} == shapes
  assert sum(v.size for k, v in sd.items()
             if not k.startswith("fc.") and k.endswith(("conv.weight", "bn.weight", "bn.bias"))
             ) == NUM_WEIGHTS
  w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # [O, I, 1, 7]
  k = flat["Mixed_6b/branch7x7_2/conv/kernel"]  # [1, 7, I, O]
  assert k[0, 5, 3, 2] == w[2, 3, 0, 5]
  for torch_stat, flax_stat in (("weight", "scale"), ("bias", "bias"),
                                ("running_mean", "mean"), ("running_var", "var")):
    np.testing.assert_array_equal(flat[f"Mixed_7c/branch_pool/bn/{flax_stat}"],
                                  sd[f"Mixed_7c.branch_pool.bn.{torch_stat}"])

  with pytest.raises(CheckpointMismatchError, match="no place"):
    inception.convert_torch_state_dict(dict(sd, **{"Mixed_5b.branch1x1.conv.bias": np.zeros(64)}))
  short = {k: v for k, v in sd.items() if not k.startswith("Mixed_7c.branch1x1.")}
  with pytest.raises(CheckpointMismatchError, match="5 missing"):
    inception.convert_torch_state_dict(short)


def test_converter_script_without_torch_says_what_to_install(tmp_path):
  """The script's one-line error (exit 2) when PyTorch cannot be imported."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("import runpy, sys; sys.modules['torch'] = None; "  # makes `import torch` fail
          f"sys.argv = ['convert', '--torch', 'w.pth', '--out', {str(tmp_path / 'o.npz')!r}]; "
          f"runpy.run_path({os.path.join(root, 'scripts', 'convert_inception_weights.py')!r}, "
          "run_name='__main__')")
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert run.returncode == 2, run.stderr
  assert "pip install torch" in run.stderr and "Traceback" not in run.stderr


def test_matches_pytorch_fid_on_the_same_weights(monkeypatch):
  """pytorch-fid's own network (its FID blocks, resize and scaling) on shared random weights.

  Runs only where `torch` and `pytorch-fid` are installed (not needed otherwise).
  """
  torch = pytest.importorskip("torch")
  pfi = pytest.importorskip("pytorch_fid.inception")
  sd = synthetic_state_dict(seed=1)
  # Its constructor loads the FID weights from the web: hand it ours instead (a strict
  # load, so this also checks the names and shapes of `torch_convs`).
  monkeypatch.setattr(pfi, "load_state_dict_from_url",
                      lambda *args, **kwargs: {k: torch.from_numpy(v) for k, v in sd.items()})
  net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                        normalize_input=True, use_fid_inception=True).eval()
  u8 = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
  with torch.no_grad():
    want = net(torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0)[0][:, :, 0, 0].numpy()
  params = {"params": flat_to_tree(inception.convert_torch_state_dict(sd))}
  got = inception.make_feature_fn(params, batch_size=2)(u8)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


# --------------------------------------------------------------------------- stats


def test_stats_round_trip_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(6, 2048)).astype(np.float32)
  mu, sigma = inception.reference_stats(features)
  assert mu.dtype == np.float64 and sigma.shape == (2048, 2048)
  np.testing.assert_allclose(mu, features.astype(np.float64).mean(0))
  np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False))

  path = str(tmp_path / "stats" / "ref")  # no .npz suffix: kept as given
  inception.save_stats(path, mu, sigma)
  mu2, sigma2 = inception.load_stats(path)
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)

  with pytest.raises(FileNotFoundError, match="nope.npz"):
    inception.load_stats(str(tmp_path / "nope.npz"))
  np.savez(tmp_path / "no_sigma.npz", mu=mu)
  with pytest.raises(DataError, match=r"lacks \['sigma'\]"):
    inception.load_stats(str(tmp_path / "no_sigma.npz"))
  small = str(tmp_path / "small.npz")
  inception.save_stats(small, np.zeros(10), np.eye(10))
  with pytest.raises(DataError, match="10-d features; expected 2048-d"):
    inception.load_stats(small)
  assert inception.load_stats(small, dim=None)[1].shape == (10, 10)
  np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(4))
  with pytest.raises(DataError, match="mu must be"):
    inception.load_stats(str(tmp_path / "bad.npz"), dim=None)
  with pytest.raises(DataError, match="mu must be"):
    inception.save_stats(str(tmp_path / "x.npz"), np.zeros(3), np.zeros(3))
