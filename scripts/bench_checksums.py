"""What the checksums of a save cost: the jitted pass over the state (one variadic
reduction per leaf), three separate reductions per leaf (what that pass replaced), and
NumPy on the host (used for states of at most `checkpoint.HOST_WORDS` words).

  python scripts/bench_checksums.py --config configs/digits.py                 # 4 x 128 DiT
  python scripts/bench_checksums.py --config configs/digits.py --config.model.dit.depth=12 \
      --config.model.dit.hidden_size=768 --config.model.dit.num_heads=12 --repeats 3

The state (parameters, EMA copies, optimiser state) is the config's, initialised for its
data shape; every figure comes from this one run: compile time, then the median of
`--repeats` calls.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from meanflow_jax import cli
from meanflow_jax.training import builders, checkpoint
from meanflow_jax.training import train_state as ts

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config.")
_SHAPE = flags.DEFINE_list("data_shape", None, "Data shape (default: the config's source's).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls of each (median).")
flags.mark_flags_as_required(["config"])


def _three_reductions(tree):
  """The pass before: s1, s2 and finiteness as separate sums (three loops per leaf)."""
  def leaf(x):
    u = checkpoint._words(x)
    index = checkpoint._row_major_index(u.shape)
    fmix = checkpoint._fmix
    s1 = jnp.sum(u * (fmix(index) | jnp.uint32(1)), dtype=jnp.uint32)
    s2 = jnp.sum(fmix(u ^ fmix(index ^ jnp.uint32(checkpoint._K))), dtype=jnp.uint32)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    return finite, jnp.stack([s1, s2])
  return [leaf(x) for x in jax.tree.leaves(tree)]


def _time(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main(argv):
  del argv
  config = _CONFIG.value
  shape = (tuple(int(s) for s in _SHAPE.value) if _SHAPE.value
           else builders.make_source(config).shape)
  model = ts.build_model(config)
  tx = ts.make_optimizer(config.optimizer, config.train.steps)
  state = jax.jit(builders.init_fn(config, model, tx, shape))(jax.random.key(0))
  leaves = jax.tree.leaves(state)
  words = sum(x.size for x in leaves)
  print(f"state: {len(leaves)} arrays, {words:,} words ({4 * words / 2 ** 20:.0f} MiB)")
  rows = []
  for name, fn in (("one variadic reduction per leaf", checkpoint._fingerprint),
                   ("three reductions per leaf", _three_reductions)):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(state).compile()
    rows.append((name, time.perf_counter() - t, _time(lambda: compiled(state), _REPEATS.value)))
  same = "not compared"
  if words <= 4 * checkpoint.HOST_WORDS:  # NumPy's temporaries are several copies of the state
    host = _time(lambda: checkpoint.state_checksums(state, on_host=True), _REPEATS.value)
    rows.append(("NumPy on the host (with the copy)", 0.0, host))
    same = (checkpoint.state_checksums(state, on_host=True)
            == checkpoint.state_checksums(state, on_host=False))
  print("| pass | compile s | per call s |\n|---|---|---|")
  for name, c, r in rows:
    print(f"| {name} | {c:.2f} | {r:.3f} |")
  print(f"host and device sums equal: {same}; per call, three reductions / one: "
        f"{rows[1][2] / rows[0][2]:.1f}x")


if __name__ == "__main__":
  cli.run(main)
