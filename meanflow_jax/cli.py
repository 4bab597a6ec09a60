"""Shared plumbing of the scripts: flag parsing and one-line errors."""
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from meanflow_jax.errors import MeanFlowError


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --helpshort for the flags.")
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for a key the (locked) config does not have, in an
    # override --config.KEY=VALUE or in the config file itself.
    detail = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ").replace("\n", " ")
    overrides = [a.split("=")[0][2:] for a in argv if a.startswith("--config.")]
    sys.exit(f"error: unknown config key ({detail}). Overrides given: {overrides or 'none'}. "
             "Every key is listed, with its meaning, in configs/default.py.")


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
