"""Improved MeanFlow (iMF) on the built-in 8-mode 2-D mixture, unconditional: the same
MLP, times, optimiser and budget as configs/toy.py (MeanFlow) with iMF's two heads,
its compound-velocity loss and the network's own velocity as the JVP's tangent.

  python scripts/train.py --config configs/toy_imf.py --workdir runs/toy_imf
  python scripts/evaluate.py --workdir runs/toy_imf --nfe 1 2 4
"""
from configs import toy


def get_config():
  c = toy.get_config()
  c.objective = "imf"
  return c
