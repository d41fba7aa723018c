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

Class-conditional data (:class:`ConditionalGaussianMixture`): class ``c`` has prior
probability ``pi_c`` and its own mixture ``p(x0 | c) = sum_{k in c} w_k N(mu_k, diag(s_k^2))``.
The exact conditional denoiser ``E[x0 | x_t = x, c]`` is the posterior mean above over the
components of class ``c`` alone; the exact unconditional one ``E[x0 | x_t = x]`` is the same
over all components with weights ``pi_c w_k``. Classifier-free guidance with scale ``w`` then
gives ``D_u + w (D_c - D_u)`` from two exact predictions, with no network anywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..denoiser import Denoiser
from ..noise import NoiseSchedule

__all__ = ["GaussianMixture", "ConditionalGaussianMixture", "NULL_CLASS"]

NULL_CLASS = -1
"""The label of the unconditional (null) condition of :class:`ConditionalGaussianMixture`."""

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

    def _posterior(self, x, noise: NoiseSchedule, t, log_weights=None):
        """Responsibilities r (..., K), per-component residual (x - alpha mu_k) / var_k
        (..., K, D), and the marginal parameters; ``log_weights`` (broadcastable to (..., K))
        replaces the mixture's own, e.g. one class's components."""
        a, sg, mu, s, var = self._marginal_params(noise, t)
        lw = _as_float(self.log_weights) if log_weights is None else log_weights
        lp = self._component_log_probs(x, a * mu, var) + lw
        r = jax.nn.softmax(lp, axis=-1)
        return r, (x[..., None, :] - a * mu) / var, a, sg, mu, s

    def x0(self, x, noise: NoiseSchedule, t) -> Array:
        """Exact E[x0 | x_t = x], x of shape (..., D)."""
        return self._posterior_mean(x, noise, t, _as_float(self.log_weights))

    def _posterior_mean(self, x, noise, t, log_weights):
        """E[x0 | x_t = x] for component log-weights broadcastable to (..., K)."""
        r, res, a, _, mu, s = self._posterior(x, noise, t, log_weights)
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


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False, init=False)
class ConditionalGaussianMixture:
    """Class-conditional Gaussian mixture with exact conditional and unconditional denoisers.

    Conditions are integer class labels: ``0 .. C - 1`` for a class and :data:`NULL_CLASS`
    (``-1``) for the unconditional (null) condition, so ``denoiser(noise, cond=labels,
    uncond=NULL_CLASS, guidance_scale=w)`` is an exactly guided model. A batch of labels
    ``(B,)`` gives each sample of a ``(B, D)`` state its own class; a scalar or ``(1,)`` label
    is shared by all samples (:mod:`hso_jax.batch`).

    Args:
      classes: one :class:`GaussianMixture` per class, all of the same dimension D.
      class_weights: ``(C,)`` class prior probabilities (normalised here); uniform if omitted.
    """

    mixture: GaussianMixture  # all components; log-weights log(pi_c w_k)
    within: Array  # (M,) log w_k within its class
    class_of: Array  # (M,) class of each component

    def __init__(self, classes, class_weights=None):
        classes = list(classes)
        if not classes or not all(isinstance(g, GaussianMixture) for g in classes):
            raise TypeError(
                "classes must be a non-empty sequence of GaussianMixture (one per class), got "
                f"{[type(g).__name__ for g in classes] or classes!r}"
            )
        dims = sorted({g.dim for g in classes})
        if len(dims) != 1:
            raise ValueError(f"every class must have the same dimension D, got dimensions {dims}")
        c = len(classes)
        pi = np.full(c, 1.0 / c) if class_weights is None else np.asarray(class_weights, float)
        if pi.shape != (c,) or not np.all(np.isfinite(pi)) or np.any(pi <= 0):
            raise ValueError(
                f"class_weights must be {c} finite positive numbers (one per class), got "
                f"{class_weights!r}"
            )
        pi = pi / pi.sum()
        within = np.concatenate([np.asarray(g.log_weights) for g in classes])
        class_of = np.concatenate([np.full(g.num_components, i) for i, g in enumerate(classes)])
        mixture = GaussianMixture(
            np.concatenate([g.means for g in classes]),
            np.concatenate([g.stds for g in classes]),
            np.exp(within + np.log(pi)[class_of]),
        )
        object.__setattr__(self, "mixture", mixture)
        object.__setattr__(self, "within", within)
        object.__setattr__(self, "class_of", class_of)

    def tree_flatten(self):
        return (self.mixture, self.within, self.class_of), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for name, value in zip(("mixture", "within", "class_of"), children, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    @property
    def num_classes(self) -> int:
        return int(np.max(self.class_of)) + 1

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def class_mixture(self, label: int) -> GaussianMixture:
        """The data distribution of class ``label`` (``NULL_CLASS``: the marginal), a plain
        :class:`GaussianMixture` with its own exact denoiser."""
        label = self._check_labels(label, "label")
        if int(label) == NULL_CLASS:
            return self.mixture
        sel = np.asarray(self.class_of) == int(label)
        m = self.mixture
        return GaussianMixture(m.means[sel], m.stds[sel], np.exp(self.within[sel]))

    def _check_labels(self, labels, name: str):
        v = np.asarray(labels)
        if not np.issubdtype(v.dtype, np.integer):
            raise TypeError(f"{name} must be integer class labels, got dtype {v.dtype}")
        c = self.num_classes
        if np.any((v < NULL_CLASS) | (v >= c)):
            raise ValueError(
                f"{name} must lie in 0..{c - 1} (a class) or be {NULL_CLASS} (unconditional), got "
                f"values {sorted(set(v.ravel().tolist()))[:8]}"
            )
        return v

    def log_weights(self, labels) -> Array:
        """Per-sample component log-weights ``(..., M)`` of labels ``(...)``: ``log w_k`` on the
        labelled class's components (``-inf`` elsewhere), ``log pi_c w_k`` for the null label."""
        labels = jnp.asarray(labels)[..., None]
        cls = jnp.asarray(self.class_of)
        own = jnp.where(cls == labels, _as_float(self.within), -jnp.inf)
        return jnp.where(labels == NULL_CLASS, _as_float(self.mixture.log_weights), own)

    def x0(self, x, noise: NoiseSchedule, t, labels=NULL_CLASS) -> Array:
        """Exact ``E[x0 | x_t = x, c]`` for labels broadcastable to ``x.shape[:-1]``
        (``NULL_CLASS``: the unconditional ``E[x0 | x_t = x]``)."""
        labels = jnp.broadcast_to(jnp.asarray(labels), jnp.shape(x)[:-1])
        return self.mixture._posterior_mean(x, noise, t, self.log_weights(labels))

    def sample(self, key, labels) -> Array:
        """Exact samples ``(B, D)``, sample ``b`` from class ``labels[b]`` (null: the marginal)."""
        labels = self._check_labels(labels, "labels")
        if labels.ndim != 1:
            raise ValueError(f"labels must have shape (B,), got {labels.shape}")
        kc, kn = jax.random.split(key)
        m = self.mixture
        mu, s = _as_float(m.means), _as_float(m.stds)
        comp = jax.random.categorical(kc, self.log_weights(labels))
        return mu[comp] + s[comp] * jax.random.normal(kn, (labels.shape[0], self.dim), mu.dtype)

    def denoiser(
        self, noise: NoiseSchedule, cond=None, uncond=None, guidance_scale: float | None = None
    ) -> Denoiser:
        """The exact Denoiser (x0 prediction) under ``noise``, conditioned on the labels
        ``cond`` (one per sample, or shared), with optional classifier-free guidance towards
        ``cond`` away from ``uncond`` (typically :data:`NULL_CLASS`). Without ``cond`` it is
        the unconditional denoiser."""
        if not isinstance(noise, NoiseSchedule):
            raise TypeError(f"noise must be a NoiseSchedule, got {type(noise).__name__}")
        for name, v in (("cond", cond), ("uncond", uncond)):
            if v is not None:
                self._check_labels(v, name)
        return Denoiser(
            _conditional_x0,
            noise=noise,
            prediction="x0",
            params=(self, noise),
            time_input="t",
            cond=None if cond is None else jnp.asarray(cond),
            uncond=None if uncond is None else jnp.asarray(uncond),
            guidance_scale=guidance_scale,
        )


def _conditional_x0(params, x, t, labels=NULL_CLASS):
    cgm, noise = params
    return cgm.x0(x, noise, t, labels)
