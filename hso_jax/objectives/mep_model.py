r"""Model-aware Midpoint Error Proxy: MEP with the true network term from teacher trajectories.

HSO's MEP (:mod:`hso_jax.objectives.mep`) comes from the local error of a first-order step of
the data-prediction ODE ``d(x / sigma)/dlam = e^lam D(x, lam)`` over ``[lam_i, lam_{i+1}]``:

    int e^lam (D(lam) - D(lam_i)) dlam  ~=  (D(lam_{i+1/2}) - D(lam_i)) (e^{lam_{i+1}} - e^{lam_i}),

and then replaces the unknown size of ``D(lam_{i+1/2}) - D(lam_i)`` by the closed form
``eps_tilde(lam_{i+1/2}) = sigma^2 / alpha``. This objective keeps the network term:

    J(Lambda) = sum_i  || D(lam_{i+1/2}) - D(lam_i) ||  (e^{lam_{i+1}} - e^{lam_i}),

with ``D`` the data predictions along a batch of teacher trajectories (exact PF-ODE solutions,
:func:`hso_jax.evaluation.teacher_trajectories`) and ``||v|| = sqrt(mean_{b, j} v_bj^2)``
(root mean square over the batch and the pixels). Errors in ``x / sigma`` add up along the
trajectory, so ``sigma(t_end) J`` estimates the final error of a first-order sampler.

Evaluation at any lam. The teacher predictions are tabulated on a fine grid ``g_0 < ... <
g_{K-1}`` of lam and interpolated linearly, ``D(lam) = sum_k phi_k(lam) D_k`` (hat functions
``phi``), so that with the Gram matrix ``G_kl = mean_{b, j} D_k,bj D_l,bj`` (computed once)

    || D(a) - D(b) ||^2 = (phi(a) - phi(b))^T G (phi(a) - phi(b)),

and the objective costs O(K) per interval, independent of the batch and image size -- as cheap
as the closed-form MEP, so the same bi-level search (:mod:`hso_jax.optimizers.hso`,
``method="mep-model"``) runs on it unchanged. ``J`` is continuous and piecewise smooth in the
grid (kinks where a point crosses a table node); the table resolution (default 100 points, h ~
0.1 in lam) bounds how finely it resolves the network.

Reference: HSO (arXiv 2511.11688, AAAI 2026), Lemma 1 (midpoint error) and Sec. 3 (MEP).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ..noise import NoiseSchedule
from .mep import Objective

__all__ = ["MEPTable", "mep_table", "mep_model"]

Array = Any

_TINY = 1e-30  # keeps sqrt differentiable where two interpolants coincide


class MEPTable(NamedTuple):
    """Tabulated network term: ``lam`` (K,) increasing grid and ``gram`` (K, K)."""

    lam: Array
    gram: Array


def mep_table(teacher) -> MEPTable:
    """The Gram table of a :class:`~hso_jax.evaluation.Teacher` (float64, NumPy).

    ``gram[k, l] = mean over batch and pixels of x0[k] * x0[l]``.
    """
    x0 = np.asarray(teacher.x0, np.float64)
    k = x0.shape[0]
    flat = x0.reshape(k, -1)
    gram = flat @ flat.T / flat.shape[1]
    lam = np.asarray(teacher.lam, np.float64)
    if lam.ndim != 1 or lam.shape[0] != k or not np.all(np.diff(lam) > 0):
        raise ValueError("teacher.lam must be a strictly increasing (K,) grid matching teacher.x0")
    return MEPTable(lam=lam, gram=gram)


def _hat(grid: Array, lam: Array) -> tuple[Array, Array]:
    """Linear interpolation on ``grid``: node indices ``(..., 2)`` and weights ``(..., 2)``."""
    k = grid.shape[0]
    j = jnp.clip(jnp.searchsorted(grid, lam, side="right") - 1, 0, k - 2)
    w = jnp.clip((lam - grid[j]) / (grid[j + 1] - grid[j]), 0.0, 1.0)
    return jnp.stack([j, j + 1], -1), jnp.stack([1.0 - w, w], -1)


def mep_model(noise: NoiseSchedule, table: MEPTable) -> Objective:
    """Model-aware MEP on a tabulated network term (see the module docstring).

    Args:
      noise: the noise process (maps ``t`` to ``lam``).
      table: :class:`MEPTable` from :func:`mep_table` (may be traced arrays).

    Returns:
      An :class:`~hso_jax.objectives.Objective` named ``"mep-model"``; ``terms_i`` are the
      per-interval contributions.
    """
    grid = jnp.asarray(table.lam)
    gram = jnp.asarray(table.gram)

    def terms_of_lam(lam):
        lam = jnp.asarray(lam)
        h = lam[1:] - lam[:-1]
        mid = 0.5 * (lam[1:] + lam[:-1])
        # phi(mid) - phi(lam_i) has at most four non-zero weights: gather the 4 x 4 block of G
        j_mid, w_mid = _hat(grid, mid)
        j_lo, w_lo = _hat(grid, lam[:-1])
        j = jnp.concatenate([j_mid, j_lo], -1)
        w = jnp.concatenate([w_mid, -w_lo], -1)
        block = gram[j[:, :, None], j[:, None, :]]
        sq = jnp.einsum("ip,ipq,iq->i", w, block, w)
        return jnp.sqrt(jnp.maximum(sq, 0.0) + _TINY) * jnp.exp(lam[:-1]) * jnp.expm1(h)

    def of_lam(lam):
        return jnp.sum(terms_of_lam(lam))

    return Objective("mep-model", noise, of_lam, terms_of_lam)
