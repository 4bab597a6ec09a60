"""Training: state, step, checkpoints, loop, and restoring runs for sampling."""
from meanflow_jax.errors import CheckpointMismatchError, Interrupted, NonFiniteError
from meanflow_jax.training.checkpoint import Checkpointer
from meanflow_jax.training.inference import Run, load_run, make_sampler
from meanflow_jax.training.loop import train
from meanflow_jax.training.train_state import TrainState, build_model, make_optimizer
from meanflow_jax.training.train_step import train_step

__all__ = ["CheckpointMismatchError", "Checkpointer", "Interrupted", "NonFiniteError", "Run",
           "TrainState", "build_model", "load_run", "make_optimizer", "make_sampler", "train",
           "train_step"]
