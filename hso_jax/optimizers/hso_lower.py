"""HSO's lower level as the compiled searches run it (pure, jit / vmap-able).

From an initial increasing lam grid -- e.g. the Karras spacing :func:`karras_lam` -- the
objective ``J`` of the configuration (MEP, DMN or the model-aware MEP) is minimised over the
interior points by :mod:`hso_jax.optimizers.refine`, and the refined grid is scored with the
spacing penalty ``gamma sum_i max(0, d_min - |u_{i+1} - u_i|)^2`` in normalised time ``u``
(:mod:`hso_jax.objectives.spacing`). The bi-level search (:mod:`hso_jax.optimizers.hso`) adds
the penalty to ``J`` as its fitness; the lower level itself sees ``J`` alone, as in the paper.
The single-level methods (:mod:`hso_jax.optimizers.single_level`) run it once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..noise import NoiseSchedule
from ..objectives import Objective, dmn, mep, mep_model, spacing
from ..objectives.spacing import normalised_time
from .hso_config import HSOConfig
from .refine import RefineResult, refine, refine_continuation

__all__ = ["RefinedGrid", "karras_lam", "lower_level", "refined_grid", "search_objective"]

Array = Any


def karras_lam(noise: NoiseSchedule, rho: Array, t_eps: Array, t_max: Array, n: int) -> Array:
    """Karras spacing in ``sigma_edm`` between ``t_max`` and ``t_eps`` as an increasing lam grid.

    ``lam_k = -rho log((1 - s_k) e^{-lam(T_max)/rho} + s_k e^{-lam(t_eps)/rho})``,
    ``s_k = k / n`` (Karras et al., EDM, Eq. 5, in ``sigma_edm = e^{-lam}``). Jit-able and
    differentiable in ``(rho, t_eps, t_max)``; the end points are exactly ``lam(t_max)`` and
    ``lam(t_eps)``.
    """
    ends = noise.lam(jnp.stack([jnp.asarray(t_max), jnp.asarray(t_eps)]))
    lam_lo, lam_hi = ends[0], ends[1]
    s = jnp.linspace(0.0, 1.0, n + 1, dtype=jnp.result_type(lam_lo, float))
    lam = -rho * jnp.log((1.0 - s) * jnp.exp(-lam_lo / rho) + s * jnp.exp(-lam_hi / rho))
    return lam.at[0].set(lam_lo).at[-1].set(lam_hi)


def search_objective(noise: NoiseSchedule, cfg: HSOConfig, table) -> Objective:
    """The objective of ``cfg.objective``; ``table`` is the
    :class:`~hso_jax.objectives.MEPTable` of ``"mep-model"`` (``None`` otherwise)."""
    if cfg.objective == "mep-model":
        return mep_model(noise, table)
    if cfg.objective == "dmn":
        return dmn(noise, trunc_num=cfg.trunc_num, p=cfg.p, frame=cfg.frame)
    return mep(noise, p=cfg.p, frame=cfg.frame)


def lower_level(
    noise: NoiseSchedule, cfg: HSOConfig, lam_init: Array, spf: Array, table
) -> tuple[RefineResult, Array]:
    """Refine ``lam_init`` under the objective; returns the refinement and its spacing penalty.

    Args:
      noise: the noise process.
      cfg: the search's configuration (objective and L-BFGS settings).
      lam_init: (N + 1,) increasing initial grid; its end points stay fixed.
      spf: ``(d_min, gamma)`` of the spacing penalty (traced: one executable serves all).
      table: ``"mep-model"``'s :class:`~hso_jax.objectives.MEPTable`, else ``None``.

    Returns:
      ``(refined, penalty)``, the penalty ``gamma sum max(0, d_min - |du|)^2`` at the refined
      grid.
    """
    obj = search_objective(noise, cfg, table)
    kw = dict(max_iter=cfg.local_maxiter, gtol=cfg.local_gtol, ftol=cfg.local_ftol)
    if obj.smoothed_of_lam is not None:  # DMN: non-smooth, continuation in the smoothing
        r = refine_continuation(obj.smoothed_of_lam, obj.of_lam, lam_init, **kw)
    else:
        r = refine(obj.of_lam, lam_init, **kw)
    v = spacing.spacing_violations(noise, noise.t_from_lam(r.lam), spf[0])
    return r, spf[1] * jnp.sum(v * v)


class RefinedGrid(NamedTuple):
    """What the host needs about a refined grid, computed inside the compiled function (so
    assembling the result runs no eager JAX operations)."""

    t: Array  # model times of the refined grid (decreasing)
    t_start: Array
    t_end: Array
    spacing: Array  # |u_{i+1} - u_i| per interval, normalised time


def refined_grid(noise: NoiseSchedule, lam: Array, t_start: Array, t_end: Array) -> RefinedGrid:
    """The model times of an increasing lam grid, with the exact end points, and its spacing."""
    t = noise.t_from_lam(lam)
    t = t.at[0].set(t_start).at[-1].set(t_end)  # exact end points
    return RefinedGrid(t, t_start, t_end, jnp.abs(jnp.diff(normalised_time(noise, t))))
