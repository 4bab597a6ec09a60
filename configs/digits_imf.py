"""Improved MeanFlow (iMF) on scikit-learn's 8x8 digits: guidance chosen at sampling time.

  python scripts/train.py --config configs/digits_imf.py --workdir runs/digits_imf
  python scripts/evaluate.py --workdir runs/digits_imf --nfe 1 2 4 --omega 1,1.5,2,3,4
  python scripts/sample.py --workdir runs/digits_imf --nfe 1 --omega 2 --num 100 \
      --out runs/digits_imf/x.npy

The same DiT, data, times, optimiser and budget as configs/digits.py (MeanFlow), so the
two compare at equal cost; what differs is iMF's: the u and v heads, the guidance
scale omega in [1, 1 + imf.s_max] and the interval drawn per sample and embedded by the
network, half the samples with r != t, the guided target from one 2B pass, and the
paper's loss weight (p = 1, c = 0.01).
"""
from configs import digits


def get_config():
  c = digits.get_config()
  c.objective = "imf"
  c.guidance.omega, c.guidance.kappa = 1.0, 0.0  # MeanFlow's fixed guidance: not iMF's
  c.time.ratio_r_neq_t = 0.5
  c.loss.p, c.loss.c = 1.0, 0.01
  c.imf.s_max = 7.0
  c.sample.omega = 2.0
  return c
