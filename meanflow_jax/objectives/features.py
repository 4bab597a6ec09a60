"""An extra loss term in the features of a frozen network, open to the user's own network.

Pixel MeanFlow adds a perceptual loss (LPIPS, ConvNeXt features) on its x-prediction.
Those weights cannot be had offline, so the term is a plug-in: a feature network is
registered by name, and `loss.features` / `loss.features_weight` select and weigh it.
Every objective adds, per sample,

    features_weight * || phi(x_hat) - sg(phi(x)) ||^2 / F,   x_hat = z_t - t u(z_t, r, t),

to its loss, where phi maps images `[B, ...]` to features `[B, F]` (summed over F and
divided by it, so the weight does not scale with the width) and x_hat is pMF's x field
(flow matching: u = v, its one-step estimate of the data). x_hat is the model's estimate
of the data where r = 0 and an image-like field between z_t and it for r > 0, as in pMF.

A feature network is registered as a builder `builder(config) -> phi`, called once when
the step is built; phi must be a jax-traceable function (its weights closed over as
constants). Training with your own network:

    from meanflow_jax.objectives import features
    features.register("lpips", lambda config: my_lpips_features)
    training.train(config, workdir)   # config.loss.features = "lpips"

The project registers "classifier" (meanflow_jax.training.feature_networks): the features
of its own small CNN, trained on the run's labelled images.
"""
from typing import Callable, Dict

import jax
import jax.numpy as jnp

from meanflow_jax.errors import ConfigError

_REGISTRY: Dict[str, Callable] = {}


def register(name, builder):
  """Adds the feature network `builder(config) -> phi(x [B, ...]) -> [B, F]` as `name`."""
  if not name:
    raise ValueError("a feature network needs a name.")
  if name in _REGISTRY:
    raise ValueError(f"feature network {name!r} is registered already.")
  _REGISTRY[name] = builder
  return builder


def names():
  """The registered feature networks, sorted."""
  return sorted(_REGISTRY)


def check_name(name):
  """ConfigError listing the registered feature networks when `name` is not one."""
  if name not in _REGISTRY:
    raise ConfigError(f"loss.features must be one of {names()} (or '' for none); got "
                      f"{name!r}. Register your own network with "
                      f"meanflow_jax.objectives.features.register(name, builder).")


def feature_distance(phi, x_hat, x):
  """|| phi(x_hat) - sg(phi(x)) ||^2 / F per sample: `[B]` (gradients through x_hat)."""
  f_hat = phi(x_hat).reshape(x_hat.shape[0], -1)
  f = jax.lax.stop_gradient(phi(x).reshape(x.shape[0], -1))
  return jnp.mean(jnp.square(f_hat - f), axis=1)


def term(phi, weight):
  """The extra term `extra(x_hat, x) -> [B]` the objectives add to their per-sample loss."""
  return lambda x_hat, x: weight * feature_distance(phi, x_hat, x)


def from_config(config):
  """The run's extra term (`term`), or None when `config.loss.features` is empty."""
  name = config.loss.features
  if not name:
    return None
  check_name(name)
  return term(_REGISTRY[name](config), config.loss.features_weight)
