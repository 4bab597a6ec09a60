"""Converts diffusers' Stable Diffusion VAE weights to the `.npz` that the JAX VAE loads.

  python scripts/convert_vae_weights.py \
      --torch diffusion_pytorch_model.safetensors --out sd_vae_ft_mse.npz

The input is the `diffusion_pytorch_model.safetensors` (or the older `.bin`) of the
Hugging Face model `stabilityai/sd-vae-ft-mse` (https://huggingface.co/stabilityai/sd-vae-ft-mse,
or `stabilityai/sd-vae-ft-ema`); download it yourself. A `.safetensors` file is read
with the `safetensors` package (`pip install safetensors`; no PyTorch needed), a
`.bin`/`.pt`/`.ckpt` with `torch` (CPU is enough), on this machine or any other: the
`.npz` it writes needs nothing but numpy. Keys of the output are flax parameter paths
(`encoder/down_blocks_0/resnets_1/conv1/kernel`, ...), conv kernels transposed from
OIHW to HWIO, plus the config as `__config__`. The mapping and the check against the
network are `meanflow_jax.models.vae.convert_torch_state_dict`.
"""
import os

from absl import flags

from meanflow_jax import cli
from meanflow_jax.errors import ConfigError
from meanflow_jax.models import vae

_TORCH = flags.DEFINE_string("torch", None, f"diffusers VAE weights ({vae.WEIGHTS_FILE} of "
                             f"{vae.HUB_MODEL}, or its .bin).")
_OUT = flags.DEFINE_string("out", "sd_vae_ft_mse.npz", "Output .npz of flax parameters.")
flags.mark_flags_as_required(["torch"])


def _read_safetensors(path):
  try:
    from safetensors.numpy import load_file
  except ImportError:
    raise ConfigError("reading a .safetensors file needs `pip install safetensors` (no "
                      "PyTorch needed), or convert on a machine that has it and copy the .npz.")
  try:
    return load_file(path)
  except TypeError:  # bfloat16 tensors, which numpy cannot hold: read them through torch
    _import_torch("this .safetensors file has bfloat16 tensors; reading them needs PyTorch")
    from safetensors.torch import load_file as load_torch
    return {k: v.float().numpy() for k, v in load_torch(path).items()}


def _import_torch(why):
  try:
    import torch
    return torch
  except ImportError:
    raise ConfigError(f"{why}: `pip install torch` (the CPU build is enough), or convert on "
                      "a machine that has it and copy the .npz.")


def _read_torch(path):
  torch = _import_torch("reading a .bin/.pt/.ckpt file needs PyTorch")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except TypeError:  # torch older than 1.13 has no weights_only
    state = torch.load(path, map_location="cpu")
  if isinstance(state, dict) and "state_dict" in state:
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict.")
  return {k: v.detach().float().cpu().numpy() for k, v in state.items()}


def _load_state_dict(path):
  if not os.path.isfile(path):
    raise vae.MissingFileError(
        f"{path!r} not found. Download {vae.WEIGHTS_FILE} of {vae.HUB_MODEL} from Hugging Face "
        "(see this script's docstring).")
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  return _read_torch(path)


def main(argv):
  del argv
  config = vae.VAEConfig()
  flat = vae.convert_torch_state_dict(_load_state_dict(_TORCH.value), config)
  vae.save_params(_OUT.value, flat, config)
  count = sum(v.size for v in flat.values())
  print(f"wrote {_OUT.value}: {len(flat)} arrays, {count:,} weights")


if __name__ == "__main__":
  cli.run(main)
