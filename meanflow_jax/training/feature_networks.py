"""Feature networks this project can build offline for `loss.features`
(`meanflow_jax.objectives.features`): the perceptual-loss slot of pixel MeanFlow.

"classifier": the 128-d penultimate features of the small CNN the metrics use
(`metrics.classifier`), trained on the run's own labelled images (or read from its cache).
A stand-in for LPIPS or ConvNeXt features, whose weights cannot be had offline; it shows
the slot working end to end and is a real, if small, feature loss on digits and MNIST.
"""
import jax.numpy as jnp

from meanflow_jax.data import images
from meanflow_jax.errors import ConfigError
from meanflow_jax.metrics import classifier
from meanflow_jax.objectives import features


def classifier_features(config):
  """phi(x `[B, H, W, C]`) -> `[B, 128]` of the project's classifier of the run's data."""
  d = config.data
  if d.source not in images.SOURCES:
    raise ConfigError(f"loss.features = 'classifier' needs labelled images "
                      f"({', '.join(images.SOURCES)}); data.source is {d.source!r}.")
  x, y, k = images.load_images(d.source, path=d.path, latent_scale=d.latent_scale)
  if y is None:
    raise ConfigError(f"loss.features = 'classifier' needs labels; {d.path!r} has none.")
  clf = classifier.load_or_train(x, y, k)
  net = classifier.CNN(k)
  params = clf.params
  return lambda z: net.apply(params, z.astype(jnp.float32))[1]


features.register("classifier", classifier_features)
