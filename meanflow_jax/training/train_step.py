"""One optimisation step, a pure function of (state, batch, key)."""
import jax
import jax.numpy as jnp
import optax

from meanflow_jax import objectives, paths
from meanflow_jax.errors import ConfigError


def _per_sample_bernoulli(key, p, b):
  """`[B]` bools, sample i from `fold_in(key, i)`: the same for any batch split."""
  return jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i), p))(jnp.arange(b))


def guidance_active(guidance_cfg, num_classes):
  """Whether the target needs the guided velocity (two extra forward passes)."""
  return bool(num_classes) and (guidance_cfg.omega != 1.0 or guidance_cfg.kappa != 0.0)


def guided_target_velocity(apply_fn, params, x, eps, t, y, is_null, guidance_cfg, num_classes):
  """v~ of `objectives.guided_velocity` with u(z_t, t, t | y) and u(z_t, t, t | null)
  from `params` (one batched pass, no dropout, stop-gradient): `[B, ...]`.

  Samples whose label was dropped (`is_null`), and times outside the guidance
  interval, keep v_t = eps - x.
  """
  z = paths.interpolate(x, eps, t)
  null = jnp.full_like(y, num_classes)
  both = apply_fn(params, jnp.concatenate([z, z]), jnp.concatenate([t, t]),
                  jnp.concatenate([t, t]), jnp.concatenate([y, null]))
  u_cond, u_uncond = jnp.split(jax.lax.stop_gradient(both), 2)
  return objectives.guided_velocity(
      paths.conditional_velocity(x, eps, t), u_cond, u_uncond, t,
      omega=guidance_cfg.omega, kappa=guidance_cfg.kappa,
      t_interval=(guidance_cfg.t_min, guidance_cfg.t_max), is_null=is_null)


def train_step(state, batch, base_key, *, apply_fn, tx, objective, time_cfg, loss_cfg, ema_decays,
               guidance_cfg=None, num_classes=0, prior=None):
  """state, batch (x `[B, ...]`, y int `[B]`[, eps `[B, ...]`]), base key -> (new state, metrics).

  `objective` is a registered name (`objectives.names()`): its times and its loss.

  The source sample paired with each x is `prior.couple(key, x)` (`priors.Prior`;
  None: independent N(0, I) noise), or the batch's own eps when it carries one
  (reflow pairs).

  The step's randomness is `fold_in(base_key, state.step)` and, within it, per
  sample (`fold_in(key, i)`), so it depends only on the step number and the
  sample's index. `metrics["finite"]` is 0 after a non-finite loss or gradient;
  the loop stops there and never saves that state.

  Class-conditional models (`num_classes > 0`) see the label replaced by the null
  class `num_classes` for a `guidance_cfg.label_dropout` fraction of samples, and
  with guidance (omega, kappa) the target velocity is the guided v~ of
  `objectives.guided_velocity`, whose u(z_t, t, t | .) terms come from the current
  parameters under a stop-gradient. Unconditional models ignore `y`.
  """
  x, y = batch[:2]
  key = jax.random.fold_in(base_key, state.step)
  key_eps, key_time, key_drop, key_dropout = jax.random.split(key, 4)
  b = x.shape[0]
  if len(batch) == 3:
    eps = batch[2]
  elif prior is None:
    eps = paths.sample_noise(key_eps, b, x.shape[1:], x.dtype)
  else:
    eps = prior.couple(key_eps, x)
  rngs = {"dropout": key_dropout}

  # An unknown name is a ConfigError listing the registered objectives.
  obj = objectives.get(objective)
  t, r = obj.sample_times(key_time, b, time_cfg)

  v = None
  if num_classes:
    if guidance_cfg is None:
      raise ConfigError("a class-conditional step needs guidance_cfg (label_dropout, omega, "
                        "kappa, t_min, t_max).")
    null = jnp.full_like(y, num_classes)
    is_null = _per_sample_bernoulli(key_drop, guidance_cfg.label_dropout, b)
    y_in = jnp.where(is_null, null, y)
    if guidance_active(guidance_cfg, num_classes):
      v = guided_target_velocity(apply_fn, state.params, x, eps, t, y, is_null, guidance_cfg,
                                 num_classes)
  else:
    y_in = None

  def loss_fn(params):
    net = lambda z, r, t: apply_fn(params, z, r, t, y_in, train=True, rngs=rngs)
    return obj.loss(net, x, eps, t=t, r=r, v=v, loss_cfg=loss_cfg)

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
