"""Quality metrics."""
from meanflow_jax.metrics import toy

__all__ = ["toy"]
