"""Objectives by name: one object per objective, declaring everything the train step,
the samplers, evaluation and validation need from it.

Adding an objective means one module that subclasses `Objective` and calls `register`,
its config keys in configs/default.py, and its tests. Nothing else compares names.
"""
from typing import Dict, Tuple

import jax.numpy as jnp

from meanflow_jax import paths, timesteps
from meanflow_jax.errors import ConfigError
from meanflow_jax.objectives import losses


def guidance_active(guidance_cfg, num_classes):
  """Whether MeanFlow's training-time guidance (`guidance.omega`, `guidance.kappa`) changes
  the target: two extra forward passes a step."""
  return bool(num_classes) and (guidance_cfg.omega != 1.0 or guidance_cfg.kappa != 0.0)


class Objective:
  """What one training objective is, as pure functions of a network closure.

  The network closure is `net(z [B, ...], r [B], t [B])` (the label and any other
  condition already bound), returning u `[B, ...]`, or (u, v) for an objective whose
  `heads` are ("u", "v"); objectives that learn an instantaneous velocity call it with
  r = t. `targets` sees the unbound `net(z, r, t, cond)`, `cond` a dict of `[B]` arrays
  (keys "y" and the objective's `conditions`).

  Attributes:
    name: the registry name (`config.objective`).
    default_nfe: network evaluations of a sample when none is asked for (training previews).
    heads: the outputs it needs from the network.
    reads: config keys this objective alone reads; validation refuses them for the others.
    methods: the generation methods `generate` offers (`sample.method`); (None,): its own.
    conditions: network conditions beyond (r, t, y) of a class-conditional model (iMF's
      "omega", "t_min", "t_max"): the model is built to take them.
  """
  name: str = ""
  default_nfe: int = 1
  heads: Tuple[str, ...] = ("u",)
  reads: Tuple[str, ...] = ()
  methods: Tuple = (None,)
  conditions: Tuple[str, ...] = ()

  def targets(self, key, net, x, eps, *, t, r, y, is_null, cond, guidance_cfg, imf_cfg,
              num_classes, rows=None):
    """(cond, v): the network's conditions for the loss and the regression target that
    `loss` receives as `v` (None: v_t = eps - x).

    The default is MeanFlow's training-time guidance (class-conditional models, with
    `guidance_active`): v~ of `losses.guided_velocity` from u(z_t, t, t | y) and
    u(z_t, t, t | null), one batched pass of 2B with `net` (the step's parameters
    before the update, no dropout) under a stop-gradient; with kappa = 0, v~ does not
    read u(z_t, t, t | y), and the pass is the B rows of u(z_t, t, t | null) alone.

    Args:
      key: this step's key for the objective's own draws.
      net: `net(z, r, t, cond)`; x, eps `[B, ...]`; t, r `[B]`.
      y: the true labels `[B]` (None: unconditional); is_null: bool `[B]`, the labels
        dropped to the null class (None: unconditional); cond: {"y": the labels the
        network sees} or {}.
      rows: the batch's `timesteps.RowSplit` (`row_split`), or None.
    """
    del key, r, imf_cfg, rows
    if not guidance_active(guidance_cfg, num_classes):
      return cond, None
    z = paths.interpolate(x, eps, t)
    null = {"y": jnp.full_like(y, num_classes)}
    if guidance_cfg.kappa == 0.0:  # kappa * u_cond = 0 exactly: the cond half is not run
      u_uncond = net(z, t, t, null)
      u_cond = jnp.zeros_like(u_uncond)
    else:
      both = lambda a, b: jnp.concatenate([a, b])
      out = net(both(z, z), both(t, t), both(t, t), {"y": both(y, null["y"])})
      u_cond, u_uncond = jnp.split(out, 2)
    v = losses.guided_velocity(
        paths.conditional_velocity(x, eps, t), u_cond, u_uncond, t, omega=guidance_cfg.omega,
        kappa=guidance_cfg.kappa, t_interval=(guidance_cfg.t_min, guidance_cfg.t_max),
        is_null=is_null)
    return cond, v

  def sample_times(self, key, b, time_cfg):
    """(t `[B]`, r `[B]`) with r <= t, from the `time` config section."""
    raise NotImplementedError

  def row_split(self, b, time_cfg):
    """The `timesteps.RowSplit` of a batch of `b` whose r != t rows alone need the JVP, or
    None (every row alike). With one, the train step passes `loss` the `rows` and the
    network's `cond`, and `net` takes `cond` as a fourth argument."""
    del b, time_cfg
    return None

  def loss(self, net, x, eps, *, t, r, v, loss_cfg, extra=None, rows=None, cond=None):
    """(scalar loss, metrics dict) for data x and noise eps `[B, ...]`.

    `v`: the target velocity `[B, ...]` (a guided v~), or None for v_t = eps - x.
    `extra`: None, or `extra(x_hat, x) -> [B]` (`objectives.features.term`) to add per
    sample at pMF's x field x_hat = z_t - t u of the network's (first) head.
    `rows`, `cond`: given when `row_split` is not None: the rows and the network's `[B]`
    conditions to split with them (`net(z, r, t, cond_part)`); `net(z, r, t)` is the
    whole batch with its conditions.
    """
    raise NotImplementedError

  def generate(self, net, eps, nfe, method):
    """Samples `[B, ...]` from the source sample `eps` with `nfe` network evaluations."""
    raise NotImplementedError

  def average_velocity(self, net):
    """`u(z, r, t)` of the trained network: the jump one generation step takes from t to r."""
    return net

  def spends(self, nfe, method):
    """Whether `method` can spend exactly `nfe` evaluations (see `check_nfe`)."""
    try:
      self.check_nfe(nfe, method)
    except ConfigError:
      return False
    return True

  def check_nfe(self, nfe, method):
    """Raises ConfigError when `nfe` evaluations cannot be spent by `method`."""
    if int(nfe) < 1:
      raise ConfigError(f"nfe must be >= 1; got {nfe}.")

  def preview_nfe(self, nfe, method):
    """The evaluations a training preview spends when asked for `nfe` (at least one
    whole step of `method`)."""
    return max(1, int(nfe))

  def sampler_name(self, method):
    """The sampler's name in result tables."""
    return self.name


class AverageVelocity(Objective):
  """The times of an objective that learns u(z, r, t): (t, r) per sample with r != t on a
  `time.ratio_r_neq_t` fraction of rows; with `time.subset_jvp` exactly round(ratio B)
  rows at the fixed positions of `timesteps.fixed_rows`, else an independent coin per
  sample."""
  reads = ("time.ratio_r_neq_t", "time.subset_jvp")

  def row_split(self, b, time_cfg):
    return timesteps.fixed_rows(b, time_cfg.ratio_r_neq_t) if time_cfg.subset_jvp else None

  def sample_times(self, key, b, time_cfg):
    return timesteps.sample_t_r(key, b, distribution=time_cfg.distribution, mu=time_cfg.mu,
                                sigma=time_cfg.sigma, ratio_r_neq_t=time_cfg.ratio_r_neq_t,
                                rows=self.row_split(b, time_cfg))


_REGISTRY: Dict[str, Objective] = {}


def register(objective):
  """Adds `objective` (an `Objective` instance) under its name; returns it."""
  if not objective.name:
    raise ValueError("an objective needs a name.")
  if objective.name in _REGISTRY:
    raise ValueError(f"objective {objective.name!r} is registered already.")
  _REGISTRY[objective.name] = objective
  return objective


def names():
  """The registered objectives' names, sorted."""
  return sorted(_REGISTRY)


def get(name):
  """The registered objective `name`; ConfigError listing the registered ones if unknown."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ConfigError(f"objective must be one of {names()}; got {name!r}.") from None
