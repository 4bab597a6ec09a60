"""Networks u_theta(z, r, t | y), built by name from a registry."""
from meanflow_jax.models.mlp import MLP

_REGISTRY = {
    "mlp": MLP,
}


def available():
  """Names of the registered models."""
  return sorted(_REGISTRY)


def build(name, **kwargs):
  """Builds the model registered as `name` with constructor `kwargs`."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; available: {available()}.")
  return _REGISTRY[name](**kwargs)
