"""Quality metrics: exact ones on mixtures, Frechet distances, the project's classifier."""
from meanflow_jax.metrics import classifier, frechet, toy

__all__ = ["classifier", "frechet", "toy"]
