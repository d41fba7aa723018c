"""Gaussian-mixture data with an exact denoiser: the analytic oracle of every test.

Data: x0 ~ sum_k w_k N(mu_k, diag(s_k^2)) in R^D. Under x_t = alpha x0 + sigma eps the
marginal is p_t(x) = sum_k w_k N(x; alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)), and the exact
denoiser is

    E[x0 | x_t = x] = sum_k r_k(x) (mu_k + g_k (x - alpha mu_k)),
    g_k = alpha s_k^2 / (alpha^2 s_k^2 + sigma^2),

with responsibilities r_k(x) proportional to w_k N(x; alpha mu_k, alpha^2 s_k^2 + sigma^2).

For a single Gaussian (K = 1) the probability-flow ODE has the closed-form solution

    x_t = alpha_t mu + r_ts (x_s - alpha_s mu),
    r_ts = sqrt(alpha_t^2 s^2 + sigma_t^2) / sqrt(alpha_s^2 s^2 + sigma_s^2)

(per dimension): the flow is the optimal-transport map between the Gaussian marginals.

The exact noise prediction is written without dividing by ``sigma``,

    E[eps | x_t = x] = sum_k r_k(x) sigma (x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2),

so it is finite at sigma = 0 (where it is 0 for s_k > 0) as well as at alpha = 0; the exact
velocity of the process, dx_t/dt = alpha'(t) x0 + sigma'(t) eps, follows from the two
(rectified flow: u = eps - x0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..denoiser import Denoiser
from ..noise import NoiseSchedule

__all__ = ["GaussianMixture"]

Array = Any


def _as_float(x):
    return jnp.asarray(x, dtype=jnp.result_type(float))


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False, init=False)
class GaussianMixture:
    """Mixture of K axis-aligned Gaussians in D dimensions.

    Args:
      means: (K, D) component means.
      stds: per-component standard deviations: a scalar, (K,) (isotropic) or (K, D) (diagonal).
      weights: (K,) mixture weights (normalised here); uniform if omitted.
    """

    means: Array
    stds: Array
    log_weights: Array

    def __init__(self, means, stds, weights=None):
        m = np.asarray(means, dtype=np.float64)
        if m.ndim == 1:
            m = m[None, :]
        if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise ValueError(f"means must have shape (K, D), got shape {np.shape(means)}")
        if not np.all(np.isfinite(m)):
            raise ValueError("means must be finite")
        k, d = m.shape
        s = np.asarray(stds, dtype=np.float64)
        if s.ndim == 0:
            s = np.full((k, d), float(s))
        elif s.shape == (k,):
            s = np.repeat(s[:, None], d, axis=1)
        elif s.shape != (k, d):
            raise ValueError(f"stds must be a scalar, shape ({k},) or ({k}, {d}); got {s.shape}")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise ValueError(f"stds must be finite and >= 0, got min {s.min():g}")
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError("weights must be finite and > 0")
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "stds", s)
        object.__setattr__(self, "log_weights", np.log(w / w.sum()))

    def tree_flatten(self):
        return (self.means, self.stds, self.log_weights), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for name, value in zip(("means", "stds", "log_weights"), children, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    @property
    def num_components(self) -> int:
        return int(np.shape(self.means)[0])

    @property
    def dim(self) -> int:
        return int(np.shape(self.means)[1])

    # --- data ---------------------------------------------------------------------------
    def sample(self, key, n: int) -> Array:
        """n exact samples of the data distribution, shape (n, D)."""
        kc, kn = jax.random.split(key)
        mu, s = _as_float(self.means), _as_float(self.stds)
        comp = jax.random.categorical(kc, _as_float(self.log_weights), shape=(n,))
        return mu[comp] + s[comp] * jax.random.normal(kn, (n, self.dim), mu.dtype)

    def _marginal_params(self, noise: NoiseSchedule, t):
        t = _as_float(t)
        a, sg = noise.alpha(t), noise.sigma(t)
        mu, s = _as_float(self.means), _as_float(self.stds)
        return a, sg, mu, s, a * a * s * s + sg * sg

    def _component_log_probs(self, x, loc, var):
        # x: (..., D); loc, var: (K, D) -> (..., K)
        diff = x[..., None, :] - loc
        return -0.5 * jnp.sum(diff * diff / var + jnp.log(2 * jnp.pi * var), axis=-1)

    def log_prob(self, x, noise: NoiseSchedule | None = None, t=None) -> Array:
        """log p(x) of the data (``noise`` None) or of the marginal p_t under ``noise``."""
        if noise is None:
            loc, var = _as_float(self.means), _as_float(self.stds) ** 2
        else:
            a, _, mu, _, var = self._marginal_params(noise, t)
            loc = a * mu
        lp = self._component_log_probs(x, loc, var) + _as_float(self.log_weights)
        return jax.scipy.special.logsumexp(lp, axis=-1)

    def _posterior(self, x, noise: NoiseSchedule, t):
        """Responsibilities r (..., K), per-component residual (x - alpha mu_k) / var_k
        (..., K, D), and the marginal parameters."""
        a, sg, mu, s, var = self._marginal_params(noise, t)
        lp = self._component_log_probs(x, a * mu, var) + _as_float(self.log_weights)
        r = jax.nn.softmax(lp, axis=-1)
        return r, (x[..., None, :] - a * mu) / var, a, sg, mu, s

    def x0(self, x, noise: NoiseSchedule, t) -> Array:
        """Exact E[x0 | x_t = x], x of shape (..., D)."""
        r, res, a, _, mu, s = self._posterior(x, noise, t)
        post = mu + a * s * s * res  # (..., K, D)
        return jnp.sum(r[..., None] * post, axis=-2)

    def eps(self, x, noise: NoiseSchedule, t) -> Array:
        """Exact E[eps | x_t = x] = sum_k r_k sigma (x - alpha mu_k) / (alpha^2 s_k^2 + sigma^2),
        finite at both ends of the process (sigma = 0 and alpha = 0)."""
        r, res, _, sg, _, _ = self._posterior(x, noise, t)
        return jnp.sum(r[..., None] * (sg * res), axis=-2)

    def velocity(self, x, noise: NoiseSchedule, t) -> Array:
        """Exact velocity of the probability-flow ODE dx_t/dt = alpha'(t) x0 + sigma'(t) eps
        (rectified flow: eps - x0), the target of a flow-matching network."""
        t = _as_float(t)
        da, ds = jax.grad(noise.alpha)(t), jax.grad(noise.sigma)(t)
        return da * self.x0(x, noise, t) + ds * self.eps(x, noise, t)

    def denoiser(self, noise: NoiseSchedule, prediction: str = "x0") -> Denoiser:
        """The exact Denoiser of this mixture under ``noise``.

        Args:
          noise: the noise process.
          prediction: what the wrapped function returns: ``"x0"`` (default, the data
            prediction), ``"eps"`` (:meth:`eps`) or ``"flow"`` (:meth:`velocity`, what a
            flow-matching network predicts), so that a solver sees the same conversion to the
            data prediction as with a real network of that parametrisation.
        """
        if not isinstance(noise, NoiseSchedule):
            raise TypeError(f"noise must be a NoiseSchedule, got {type(noise).__name__}")
        if prediction not in _EXACT:
            raise ValueError(f"prediction must be one of {tuple(_EXACT)}, got {prediction!r}")
        return Denoiser(
            _EXACT[prediction],
            noise=noise,
            prediction=prediction,
            params=(self, noise),
            time_input="t",
        )

    # --- closed form for one Gaussian ---------------------------------------------------
    def pf_ode_solution(self, noise: NoiseSchedule, x_s, t_s, t_t) -> Array:
        """Exact probability-flow ODE map x_{t_s} -> x_{t_t}; only for a single Gaussian (K = 1)."""
        if self.num_components != 1:
            raise ValueError(
                f"pf_ode_solution needs a single Gaussian (K = 1), this mixture has "
                f"K = {self.num_components}"
            )
        a_s, _, mu, s, v_s = self._marginal_params(noise, t_s)
        a_t, _, _, _, v_t = self._marginal_params(noise, t_t)
        return a_t * mu[0] + jnp.sqrt(v_t[0] / v_s[0]) * (x_s - a_s * mu[0])


def _exact_x0(params, x, t):
    gm, noise = params
    return gm.x0(x, noise, t)


def _exact_eps(params, x, t):
    gm, noise = params
    return gm.eps(x, noise, t)


def _exact_velocity(params, x, t):
    gm, noise = params
    return gm.velocity(x, noise, t)


_EXACT = {"x0": _exact_x0, "eps": _exact_eps, "flow": _exact_velocity}
