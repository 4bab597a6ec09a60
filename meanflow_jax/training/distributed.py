"""Multi-process runs: joining the job, each process's part of a batch, agreeing on a stop.

One process per host (or per GPU) runs the same program; `jax.devices()` then
lists every process's devices and a jitted step runs over all of them. Each
process reads only the rows of every global batch that its own devices hold.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from meanflow_jax.errors import ConfigError

# Read when the flags leave them unset; JAX itself reads JAX_COORDINATOR_ADDRESS.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize(coordinator_address="", num_processes=0, process_id=-1, auto=False):
  """Joins a multi-process run before anything touches a device.

  Args:
    coordinator_address: "host:port" of process 0 (else $JAX_COORDINATOR_ADDRESS).
    num_processes: processes in the run (else $JAX_NUM_PROCESSES; 0 or 1: single process).
    process_id: this process's index in [0, num_processes) (else $JAX_PROCESS_ID).
    auto: with nothing else given, let JAX detect a managed cluster (SLURM, Open
      MPI, TPU pods, Kubernetes) with `jax.distributed.initialize()`.

  Returns:
    (process_index, process_count).
  Raises:
    ConfigError for an incomplete or inconsistent set of values.
  """
  address = coordinator_address or os.environ.get(ENV_COORDINATOR, "")
  count = int(num_processes or os.environ.get(ENV_NUM_PROCESSES, 0) or 0)
  index = int(process_id if process_id >= 0 else os.environ.get(ENV_PROCESS_ID, -1))
  if count > 1:
    if not address:
      raise ConfigError(f"{count} processes need a coordinator address (host:port of process "
                        f"0): pass --coordinator_address or set ${ENV_COORDINATOR}.")
    if not 0 <= index < count:
      raise ConfigError(f"process_id must lie in [0, {count}); got {index} (pass --process_id "
                        f"or set ${ENV_PROCESS_ID}).")
    jax.distributed.initialize(address, num_processes=count, process_id=index)
  elif auto:
    jax.distributed.initialize()
  return jax.process_index(), jax.process_count()


def local_shard(sharding, global_shape):
  """`(i, n)`: this process holds rows `i*B/n : (i+1)*B/n` of a `global_shape` batch.

  That is the part it loads (`ImageSource.batch(step, shard=(i, n))`). Raises
  ConfigError if its devices hold rows that are not one such block (a mesh whose
  device order interleaves processes).
  """
  b = global_shape[0]
  spans = sorted({(s[0].start or 0, b if s[0].stop is None else s[0].stop)
                  for s in sharding.addressable_devices_indices_map(global_shape).values()})
  lo, hi = spans[0][0], spans[-1][1]
  size = hi - lo
  if sum(stop - start for start, stop in spans) != size or b % size or lo % size:
    raise ConfigError(f"process {jax.process_index()} holds rows {spans} of the batch, not one "
                      f"contiguous block; build the mesh with each process's devices together.")
  return lo // size, b // size


def global_batch(sharding, local, global_shape):
  """The global array of `global_shape` from this process's rows `local` (numpy)."""
  return jax.make_array_from_process_local_data(sharding, np.asarray(local), global_shape)


def any_process(flag):
  """Whether `flag` is true on any process (every process must call it together)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def gather_float64(x):
  """`[P, *x.shape]`: every process's float64 array `x`, on every process, in process order.

  JAX computes in float32 here, so each value travels as two float32 parts (the value
  rounded and the rounding error); their float64 sum restores it to about 1e-14
  relative (summed statistics such as a 2048 x 2048 covariance need more than float32).
  """
  x = np.asarray(x, np.float64)
  if jax.process_count() == 1:
    return x[None]
  hi = x.astype(np.float32)
  lo = (x - hi.astype(np.float64)).astype(np.float32)
  both = np.asarray(multihost_utils.process_allgather(np.stack([hi, lo])), np.float64)
  return both[:, 0] + both[:, 1]


def process_share(num_items):
  """The items `i` of `range(num_items)` this process takes: `i % process_count ==
  process_index` (every item once over all processes)."""
  return range(jax.process_index(), num_items, jax.process_count())
