"""MeanFlow (Geng et al. 2025): regress the average velocity u(z_t, r, t) on
u_tgt = sg(v - (t - r) d/dt u), d/dt u from one `jax.jvp`; sample by jumps
z_r = z_t - (t - r) u(z_t, r, t), one evaluation each."""
from meanflow_jax import sampling, timesteps
from meanflow_jax.objectives import losses
from meanflow_jax.objectives.registry import Objective, register


class MeanFlow(Objective):
  name = "meanflow"
  default_nfe = 1
  reads = ("time.ratio_r_neq_t",)

  def sample_times(self, key, b, time_cfg):
    return timesteps.sample_t_r(key, b, distribution=time_cfg.distribution, mu=time_cfg.mu,
                                sigma=time_cfg.sigma, ratio_r_neq_t=time_cfg.ratio_r_neq_t)

  def loss(self, net, x, eps, *, t, r, v, loss_cfg, extra=None):
    return losses.meanflow_loss(net, x, eps, t=t, r=r, v=v, p=loss_cfg.p, c=loss_cfg.c,
                                extra=extra)

  def generate(self, net, eps, nfe, method):
    del method  # MeanFlow samples by its own jumps
    return sampling.meanflow_sample(net, eps, int(nfe))


MEANFLOW = register(MeanFlow())
