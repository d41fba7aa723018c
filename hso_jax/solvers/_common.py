"""Shared pieces of the solvers: phi functions, Lagrange weights, step orders, safe values.

Everything here is a pure function of (possibly traced) scalars and arrays; shapes and loop
bounds are static. Multistep solvers carry a :class:`~hso_jax.solvers.history.History` and
decide the order of each step from its number of valid entries with ``jnp.where`` (never with
Python branches on traced values). Masked-out branches are computed with *safe* values
(non-zero denominators, distinct interpolation nodes) so that their gradients are finite:
``jnp.where`` multiplies the cotangent of the unselected branch by zero, and ``0 * inf`` would
otherwise be NaN (the "double where" trick).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

Array = Any

# lower_order_final applies only to schedules with fewer steps than this (as in the originals:
# DPM-Solver++ / UniPC in diffusers use lower-order final steps only below 15 steps).
LOWER_ORDER_FINAL_MAX_STEPS = 15

# |z| below which phi_k(z) is evaluated by its Taylor series instead of the recursion
# phi_{k+1}(z) = (phi_k(z) - 1/k!) / z, which cancels catastrophically for small z.
_PHI_SERIES_RADIUS = 0.5
_PHI_SERIES_TERMS = 13


def phis(z: Array, k_max: int) -> list[Array]:
    r"""The exponential-integrator functions :math:`[\varphi_1(z), ..., \varphi_{k_{max}}(z)]`.

    :math:`\varphi_0(z) = e^z`, :math:`\varphi_{k+1}(z) = (\varphi_k(z) - 1/k!) / z`, i.e.
    :math:`\varphi_k(z) = \sum_{j \ge 0} z^j / (j + k)!` and
    :math:`\int_0^h e^{-(h - u)} u^{k-1} / (k-1)!\, du = h^k \varphi_k(-h)`.

    For :math:`|z| < 1/2` the upward recursion cancels catastrophically (in float32 ``phi_3``
    of ``h = 0.01`` would keep 3 digits), so there :math:`\varphi_{k_{max}}` comes from its
    Taylor series and the others from the stable downward recursion
    :math:`\varphi_k = 1/k! + z \varphi_{k+1}`; elsewhere the closed form is used. Both
    branches see safe arguments, so gradients are finite everywhere.
    """
    z = jnp.asarray(z)
    small = jnp.abs(z) < _PHI_SERIES_RADIUS
    zs = jnp.where(small, z, 0.0)
    series = jnp.zeros_like(zs)
    for j in reversed(range(_PHI_SERIES_TERMS)):  # Horner: sum_j z^j / (j + k_max)!
        series = series * zs + 1.0 / math.factorial(j + k_max)
    down = [series]
    for k in range(k_max - 1, 0, -1):
        down.insert(0, 1.0 / math.factorial(k) + zs * down[0])
    zc = jnp.where(small, 2.0, z)
    up = [jnp.expm1(zc) / zc]
    for k in range(1, k_max):
        up.append((up[-1] - 1.0 / math.factorial(k)) / zc)
    return [jnp.where(small, d, u) for d, u in zip(down, up, strict=True)]


def phi(k: int, z: Array) -> Array:
    """:math:`\varphi_k(z)` alone (see :func:`phis`)."""
    return phis(z, k)[-1]


def lagrange_weights(nodes: Sequence[Array], moments: Sequence[Array]) -> list[Array]:
    r"""Solve the (transposed) Vandermonde system :math:`\sum_j a_j r_j^k = b_{k+1}`, k < p.

    With the Lagrange basis :math:`L_j(x) = \prod_{m \ne j} (x - r_m) / (r_j - r_m)
    = \sum_k C_{jk} x^k`, the solution is :math:`a_j = \sum_k C_{jk} b_{k+1}`. Closed form,
    p <= 4 in practice; ``nodes`` must be pairwise distinct.

    Args:
      nodes: p scalars r_j.
      moments: p scalars (or arrays broadcasting with the nodes) b_1..b_p.

    Returns:
      The p weights a_j.
    """
    p = len(nodes)
    if len(moments) != p:
        raise ValueError(f"need as many moments as nodes, got {len(moments)} and {p}")
    weights = []
    for j in range(p):
        others = [r for m, r in enumerate(nodes) if m != j]
        poly = [1.0]  # coefficients of prod_{m != j} (x - r_m), lowest degree first
        denom = 1.0
        for r in others:
            poly = [
                (poly[k - 1] if k >= 1 else 0.0) - (r * poly[k] if k < len(poly) else 0.0)
                for k in range(len(poly) + 1)
            ]
            denom = denom * (nodes[j] - r)
        weights.append(sum(c * b for c, b in zip(poly, moments, strict=True)) / denom)
    return weights


def step_order(
    order: int, count: Array, i: Array, n: int, lower_order_final: bool | str, lam_next: Array
) -> Array:
    """Order of step ``i`` of ``n``: limited by the valid history (``count`` previous points)
    and, with ``lower_order_final`` and ``n < 15`` (static), by the steps left: min(order, n - i).
    ``lower_order_final="always"`` limits it at every ``n`` (diffusers' UniPC).

    A step into sigma = 0 (``lam_next = +inf``) is first order whatever the flags: it returns
    the data prediction, the limit of the first-order update, while the higher-order terms
    extrapolate the data prediction polynomially in lam to lam = +inf and diverge. This is
    diffusers' rule for ``final_sigmas_type="zero"`` (DPMSolverMultistepScheduler.step).
    """
    p = jnp.minimum(order, count + 1)
    if lower_order_final == "always" or (lower_order_final and n < LOWER_ORDER_FINAL_MAX_STEPS):
        p = jnp.minimum(p, n - i)
    return jnp.where(jnp.isposinf(lam_next), 1, p)


# --- the ends of a schedule: sigma = 1 for flow (lam = -inf) and sigma = 0 (lam = +inf) --------


def safe_h(h: Array) -> Array:
    """``h`` where finite, else 1: the step size for the higher-order branches, which are
    masked out on a step from lam = -inf or to lam = +inf (first order there) but must stay
    finite so that their zero cotangents do not turn into NaN (the "double where" trick)."""
    return finite_or(h, 1.0)


def finite_or(x: Array, value: float) -> Array:
    """``x`` where finite, else ``value`` (a safe stand-in for a masked-out branch)."""
    return jnp.where(jnp.isfinite(x), x, value)


def lam_step(noise, t_cur: Array, t_next: Array) -> tuple[Array, ...]:
    """``(lam_s, lam_t, h, alpha_t, sigma_s, sigma_t)`` of a step from ``s = t_cur`` to
    ``t = t_next`` in lam, ``h = lam_t - lam_s``: what every exponential-integrator update
    ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0 + ...`` is written in."""
    lam_s, lam_t = noise.lam(t_cur), noise.lam(t_next)
    return lam_s, lam_t, lam_t - lam_s, noise.alpha(t_next), noise.sigma(t_cur), noise.sigma(t_next)


def lam_ends(noise, ts) -> tuple[float, float]:
    """(lam(ts[0]), lam(ts[-1])) as Python floats, for the eager checks of the solvers."""
    ends = np.asarray(noise.lam(jnp.asarray([ts[0], ts[-1]])), dtype=np.float64)
    return float(ends[0]), float(ends[1])


def select_by_order(p: Array, candidates: Sequence[Array]) -> Array:
    """``candidates[p - 1]`` for a traced order ``p`` (1-based), by nested ``jnp.where``."""
    out = candidates[0]
    for q, c in enumerate(candidates[1:], start=2):
        out = jnp.where(p == q, c, out)
    return out
