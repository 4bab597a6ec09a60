import os
import shutil
import sys
import tempfile

# Tests import configs/ and scripts/ helpers from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_CLASSIFIER_ENV = "MEANFLOW_JAX_CACHE"


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole session.

  Many tests compile the same small steps and samplers again (each `train()` call, each
  script run in a subprocess, each pytest worker): with the cache, only the first
  compiles and the rest load the executable, which halves the suite's time on 2 cores.
  Set here, before any test module imports jax, and in the environment, so the xdist
  workers and the scripts the tests start share it. A directory the user set is kept.
  """
  if not os.environ.get(_CLASSIFIER_ENV):
    # The digits and MNIST classifiers of the image metrics, trained once per session (by
    # whichever worker needs one first), not once per test module, nor in the user's cache.
    config._meanflow_jax_classifiers = tempfile.mkdtemp(prefix="meanflow_jax_classifiers_")
    os.environ[_CLASSIFIER_ENV] = config._meanflow_jax_classifiers
  if os.environ.get(_CACHE_ENV):
    return
  path = tempfile.mkdtemp(prefix="meanflow_jax_xla_cache_")
  os.environ[_CACHE_ENV] = path
  # Only compilations of a second or more: writing an entry costs disk time, and caching
  # every small one (each eager op is one) made the suite slower, not faster.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  config._meanflow_jax_cache = path


def pytest_unconfigure(config):
  classifiers = getattr(config, "_meanflow_jax_classifiers", None)
  if classifiers:
    shutil.rmtree(classifiers, ignore_errors=True)
    os.environ.pop(_CLASSIFIER_ENV, None)
  path = getattr(config, "_meanflow_jax_cache", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)
    os.environ.pop(_CACHE_ENV, None)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def classifier_cache():
  """The session's classifier cache (`MEANFLOW_JAX_CACHE`, set in `pytest_configure`)."""
  return os.environ[_CLASSIFIER_ENV]
