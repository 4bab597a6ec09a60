"""Exact velocity fields and flow maps for Gaussian and Gaussian-mixture data.

Ground truth for tests, diagnostics and benchmarks. With data x ~ N(m, s^2 I),
noise eps ~ N(0, I) and z_t = (1 - t) x + t eps, write S(a) = sqrt((1-a)^2 s^2 + a^2):

    v(z, t)    = -m + (t - (1 - t) s^2) / S(t)^2 * (z - (1 - t) m)
    u(z, r, t) = -m + (1 - S(r)/S(t)) / (t - r) * (z - (1 - t) m)
    Phi_{t->r}(z) = (1 - r) m + S(r)/S(t) * (z - (1 - t) m)

For a mixture the marginal velocity is the posterior-weighted sum of the
components' velocities (exact), and the flow map integrates it with RK4.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


def _time_like(a, z):
  """A scalar or `[B]` time broadcast against `z` `[B, D]`."""
  a = jnp.asarray(a, z.dtype)
  return a.reshape(a.shape + (1,) * (z.ndim - a.ndim)) if a.ndim else a


class Gaussian(NamedTuple):
  """Isotropic Gaussian data N(mean, std^2 I)."""
  mean: jax.Array  # [D]
  std: float

  def _S(self, a):
    return jnp.sqrt((1.0 - a) ** 2 * self.std ** 2 + a ** 2)

  def velocity(self, z, t):
    """v(z, t); z `[B, D]`, t scalar or `[B]` -> `[B, D]`."""
    t = _time_like(t, z)
    return -self.mean + (t - (1 - t) * self.std ** 2) / self._S(t) ** 2 * (
        z - (1 - t) * self.mean)

  def average_velocity(self, z, r, t):
    """u(z, r, t); equals v(z, t) at r = t.

    (1 - S(r)/S(t)) / (t - r) is evaluated as
    ((t + r) - s^2 (2 - t - r)) / (S(t) (S(t) + S(r))), the same number without the
    0/0 at r = t.
    """
    t, r = _time_like(t, z), _time_like(r, z)
    s2 = self.std ** 2
    S_t, S_r = self._S(t), self._S(r)
    coef = ((t + r) - s2 * (2 - t - r)) / (S_t * (S_t + S_r))
    return -self.mean + coef * (z - (1 - t) * self.mean)

  def flow_map(self, z, t, r):
    """Phi_{t -> r}(z): the probability-flow ODE solution at r from z at t."""
    t, r = _time_like(t, z), _time_like(r, z)
    return (1 - r) * self.mean + self._S(r) / self._S(t) * (z - (1 - t) * self.mean)

  def sample(self, key, n):
    """`[n, D]` data samples."""
    return self.mean + self.std * jax.random.normal(key, (n,) + self.mean.shape)

  def log_prob(self, x):
    """log density of the data at x `[B, D]` -> `[B]`."""
    d = x.shape[-1]
    return (-0.5 * jnp.sum((x - self.mean) ** 2, -1) / self.std ** 2
            - d * jnp.log(self.std) - 0.5 * d * jnp.log(2 * jnp.pi))


class GaussianMixture(NamedTuple):
  """Mixture sum_k w_k N(means_k, Sigma_k), Sigma_k = A_k diag(s_k^2) A_k^T.

  Each component is a product of 1-D Gaussians along its own orthonormal axes
  (the columns of A_k), so along axis d it moves as the 1-D case of the module
  docstring with std s_kd: with y = A_k^T (z - (1-t) m_k) and
  S_kd(t)^2 = (1-t)^2 s_kd^2 + t^2,

      v_k(z, t) = -m_k + A_k [(t - (1-t) s_kd^2) / S_kd(t)^2 * y_d]_d

  `stds` `[K]` gives isotropic components, `[K, D]` anisotropic ones; `axes` None
  means A_k = I (axis-aligned), else `[K, D, D]` orthogonal matrices.
  """
  means: jax.Array    # [K, D]
  stds: jax.Array     # [K] or [K, D]
  weights: jax.Array  # [K], sums to 1
  axes: Optional[jax.Array] = None  # [K, D, D], column d of axes[k] carries stds[k, d]

  @property
  def dim(self):
    return self.means.shape[-1]

  def component_stds(self):
    """s_kd, the std of component k along its axis d, `[K, D]`."""
    k, d = self.means.shape
    return jnp.broadcast_to(jnp.reshape(self.stds, (k, -1)), (k, d))

  def scale(self):
    """sqrt(E||x - E x||^2), the data's scale (RMS distance from its mean)."""
    center = self.weights @ self.means
    spread = jnp.sum((self.means - center) ** 2, -1) + jnp.sum(self.component_stds() ** 2, -1)
    return jnp.sqrt(self.weights @ spread)

  def moments(self):
    """(E x `[D]`, Var x_d `[D]`): the exact per-dimension mean and variance.

    Var x_d = sum_k w_k (Sigma_k,dd + (m_kd - E x_d)^2), Sigma_k,dd = sum_e A_k,de^2 s_ke^2.
    """
    mean = self.weights @ self.means
    s2 = self.component_stds() ** 2
    diag = s2 if self.axes is None else jnp.einsum("kde,ke->kd", self.axes ** 2, s2)
    return mean, self.weights @ (diag + (self.means - mean) ** 2)

  def standardized(self, mean, std):
    """The mixture of (x - mean) / std, exactly; `mean` `[D]`, `std` scalar or `[D]` > 0.

    Component k becomes N((m_k - mean) / std, B_k B_k^T) with B_k = diag(1/std) A_k
    diag(s_k); its new axes and stds are the singular vectors and values of B_k.
    """
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    means = (self.means - mean) / std
    if std.ndim == 0:
      return self._replace(means=means, stds=self.stds / std)
    if self.axes is None:
      return self._replace(means=means, stds=self.component_stds() / std)
    b = self.axes * self.component_stds()[:, None, :] / std[:, None]  # [K, D, D]
    u, s, _ = jnp.linalg.svd(b)
    return self._replace(means=means, stds=s, axes=u)

  def _frames(self, z, t):
    """Each component in its own axes: y = A_k^T (z - (1-t) m_k) `[B, K, D]`, the
    variances S_kd(t)^2 `[B|1, K, D]` and t shaped `[B|1, 1, 1]`."""
    t = jnp.asarray(t, z.dtype)
    t = t.reshape(-1, 1, 1)
    S2 = (1 - t) ** 2 * self.component_stds() ** 2 + t ** 2
    diff = z[:, None, :] - (1 - t) * self.means
    y = diff if self.axes is None else jnp.einsum("bkd,kde->bke", diff, self.axes)
    return y, S2, t

  def _component_logits(self, y, S2):
    """log w_k + log N(z; (1-t) m_k, S_k(t)) -> `[B, K]`, from `_frames`."""
    return (jnp.log(self.weights) - 0.5 * jnp.sum(y ** 2 / S2, -1)
            - 0.5 * jnp.sum(jnp.log(2 * jnp.pi * S2), -1))

  def posterior(self, z, t):
    """p(component k | z_t = z), `[B, K]`."""
    y, S2, _ = self._frames(z, t)
    return jax.nn.softmax(self._component_logits(y, S2), axis=-1)

  def velocity(self, z, t):
    """Exact marginal v(z, t) = sum_k p(k | z) v_k(z, t); z `[B, D]`, t scalar or `[B]`."""
    y, S2, tt = self._frames(z, t)
    w = jax.nn.softmax(self._component_logits(y, S2), axis=-1)
    vy = (tt - (1 - tt) * self.component_stds() ** 2) / S2 * y  # [B, K, D], in each frame
    back = vy if self.axes is None else jnp.einsum("kde,bke->bkd", self.axes, vy)
    return jnp.einsum("bk,bkd->bd", w, back - self.means)

  def flow_map(self, z, t, r, num_steps=256):
    """Phi_{t -> r}(z) by RK4 on the exact velocity with `num_steps` uniform steps."""
    t = jnp.broadcast_to(jnp.asarray(t, z.dtype), z.shape[:1])
    r = jnp.broadcast_to(jnp.asarray(r, z.dtype), z.shape[:1])
    h = (r - t) / num_steps  # negative when going towards the data

    def rk4(i, z):
      s = t + i * h
      hh = h[:, None]
      k1 = self.velocity(z, s)
      k2 = self.velocity(z + 0.5 * hh * k1, s + 0.5 * h)
      k3 = self.velocity(z + 0.5 * hh * k2, s + 0.5 * h)
      k4 = self.velocity(z + hh * k3, s + h)
      return z + hh / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.lax.fori_loop(0, num_steps, rk4, z)

  def average_velocity(self, z, r, t, num_steps=256):
    """u(z, r, t) = (z - Phi_{t -> r}(z)) / (t - r); v(z, t) where r = t."""
    t = jnp.broadcast_to(jnp.asarray(t, z.dtype), z.shape[:1])
    r = jnp.broadcast_to(jnp.asarray(r, z.dtype), z.shape[:1])
    same = (t - r) == 0
    gap = jnp.where(same, 1.0, t - r)[:, None]
    u = (z - self.flow_map(z, t, r, num_steps)) / gap
    return jnp.where(same[:, None], self.velocity(z, t), u)

  def sample(self, key, n):
    """(x `[n, D]`, component index `[n]`)."""
    key_k, key_x = jax.random.split(key)
    k = jax.random.choice(key_k, self.weights.shape[0], (n,), p=self.weights)
    y = self.component_stds()[k] * jax.random.normal(key_x, (n, self.dim))
    x = self.means[k] + (y if self.axes is None else jnp.einsum("nde,ne->nd", self.axes[k], y))
    return x, k

  def log_prob(self, x):
    """log density of the data at x `[B, D]` -> `[B]`."""
    return _mixture_log_prob(self, x)


@jax.jit
def _mixture_log_prob(mix, x):
  # One compiled program (the mixture is a pytree argument): called eagerly by the metrics
  # and plots, op by op it compiled a dozen small programs at every new shape.
  y, S2, _ = mix._frames(x, 0.0)
  return jax.scipy.special.logsumexp(mix._component_logits(y, S2), axis=-1)


def ring_mixture(num_modes=8, radius=2.0, std=0.2):
  """`num_modes` equal-weight isotropic modes evenly spaced on a circle in 2-D."""
  angles = 2 * jnp.pi * jnp.arange(num_modes) / num_modes
  means = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
  return GaussianMixture(means=means, stds=jnp.full((num_modes,), std),
                         weights=jnp.full((num_modes,), 1.0 / num_modes))


class StraightGaussian(NamedTuple):
  """Data N(mean, diag(std^2)) joined to noise N(0, I) by the monotone (optimal-transport)
  coupling x = mean + std * eps, so every path z_t = (1-t) x + t eps is a straight line
  travelled at the constant velocity eps - x.

  Same endpoints as `Gaussian` (for an isotropic std), which uses the independent
  coupling: there x and eps are drawn independently, the marginal paths are
  z_t = (1-t) m + S(t) eps and curve, although its ODE carries eps to the same
  x = m + std * eps at t = 0. Here, with a(t) = (1-t) std + t,

      z_t        = (1-t) mean + a(t) eps
      v(z, t)    = -mean + (1 - std) / a(t) * (z - (1-t) mean)
      u(z, r, t) = v(z, t)    (the velocity is constant along each path)
      Phi_{t->r}(z) = (1-r) mean + a(r) / a(t) * (z - (1-t) mean)

  `std` must be positive (a negative one is the anti-monotone map, whose paths cross).
  """
  mean: jax.Array  # [D]
  std: jax.Array   # float or [D], > 0

  def _a(self, a):
    return (1 - a) * self.std + a

  def coupling(self, eps):
    """The data point x `[B, D]` paired with noise eps `[B, D]`."""
    return self.mean + self.std * eps

  def velocity(self, z, t):
    """Exact marginal v(z, t); z `[B, D]`, t scalar or `[B]` -> `[B, D]`."""
    t = _time_like(t, z)
    return -self.mean + (1 - self.std) / self._a(t) * (z - (1 - t) * self.mean)

  def average_velocity(self, z, r, t):
    """u(z, r, t) = v(z, t) for every r: paths are straight at constant speed."""
    del r
    return self.velocity(z, t)

  def flow_map(self, z, t, r):
    """Phi_{t -> r}(z): the point at time r of the straight path through z at time t."""
    t, r = _time_like(t, z), _time_like(r, z)
    return (1 - r) * self.mean + self._a(r) / self._a(t) * (z - (1 - t) * self.mean)

  def sample(self, key, n):
    """`[n, D]` data samples."""
    return self.coupling(jax.random.normal(key, (n,) + self.mean.shape))

  def log_prob(self, x):
    """log density of the data at x `[B, D]` -> `[B]`."""
    std = jnp.broadcast_to(jnp.asarray(self.std, x.dtype), self.mean.shape)
    return (-0.5 * jnp.sum(((x - self.mean) / std) ** 2, -1) - jnp.sum(jnp.log(std))
            - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi))
