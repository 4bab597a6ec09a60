"""MeanFlow on the built-in 8-mode 2-D mixture; about two minutes on a 2-core CPU.

  python scripts/train.py --config configs/toy.py --workdir runs/toy
  python scripts/train.py --config configs/toy.py --workdir runs/toy_fm --config.objective=flow_matching
"""
from configs import default


def get_config():
  c = default.get_config()
  c.train.steps = 6_000
  c.train.batch_size = 256
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.schedule = "cosine"
  c.time.distribution = "logit_normal"
  c.time.mu = -0.4
  c.time.sigma = 1.0
  c.time.ratio_r_neq_t = 0.5
  c.loss.p = 1.0
  c.loss.c = 1e-3
  c.train.log_every = 100
  c.train.checkpoint_every = 2_000
  return c
