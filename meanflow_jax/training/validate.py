"""Checks of a config's values before a run touches its work directory.

Three kinds of check, each from one table:
- choices: names that must be one of a registry's (`check_config`);
- ranges: every numeric key's admissible values (`RANGES`);
- reads: when a key is read at all (`READ_WHEN`). A key the run does not read cannot
  change it, so setting one (to anything but configs/default.py's value) is an error:
  the user believed it did something.
"""
import math
from typing import Callable, NamedTuple

from meanflow_jax import models, objectives, priors, sampling, timesteps
from meanflow_jax.errors import ConfigError
from meanflow_jax.models.embeddings import PREDICTIONS
from meanflow_jax.objectives import features
from meanflow_jax.training import feature_networks  # noqa: F401  (registers "classifier")
from meanflow_jax.training import train_state as ts
from meanflow_jax.training.train_step import guidance_active

SOURCES = ("mixture", "points", "pairs", "digits", "mnist", "array", "folder", "cifar10", "latents")
IMAGE_SOURCES = ("digits", "mnist", "array", "folder", "cifar10", "latents")
# Sources that need a file or directory in data.path (cifar10 reads it too, optionally:
# the tensorflow-datasets data_dir).
PATH_SOURCES = ("points", "pairs", "array", "folder", "latents")
# File name endings each file source reads (folder: a directory).
PATH_ENDINGS = {"points": (".npy",), "pairs": (".npz",), "array": (".npy", ".npz"),
                "latents": (".npy", ".npz")}


def _one_of(name, value, options):
  if value not in options:
    raise ConfigError(f"{name} = {value!r} is not one of {tuple(options)}.")


def flatten(d, prefix=""):
  """{"a": {"b": 1}} -> {"a.b": 1}; lists become tuples (JSON and flags give either)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def _under(key, prefixes):
  """Whether `key` is one of `prefixes` or lies in one of those sections."""
  return any(key == p or key.startswith(p + ".") for p in prefixes)


# ----------------------------------------------------------------------------- ranges


class Range(NamedTuple):
  """Admissible values of the numeric keys `keys`: `ok(value)`, described as `text`.

  None (a model section's "use the preset") is always admissible.
  """
  keys: tuple
  ok: Callable
  text: str


def _finite(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(lo):
  return lambda v: _finite(v) and v >= lo


def _above(lo):
  return lambda v: _finite(v) and v > lo


def _within(lo, hi):  # [lo, hi)
  return lambda v: _finite(v) and lo <= v < hi


def _sizes(v):
  return isinstance(v, tuple) and len(v) > 0 and all(_finite(s) and s >= 1 for s in v)


def _mesh_axis(v):
  return isinstance(v, int) and (v == -1 or v >= 1)


RANGES = (
    Range(("seed",), _at_least(0), ">= 0"),
    Range(("sample.omega",), _at_least(1.0), ">= 1 (1: no guidance)"),
    Range(("imf.s_max", "imf.beta", "loss.v_weight"), _at_least(0), "finite and >= 0"),
    Range(("optimizer.lr", "optimizer.muon_lr", "time.sigma", "loss.c", "data.mixture_std",
           "loss.features_weight",
           "data.latent_scale",
           "model.mlp.time_scale", "model.dit.mlp_ratio", "model.dit.time_scale",
           "model.imf_dit.mlp_ratio", "model.imf_dit.time_scale",
           "model.unet.time_scale", "guidance.omega"), _above(0), "finite and > 0"),
    Range(("time.mu",), _finite, "finite"),
    Range(("optimizer.b1", "optimizer.b2"), _within(0.0, 1.0), "in [0, 1)"),
    Range(("optimizer.weight_decay", "optimizer.grad_clip", "optimizer.warmup_steps",
           "loss.p", "data.mixture_separation", "prior.noise_std", "guidance.kappa",
           "train.sample_every", "train.sample_nfe", "model.num_classes", "train.prefetch",
           "train.eval_every",
           "model.imf_dit.head_depth"),
          _at_least(0), "finite and >= 0 (0: off)"),
    Range(("train.steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
           "train.max_to_keep", "train.stop_check_every", "data.mixture_dim", "prior.factor", "prior.fit_examples",
           "sample.num_plot", "sample.grid_per_class", "model.mlp.width", "model.mlp.depth",
           "model.mlp.time_dim", "model.dit.patch_size", "model.dit.hidden_size",
           "model.dit.depth", "model.dit.num_heads", "model.unet.base_channels",
           "model.imf_dit.patch_size", "model.imf_dit.hidden_size", "model.imf_dit.depth",
           "model.imf_dit.num_heads",
           "model.unet.num_res_blocks"), _at_least(1), "positive (>= 1)"),
    Range(("model.unet.dropout", "guidance.label_dropout"), _within(0.0, 1.0), "in [0, 1)"),
    Range(("model.unet.channel_mult",), _sizes, "a non-empty list of integers >= 1"),
    Range(("train.eval_nfe",), _sizes, "a non-empty list of NFE values >= 1"),
    Range(("train.eval_num",), _at_least(2), ">= 2 (a covariance needs two samples)"),
    Range(("model.unet.attn_resolutions",),
          lambda v: isinstance(v, tuple) and (v == () or _sizes(v)),
          "a list of image sizes >= 1 (empty: no attention)"),
    Range(("mesh.data", "mesh.fsdp"), _mesh_axis, "-1 (the remaining devices) or >= 1"),
    Range(("train.profile_steps",),
          lambda v: v == () or (isinstance(v, tuple) and len(v) == 2
                                and all(isinstance(s, int) and s >= 0 for s in v)
                                and v[0] < v[1]),
          "empty (no trace) or two steps (first, last) with 0 <= first < last"),
)


def check_ranges(c):
  """Raises ConfigError naming the first key whose value lies outside `RANGES`."""
  values = flatten(c.to_dict())
  for rule in RANGES:
    for key in rule.keys:
      v = values.get(key)
      if key in values and v is not None and not rule.ok(v):
        raise ConfigError(f"{key} must be {rule.text}; got {v!r}.")
  if c.mesh.data == -1 and c.mesh.fsdp == -1:
    raise ConfigError("mesh.data and mesh.fsdp cannot both be -1 (the remaining devices); "
                      "set one of them.")


# ----------------------------------------------------------------------------- reads


def _objective_reads(c, key):
  """Whether the run's objective reads `key` (`Objective.reads`); an unknown objective is
  refused by `check_config` first."""
  return c.objective in objectives.names() and key in objectives.get(c.objective).reads


class ReadWhen(NamedTuple):
  """The keys (or whole sections) `keys` are read only when `test(config)` holds.

  `by` are the keys `test` looks at (named in the error), `when` says in words when the
  keys are read, `fix` what to set instead.
  """
  keys: tuple
  by: tuple
  test: Callable
  when: str
  fix: str


def _model_sections():
  """model.<name> is read only when model.name is name: one rule per registered model."""
  return tuple(
      ReadWhen((f"model.{name}",), ("model.name",), lambda c, name=name: c.model.name == name,
               f"model.name = {name!r}",
               f"set --config.model.name={name}, or leave model.{name} at its defaults")
      for name in models.available())


# The first rule of a key that does not hold is the one reported; so a key covered by two
# rules (data.mixture_std: the source, then the mixture) names the decisive choice first.
READ_WHEN = (
    ReadWhen(("data.path",), ("data.source",), lambda c: c.data.source in PATH_SOURCES
             + ("cifar10",),
             f"data.source is one of {', '.join(PATH_SOURCES + ('cifar10',))}",
             "set --config.data.source=points (an [N, D] .npy; pairs, array, folder, latents "
             "for the others), or leave data.path empty"),
    ReadWhen(("data.mixture", "data.mixture_dim", "data.mixture_separation",
              "data.mixture_std"), ("data.source",), lambda c: c.data.source == "mixture",
             "data.source = 'mixture'",
             "set --config.data.source=mixture, or leave the data.mixture keys at their "
             "defaults"),
    ReadWhen(("data.mixture_dim", "data.mixture_separation", "data.mixture_std"),
             ("data.mixture",), lambda c: c.data.mixture == "two_modes",
             "data.mixture = 'two_modes'", "set --config.data.mixture=two_modes, or leave "
             "data.mixture_dim, data.mixture_separation and data.mixture_std at their defaults"),
    ReadWhen(("data.standardize",), ("data.source",),
             lambda c: c.data.source in ("mixture", "points"),
             "data.source is mixture or points",
             "leave data.standardize at its default (images are in [-1, 1], latents scaled by "
             "data.latent_scale, pairs used as stored)"),
    ReadWhen(("data.flip",), ("data.source",), lambda c: c.data.source in IMAGE_SOURCES,
             f"data.source is an image source ({', '.join(IMAGE_SOURCES)})",
             "leave data.flip False"),
    ReadWhen(("data.latent_scale",), ("data.source",), lambda c: c.data.source == "latents",
             "data.source = 'latents'", "set --config.data.source=latents, or leave "
             "data.latent_scale at its default"),
    ReadWhen(("prior.coupling",), ("prior.name",), lambda c: c.prior.name == "gaussian",
             "prior.name = 'gaussian'", "leave prior.coupling at 'independent'"),
    ReadWhen(("prior.factor", "prior.noise_std", "prior.fit_examples"), ("prior.name",),
             lambda c: c.prior.name == "lowfreq", "prior.name = 'lowfreq'",
             "set --config.prior.name=lowfreq, or leave the low-frequency prior's keys at "
             "their defaults"),
    *_model_sections(),
    # The MLP computes in float32 throughout; only DiT and U-Net take a matmul dtype.
    ReadWhen(("model.remat",), ("model.name",), lambda c: c.model.name in ("dit", "imf_dit"),
             "model.name is dit or imf_dit (transformer blocks)",
             "leave model.remat at False"),
    ReadWhen(("model.dtype",), ("model.name",),
             lambda c: c.model.name in ("dit", "imf_dit", "unet"),
             "model.name is dit, imf_dit or unet", "leave model.dtype at 'float32'"),
    ReadWhen(("guidance",), ("model.num_classes",), lambda c: c.model.num_classes > 0,
             "model.num_classes > 0 (a class-conditional model)",
             "set model.num_classes to the data's classes, or leave guidance.* at the "
             "defaults"),
    ReadWhen(("guidance.omega", "guidance.kappa", "guidance.t_min", "guidance.t_max"),
             ("objective",), lambda c: not _objective_reads(c, "imf"),
             "the objective folds a fixed guidance into training (meanflow, flow_matching)",
             "iMF draws omega and the interval per sample (imf.s_max, imf.beta) and takes "
             "them at sampling (sample.omega, sample.t_min, sample.t_max); leave guidance.* "
             "but label_dropout at the defaults"),
    ReadWhen(("imf.s_max", "imf.beta", "sample.omega", "sample.t_min", "sample.t_max"),
             ("objective", "model.num_classes"),
             lambda c: _objective_reads(c, "imf") and c.model.num_classes > 0,
             "objective = 'imf' with a class-conditional model (guidance conditions)",
             "set --config.objective=imf and model.num_classes, or leave imf.s_max, "
             "imf.beta and sample.omega/t_min/t_max at the defaults"),
    ReadWhen(("imf.tangent", "loss.v_weight"), ("objective",),
             lambda c: _objective_reads(c, "imf"), "objective = 'imf'",
             "set --config.objective=imf, or leave imf.tangent and loss.v_weight at their "
             "defaults"),
    ReadWhen(("optimizer.muon_lr",), ("optimizer.name",), lambda c: c.optimizer.name == "muon",
             "optimizer.name = 'muon'", "set --config.optimizer.name=muon, or leave "
             "optimizer.muon_lr at its default"),
    ReadWhen(("guidance.t_min", "guidance.t_max"), ("guidance.omega", "guidance.kappa"),
             lambda c: guidance_active(c.guidance, c.model.num_classes),
             "guidance is on (guidance.omega != 1 or guidance.kappa != 0)",
             "set guidance.omega or guidance.kappa, or leave the interval at [0, 1]"),
    ReadWhen(("time.mu", "time.sigma"), ("time.distribution",),
             lambda c: c.time.distribution == "logit_normal",
             "time.distribution = 'logit_normal'",
             "set --config.time.distribution=logit_normal, or leave time.mu and time.sigma "
             "at their defaults"),
    ReadWhen(("time.ratio_r_neq_t", "time.subset_jvp"), ("objective",),
             lambda c: _objective_reads(c, "time.ratio_r_neq_t"),
             "objective is meanflow or imf (flow matching has r = t)",
             "leave time.ratio_r_neq_t and time.subset_jvp at their defaults"),
    ReadWhen(("loss.features_weight",), ("loss.features",), lambda c: bool(c.loss.features),
             "loss.features names a feature network", "set --config.loss.features (e.g. "
             "classifier), or leave loss.features_weight at its default"),
    ReadWhen(("loss.c",), ("loss.p",), lambda c: c.loss.p != 0,
             "loss.p > 0 (p = 0 weighs every sample by 1)", "set loss.p > 0, or leave loss.c "
             "at its default"),
    ReadWhen(("optimizer.weight_decay",), ("optimizer.name",),
             lambda c: c.optimizer.name in ("adamw", "muon"),
             "optimizer.name is adamw or muon",
             "set --config.optimizer.name=adamw, or leave optimizer.weight_decay at 0"),
    ReadWhen(("train.sample_nfe",), ("train.sample_every",), lambda c: c.train.sample_every > 0,
             "train.sample_every > 0 (sample grids during training)",
             "set train.sample_every, or leave train.sample_nfe at 0"),
    ReadWhen(("train.eval_num", "train.eval_nfe", "train.eval_keep_best",
              "train.eval_inception"), ("train.eval_every",), lambda c: c.train.eval_every > 0,
             "train.eval_every > 0 (evaluations during training)",
             "set train.eval_every, or leave the train.eval_* keys at their defaults"),
    ReadWhen(("train.eval_ref",), ("train.eval_every", "train.eval_inception"),
             lambda c: c.train.eval_every > 0 and bool(c.train.eval_inception),
             "train.eval_inception is set (FID during training)",
             "set train.eval_inception, or leave train.eval_ref empty"),
    ReadWhen(("train.eval_vae",), ("train.eval_every", "data.source"),
             lambda c: c.train.eval_every > 0 and c.data.source == "latents",
             "a latents run evaluates during training",
             "leave train.eval_vae empty"),
    ReadWhen(("logging.wandb_project", "logging.wandb_name"), ("logging.wandb",),
             lambda c: c.logging.wandb, "logging.wandb = True",
             "set --config.logging.wandb=True, or leave the logging.wandb_* keys"),
    ReadWhen(("sample.method",), ("objective",), lambda c: _objective_reads(c, "sample.method"),
             "objective = 'flow_matching' (MeanFlow samples by its own jumps)",
             "leave sample.method at its default"),
    ReadWhen(("sample.num_plot",), ("data.source",),
             lambda c: c.data.source not in IMAGE_SOURCES,
             "the data are points (scatter plots)", "leave sample.num_plot at its default"),
    ReadWhen(("sample.grid_per_class",), ("data.source", "model.num_classes"),
             lambda c: c.data.source not in ("mixture", "points") or c.model.num_classes > 0,
             "the data are images or the model is class-conditional",
             "leave sample.grid_per_class at its default"),
)


def _deciders(c, keys):
  values = flatten(c.to_dict())
  return " with ".join(f"{k} = {values[k]!r}" for k in keys)


def check_reads(c, defaults, overrides=None):
  """Raises ConfigError for a key set to a value other than `defaults`' that the run
  does not read (`READ_WHEN`).

  Args:
    c: the run's config.
    defaults: the config of configs/default.py.
    overrides: the keys set on the command line, or None (unknown: every key that
      differs from the defaults counts as set by the caller). With them, a key set by
      the config file is not an error when a key deciding whether it is read was set
      on the command line: `--config.objective=flow_matching` on a MeanFlow config
      makes its time.ratio_r_neq_t moot, not wrong.
  """
  values, base = flatten(c.to_dict()), flatten(defaults.to_dict())
  for key in sorted(values):
    if key not in base or values[key] == base[key]:
      continue
    for rule in READ_WHEN:
      if not _under(key, rule.keys) or rule.test(c):
        continue
      from_file = overrides is not None and key not in overrides
      if from_file and any(_under(o, rule.by) for o in overrides):
        break
      raise ConfigError(
          f"{key} = {values[key]!r} is set, but {_deciders(c, rule.by)} does not read it: "
          f"it is read only when {rule.when}; {rule.fix}.")


# ----------------------------------------------------------------------------- all checks


def check_data_path(c):
  """Raises ConfigError for a data.path its source cannot read by its name: a text or CSV
  file given as points reaches numpy.load as "pickled data" otherwise. (Not part of
  `check_config`: scripts/dryrun.py names no file for sources it only needs the shape of.)"""
  d = c.data
  endings = PATH_ENDINGS.get(d.source)
  if not endings or not d.path or str(d.path).lower().endswith(endings):
    return
  convert = (f"; convert it with numpy.save('{d.path.rsplit('.', 1)[0]}.npy', "
             f"numpy.loadtxt('{d.path}', delimiter=','))"
             if d.source == "points" and d.path.lower().endswith((".csv", ".txt")) else "")
  raise ConfigError(f"data.path = {d.path!r} is not a {' or '.join(endings)} file, which "
                    f"data.source = {d.source!r} reads{convert}.")


def check_config(c, defaults=None, overrides=None):
  """Raises ConfigError naming the first key whose value cannot work.

  Args:
    c: the run's config.
    defaults: configs/default.py's config; with it, keys set to another value that the
      run does not read are errors too (`check_reads`).
    overrides: the keys the command line set (see `check_reads`); None: unknown.
  """
  objectives.get(c.objective)  # unknown: ConfigError listing the registered ones
  priors.check_prior_config(c)
  _one_of("model.name", c.model.name, models.available())
  if c.model.variant:
    _one_of("model.variant", c.model.variant, models.variants(c.model.name))
  _one_of("data.source", c.data.source, SOURCES)
  _one_of("model.dtype", c.model.dtype, ("float32", "bfloat16"))
  if c.data.source in PATH_SOURCES and not c.data.path:
    raise ConfigError(f"data.source = {c.data.source!r} reads data.path; it is empty.")
  _one_of("time.distribution", c.time.distribution, timesteps.DISTRIBUTIONS)
  _one_of("imf.tangent", c.imf.tangent, sorted(objectives.imf.TANGENTS))
  _one_of("optimizer.name", c.optimizer.name, sorted(ts.OPTIMIZERS))
  _one_of("model.prediction", c.model.prediction, PREDICTIONS)
  _one_of("optimizer.schedule", c.optimizer.schedule, ("constant", "cosine"))
  _one_of("sample.method", c.sample.method, sampling.METHODS)
  _one_of("sample.params", c.sample.params, ("ema", "raw"))
  if c.loss.features:
    features.check_name(c.loss.features)
  check_ranges(c)
  g = c.guidance
  if not 0.0 <= g.t_min <= g.t_max <= 1.0:
    raise ConfigError(f"need 0 <= guidance.t_min <= guidance.t_max <= 1; got "
                      f"[{g.t_min}, {g.t_max}].")
  if c.model.num_classes and (g.omega != 1.0 or g.kappa != 0.0) and g.label_dropout == 0.0:
    raise ConfigError("guidance (omega, kappa) needs the null class to be trained: set "
                      "guidance.label_dropout > 0 (the paper uses 0.1).")
  if g.kappa >= 1.0:
    raise ConfigError(f"guidance.kappa must be < 1 (the scale is omega / (1 - kappa)); got "
                      f"{g.kappa}.")
  if not 0.0 <= c.sample.t_min <= c.sample.t_max <= 1.0:
    raise ConfigError(f"need 0 <= sample.t_min <= sample.t_max <= 1; got "
                      f"[{c.sample.t_min}, {c.sample.t_max}].")
  if (_objective_reads(c, "imf") and c.loss.v_weight == 0.0
      and objectives.imf.reads_v_head(c.imf.tangent, c.model.num_classes, c.imf.s_max)):
    raise ConfigError("loss.v_weight = 0 leaves the v head untrained, and this run reads it "
                      "(imf.tangent 'model', or guidance with imf.s_max > 0): set loss.v_weight "
                      "> 0, or imf.tangent=target with imf.s_max=0 (or an unconditional model).")
  if not 0.0 <= c.time.ratio_r_neq_t <= 1.0:
    raise ConfigError(f"time.ratio_r_neq_t must lie in [0, 1]; got {c.time.ratio_r_neq_t}.")
  if c.train.profile_steps and c.train.profile_steps[0] >= c.train.steps:
    raise ConfigError(f"train.profile_steps {tuple(c.train.profile_steps)} starts at or after "
                      f"the last step ({c.train.steps}): no step would be traced.")
  if c.train.eval_every and c.data.source in ("points", "pairs"):
    raise ConfigError(f"train.eval_every: a run on data.source = {c.data.source!r} has no metric "
                      "to evaluate during training (exact metrics need a built-in mixture, "
                      "image metrics images); set train.eval_every = 0.")
  if c.train.eval_every and c.data.source == "latents" and not (
      c.train.eval_inception and c.train.eval_vae):
    raise ConfigError("train.eval_every on latents: set train.eval_inception (FID Inception "
                      "weights) and train.eval_vae (the VAE that decodes the samples).")
  if not c.train.ema_decays or not all(0.0 <= d < 1.0 for d in c.train.ema_decays):
    raise ConfigError(f"train.ema_decays must be a non-empty list of decays in [0, 1); got "
                      f"{c.train.ema_decays!r}.")
  if defaults is not None:
    check_reads(c, defaults, overrides)


def check_allow_changes(c, allow_changes):
  """Raises ConfigError for an entry of `allow_changes` that is no key or section of `c`."""
  values = flatten(c.to_dict())
  sections = {k.rsplit(".", 1)[0] for k in values if "." in k}
  unknown = [k for k in allow_changes if k not in values and k not in sections]
  if unknown:
    raise ConfigError(f"allowed resume changes {unknown} are not config keys or sections "
                      "(e.g. seed, loss.p, data); every key is in configs/default.py.")
