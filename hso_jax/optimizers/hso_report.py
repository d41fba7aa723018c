"""What an HSO-family search reports: ``info`` entries, warnings and the result (host side).

Everything here works on host (NumPy) copies of the compiled search's output, so assembling a
result runs no eager JAX operations. Nothing is dropped silently: a lower level that did not
converge, a penalty that dominates and a collapsed interval each add a warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..noise import DATA_END, NoiseSchedule
from ..objectives import hso_trunc_num
from .hso_config import HSOConfig
from .hso_lower import RefinedGrid
from .refine import RefineResult
from .result import OptimizeResult

__all__ = [
    "COLLAPSED",
    "base_info",
    "close_schedule",
    "local_info",
    "on_steps",
    "search_result",
    "search_warnings",
]

COLLAPSED = 1e-6  # interval width (normalised time) below which a schedule is degenerate


def local_info(loc: RefineResult) -> dict:
    """``info["local"]``: how the lower-level refinement of the returned grid ended."""
    return {
        "iterations": int(loc.iterations),
        "converged": bool(loc.converged),
        "grad_norm": float(loc.grad_norm),
        "rel_change": float(loc.rel_change),
        "init_objective": float(loc.init_value),
    }


def _trunc_info(cfg: HSOConfig) -> dict:
    """The truncNum a DMN objective used: ``trunc_num`` (effective, for N intervals) and
    ``trunc_num_rule`` (``"hso"`` or ``"fixed"``); nothing for the other objectives."""
    if cfg.objective != "dmn":
        return {}
    if cfg.trunc_num == "hso":
        return {"trunc_num": hso_trunc_num(cfg.n), "trunc_num_rule": "hso"}
    return {"trunc_num": min(cfg.trunc_num, cfg.n), "trunc_num_rule": "fixed"}


def base_info(cfg: HSOConfig, dmin: float, loc: RefineResult, timings: dict) -> dict:
    """The ``info`` entries of every HSO-family method (the bi-level and single-level
    searches add their own)."""
    return {
        "n_intervals": cfg.n,
        "d_min": dmin,
        "objective_name": cfg.objective,
        "init_objective": float(loc.init_value),
        "local": local_info(loc),
        "timings": timings,
        **_trunc_info(cfg),
    }


def search_warnings(
    loc: RefineResult, penalty, nfe: int, dmin: float, grid: RefinedGrid, cfg: HSOConfig, info
) -> list[str]:
    """Warnings about the returned grid; sets ``info["max_spacing_violation"]``.

    ``penalty`` is the bi-level search's spacing penalty (``None`` for the single-level
    methods, where no penalty was minimised).
    """
    w = []
    if not bool(loc.converged):
        budget = f"{cfg.local_maxiter}" if cfg.objective != "dmn" else f"4 x {cfg.local_maxiter}"
        w.append(
            "local level did not converge for the best candidate: "
            f"max|grad| = {float(loc.grad_norm):.3g} after {int(loc.iterations)} of {budget} "
            f"iterations (relative change {float(loc.rel_change):.3g}); the schedule is the best "
            "iterate"
        )
    du = np.asarray(grid.spacing, np.float64)
    k = int(np.argmin(du))
    viol = max(dmin - float(du[k]), 0.0)  # largest spacing violation
    info["max_spacing_violation"] = viol
    if penalty is not None and float(penalty) > 0 and float(penalty) >= float(loc.value):
        w.append(
            f"penalty dominates: no schedule in the box satisfies d_min = {dmin:g} at "
            f"NFE {nfe} (penalty {float(penalty):.4g} >= objective {float(loc.value):.4g}, "
            f"largest violation {viol:.3g} in normalised time); the result is the "
            "least-violating schedule found"
        )
    if du[k] < COLLAPSED:
        w.append(
            f"degenerate schedule: points {k} and {k + 1} are {du[k]:.2g} apart in normalised "
            f"time (t = {float(grid.t[k]):.9g}, {float(grid.t[k + 1]):.9g}); the lower-level "
            "optimum collapsed an interval, which the spacing penalty (seen only by the upper "
            "level) could not prevent. In float32 the two points may coincide: do not sample "
            "with this schedule"
        )
    return w


def close_schedule(t: np.ndarray, end: str, noise: NoiseSchedule) -> np.ndarray:
    """The optimised points ``t`` followed by the end point of a fixed final step: ``t_min``
    (``end="t_min"``), the data end 0 (``"zero"``), nothing for a free end."""
    if end == "free":
        return t
    return np.append(t, noise.t_min if end == "t_min" else DATA_END)


def search_result(
    noise: NoiseSchedule,
    cfg: HSOConfig,
    grid: RefinedGrid,
    loc: RefineResult,
    penalty,
    *,
    solver: str,
    end: str,
    nfe: int,
    dmin: float,
    info: dict,
    params: dict,
    options: dict[str, Any],
    warnings: tuple[str, ...] = (),
) -> OptimizeResult:
    """The :class:`~hso_jax.optimizers.OptimizeResult` of the refined ``grid``.

    Its warnings are those of :func:`search_warnings`, then ``warnings``; for a fixed final
    step (``end`` ``"t_min"``, e.g. HSO's DDIM flavour, or ``"zero"``) its end point
    (``t_min`` or the data end 0) is appended to the returned ``t``.
    """
    found = search_warnings(loc, penalty, nfe, dmin, grid, cfg, info)
    t = close_schedule(np.asarray(grid.t, np.float64), end, noise)
    info["end"] = end
    return OptimizeResult.from_t(
        t,
        noise,
        objective=float(loc.value),
        penalty=None if penalty is None else float(penalty),
        method=cfg.method,
        solver=solver,
        nfe=nfe,
        params=params,
        info=info,
        warnings=(*found, *warnings),
        options=options,
    )


def on_steps(
    res: OptimizeResult, noise: NoiseSchedule, cfg: HSOConfig, table, dmin: float
) -> OptimizeResult:
    """``res`` with its network points on the training steps, re-scored.

    A runtime that passes integer timesteps evaluates a discrete-time model there
    (:attr:`hso_jax.export.Target.grid`), so the schedule it runs is the projection
    (:func:`hso_jax.schedules.on_training_steps`); its objective and spacing penalty replace
    the continuous optimum's, which ``info["grid"]`` keeps with the largest move.
    """
    import jax
    import jax.numpy as jnp

    from ..objectives.spacing import spacing_violations
    from ..schedules import on_training_steps
    from .hso_lower import search_objective

    t = on_training_steps(res.t, noise)
    opt = t if res.info["end"] == "free" else t[:-1]  # the optimised points
    with jax.enable_x64(True):
        lam = noise.lam(jnp.asarray(opt, jnp.float64))
        objective = float(search_objective(noise, cfg, table).of_lam(lam))
        v = np.asarray(spacing_violations(noise, jnp.asarray(opt, jnp.float64), dmin))
    penalty = None if res.penalty is None else float(cfg.gamma * np.sum(v * v))
    info = dict(res.info)
    info["grid"] = {
        "grid": "steps",
        "objective_continuous": res.objective,
        "penalty_continuous": res.penalty,
        "max_shift": float(np.max(np.abs(t - res.t))),
    }
    return res.with_t(t, noise, objective=objective, penalty=penalty, info=info)
