"""Training objectives: pure losses (`losses`) and the registry of objectives by name.

`objectives.get(config.objective)` is the one place a name becomes behaviour: the times
an objective samples, its loss, how it takes generation steps, its default NFE, the
network heads it needs, and the config keys it alone reads.
"""
from meanflow_jax.objectives.losses import (adaptive_weight, flow_matching_loss, guided_velocity,
                                            meanflow_loss, meanflow_target)
from meanflow_jax.objectives.registry import Objective, get, names, register
# Each module registers its objective on import.
from meanflow_jax.objectives import flow_matching, imf, meanflow  # noqa: E402,F401  isort: skip

__all__ = ["Objective", "adaptive_weight", "flow_matching_loss", "get", "guided_velocity",
           "meanflow_loss", "meanflow_target", "names", "register"]
