"""Every shipped config is valid and builds its model (shapes only, nothing allocated)."""
import importlib
import os

import pytest

from meanflow_jax import models
from meanflow_jax.training import train_state
from meanflow_jax.training.validate import check_config

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..",
                                                          "configs"))
                 if f.endswith(".py") and f not in ("__init__.py",))
SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3),
          "latents": (32, 32, 4), "mixture": (2,)}


def _configs():
  for name in CONFIGS:
    module = importlib.import_module(f"configs.{name}")
    variants = getattr(module, "GUIDANCE", getattr(module, "SAMPLING",
                                                    getattr(module, "VARIANTS", None)))
    if variants:
      for variant in variants:
        yield f"{name}:{variant}", module.get_config(variant)
    else:
      yield name, module.get_config()


@pytest.mark.parametrize("name,config", list(_configs()), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_config_is_valid_and_builds(name, config):
  if config.data.source in ("latents",):
    with config.unlocked():
      config.data.path = "latents.npz"  # the user's file; check_config only needs it named
  check_config(config)
  model = train_state.build_model(config)
  count = models.param_count(model, SHAPES[config.data.source])
  assert count > 0
  if name.startswith("imagenet_dit"):
    paper = {"S": 33e6, "B": 131e6, "M": 308e6, "L": 459e6, "XL": 676e6}
    size = config.model.variant.split("/")[0]
    assert abs(count - paper[size]) / paper[size] < 0.01, (name, count)
  if name.startswith("imagenet_imf"):  # u and v heads (REFERENCE.md, training count)
    paper = {"B": 145_596_960, "M": 230_570_016, "L": 509_752_352, "XL": 710_113_760}
    size = config.model.variant.split("/")[0]
    assert abs(count - paper[size]) / paper[size] < 0.01, (name, count)
  if name == "cifar10":
    assert 50e6 < count < 60e6


def test_imagenet_guidance_settings_follow_the_paper():
  from configs import imagenet_dit
  xl = imagenet_dit.get_config("XL/2")
  assert (xl.guidance.omega, xl.guidance.kappa, xl.guidance.t_max) == (0.2, 0.92, 0.75)
  b = imagenet_dit.get_config("B/2")
  assert b.guidance.omega / (1 - b.guidance.kappa) == pytest.approx(2.0)
  with pytest.raises(ValueError, match="unknown variant"):
    imagenet_dit.get_config("H/2")


def test_imagenet_imf_samples_with_the_papers_settings():
  from configs import imagenet_imf
  xl = imagenet_imf.get_config("XL/2")
  assert (xl.objective, xl.model.name, xl.sample.omega, xl.sample.t_min, xl.sample.t_max) == (
      "imf", "imf_dit", 8.0, 0.42, 0.62)
  b = imagenet_imf.get_config("B/2")
  assert (b.sample.omega, b.sample.t_min, b.sample.t_max, b.time.ratio_r_neq_t) == (
      8.0, 0.4, 0.65, 0.5)
  with pytest.raises(ValueError, match="unknown variant"):
    imagenet_imf.get_config("S/2")


def test_mnist_cpu_budget_variant():
  from configs import mnist, mnist_imf
  cpu, imf = mnist.get_config("cpu"), mnist_imf.get_config("cpu")
  assert (cpu.model.dit.patch_size, cpu.train.steps) == (7, 4000)
  assert (imf.model.dit.patch_size, imf.train.steps, imf.objective) == (7, 4000, "imf")
  with pytest.raises(ValueError, match="variants"):
    mnist.get_config("XL/2")
