"""Checks of a config's values before a run touches its work directory."""
from meanflow_jax import models, priors, sampling, timesteps
from meanflow_jax.errors import ConfigError

OBJECTIVES = ("meanflow", "flow_matching")
SOURCES = ("mixture", "points", "pairs", "digits", "mnist", "array", "folder", "cifar10", "latents")


def _one_of(name, value, options):
  if value not in options:
    raise ConfigError(f"{name} = {value!r} is not one of {tuple(options)}.")


def _positive(name, value):
  if not value > 0:
    raise ConfigError(f"{name} must be positive; got {value!r}.")


def check_config(c):
  """Raises ConfigError naming the first key whose value cannot work."""
  _one_of("objective", c.objective, OBJECTIVES)
  priors.check_prior_config(c)
  _one_of("model.name", c.model.name, models.available())
  if c.model.variant:
    _one_of("model.variant", c.model.variant, models.variants(c.model.name))
  _one_of("data.source", c.data.source, SOURCES)
  _one_of("model.dtype", c.model.dtype, ("float32", "bfloat16"))
  if c.data.source in ("points", "pairs", "array", "folder", "latents") and not c.data.path:
    raise ConfigError(f"data.source = {c.data.source!r} reads data.path; it is empty.")
  if c.model.num_classes < 0:
    raise ConfigError(f"model.num_classes must be >= 0; got {c.model.num_classes}.")
  g = c.guidance
  if not 0.0 <= g.label_dropout < 1.0:
    raise ConfigError(f"guidance.label_dropout must lie in [0, 1); got {g.label_dropout}.")
  if not 0.0 <= g.t_min <= g.t_max <= 1.0:
    raise ConfigError(f"need 0 <= guidance.t_min <= guidance.t_max <= 1; got "
                      f"[{g.t_min}, {g.t_max}].")
  if c.model.num_classes and (g.omega != 1.0 or g.kappa != 0.0) and g.label_dropout == 0.0:
    raise ConfigError("guidance (omega, kappa) needs the null class to be trained: set "
                      "guidance.label_dropout > 0 (the paper uses 0.1).")
  if g.kappa >= 1.0:
    raise ConfigError(f"guidance.kappa must be < 1 (the scale is omega / (1 - kappa)); got "
                      f"{g.kappa}.")
  _one_of("time.distribution", c.time.distribution, timesteps.DISTRIBUTIONS)
  _one_of("optimizer.name", c.optimizer.name, ("adam", "adamw"))
  _one_of("optimizer.schedule", c.optimizer.schedule, ("constant", "cosine"))
  _one_of("sample.method", c.sample.method, sampling.METHODS)
  _one_of("sample.params", c.sample.params, ("ema", "raw"))
  for key in ("train.steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
              "train.max_to_keep", "optimizer.lr", "time.sigma"):
    section, name = key.split(".")
    _positive(key, c[section][name])
  for key in ("train.sample_every", "train.sample_nfe"):
    if c.train[key.split(".")[1]] < 0:
      raise ConfigError(f"{key} must be >= 0 (0: off / the default); got "
                        f"{c.train[key.split('.')[1]]}.")
  if not 0.0 <= c.time.ratio_r_neq_t <= 1.0:
    raise ConfigError(f"time.ratio_r_neq_t must lie in [0, 1]; got {c.time.ratio_r_neq_t}.")
  if not c.train.ema_decays or not all(0.0 <= d < 1.0 for d in c.train.ema_decays):
    raise ConfigError(f"train.ema_decays must be a non-empty list of decays in [0, 1); got "
                      f"{c.train.ema_decays!r}.")
  if c.loss.p < 0 or c.loss.c <= 0:
    raise ConfigError(f"loss.p must be >= 0 and loss.c > 0; got p={c.loss.p}, c={c.loss.c}.")
