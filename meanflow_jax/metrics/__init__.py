"""Quality metrics: exact ones on mixtures, Frechet distances, the project's classifier."""
from meanflow_jax.metrics import classifier, frechet, straightness, toy

__all__ = ["classifier", "frechet", "straightness", "toy"]
