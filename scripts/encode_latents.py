"""Encodes a folder of images into VAE latents for training on them (`data.source = latents`).

  python scripts/encode_latents.py --source folder --path imagenet/train \
      --vae sd_vae_ft_mse.npz --out imagenet256_latents.npy --size 256

The folder holds one subfolder per class (ImageNet's train/ as distributed). Every image
is cut to its centre square and resized to --size (as the MeanFlow papers prepare
ImageNet 256), encoded by the VAE (weights from scripts/convert_vae_weights.py), and
the posterior mean written, unscaled, to --out [N, size/8, size/8, 4] with the labels
in <name>.labels.npy; batches are split over this machine's devices. Interrupted, the
same command continues where it stopped (<name>.progress.json records how far it got).
Then train on it, e.g.:

  python scripts/train.py --config configs/imagenet_dit.py:B/2 --workdir runs/in256_b2 \
      --config.data.path=imagenet256_latents.npy
"""
from absl import flags

from meanflow_jax import cli, latents

_SOURCE = flags.DEFINE_enum("source", "folder", ["folder"], "Image source: a folder of class "
                            "subfolders.")
_PATH = flags.DEFINE_string("path", None, "The folder (e.g. imagenet/train).")
_VAE = flags.DEFINE_string("vae", None, "VAE weights (.npz, scripts/convert_vae_weights.py).")
_OUT = flags.DEFINE_string("out", None, "Output .npy of latents.")
_SIZE = flags.DEFINE_integer("size", 256, "Side of the centre crop, in pixels.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per encoder call (split over the devices).")
_WORKERS = flags.DEFINE_integer("workers", 8, "Threads reading and cropping images.")
flags.mark_flags_as_required(["path", "vae", "out"])


def main(argv):
  del argv
  new, total = latents.encode_folder(_PATH.value, _OUT.value, _VAE.value, size=_SIZE.value,
                                     batch=_BATCH.value, workers=_WORKERS.value)
  print(f"wrote {_OUT.value} ({total} latents, {new} encoded now) and "
        f"{latents.labels_path(_OUT.value)}")


if __name__ == "__main__":
  cli.run(main)
