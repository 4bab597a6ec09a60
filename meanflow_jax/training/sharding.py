"""Device mesh and shardings: data parallelism over `data`, FSDP over `fsdp`.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, ...; see
`meanflow_jax.models`). `RULES` maps them to mesh axes; a parameter is sharded
over `fsdp` along its `embed`-like axis only when it is large and that axis
divides evenly, otherwise it is replicated. The train state's shardings are
derived from shapes alone (`jax.eval_shape`), so nothing is allocated to plan them.
"""
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from meanflow_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (None: replicated).
RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("kv", None),
    ("vocab", None),
    ("time", None),
    ("patch", None),
    ("conv_in", None),
    ("norm", None),
)

# Parameters with fewer elements stay replicated: sharding them saves little memory
# and costs an all-gather each.
MIN_SHARDED_SIZE = 2 ** 16


def make_mesh(data=-1, fsdp=1, devices=None):
  """A `Mesh` of shape (data, fsdp) over `devices` (default: all); -1 takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and fsdp >= 1 and n % fsdp == 0:
    data = n // fsdp
  elif fsdp == -1 and data >= 1 and n % data == 0:
    fsdp = n // data
  if data < 1 or fsdp < 1 or data * fsdp != n:
    raise ConfigError(f"mesh data x fsdp = {data} x {fsdp} does not use the {n} devices; "
                      f"pick sizes whose product is {n} (or -1 for one of them).")
  grid = np.asarray(devices).reshape(data, fsdp)
  # Auto axes: jit places collectives from in/out shardings (the version's default is Explicit).
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def _mesh_spec(logical, shape, mesh, rules, min_size):
  """The mesh PartitionSpec of one array from its logical spec."""
  table = dict(rules)
  if not logical or math.prod(shape) < min_size:
    return P()
  out, used = [], set()
  for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    axis = table.get(name) if name is not None else None
    axes = () if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    size = math.prod(mesh.shape[a] for a in axes)
    # A mesh axis shards one dimension at most (e.g. a conv kernel's in and out
    # channels both map to fsdp): the first dimension that can take it does.
    ok = axes and size > 1 and dim % size == 0 and not used.intersection(axes)
    out.append(axis if ok else None)
    used.update(axes if ok else ())
  return P(*out)


def state_shardings(boxed_abstract, mesh, rules=RULES, min_size=MIN_SHARDED_SIZE):
  """NamedShardings for the unboxed version of `boxed_abstract` (a pytree whose
  parameters are `nn.Partitioned` boxes of `jax.ShapeDtypeStruct`s)."""
  logical = nn.get_partition_spec(boxed_abstract)
  shapes = nn.meta.unbox(boxed_abstract)
  # Entries without a shape (optax's MaskedNode: Muon masks its AdamW and Muon halves of
  # the state) hold no array; they stay as they are, so the shardings keep the state's
  # structure.
  specs = jax.tree.map(lambda spec, x: (_mesh_spec(spec, x.shape, mesh, rules, min_size)
                                        if hasattr(x, "shape") else x),
                       logical, shapes, is_leaf=lambda s: isinstance(s, P))
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh):
  """Batches `[B, ...]` split over every device along B."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh):
  return NamedSharding(mesh, P())

