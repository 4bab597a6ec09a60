"""Converts pytorch-fid's FID Inception weights to the `.npz` that the JAX network loads.

  python scripts/convert_inception_weights.py \
      --torch pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The input is the standard FID weights file of pytorch-fid (its GitHub releases,
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth,
a port of TensorFlow's 2015-12-05 Inception graph); download it yourself. Reading it
needs `torch` (CPU is enough), on this machine or any other: the `.npz` it writes
needs nothing but numpy. Keys of the output are flax parameter paths
(`Mixed_5b/branch1x1/conv/kernel`, `.../bn/scale`, ...), conv kernels transposed from
OIHW to HWIO; the 1008-way classifier is dropped. The mapping and the check against
the network are `meanflow_jax.metrics.inception.convert_torch_state_dict`.
"""
import os

import numpy as np
from absl import flags

from meanflow_jax import cli
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import inception

_TORCH = flags.DEFINE_string("torch", None, f"PyTorch state dict ({inception.WEIGHTS_FILE}).")
_OUT = flags.DEFINE_string("out", "inception_fid.npz", "Output .npz of flax parameters.")
flags.mark_flags_as_required(["torch"])


def _load_state_dict(path):
  try:
    import torch
  except ImportError:
    raise ConfigError("reading the .pth file needs PyTorch: `pip install torch` (the CPU "
                      "build is enough), or convert on a machine that has it and copy the .npz.")
  if not os.path.isfile(path):
    raise inception.MissingFileError(
        f"{path!r} not found. Download {inception.WEIGHTS_FILE} from the pytorch-fid GitHub "
        "releases (URL in this script's docstring).")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except TypeError:  # torch older than 1.13 has no weights_only
    state = torch.load(path, map_location="cpu")
  if not isinstance(state, dict):
    raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict.")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def main(argv):
  del argv
  flat = inception.convert_torch_state_dict(_load_state_dict(_TORCH.value))
  out = _OUT.value
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "wb") as f:  # a file object: np.savez would append '.npz' to other names
    np.savez(f, **flat)
  count = sum(v.size for k, v in flat.items() if not k.endswith(("/mean", "/var")))
  print(f"wrote {out}: {len(flat)} arrays, {count:,} weights (plus batch-norm statistics)")


if __name__ == "__main__":
  cli.run(main)
