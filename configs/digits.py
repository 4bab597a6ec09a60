"""Class-conditional MeanFlow DiT on scikit-learn's 8x8 digits: the `make demo` job.

  python scripts/train.py --config configs/digits.py --workdir runs/digits
  python scripts/evaluate.py --workdir runs/digits --nfe 1 2 4
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.source = "digits"
  c.model.name = "dit"
  c.model.num_classes = 10
  c.model.dit.patch_size = 2
  c.model.dit.hidden_size = 128
  c.model.dit.depth = 4
  c.model.dit.num_heads = 4
  c.model.dit.mlp_ratio = 4.0
  c.model.dit.time_scale = 100.0
  c.time.distribution = "logit_normal"
  c.time.mu, c.time.sigma = -2.0, 2.0
  c.time.ratio_r_neq_t = 0.75
  c.loss.p, c.loss.c = 0.75, 1e-3
  c.guidance.label_dropout = 0.1
  c.guidance.omega, c.guidance.kappa = 1.0, 0.5
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.schedule = "cosine"
  c.train.batch_size = 128
  c.train.steps = 4000
  c.train.ema_decays = (0.999,)
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  return c
