"""Data sources."""
from meanflow_jax.data.images import (
    SOURCES, ImageSource, ScaledArray, check_images, check_labels, load_images, make_image_source)
from meanflow_jax.data.points import DataError, PointSource, check_points, load_points, mixture

__all__ = [
    "DataError", "ImageSource", "PointSource", "SOURCES", "ScaledArray", "check_images",
    "check_labels", "check_points", "load_images", "load_points", "make_image_source", "mixture",
]
