"""Improved MeanFlow on ImageNet 256 latents with the paper's in-context DiT; the variant
is the config's argument.

  python scripts/train.py --config configs/imagenet_imf.py:B/2 --workdir runs/in256_imf_b2 \
      --config.data.path=/data/imagenet256_sd_latents.npy
  python scripts/sample.py --workdir runs/in256_imf_b2 --nfe 1 --num 64 --omega 4 \
      --vae sd_vae_ft_mse.npz --out x.npy
  python scripts/dryrun.py --config configs/imagenet_imf.py:XL/2 --data_shape 32,32,4 \
      --fake_devices 8 --batch 256

Data as in configs/imagenet_dit.py (SD-VAE latents [N, 32, 32, 4], scaled by 0.18215).
iMF's recipe (REFERENCE.md): t, r two logit-normal(-0.4, 1) draws with half the samples
r = t, omega per sample log-uniform on [1, 8] (s_max 7) and the interval t_min ~ U(0, 0.5),
t_max ~ U(0.5, 1), 10 % label dropout, the loss weight p = 1, c = 0.01; the optimiser,
batch and EMA of MeanFlow's recipe. The sampling defaults are the paper's for 1 NFE:
B/2 omega 8.0 on [0.4, 0.65], M/2 and L/2 10.5 on [0.4, 0.6], XL/2 8.0 on [0.42, 0.62]
(for 2 NFE it used 4.0 on [0.36, 0.64]: `sample.py --nfe 2 --omega 4 --interval 0.36,0.64`).
Note: omega 10.5 lies outside the trained [1, 8]; the paper samples there and so does this
config (sample.py warns). 1-NFE FID-50k the paper reports: B/2 3.39, M/2 2.27, L/2 1.86,
XL/2 1.72 (2 NFE 1.54).
"""
from configs import imagenet_dit

# variant -> (omega, (t_min, t_max)) at sampling, 1 NFE, from the paper.
SAMPLING = {
    "B/2": (8.0, (0.4, 0.65)),
    "M/2": (10.5, (0.4, 0.6)),
    "L/2": (10.5, (0.4, 0.6)),
    "XL/2": (8.0, (0.42, 0.62)),
}


def get_config(variant="B/2"):
  if variant not in SAMPLING:
    raise ValueError(f"unknown variant {variant!r}; use one of {sorted(SAMPLING)}.")
  c = imagenet_dit.get_config("B/2")
  c.objective = "imf"
  c.model.name = "imf_dit"
  c.model.variant = variant
  c.guidance.omega, c.guidance.kappa = 1.0, 0.0  # MeanFlow's fixed guidance: not iMF's
  c.guidance.t_min, c.guidance.t_max = 0.0, 1.0
  c.time.ratio_r_neq_t = 0.5
  c.loss.p, c.loss.c = 1.0, 0.01
  c.imf.s_max, c.imf.beta = 7.0, 1.0
  omega, (t_min, t_max) = SAMPLING[variant]
  c.sample.omega, c.sample.t_min, c.sample.t_max = omega, t_min, t_max
  c.train.steps = 240 * imagenet_dit.IMAGENET_TRAIN // 256
  return c
