"""Encoding a folder of images into the VAE latents that the `latents` data source reads.

Every image is read as RGB, cut to a `size` x `size` centre crop (`images.center_crop`,
as the papers prepare ImageNet), scaled to [-1, 1] and encoded; the posterior mean of
the VAE (`models.vae`), unscaled, is stored row for row in a `.npy` `[N, size/f, size/f,
c]` (f the VAE's downsampling factor), with the class of each image in
`<name>.labels.npy` beside it. That is what `data.source = "latents"` memory-maps
(`data.latent_scale` applied as batches are drawn).

The array is written in place as batches finish; `<name>.progress.json` records how
many rows are done and what is being encoded (the file list, the crop size, the VAE
file), so an interrupted job rerun with the same arguments continues where it
stopped, and one with other arguments is refused. The progress file is removed when
the last row is written.
"""
import hashlib
import json
import os
from concurrent import futures

import numpy as np
from tqdm.auto import tqdm

from meanflow_jax.data import images as image_data
from meanflow_jax.errors import ConfigError
from meanflow_jax.models import vae as vae_lib


def labels_path(out):
  """Where the labels of latents `out` (`.npy`) live: `<name>.labels.npy`."""
  return out[:-len(".npy")] + ".labels.npy"


def progress_path(out):
  return out[:-len(".npy")] + ".progress.json"


def _job(files, size, vae_path):
  """What identifies an encoding job: a hash of its file list, the crop size, the VAE
  file's size and modification time."""
  digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
  stat = os.stat(vae_path)
  return {"files_sha256": digest, "num": len(files), "size": int(size),
          "vae": os.path.abspath(vae_path), "vae_bytes": stat.st_size}


def _write_json(path, obj):
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)  # a kill leaves the old record or the new one, whole


def encode_folder(path, out, vae_path, *, size=256, batch=64, workers=8, progress=True,
                  devices=None):
  """Encodes the images of the class folders under `path` into latents `out` (`.npy`).

  Args:
    path: a folder of class subfolders (`images.list_folder`), e.g. imagenet/train.
    out: the `.npy` to write (and `<name>.labels.npy`, `<name>.progress.json`).
    vae_path: converted VAE weights (`models.vae.load_params`).
    size: the side of the centre crop, in pixels (a multiple of the VAE's factor).
    batch: images per encoder call, split over `devices` (default: this process's).
    workers: threads reading and cropping images while the encoder runs.

  Returns:
    (rows written now, total rows).
  Raises:
    ConfigError for an `out` that is not a `.npy`, a finished file, or a partial one
    from another job; DataError for a folder without images or an unreadable image.
  """
  if not out.endswith(".npy"):
    raise ConfigError(f"--out must name a .npy file; got {out!r}.")
  if batch < 1 or workers < 1:
    raise ConfigError(f"batch and workers must be >= 1; got {batch} and {workers}.")
  files, labels, classes = image_data.list_folder(path)
  params, config = vae_lib.load_params(vae_path)
  factor = 2 ** (len(config.channels) - 1)
  if size < factor or size % factor:
    raise ConfigError(f"size must be a positive multiple of the VAE's downsampling factor "
                      f"{factor}; got {size}.")
  job = _job(files, size, vae_path)
  shape = (len(files), size // factor, size // factor, config.latent_channels)
  done = _resume_point(out, job, shape)
  if done == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.save(labels_path(out), labels)
    latents = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)
    _write_json(progress_path(out), dict(job, done=0, classes=classes))
  else:
    latents = np.load(out, mmap_mode="r+")
  encode = vae_lib.make_encoder(params, config, batch_size=batch, devices=devices)
  starts = range(done, len(files), batch)
  read = lambda i: image_data.read_center_crops(files[i:i + batch], size)
  with futures.ThreadPoolExecutor(workers) as pool:
    # The next batch is read while this one is encoded.
    ahead = pool.submit(read, starts[0]) if starts else None
    for i in (tqdm(starts, desc="encoding", unit="batch", initial=0) if progress else starts):
      x = ahead.result()
      ahead = pool.submit(read, i + batch) if i + batch < len(files) else None
      mean, _ = encode(x)
      latents[i:i + x.shape[0]] = mean
      latents.flush()  # the rows first, then the record that they are there
      _write_json(progress_path(out), dict(job, done=i + x.shape[0], classes=classes))
  del latents
  os.remove(progress_path(out))
  return len(files) - done, len(files)


def _resume_point(out, job, shape):
  """Rows of `out` already written by this same job (0 for a new file)."""
  record = progress_path(out)
  if not os.path.exists(out):
    return 0
  if not os.path.exists(record):
    raise ConfigError(f"{out} exists and is complete (no {os.path.basename(record)} beside "
                      "it); remove it to encode again, or name another --out.")
  with open(record) as f:
    saved = json.load(f)
  changed = [k for k in job if saved.get(k) != job[k]]
  if changed:
    raise ConfigError(f"{out} is a partial encoding of another job ({', '.join(changed)} "
                      "differ); rerun with its arguments to finish it, or remove it and "
                      f"{os.path.basename(record)}.")
  existing = np.load(out, mmap_mode="r")
  if existing.shape != shape:
    raise ConfigError(f"{out} has shape {existing.shape}, expected {shape}; remove it.")
  return int(saved["done"])
