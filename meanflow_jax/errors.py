"""Errors a user can act on; scripts print them as one line instead of a traceback."""


class MeanFlowError(Exception):
  """Base of the errors caused by input (data, config, checkpoints, flags)."""


class DataError(MeanFlowError, ValueError):
  """Data that cannot be trained on, with the reason and the file."""


class ConfigError(MeanFlowError, ValueError):
  """A config key or value that does not exist or does not fit."""


class CheckpointMismatchError(MeanFlowError, ValueError):
  """A checkpoint that does not fit the config it is restored for."""


class NonFiniteError(MeanFlowError, FloatingPointError):
  """Training produced a non-finite loss or gradient."""


class RunNotFoundError(MeanFlowError, FileNotFoundError):
  """A run directory without the checkpoints asked for."""


class Interrupted(MeanFlowError):
  """Training stopped by a signal after saving a checkpoint; rerun to resume."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.exit_code = 128 + signum


class WorkdirLockedError(MeanFlowError):
  """A workdir in which another run is writing (its lock file names the holder)."""


class CheckpointDamagedError(MeanFlowError, ValueError):
  """No checkpoint of a run reads back whole, or the one asked for does not."""


class WorkdirWriteError(MeanFlowError, OSError):
  """A file of a run that could not be written (disk full, quota, permissions)."""


class CheckpointWriteError(WorkdirWriteError):
  """A checkpoint that could not be written; the earlier ones are intact."""
