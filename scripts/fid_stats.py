"""FID reference statistics (Inception pool3 mean and covariance) of a data source.

  python scripts/fid_stats.py --source cifar10 --inception inception_fid.npz \
      --out cifar10_train_stats.npz
  python scripts/fid_stats.py --source folder --path my_images/ --inception inception_fid.npz \
      --out mine.npz
  python scripts/fid_stats.py --source folder --path imagenet/train --size 256 \
      --inception inception_fid.npz --out imagenet256_stats.npz

With --size, a folder of photos of any size is read a batch at a time, each image cut to
its centre square of that size as scripts/encode_latents.py cuts it, and only running
sums of the features are kept (ImageNet's 1.28M images never sit in memory).

Writes the common .npz format (`mu` [2048], `sigma` [2048, 2048], float64), which
scripts/evaluate.py --ref reads, as do most published statistics files.
"""
from absl import flags

from tqdm.auto import tqdm

from meanflow_jax import cli
from meanflow_jax.data import images
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import frechet, inception

_SOURCE = flags.DEFINE_enum("source", None, [s for s in images.SOURCES if s != "latents"],
                            "Image source (as data.source in the configs).")
_PATH = flags.DEFINE_string("path", "", "File or directory of the array/folder sources, "
                            "tfds data_dir of cifar10.")
_INCEPTION = flags.DEFINE_string("inception", None, "FID Inception weights (.npz).")
_OUT = flags.DEFINE_string("out", None, "Output .npz.")
_BATCH = flags.DEFINE_integer("batch", 100, "Images per Inception call.")
_SIZE = flags.DEFINE_integer("size", None, "--source folder: centre crops of this size, read "
                             "a batch at a time (photos of any size, e.g. ImageNet at 256).")
flags.mark_flags_as_required(["source", "inception", "out"])


def _folder_crops(params):
  """(mu, sigma, count) of the centre crops of every image in the folder, streamed."""
  files, _, _ = images.list_folder(_PATH.value)
  features = inception.make_feature_fn(params, batch_size=_BATCH.value)
  stats = frechet.RunningStats(inception.FEATURE_DIM)
  for i in tqdm(range(0, len(files), _BATCH.value), desc="Inception features", unit="batch"):
    stats.update(features(images.read_center_crops(files[i:i + _BATCH.value], _SIZE.value)))
  return (*stats.gaussian(), stats.count)


def main(argv):
  del argv
  if _SIZE.value is not None and (_SOURCE.value != "folder" or _SIZE.value < 1):
    raise ConfigError("--size (a positive crop size) applies to --source folder only.")
  params = inception.load_params(_INCEPTION.value)  # fails fast, before the data is read
  if _SIZE.value:
    mu, sigma, count = _folder_crops(params)
    inception.save_stats(_OUT.value, mu, sigma)
    print(f"wrote {_OUT.value}: statistics of {count} centre crops of {_SIZE.value}x"
          f"{_SIZE.value}")
    return
  x, _, _ = images.load_images(_SOURCE.value, path=_PATH.value)
  features = inception.make_feature_fn(params, batch_size=_BATCH.value)(x, progress=True)
  mu, sigma = inception.reference_stats(features)
  inception.save_stats(_OUT.value, mu, sigma)
  print(f"wrote {_OUT.value}: statistics of {x.shape[0]} {_SOURCE.value} images")


if __name__ == "__main__":
  cli.run(main)
