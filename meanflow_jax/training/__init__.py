"""Training: state, step, checkpoints, loop, and restoring runs for sampling."""
from meanflow_jax.training.checkpoint import CheckpointMismatchError, Checkpointer
from meanflow_jax.training.inference import load_run, make_sampler
from meanflow_jax.training.loop import NonFiniteError, train
from meanflow_jax.training.train_state import TrainState, build_model, make_optimizer
from meanflow_jax.training.train_step import train_step
