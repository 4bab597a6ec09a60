"""MeanFlow (Geng et al. 2025): regress the average velocity u(z_t, r, t) on
u_tgt = sg(v - (t - r) d/dt u), d/dt u from one `jax.jvp`; sample by jumps
z_r = z_t - (t - r) u(z_t, r, t), one evaluation each."""
from meanflow_jax import sampling
from meanflow_jax.objectives import losses
from meanflow_jax.objectives.registry import AverageVelocity, register


class MeanFlow(AverageVelocity):
  name = "meanflow"
  default_nfe = 1

  def loss(self, net, x, eps, *, t, r, v, loss_cfg, extra=None, rows=None, cond=None):
    return losses.meanflow_loss(net, x, eps, t=t, r=r, v=v, p=loss_cfg.p, c=loss_cfg.c,
                                extra=extra, rows=rows, cond=cond)

  def generate(self, net, eps, nfe, method):
    del method  # MeanFlow samples by its own jumps
    return sampling.meanflow_sample(net, eps, int(nfe))


MEANFLOW = register(MeanFlow())
