"""One optimisation step, a pure function of (state, batch, key)."""
import jax
import jax.numpy as jnp
import optax

from meanflow_jax import objectives, paths
from meanflow_jax.errors import ConfigError
from meanflow_jax.objectives.registry import guidance_active  # noqa: F401  (re-exported)


def _per_sample_bernoulli(key, p, b):
  """`[B]` bools, sample i from `fold_in(key, i)`: the same for any batch split."""
  return jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i), p))(jnp.arange(b))


def guided_target_velocity(apply_fn, params, x, eps, t, y, is_null, guidance_cfg, num_classes):
  """MeanFlow's guided v~ (`Objective.targets`) with `apply_fn(params, z, r, t, y)`: `[B, ...]`.

  Samples whose label was dropped (`is_null`), and times outside the guidance
  interval, keep v_t = eps - x.
  """
  net = lambda z, r, t, cond: apply_fn(params, z, r, t, cond["y"])
  _, v = objectives.Objective().targets(None, net, x, eps, t=t, r=t, y=y, is_null=is_null,
                                        cond={}, guidance_cfg=guidance_cfg, imf_cfg=None,
                                        num_classes=num_classes)
  return v


def train_step(state, batch, base_key, *, apply_fn, tx, objective, time_cfg, loss_cfg, ema_decays,
               guidance_cfg=None, num_classes=0, prior=None, imf_cfg=None, feature_loss=None):
  """state, batch (x `[B, ...]`, y int `[B]`[, eps `[B, ...]`]), base key -> (new state, metrics).

  `objective` is a registered name (`objectives.names()`): its times, its targets (and
  the network conditions they draw) and its loss. `apply_fn(params, z, r, t, y, **cond)`
  is the model's apply (`cond`: its guidance conditions, if any).

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

  An objective with a `row_split` (MeanFlow and iMF with `time.subset_jvp`) runs its JVP
  on the batch's r != t rows alone and a plain forward pass on the rest.

  `feature_loss`: None, or a per-sample term `(x_hat, x) -> [B]` added to the loss
  (`objectives.features.from_config`; pMF's perceptual loss with the user's network).
  """
  x, y = batch[:2]
  key = jax.random.fold_in(base_key, state.step)
  key_eps, key_time, key_drop, key_dropout = jax.random.split(key, 4)
  # A fifth key from fold_in, so the four above stay those of runs saved before it.
  key_target = jax.random.fold_in(key, 5)
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
  rows = obj.row_split(b, time_cfg)  # None, or the r != t rows that alone need the JVP

  y_true, is_null, cond = None, None, {}
  if num_classes:
    if guidance_cfg is None:
      raise ConfigError("a class-conditional step needs guidance_cfg (label_dropout, omega, "
                        "kappa, t_min, t_max).")
    y_true = y
    is_null = _per_sample_bernoulli(key_drop, guidance_cfg.label_dropout, b)
    cond = {"y": jnp.where(is_null, jnp.full_like(y, num_classes), y)}

  def call(params, z, r, t, cond, **kwargs):
    cond = dict(cond)
    return apply_fn(params, z, r, t, cond.pop("y", None), **cond, **kwargs)

  # `rows` only when there are some: an objective whose targets take none still trains.
  split = {} if rows is None else {"rows": rows}
  cond, v = obj.targets(key_target, lambda z, r, t, c: call(state.params, z, r, t, c), x, eps,
                        t=t, r=r, y=y_true, is_null=is_null, cond=cond,
                        guidance_cfg=guidance_cfg, imf_cfg=imf_cfg, num_classes=num_classes,
                        **split)

  def loss_fn(params):
    def net(z, r, t, c=None):  # c: the conditions of a part of the batch (`row_split`)
      return call(params, z, r, t, cond if c is None else c, train=True, rngs=rngs)

    # Keywords only when used: an objective whose loss takes neither still trains.
    kwargs = {} if feature_loss is None else {"extra": feature_loss}
    if rows is not None:
      kwargs.update(rows=rows, cond=cond)
    return obj.loss(net, x, eps, t=t, r=r, v=v, loss_cfg=loss_cfg, **kwargs)

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
