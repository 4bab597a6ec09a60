"""Shared plumbing of the scripts: flag parsing and one-line errors."""
import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from meanflow_jax.errors import ConfigError, MeanFlowError


def _flag_values(argv, name):
  """The values given to flag `name` in `argv` (`--name=V`, `--name V`, `-name V`)."""
  out = []
  for i, a in enumerate(argv[1:], 1):
    for prefix in (f"--{name}", f"-{name}"):
      if a.startswith(prefix + "="):
        out.append(a[len(prefix) + 1:])
      elif a == prefix and i + 1 < len(argv):
        out.append(argv[i + 1])
  return out


def _config_flags():
  """Names of the config-file flags the script defined (`--config`)."""
  return [name for name in flags.FLAGS
          if isinstance(flags.FLAGS[name].parser, ConfigFileFlagParser)]


def _check_config_files(argv):
  """Exits with one line for a config file that does not exist (ml_collections would
  defer that error, then report the overrides as unknown flags)."""
  for name in _config_flags():
    for value in _flag_values(argv, name):
      path = value.split(":", 1)[0]
      if not os.path.isfile(path):
        what = "a directory, not a file" if os.path.isdir(path) else "no such file"
        where = value if value == path else f"{value}: {path}"
        sys.exit(f"error: --{name} {where}: {what}; pass a config file such as "
                 "configs/toy.py.")


def _config_file_error(e, argv):
  """One line for an error raised while a config file ran: its last line (the exception),
  and for a get_config called with the wrong arguments, what the file takes."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  last = lines[-1] if lines else str(e)
  message = re.sub(r"^\w+(Error|Exception): ", "", last)
  name, value = next(((n, v) for n in _config_flags() for v in _flag_values(argv, n)),
                     ("config", "?"))
  path, _, arg = value.partition(":")
  if "get_config() takes 0 positional" in message:
    message = (f"{path} takes no argument; drop ':{arg}' (configs that have variants, such "
               "as configs/imagenet_dit.py:B/2, take one after ':')")
  elif "get_config()" in message and "positional argument" in message:
    message += f" (the text after ':' in --{name} is get_config's argument)"
  return f"error: --{name} {value}: {message.rstrip('.')}."


def _parse_flags(argv):
  _check_config_files(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):
      sys.exit(_config_file_error(e, argv))
    sys.exit(f"error: {e}. Pass --helpshort for the flags.")
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for a key the (locked) config does not have, in an
    # override --config.KEY=VALUE or in the config file itself.
    detail = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ").replace("\n", " ")
    overrides = [a.split("=")[0][2:] for a in argv if a.startswith("--config.")]
    sys.exit(f"error: unknown config key ({detail}). Overrides given: {overrides or 'none'}. "
             "Every key is listed, with its meaning, in configs/default.py.")
  except Exception as e:  # pylint: disable=broad-except
    # Anything else comes from running a config file (a syntax error, a failed import).
    name, value = next(((n, v) for n in _config_flags() for v in _flag_values(argv, n)),
                       ("config", "?"))
    sys.exit(f"error: --{name} {value} cannot be loaded: {type(e).__name__}: {e}")


def run(main):
  """`absl.app.run(main)`, printing input errors as one line and exiting with 2."""

  def guarded(argv):
    # Orbax logs every file operation at INFO through absl; keep the console readable.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
      return main(argv)
    except MeanFlowError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(getattr(e, "exit_code", 2))

  app.run(guarded, flags_parser=_parse_flags)


def interval(values):
  """`(t_min, t_max)` from a flag's list of two numbers (or the string "0.4,0.65"), or
  None if unset.

  Raises ConfigError for anything else.
  """
  if values is None:
    return None
  if isinstance(values, str):
    values = values.split(",")
  try:
    lo, hi = (float(v) for v in values)
  except ValueError:
    raise ConfigError(f"--interval takes two numbers t_min,t_max (e.g. 0.4,0.65); got "
                      f"{','.join(values)!r}.") from None
  return lo, hi


def intervals(values):
  """The `(t_min, t_max)` of a repeated flag (`--interval 0,1 --interval 0.2,0.8`): None
  if unset, one interval if given once, else the list (a sweep)."""
  if not values:
    return None
  return [interval(v) for v in values]


def floats(name, values):
  """The numbers of a list flag (`--omega 1,2,4`), or None if unset; ConfigError naming
  the flag for anything else."""
  if values is None:
    return None
  try:
    return [float(v) for v in values]
  except ValueError:
    raise ConfigError(f"{name} takes numbers separated by commas (e.g. 1,2,4); got "
                      f"{','.join(values)!r}.") from None


class DistributedFlags:
  """The flags that join a multi-process job, shared by the scripts that take part in
  one (train, evaluate): define them at import, `join()` before anything touches a
  device."""

  def __init__(self):
    self.coordinator = flags.DEFINE_string(
        "coordinator_address", "", "host:port of process 0 in a multi-process run.")
    self.num_processes = flags.DEFINE_integer("num_processes", 0,
                                              "Processes in the run (0: one).")
    self.process_id = flags.DEFINE_integer("process_id", -1, "This process's index.")
    self.auto = flags.DEFINE_bool("distributed_auto", False,
                                  "Join a multi-process run found by JAX's cluster detection.")

  def join(self):
    """`(process_index, process_count)` after `distributed.initialize` with the flags."""
    from meanflow_jax.training import distributed  # imports jax: only when joining
    return distributed.initialize(self.coordinator.value, self.num_processes.value,
                                  self.process_id.value, auto=self.auto.value)
