"""A small image classifier trained by the project, for offline quality metrics.

No Inception weights can be had offline, so image quality here is measured in the
features of a small CNN trained on the same labelled images (digits, MNIST):

- classifier Frechet distance ("clf-FD"): the Frechet distance between Gaussians
  fitted to the 128-d penultimate features of generated and real images. It is NOT
  FID: the feature network, its dimension and its scale differ, so its values are
  comparable only with other clf-FD values of the same data.
- class agreement: the fraction of samples of a class-conditional model that the
  classifier assigns to the class that was asked for.

The classifier is trained once per data set (deterministic: fixed seed, fixed
held-out split) and cached as a msgpack file keyed by a hash of the data.
"""
import functools
import hashlib
import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from meanflow_jax.errors import DataError

FEATURE_DIM = 128


class CNN(nn.Module):
  """Three 3x3 convolutions (two with stride 2), a 128-d feature layer, logits."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    """x `[B, H, W, C]` in [-1, 1] -> (logits `[B, K]`, features `[B, 128]`)."""
    h = nn.gelu(nn.Conv(32, (3, 3))(x))
    h = nn.gelu(nn.Conv(64, (3, 3), strides=2)(h))
    h = nn.gelu(nn.Conv(64, (3, 3), strides=2)(h))
    h = h.reshape(h.shape[0], -1)
    features = nn.gelu(nn.Dense(FEATURE_DIM)(h))
    return nn.Dense(self.num_classes)(features), features


class Classifier(NamedTuple):
  params: Any
  num_classes: int
  accuracy: float  # on the held-out fifth of the data

  def features_and_predictions(self, x, batch=1000):
    """(features `[N, 128]`, predicted classes `[N]`) of images `[N, H, W, C]` in [-1, 1]."""
    x = np.asarray(x, np.float32)
    outs = [_forward(self.num_classes, self.params, x[i:i + batch])
            for i in range(0, x.shape[0], batch)]
    return (np.concatenate([np.asarray(o[1]) for o in outs]),
            np.concatenate([np.asarray(o[0]).argmax(-1) for o in outs]))

  def features(self, x):
    """Penultimate features `[N, 128]` of images `[N, H, W, C]` in [-1, 1]."""
    return self.features_and_predictions(x)[0]

  def predict(self, x):
    """Predicted classes `[N]` of images `[N, H, W, C]`."""
    return self.features_and_predictions(x)[1]


@functools.partial(jax.jit, static_argnums=0)
def _forward(num_classes, params, x):
  # One compiled network per class count, reused across calls (a fresh jit of a
  # bound method would retrace every time).
  return CNN(num_classes).apply(params, x)


def split(n, seed=0, holdout=0.2):
  """(train indices, held-out indices) of a fixed random split of `n` examples."""
  perm = np.random.default_rng(seed).permutation(n)
  k = int(round(n * holdout))
  return np.sort(perm[k:]), np.sort(perm[:k])


def train_classifier(images, labels, num_classes, *, seed=0, steps=1000, batch_size=128,
                     lr=2e-3):
  """Trains `CNN` on four fifths of (images `[N, H, W, C]`, labels `[N]`).

  Returns:
    a `Classifier` with its accuracy on the remaining fifth.
  """
  images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
  train_idx, test_idx = split(images.shape[0], seed)
  model = CNN(num_classes)
  key_init, key_batches = jax.random.split(jax.random.key(seed))
  params = model.init(key_init, images[:1])
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
  opt_state = tx.init(params)
  x_train, y_train = jnp.asarray(images[train_idx]), jnp.asarray(labels[train_idx])

  @jax.jit
  def step(params, opt_state, i):
    pick = jax.random.randint(jax.random.fold_in(key_batches, i), (batch_size,), 0,
                              x_train.shape[0])

    def loss_fn(p):
      logits, _ = model.apply(p, x_train[pick])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y_train[pick]).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for i in range(steps):
    params, opt_state = step(params, opt_state, i)
  clf = Classifier(params, num_classes, 0.0)
  accuracy = float(np.mean(clf.predict(images[test_idx]) == labels[test_idx]))
  return clf._replace(accuracy=accuracy)


def default_cache_dir():
  return os.environ.get("MEANFLOW_JAX_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "meanflow_jax"))


def load_or_train(images, labels, num_classes, *, cache_dir=None, seed=0):
  """The classifier of this data, from the cache or trained (and cached) now.

  The cache file is named by a hash of the images, labels and seed, so other data
  never reuse it.
  """
  if labels is None:
    raise DataError("the classifier metrics need labelled images (digits, mnist, or an array "
                    "or folder with labels).")
  images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
  digest = hashlib.sha1(images.tobytes() + labels.tobytes() + str(seed).encode()).hexdigest()[:16]
  cache_dir = cache_dir or default_cache_dir()
  path = os.path.join(cache_dir, f"classifier-{digest}.msgpack")
  # Shapes only: an eager init compiles one program per parameter shape (seconds on CPU).
  template = jax.eval_shape(CNN(num_classes).init, jax.random.key(0), images[:1])
  if os.path.exists(path) and os.path.exists(path + ".json"):
    with open(path, "rb") as f:
      params = flax.serialization.from_bytes(template, f.read())
    with open(path + ".json") as f:
      accuracy = json.load(f)["heldout_accuracy"]
    return Classifier(params, num_classes, accuracy)
  clf = train_classifier(images, labels, num_classes, seed=seed)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.to_bytes(clf.params))
  with open(tmp + ".json", "w") as f:
    json.dump({"heldout_accuracy": clf.accuracy, "num_classes": num_classes}, f)
  os.replace(tmp + ".json", path + ".json")  # atomic: a concurrent reader sees all or nothing
  os.replace(tmp, path)
  return clf
