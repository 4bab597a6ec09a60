"""Flow matching (rectified flow): regress the instantaneous velocity v(z_t, t) on
v_t = eps - x; sample by integrating dz/dt = v from t = 1 to 0 (Euler or Heun)."""
from meanflow_jax import sampling, timesteps
from meanflow_jax.errors import ConfigError
from meanflow_jax.objectives import losses
from meanflow_jax.objectives.registry import Objective, register


class FlowMatching(Objective):
  name = "flow_matching"
  default_nfe = 16
  reads = ("sample.method",)
  methods = sampling.METHODS

  def average_velocity(self, net):
    return lambda z, r, t: net(z, t, t)  # one Euler step from t to r

  def sample_times(self, key, b, time_cfg):
    t = timesteps.sample_t(key, b, distribution=time_cfg.distribution, mu=time_cfg.mu,
                           sigma=time_cfg.sigma)
    return t, t

  def loss(self, net, x, eps, *, t, r, v, loss_cfg, extra=None):
    del r  # r = t
    return losses.flow_matching_loss(lambda z, t: net(z, t, t), x, eps, t=t, v=v,
                                     p=loss_cfg.p, c=loss_cfg.c, extra=extra)

  def generate(self, net, eps, nfe, method):
    v_fn = lambda z, t: net(z, t, t)
    steps = int(nfe) // 2 if method == "heun" else int(nfe)
    return sampling.flow_matching_sample(v_fn, eps, steps, method)

  def check_nfe(self, nfe, method):
    super().check_nfe(nfe, method)
    if method not in sampling.METHODS:
      raise ConfigError(f"method must be one of {sampling.METHODS}; got {method!r}.")
    if method == "heun" and int(nfe) % 2:
      raise ConfigError(f"Heun takes 2 evaluations a step: nfe must be even, got {nfe}.")

  def preview_nfe(self, nfe, method):
    nfe = max(1, int(nfe))
    return max(2, nfe) if method == "heun" else nfe  # Heun: at least one step

  def sampler_name(self, method):
    return f"fm-{method}"


FLOW_MATCHING = register(FlowMatching())
