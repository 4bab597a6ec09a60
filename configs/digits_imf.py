"""Improved MeanFlow (iMF) on scikit-learn's 8x8 digits: guidance chosen at sampling time.

  python scripts/train.py --config configs/digits_imf.py --workdir runs/digits_imf
  python scripts/evaluate.py --workdir runs/digits_imf --nfe 1 2 4 --omega 1,1.25,1.5,2,3
  python scripts/sample.py --workdir runs/digits_imf --nfe 1 --omega 1.5 --num 100 \
      --out runs/digits_imf/x.npy

The same DiT, data, times, optimiser and budget as configs/digits.py (MeanFlow), so the
two compare at equal steps; what differs is iMF's: the u and v heads, the guidance scale
omega and the interval drawn per sample and embedded by the network, the guided target
from one 2B pass with the network's own velocity as the JVP's tangent.

Why these values (BENCHMARKS.md, "Improved MeanFlow"; 1-NFE clf_fd at the best omega,
seed 0): the paper's loss weight and fractions (p = 1, c = 0.01, half the samples with
r != t, omega on [1, 8]) gave 17.6 sampled on [0, 1] and 15.8 on [0.2, 0.8];
MeanFlow-digits' weight (p = 0.75, c = 1e-3) alone 16.6 (on [0, 1]); that weight with 75 %
of samples r != t and omega on [1, 4] (s_max = 3) 8.7 (on [0.2, 0.8]). Sample inside the
trained intervals: r != t samples never saw [0, 1].
"""
from configs import digits


def get_config():
  c = digits.get_config()
  c.objective = "imf"
  c.guidance.omega, c.guidance.kappa = 1.0, 0.0  # MeanFlow's fixed guidance: not iMF's
  c.time.ratio_r_neq_t = 0.75
  c.loss.p, c.loss.c = 0.75, 1e-3
  c.imf.s_max = 3.0
  c.sample.omega = 1.25
  c.sample.t_min, c.sample.t_max = 0.2, 0.8
  return c
