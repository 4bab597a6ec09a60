"""XLA flags for test subprocesses whose time goes into compiling, not running.

XLA's CPU backend at its default optimisation level spends most of a small test's time
optimising programs that then run a few steps. Without its costly passes the 8-device
DiT step compiles in 12 s instead of 18 s. Only for processes that compare results
computed under the same flags: the rounding of fused float32 arithmetic differs from
a default build, and programs that run many steps (the Inception net, long training)
run several times slower, which is why the suite as a whole does not use them (tried on
a fresh clone: 16.5 minutes against 12.2, though the CLI and training tests alone took a
quarter less).
"""
import os

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# The same for one `jax.jit(..., compiler_options=FAST_OPTIONS)` inside the test process.
FAST_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def env(devices=None, fast_compile=True):
  """`os.environ` with XLA_FLAGS extended by `devices` fake CPU devices and the
  fast-compile flags."""
  flags = os.environ.get("XLA_FLAGS", "")
  if devices:
    flags += f" --xla_force_host_platform_device_count={devices}"
  if fast_compile:
    flags += " " + FAST_COMPILE
  return dict(os.environ, XLA_FLAGS=flags.strip())
