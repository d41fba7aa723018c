r"""Importance sampling of the KLUB's noise levels: density, normaliser, inverse CDF, weights.

An interval term of the KLUB (:mod:`hso_jax.objectives.klub`) on ``[lo, u]`` (``u`` the upper
end, where the reverse step starts) is ``int_lo^u sigma^-3 E||D(x_sigma) - D(x_u)||^2 dsigma``.
``sigma`` is drawn from

.. math::

    \pi(\sigma) \propto w_u(\sigma) = \sigma^{-3}\Big(\frac{1}{\sigma^2 + c^2}
        - \frac{1}{u^2 + c^2}\Big), \qquad c = 0.5,

and the interval's term is estimated by ``Z_u * mean_j ||D(x_{s_j}) - D(x_u)||^2 /
(1/(s_j^2 + c^2) - 1/(u^2 + c^2))`` (the ``sigma^-3`` cancels). The normaliser
``Z_u = G_u(u) - G_u(lo)`` with the antiderivative

.. math::

    G_u(s) = -\frac{1}{2 c^2 s^2} + \frac{\ln(1 + c^2 / s^2)}{2 c^4}
             + \frac{1}{2 s^2 (u^2 + c^2)}

depends on ``u`` and therefore on the schedule: it must be kept, otherwise the argmin is wrong.
The first two terms of ``G_u`` cancel for ``s >> c``. We use the exact, cancellation-free
rewrite obtained with ``y = 1 / s^2``: with

.. math::

    \delta(s) = \frac{c^2 (u^2 - s^2)}{s^2 (u^2 + c^2)}, \qquad
    \varphi(\delta) = \delta - \ln(1 + \delta),

the mass of ``w_u`` on ``[s, u]`` is ``phi(delta(s)) / (2 c^4)``, so
``Z_u = phi(delta(lo)) / (2 c^4)``, the inverse CDF is ``phi(delta(s)) = (1 - q) phi(delta(lo))``
(solved for ``delta`` by Newton's method, then ``s = c u / sqrt(delta (u^2 + c^2) + c^2)``), and
``1 / (1/(s^2+c^2) - 1/(u^2+c^2)) = c^2 (s^2 + c^2) / (delta s^2)``. ``phi`` is evaluated by its
Taylor series for small ``delta``. Every quantity is then accurate to a few float32 ulps, so
the estimator gives the same answer with or without ``jax_enable_x64`` (tested against the
float64 closed form of ``G_u``).

For Gaussian data ``N(0, c^2 I)`` in ``d`` dimensions and the exact denoiser,
``E||D(x_sigma) - D(x_u)||^2 = c^4 d (1 / (sigma^2 + c^2) - 1 / (u^2 + c^2))`` (Lemma 3.3), so
the term is ``c^4 d Z_u`` exactly (:func:`gaussian_klub_terms`, the tests' oracle).

Reference: Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion
Models", ICML 2024 (arXiv 2404.14507), Sec. 3 (Lemma 3.3, importance sampling).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_normaliser", "is_sample_sigmas", "gaussian_klub_terms"]

Array = Any

# Series of phi(d) = d - log1p(d) = sum_{k>=2} (-1)^k d^k / k, used below _PHI_SERIES_MAX, where
# the direct formula loses digits to cancellation; the number of terms reaches round-off at
# d = 0.5 (float32: 20, float64: 52).
_PHI_SERIES_MAX = 0.5
_NEWTON_ITERS = 6


@jax.custom_jvp
def _phi(d: Array) -> Array:
    """phi(d) = d - log(1 + d) for d >= 0, accurate to a few ulps (series for small d)."""
    small = d < _PHI_SERIES_MAX
    ds = jnp.where(small, d, 0.0)
    # Horner on sum_{k=2}^{K} (-1)^k d^k / k = d^2 (1/2 - d/3 + d^2/4 - ...)
    terms = 20 if jnp.finfo(ds.dtype).bits <= 32 else 52
    k = np.arange(terms, 1, -1)
    coef = jnp.asarray(np.where(k % 2 == 0, 1.0, -1.0) / k, ds.dtype)
    acc = jax.lax.fori_loop(0, terms - 1, lambda i, a: coef[i] + ds * a, jnp.zeros_like(ds))
    series = ds * ds * acc
    dl = jnp.where(small, 1.0, d)
    return jnp.where(small, series, dl - jnp.log1p(dl))


@_phi.defjvp
def _phi_jvp(primals, tangents):
    # phi'(d) = d / (1 + d): exact, and no differentiation through the series loop
    (d,), (dd,) = primals, tangents
    return _phi(d), dd * d / (1.0 + d)


@jax.custom_jvp
def _phi_inv(p: Array) -> Array:
    """delta >= 0 with phi(delta) = p >= 0, by Newton's method (phi is convex and increasing)."""
    pos = p > 0
    p1 = jnp.where(pos, p, 1.0)
    # Start: series inversion sqrt(2p) + 2p/3 for small p, p + log1p(p) for large p; Newton on a
    # convex increasing function converges monotonically after the first step.
    d = jnp.maximum(jnp.sqrt(2.0 * p1) + p1 * (2.0 / 3.0), p1 + jnp.log1p(p1))

    def newton(_, d):
        return jnp.maximum(d - (_phi(d) - p1) * (1.0 + d) / d, 0.5 * d)

    d = jax.lax.fori_loop(0, _NEWTON_ITERS, newton, d)
    return jnp.where(pos, d, 0.0)


@_phi_inv.defjvp
def _phi_inv_jvp(primals, tangents):
    # implicit function theorem: d delta / d p = 1 / phi'(delta) = (1 + delta) / delta
    (p,), (dp,) = primals, tangents
    d = _phi_inv(p)
    return d, dp * (1.0 + d) / jnp.where(d > 0, d, 1.0)


def _delta(s: Array, u: Array, c: Array) -> Array:
    """delta(s) = c^2 (u^2 - s^2) / (s^2 (u^2 + c^2)) for s <= u."""
    return c * c * (u - s) * (u + s) / (s * s * (u * u + c * c))


def is_normaliser(lo: Array, u: Array, c: float = 0.5) -> Array:
    r"""Normaliser Z_u = int_lo^u sigma^-3 (1/(sigma^2+c^2) - 1/(u^2+c^2)) d sigma.

    Equals ``G_u(u) - G_u(lo)`` of the module docstring, computed without cancellation as
    ``phi(delta(lo)) / (2 c^4)``. Broadcasts over ``lo`` and ``u`` (``0 < lo <= u``).
    """
    lo, u = jnp.asarray(lo), jnp.asarray(u)
    return _phi(_delta(lo, u, c)) / (2.0 * c**4)


def is_sample_sigmas(lo: Array, u: Array, q: Array, c: float = 0.5):
    r"""Inverse-CDF draws of the importance density pi on [lo, u], and their weights.

    Args:
      lo, u: interval ends (``0 < lo < u``), broadcastable against ``q``.
      q: uniform quantiles in [0, 1); ``q = 0`` gives ``lo``, ``q -> 1`` gives ``u``.
      c: the importance-sampling constant.

    Returns:
      ``(s, r, inv_w, z)``: the noise levels ``s``; ``r = sqrt(u^2 - s^2)`` (the noise that
      continues ``x_s`` to level ``u``); ``inv_w = 1 / (1/(s^2+c^2) - 1/(u^2+c^2))``; and the
      normaliser ``z = Z_u``. An interval term is ``z * mean(||dD||^2 * inv_w)``.
    """
    lo, u, q = jnp.asarray(lo), jnp.asarray(u), jnp.asarray(q)
    c2 = c * c
    uc = u * u + c2
    phi_lo = _phi(_delta(lo, u, c))
    d = _phi_inv((1.0 - q) * phi_lo)
    s = c * u / jnp.sqrt(d * uc + c2)
    s = jnp.clip(s, lo, u)
    r = s * jnp.sqrt(d * uc) / c
    # inv_w = (s^2 + c^2) (u^2 + c^2) / (u^2 - s^2) is large near s = u, where ||dD||^2 -> 0
    # at the same rate. d = 0 only for an empty interval (lo = u; q < 1 otherwise), whose
    # term is 0: the weight is set to 0 there instead of 0 * inf.
    pos = d > 0
    inv_w = jnp.where(pos, c2 * (s * s + c2) / (jnp.where(pos, d, 1.0) * s * s), 0.0)
    return s, r, inv_w, phi_lo / (2.0 * c2 * c2)


def gaussian_klub_terms(sigmas, std: float, dim: int, c: float | None = None) -> np.ndarray:
    r"""Exact KLUB terms for Gaussian data ``N(0, std^2 I_dim)`` and its exact denoiser.

    ``term_i = std^4 dim int sigma^-3 (1/(sigma^2 + std^2) - 1/(u^2 + std^2)) d sigma
    = std^4 dim Z_u`` with ``Z`` taken at ``c = std`` (float64, NumPy). ``sigmas`` may be in
    either order; terms follow the intervals of ``sorted(sigmas)[::-1]`` (reverse steps).
    """
    s = np.sort(np.asarray(sigmas, np.float64))[::-1]
    std = float(std)
    lo, u = s[1:], s[:-1]
    d = std**2 * (u - lo) * (u + lo) / (lo**2 * (u**2 + std**2))
    phi = np.where(d < 1e-3, d**2 / 2 - d**3 / 3 + d**4 / 4 - d**5 / 5, d - np.log1p(d))
    return std**4 * dim * phi / (2 * std**4)

