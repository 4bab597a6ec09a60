"""One optimisation step, a pure function of (state, batch, key)."""
import jax
import jax.numpy as jnp
import optax

from meanflow_jax import objectives, paths, timesteps
from meanflow_jax.errors import ConfigError


def train_step(state, x, base_key, *, apply_fn, tx, objective, time_cfg, loss_cfg, ema_decays):
  """state, x `[B, ...]`, base key -> (new state, metrics).

  The step's randomness is `fold_in(base_key, state.step)` and, within it, per
  sample (`fold_in(key, i)`), so it depends only on the step number and the
  sample's index. `metrics["finite"]` is 0 after a non-finite loss or gradient;
  the loop stops there and never saves that state.
  """
  key = jax.random.fold_in(base_key, state.step)
  key_eps, key_time = jax.random.split(key)
  b = x.shape[0]
  eps = paths.sample_noise(key_eps, b, x.shape[1:], x.dtype)

  if objective == "meanflow":
    t, r = timesteps.sample_t_r(key_time, b, distribution=time_cfg.distribution,
                                mu=time_cfg.mu, sigma=time_cfg.sigma,
                                ratio_r_neq_t=time_cfg.ratio_r_neq_t)

    def loss_fn(params):
      u_fn = lambda z, r, t: apply_fn(params, z, r, t)
      return objectives.meanflow_loss(u_fn, x, eps, t=t, r=r, p=loss_cfg.p, c=loss_cfg.c)
  elif objective == "flow_matching":
    t = timesteps.sample_t(key_time, b, distribution=time_cfg.distribution,
                           mu=time_cfg.mu, sigma=time_cfg.sigma)

    def loss_fn(params):
      v_fn = lambda z, t: apply_fn(params, z, t, t)
      return objectives.flow_matching_loss(v_fn, x, eps, t=t, p=loss_cfg.p, c=loss_cfg.c)
  else:
    raise ConfigError(f"unknown objective {objective!r}; use 'meanflow' or 'flow_matching'.")

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = tuple(jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, e, params)
              for d, e in zip(ema_decays, state.ema_params))
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.int32))
  return new, metrics
