"""Data sources."""
from meanflow_jax.data.points import DataError, PointSource, check_points, load_points, mixture

__all__ = ["DataError", "PointSource", "check_points", "load_points", "mixture"]
