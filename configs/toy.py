"""MeanFlow on the built-in 8-mode 2-D mixture; about two minutes on a 2-core CPU.

  python scripts/train.py --config configs/toy.py --workdir runs/toy
  python scripts/train.py --config configs/toy.py --workdir runs/toy_fm \
      --config.objective=flow_matching --config.loss.p=0

Why these values (measured with scripts/evaluate.py against the exact flow map):
- times: logit-normal(-2, 2), the paper's CIFAR-10 choice, puts mass at small t,
  where the modes take their shape; with (-0.4, 1) the modes came out as thin cones.
- loss.p = 0.5: the adaptive weight trades bias for variance. A larger p makes
  the loss robust, and the minimiser of a robust loss is not the conditional
  mean: the learned field splits the mass between modes wrongly (mode TV 0.04 at
  p = 1). A smaller p keeps the mean but lets the noisy targets through: 22 % of
  samples land between modes at p = 0, 3.6 % at p = 0.4. BENCHMARKS.md has the sweep.
- lr 2e-3 with a cosine decay over 12k steps: the most the 2-minute budget gives.
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
  c.time.sigma = 2.0
  c.time.ratio_r_neq_t = 0.75
  c.loss.p = 0.5
  c.loss.c = 1e-3
  c.optimizer.lr = 2e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.schedule = "cosine"
  c.train.steps = 12_000
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.checkpoint_every = 2_000
  c.train.sample_every = 2_000
  if variant == "v1":
    c.data.standardize = False
  elif variant:
    raise ValueError(f"configs/toy.py has the variants '' and 'v1'; got {variant!r}.")
  return c
