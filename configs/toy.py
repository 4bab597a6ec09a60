"""MeanFlow on the built-in 8-mode 2-D mixture; about three minutes on a 2-core CPU.

  python scripts/train.py --config configs/toy.py --workdir runs/toy
  python scripts/train.py --config configs/toy.py --workdir runs/toy_fm \
      --config.objective=flow_matching --config.loss.p=0

Why these values (measured against the exact flow map: scripts/evaluate.py on ring8,
scripts/study_mixture_family.py on the tuning mixtures of `data.points.FAMILY`):
- times: logit-normal(-2, 2.5) puts mass at small t, where the modes take their shape,
  and its wide tails give the long intervals (r near 0, t near 1) that one step uses;
  with (-0.4, 1) the modes came out as thin cones, sigma 2 left more samples off the modes.
- loss.p = 0.1: the adaptive weight trades bias for variance. A larger p makes the loss
  robust, and the minimiser of a robust loss is not the conditional mean: the learned
  flow splits the mass between modes wrongly even at 16 NFE (mode TV 0.047 at p = 0.25
  on a 7-mode mixture, 0.028 at p = 0.1). p = 0 keeps the mean but lets the noisy
  targets through. BENCHMARKS.md has both sweeps.
- ratio_r_neq_t = 0.5 and lr 4e-3 with a cosine decay over 12k steps: the most the
  3-minute budget gives; EMA 0.9995 or 0.9999, a 512-wide MLP at the same cost and
  Fourier features of z were no better at one step.
- model.mlp.time_scale = 100: 1 is too smooth in t, 1000 too rough for a JVP.
"""
from configs import default


def get_config(variant=""):
  """`variant` "v1": the values before standardisation and the mixture-family tuning
  (BENCHMARKS.md sections 1-12 ran with them): `--config configs/toy.py:v1`."""
  c = default.get_config()
  c.model.mlp.width = 256
  c.model.mlp.depth = 4
  c.model.mlp.time_scale = 100.0
  c.time.distribution = "logit_normal"
  c.time.mu = -2.0
  c.time.sigma = 2.5
  c.time.ratio_r_neq_t = 0.5
  c.loss.p = 0.1
  c.loss.c = 1e-3
  c.optimizer.lr = 4e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.schedule = "cosine"
  c.train.steps = 12_000
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.checkpoint_every = 2_000
  c.train.sample_every = 2_000
  if variant == "v1":
    c.data.standardize = False
    c.time.sigma, c.time.ratio_r_neq_t, c.loss.p, c.optimizer.lr = 2.0, 0.75, 0.5, 2e-3
  elif variant:
    raise ValueError(f"configs/toy.py has the variants '' and 'v1'; got {variant!r}.")
  return c
