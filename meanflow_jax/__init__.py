"""Mean Flows in JAX: average-velocity models for one-step generation.

The pure core (`paths`, `timesteps`, `objectives`, `sampling`, `analytic`)
depends on jax alone; `models`, `data`, `metrics` and `training` build on it.
"""
from meanflow_jax import analytic, objectives, paths, sampling, timesteps

__all__ = ["analytic", "objectives", "paths", "sampling", "timesteps"]
__version__ = "0.1.0"
