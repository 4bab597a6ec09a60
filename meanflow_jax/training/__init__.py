"""Training: state, step, checkpoints, loop, and restoring runs for sampling.

The pure step (`train_step`) and the state imports no checkpointing, logging or
plotting library; `train`, `Checkpointer`, `load_run`, ... load their modules (and
Orbax, TensorBoard, matplotlib) on first use.
"""
import importlib

from meanflow_jax.errors import CheckpointMismatchError, Interrupted, NonFiniteError
from meanflow_jax.training.train_state import TrainState, build_model, make_optimizer
from meanflow_jax.training.train_step import train_step

_LAZY = {"Checkpointer": "checkpoint", "Run": "inference", "load_run": "inference",
         "make_sampler": "inference", "train": "loop"}

__all__ = ["CheckpointMismatchError", "Checkpointer", "Interrupted", "NonFiniteError", "Run",
           "TrainState", "build_model", "load_run", "make_optimizer", "make_sampler", "train",
           "train_step"]


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(f"meanflow_jax.training.{_LAZY[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
