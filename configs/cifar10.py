"""Unconditional MeanFlow U-Net on CIFAR-10, the paper's recipe (1-NFE FID-50k 2.92 reported).

  pip install 'meanflow_jax[cifar10]'    # tensorflow-datasets; the data is downloaded once by tfds
  python scripts/train.py --config configs/cifar10.py --workdir runs/cifar10

The paper also uses EDM-style augmentation, which is not implemented here (only
horizontal flips); expect a higher FID without it. The warm-up length is not given
in the paper; 10k steps is this config's choice.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.source = "cifar10"
  c.data.flip = True
  c.model.name = "unet"
  c.model.variant = "cifar10"   # ~55M parameters, dropout 0.2
  c.model.unet.dropout = 0.2
  c.model.num_classes = 0
  c.time.distribution = "logit_normal"
  c.time.mu, c.time.sigma = -2.0, 2.0
  c.time.ratio_r_neq_t = 0.75
  c.loss.p, c.loss.c = 0.75, 1e-3
  c.optimizer.name = "adam"
  c.optimizer.lr = 6e-4
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.warmup_steps = 10_000
  c.optimizer.schedule = "constant"
  c.train.batch_size = 1024
  c.train.steps = 800_000
  c.train.ema_decays = (0.9999, 0.99995, 0.9996)
  c.train.log_every = 100
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 10_000
  return c
