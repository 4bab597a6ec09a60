"""Networks u_theta(z, r, t | y), built by name (and preset variant) from a registry.

Every model is called as `model.apply(variables, z, r, t, y=None, *, omega=None,
t_min=None, t_max=None, train=False)` and returns u of z's shape, or (u, v) when built
with `v_head=True` (iMF's auxiliary velocity). The guidance conditions are taken by
models built with `guided=True`; `prediction="x"` makes the network predict the data
and u = (z - x) / t (pixel MeanFlow). Parameters carry logical axis names, so `model.init`
returns `nn.Partitioned` boxes: `nn.get_partition_spec(variables)` reads the
names, `flax.linen.meta.unbox(variables)` the plain arrays; `apply` takes either.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

from meanflow_jax.models import dit, incontext_dit, unet
from meanflow_jax.models.dit import DiT
from meanflow_jax.models.incontext_dit import InContextDiT
from meanflow_jax.models.mlp import MLP
from meanflow_jax.models.unet import UNet

__all__ = ["DiT", "InContextDiT", "MLP", "UNet", "available", "build", "param_count", "variants"]

_REGISTRY = {
    "dit": DiT,
    "imf_dit": InContextDiT,
    "mlp": MLP,
    "unet": UNet,
}

# Named presets of constructor kwargs, per model.
_VARIANTS = {
    "dit": dit.VARIANTS,
    "imf_dit": incontext_dit.VARIANTS,
    "mlp": {},
    "unet": unet.VARIANTS,
}


def available():
  """Names of the registered models."""
  return sorted(_REGISTRY)


def _check_name(name):
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; available: {available()}.")


def variants(name):
  """Names of the presets of model `name` (e.g. "XL/2" for "dit"); [] if it has none."""
  _check_name(name)
  return list(_VARIANTS[name])


def build(name, variant=None, **overrides):
  """The model `name`, from the preset `variant` (if given) with `overrides` on top.

  `build("dit", "B/2", num_classes=1000)`; `build("mlp", width=64)`.

  Raises:
    ValueError: unknown name, variant or constructor argument, listing those that exist.
  """
  _check_name(name)
  kwargs = {}
  if variant is not None:
    if variant not in _VARIANTS[name]:
      raise ValueError(f"unknown variant {variant!r} of model {name!r}; "
                       f"available: {variants(name) or 'none'}.")
    kwargs.update(_VARIANTS[name][variant])
  kwargs.update(overrides)
  # Lists (from configs or the command line) become tuples, so that the module
  # stays hashable (a static argument of jax.jit).
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  cls = _REGISTRY[name]
  fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(f"unknown argument(s) {unknown} for model {name!r}; "
                     f"it takes {fields}.")
  return cls(**kwargs)


def param_count(model, input_shape, exclude=()):
  """Number of parameters of `model` for inputs of per-sample shape `input_shape`.

  Shapes only (`jax.eval_shape` of `model.init`), so it costs no memory even for
  XL/2. A conditional model (num_classes > 0) counts its label table of
  num_classes + 1 rows.

  Args:
    model: a registered flax module.
    input_shape: one sample's shape without the batch: `(H, W, C)` or `(D,)`.
    exclude: prefixes of top-level parameter names left out of the count (the iMF DiT's
      sampling count: `exclude=("v_block",)`, the blocks dropped for sampling).
  """
  z = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), z, t, t)
  kept = {k: v for k, v in shapes["params"].items() if not k.startswith(tuple(exclude))}
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(kept))
