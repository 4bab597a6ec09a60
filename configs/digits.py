"""Class-conditional MeanFlow DiT on scikit-learn's 8x8 digits: the `make demo` job.

  python scripts/train.py --config configs/digits.py --workdir runs/digits
  python scripts/evaluate.py --workdir runs/digits --nfe 1 2 4

About four minutes of training on 2 CPU cores (2,000 steps of batch 128, ~9 steps/s).
Why these values (measured with scripts/evaluate.py, BENCHMARKS.md section 5):
- DiT 4 x 128, patch 2 (16 tokens of 2x2 pixels): the paper's architecture, small.
- time_scale 10: with 100 the 1-NFE classifier FD was 97 after 2,000 steps, with 10 it
  was 41; with 1000 the MeanFlow loss grows instead of falling on this budget.
- guidance omega 1, kappa 0.5 (scale 2, the paper's B/2 setting), 10 % label dropout.
- times and loss weight from the paper's CIFAR-10 recipe: logit-normal(-2, 2), 75 %
  of samples with r != t, p = 0.75.
- EMA 0.995: an EMA of 0.999 still holds 13 % of the initial (zero-output) network
  after 2,000 steps.
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
  c.model.dit.time_scale = 10.0
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
  c.train.steps = 2000
  c.train.ema_decays = (0.995,)
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.sample_every = 500
  return c
