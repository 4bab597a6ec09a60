"""FID reference statistics (Inception pool3 mean and covariance) of a data source.

  python scripts/fid_stats.py --source cifar10 --inception inception_fid.npz \
      --out cifar10_train_stats.npz
  python scripts/fid_stats.py --source folder --path my_images/ --inception inception_fid.npz \
      --out mine.npz

Writes the common .npz format (`mu` [2048], `sigma` [2048, 2048], float64), which
scripts/evaluate.py --ref reads, as do most published statistics files.
"""
from absl import flags

from meanflow_jax import cli
from meanflow_jax.data import images
from meanflow_jax.metrics import inception

_SOURCE = flags.DEFINE_enum("source", None, [s for s in images.SOURCES if s != "latents"],
                            "Image source (as data.source in the configs).")
_PATH = flags.DEFINE_string("path", "", "File or directory of the array/folder sources, "
                            "tfds data_dir of cifar10.")
_INCEPTION = flags.DEFINE_string("inception", None, "FID Inception weights (.npz).")
_OUT = flags.DEFINE_string("out", None, "Output .npz.")
_BATCH = flags.DEFINE_integer("batch", 100, "Images per Inception call.")
flags.mark_flags_as_required(["source", "inception", "out"])


def main(argv):
  del argv
  params = inception.load_params(_INCEPTION.value)  # fails fast, before the data is read
  x, _, _ = images.load_images(_SOURCE.value, path=_PATH.value)
  features = inception.make_feature_fn(params, batch_size=_BATCH.value)(x, progress=True)
  mu, sigma = inception.reference_stats(features)
  inception.save_stats(_OUT.value, mu, sigma)
  print(f"wrote {_OUT.value}: statistics of {x.shape[0]} {_SOURCE.value} images")


if __name__ == "__main__":
  cli.run(main)
