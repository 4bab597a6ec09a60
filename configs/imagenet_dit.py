"""MeanFlow DiT on ImageNet 256 latents, the paper's recipe; the variant is the config's argument.

  python scripts/train.py --config configs/imagenet_dit.py:B/2 --workdir runs/in256_b2 \
      --config.data.path=/data/imagenet256_sd_latents.npy

The latents come from the images with scripts/encode_latents.py; FID during training and
at the end with scripts/evaluate.py --vae (README, "ImageNet 256, from the raw images to the
FID table").

data.path: precomputed SD-VAE (ft-mse) latents [N, 32, 32, 4], unscaled (the 0.18215
factor is applied when batches are drawn): a .npy, memory-mapped, with its labels
[N] in `<name>.labels.npy` beside it; or a small .npz with `images` (or `x`) and
`labels` (or `y`), which is read whole. Variants: B/2, M/2, L/2, XL/2
(the paper's sizes) and S/2, XL/2+ (XL/2 with the 1000-epoch guidance setting).
Guidance per size as in the paper (omega, kappa, t interval); the 1-NFE FID-50k the
paper reports: B/2 6.17, M/2 5.01, L/2 3.84, XL/2 3.43.
"""
from configs import default

# variant -> (omega, kappa, (t_min, t_max)), from the paper.
GUIDANCE = {
    "S/2": (1.0, 0.5, (0.0, 1.0)),
    "B/2": (1.0, 0.5, (0.0, 1.0)),
    "M/2": (1.0, 0.5, (0.0, 1.0)),
    "L/2": (0.2, 0.92, (0.0, 0.8)),
    "XL/2": (0.2, 0.92, (0.0, 0.75)),
    "XL/2+": (1.0, 0.5, (0.3, 0.8)),
}
IMAGENET_TRAIN = 1_281_167


def get_config(variant="B/2"):
  if variant not in GUIDANCE:
    raise ValueError(f"unknown variant {variant!r}; use one of {sorted(GUIDANCE)}.")
  c = default.get_config()
  c.data.source = "latents"
  c.data.latent_scale = 0.18215
  c.model.name = "dit"
  c.model.variant = variant.rstrip("+")
  c.model.num_classes = 1000
  c.time.distribution = "logit_normal"
  c.time.mu, c.time.sigma = -0.4, 1.0
  c.time.ratio_r_neq_t = 0.25
  c.loss.p, c.loss.c = 1.0, 1e-3
  omega, kappa, (t_min, t_max) = GUIDANCE[variant]
  c.guidance.label_dropout = 0.1
  c.guidance.omega, c.guidance.kappa = omega, kappa
  c.guidance.t_min, c.guidance.t_max = t_min, t_max
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-4
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.train.batch_size = 256
  epochs = 1000 if variant.endswith("+") else 240
  c.train.steps = epochs * IMAGENET_TRAIN // 256
  c.train.ema_decays = (0.9999,)
  c.train.log_every = 100
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 0  # latents: the grids would need the VAE decoder
  return c
