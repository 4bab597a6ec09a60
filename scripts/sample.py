"""Writes samples of a trained run with a given number of network evaluations.

  python scripts/sample.py --workdir runs/toy --nfe 1 --num 4000 --seed 0 --out runs/toy/x.npy
  python scripts/sample.py --workdir runs/toy --nfe 2 --noise eps.npy --out x.npy
  python scripts/sample.py --workdir runs/digits --nfe 1 --num 100 --out runs/digits/x.npy
  python scripts/sample.py --workdir runs/digits --nfe 1 --class 7 --num 16 --out sevens.npy
  python scripts/sample.py --workdir runs/digits --nfe 2 --labels labels.npy --out x.npy
  python scripts/sample.py --workdir runs/digits_imf --nfe 1 --omega 4 --interval 0.4,0.65 \
      --num 100 --out runs/digits_imf/x.npy

  python scripts/sample.py --workdir runs/in256_b2 --nfe 1 --num 64 --vae sd_vae_ft_mse.npz \
      --out runs/in256_b2/x.npy

Writes `--out` (float32 [M, D] points, or [M, H, W, C] images in [-1, 1]) and a PNG
beside it: a scatter plot for 2-D points, a grid for images. A run on VAE latents
writes its latents (times data.latent_scale, as it trained on them), or with --vae
(converted SD-VAE weights, scripts/convert_vae_weights.py) the decoded images. Class-conditional
runs sample classes 0, 1, ..., K-1 in turn unless --class or --labels says otherwise.
"""
import os

import jax
import numpy as np
from absl import flags

from meanflow_jax import cli, plotting
from meanflow_jax.data import points
from meanflow_jax.errors import ConfigError, DataError
from meanflow_jax.models import vae as vae_lib
from meanflow_jax.training import inference

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/).")
_NFE = flags.DEFINE_integer("nfe", 1, "Network evaluations per sample.")
_NUM = flags.DEFINE_integer("num", None, "Number of samples (default 1000 points or 100 "
                            "images, or as many as the noise or labels have).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise; sample i uses fold_in(key, i).")
_OUT = flags.DEFINE_string("out", None, "Output .npy file.")
_NOISE = flags.DEFINE_string("noise", None, "Optional .npy noise [M, *data shape] to start from.")
_LABELS = flags.DEFINE_string("labels", None, "Class-conditional runs: .npy int array [M] of "
                              "classes (K = the null class: unconditional).")
_CLASS = flags.DEFINE_integer("class", None, "Class-conditional runs: one class for every sample.")
_PARAMS = flags.DEFINE_enum("params", None, ["ema", "raw"], "Parameters (default: the run's "
                            "sample.params).")
_METHOD = flags.DEFINE_enum("method", None, ["euler", "heun"], "Flow-matching solver.")
_OMEGA = flags.DEFINE_float("omega", None, "iMF, class-conditional: the guidance scale, chosen "
                            "now (default: the run's sample.omega).")
_INTERVAL = flags.DEFINE_list("interval", None, "iMF: the guidance interval t_min,t_max "
                              "(default: the run's sample.t_min, sample.t_max).")
_VAE = flags.DEFINE_string("vae", None, "Runs on VAE latents: VAE weights (.npz) to decode the "
                           "samples into images.")
_BATCH = flags.DEFINE_integer("batch", 64, "Samples per VAE decoder call.")
flags.mark_flags_as_required(["workdir", "out"])


def _load_array(path):
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file.")
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise DataError(f"{path}: not a plain .npy array ({e}).") from e


def _load_noise(path, shape):
  if len(shape) == 1:
    eps = points.load_points(path)  # rank 2, finite, float32
  else:
    eps = _load_array(path)
    if not np.issubdtype(eps.dtype, np.number) or eps.ndim < 1:
      raise DataError(f"{path}: noise must be a float array; got {eps.dtype} {eps.shape}.")
    eps = eps.astype(np.float32)
    if not np.all(np.isfinite(eps)):
      raise DataError(f"{path}: {int((~np.isfinite(eps)).sum())} non-finite values in the noise.")
  if eps.shape[1:] != tuple(shape):
    raise DataError(f"{path}: noise must have shape [M, {', '.join(map(str, shape))}] for this "
                    f"run; got {eps.shape}.")
  return eps


def _labels(run, num):
  """The classes asked for, `[num]`, or None for an unconditional run."""
  k = run.num_classes
  if not k:
    if _LABELS.value or _CLASS.value is not None:
      raise ConfigError("this run is unconditional: --labels and --class do not apply.")
    return None
  if _LABELS.value and _CLASS.value is not None:
    raise ConfigError("give --labels or --class, not both.")
  if _LABELS.value:
    y = _load_array(_LABELS.value)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
      raise DataError(f"{_LABELS.value}: labels must be an int array [M]; got {y.dtype} "
                      f"{y.shape}.")
  elif _CLASS.value is not None:
    y = np.full(num, _CLASS.value)
  else:
    y = np.arange(num) % k
  if y.shape[0] != num:
    raise DataError(f"{y.shape[0]} labels for {num} samples.")
  if ((y < 0) | (y > k)).any():
    raise DataError(f"classes must lie in [0, {k}] ({k} = unconditional); got "
                    f"{sorted(set(y[(y < 0) | (y > k)].tolist()))[:5]}.")
  return y.astype(np.int32)


def main(argv):
  del argv
  if os.path.isdir(_OUT.value):
    raise ConfigError(f"--out {_OUT.value} is a directory; name a .npy file, e.g. "
                      f"{os.path.join(_OUT.value, 'samples.npy')}.")
  if _BATCH.value < 1:
    raise ConfigError(f"--batch must be >= 1; got {_BATCH.value}.")
  if not _OUT.value.endswith(".npy"):
    raise ConfigError(f"--out must name a .npy file; got {_OUT.value!r}.")
  if _NUM.value is not None and _NUM.value < 1:
    raise ConfigError(f"--num must be >= 1; got {_NUM.value}.")
  # What can be checked without the run is checked before its checkpoint is read.
  if _LABELS.value and _CLASS.value is not None:
    raise ConfigError("give --labels or --class, not both.")
  for path in (_NOISE.value, _LABELS.value):
    if path and not os.path.exists(path):
      raise DataError(f"{path}: no such file.")
  run = inference.load_run(_WORKDIR.value, params=_PARAMS.value)
  config, shape = run.config, run.data_shape
  if _VAE.value and config.data.source != "latents":
    raise ConfigError(f"--vae decodes latents; this run trained on {config.data.source!r}.")
  num = _NUM.value
  if _NOISE.value:
    eps = _load_noise(_NOISE.value, shape)
    if num is not None and num != eps.shape[0]:
      raise DataError(f"--num {num} disagrees with the {eps.shape[0]} rows of {_NOISE.value}.")
    num = eps.shape[0]
  elif num is None and _LABELS.value and run.num_classes:
    y = _load_array(_LABELS.value)
    num = y.shape[0] if y.ndim == 1 else None  # a bad shape is reported by _labels
  num = num or (1000 if len(shape) == 1 else 100)
  y = _labels(run, num)
  if not _NOISE.value:
    eps = run.prior.sample(jax.random.key(_SEED.value), num, shape, y)
  sampler = inference.make_sampler(config, run.model, run.params, method=_METHOD.value,
                                   data_stats=run.data_stats)  # samples in data space
  x = np.asarray(sampler(eps, _NFE.value, y, omega=_OMEGA.value,
                         interval=cli.interval(_INTERVAL.value)))
  latents = config.data.source == "latents"
  if latents and _VAE.value:
    params, vae_config = vae_lib.load_params(_VAE.value)
    decode = vae_lib.make_decoder(params, vae_config, batch_size=_BATCH.value)
    x = decode(x * (vae_config.scale / config.data.latent_scale), progress=True)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  np.save(_OUT.value, x)
  print(f"wrote {x.shape[0]} samples ({_NFE.value} NFE, {config.objective}) to {_OUT.value}")
  png = _OUT.value[:-len(".npy")] + ".png"
  guidance = inference.check_guidance(config, _OMEGA.value, cli.interval(_INTERVAL.value))
  title = f"{config.objective}, {_NFE.value} NFE" + (
      "" if guidance is None else f", omega {guidance[0]:g} on [{guidance[1][0]:g}, "
      f"{guidance[1][1]:g}]")
  if shape == (2,):
    log_prob = (points.config_mixture(config.data).log_prob
                if config.data.source == "mixture" else None)
    plotting.scatter([(title, x[:config.sample.num_plot])], png, log_prob=log_prob)
  elif latents and not _VAE.value:
    print("pass --vae to decode the latents into images (and a picture of them)")
    return
  elif len(shape) == 3:
    ncols = run.num_classes if (y is not None and _CLASS.value is None and not _LABELS.value) \
        else int(np.ceil(np.sqrt(x.shape[0])))
    plotting.image_grids([(title, x)], png, ncols=ncols)
  else:
    return
  print(f"wrote {png}")


if __name__ == "__main__":
  cli.run(main)
