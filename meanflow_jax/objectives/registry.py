"""Objectives by name: one object per objective, declaring everything the train step,
the samplers, evaluation and validation need from it.

Adding an objective means one module that subclasses `Objective` and calls `register`,
its config keys in configs/default.py, and its tests. Nothing else compares names.
"""
from typing import Dict, Tuple

from meanflow_jax.errors import ConfigError


class Objective:
  """What one training objective is, as pure functions of a network closure.

  The network closure is `net(z [B, ...], r [B], t [B]) -> [B, ...]` (the label and any
  other condition already bound); objectives that learn an instantaneous velocity call
  it with r = t.

  Attributes:
    name: the registry name (`config.objective`).
    default_nfe: network evaluations of a sample when none is asked for (training previews).
    heads: the outputs it needs from the network.
    reads: config keys this objective alone reads; validation refuses them for the others.
    methods: the generation methods `generate` offers (`sample.method`); (None,): its own.
  """
  name: str = ""
  default_nfe: int = 1
  heads: Tuple[str, ...] = ("u",)
  reads: Tuple[str, ...] = ()
  methods: Tuple = (None,)

  def sample_times(self, key, b, time_cfg):
    """(t `[B]`, r `[B]`) with r <= t, from the `time` config section."""
    raise NotImplementedError

  def loss(self, net, x, eps, *, t, r, v, loss_cfg):
    """(scalar loss, metrics dict) for data x and noise eps `[B, ...]`.

    `v`: the target velocity `[B, ...]` (a guided v~), or None for v_t = eps - x.
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
