"""DM-NonUniform's single-level schedule optimiser (``method="dmn"``), and ``"mep-local"``.

DM-NonUniform fixes the end points ``lam_0 = lam(t_start)``, ``lam_N = lam(t_end)`` and
minimises its objective (:mod:`hso_jax.objectives.dmn`) over the interior points,

    min_{lam_0 < lam_1 < ... < lam_N}  sum_{order-1 steps} |eps_tilde_s J_s|
        + sum_{multistep steps s < truncNum} || (eps_tilde_k J_{s,k})_k ||_2
        + sum_j | sum_{multistep steps s >= truncNum} eps_tilde_j J_{s,j} |,

the error bound of the multistep Lagrange quadrature with error weights
``eps_tilde = sigma^2 / alpha``, with truncNum 3 as hard-coded in the official
``step_optim.py`` (:data:`~hso_jax.objectives.dmn.DMN_TRUNC_NUM`; it reproduces the official
schedules: DDPM linear NFE 5 -> timesteps [999, 658, 498, 309, 100, 0], objective 51.18).
``trunc_num="hso"`` gives HSO's rule instead (0 for N <= 5, 3 for N = 6, 7, 0 for N >= 8).
The initial grid is DM-NonUniform's recommendation: uniform in ``t`` for latent models (presets
sd15 / sd21 / sdxl), uniform in ``lam`` otherwise (option ``init``: ``"karras"``, ``"logsnr"``,
``"time"``, ``"quadratic"``). The official code minimises with SciPy's trust-constr; here the
monotone logit parameterisation and a four-stage continuation in the smoothing of ``|.|``
(:func:`~hso_jax.optimizers.refine.refine_continuation`) stand in for its constraints, in one
compiled function.

``"mep-local"`` is the same single-level run with HSO's Midpoint Error Proxy (MEP) instead of
DMN, from the Karras grid with ``rho = 7`` (HSO's lower level alone, without the upper level of
:mod:`hso_jax.optimizers.hso`).

End points: ``t_start`` (default ``t_max``) and ``t_end`` (default ``t_min``; for DDIM the
centre of HSO's ``t_eps`` box, normalised time 0.02, because the final DDIM step to ``t_min``
is fixed and not optimised). Solver flavours, N and the returned points are those of
:mod:`hso_jax.optimizers.hso`.

Reference: Xue et al., "Accelerating Diffusion Sampling with Optimized Time Steps"
(DM-NonUniform, CVPR 2024), Sec. 3-4 and the official ``step_optim.py`` (scxue/DM-NonUniform,
truncNum 3); HSO (arXiv 2511.11688, AAAI 2026), lower level.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validate
from ..noise import NoiseSchedule
from ..objectives.dmn import DMN_TRUNC_NUM
from ..objectives.spacing import d_min, time_from_normalised
from ._ends import check_finite_ends
from .base import given_options
from .hso_config import (
    GRIDS,
    HSOConfig,
    Variant,
    add_variant,
    check_end,
    n_intervals,
    register_variant,
    solver_flavour,
    variant,
)
from .hso_lower import karras_lam, lower_level, refined_grid
from .hso_report import base_info, on_steps, search_result
from .programs import run_compiled
from .result import OptimizeResult

__all__ = ["LATENT", "optimize_dmn"]

LATENT = ("sd15", "sd21", "sdxl")  # presets whose grid starts uniform in t (DM-NonUniform)


def _default_init(noise: NoiseSchedule, method: str) -> str:
    if method == "mep-local":
        return "karras"
    return "time" if getattr(noise, "name", "") in LATENT else "logsnr"


def _init_grid(noise, init: str, rho, t_start, t_end, n: int):
    """Initial grid of the single-level methods (traced inside the compiled function)."""
    ts, te = t_start, t_end
    s = jnp.linspace(0.0, 1.0, n + 1, dtype=jnp.result_type(ts, float))
    if init == "karras":
        return karras_lam(noise, rho, te, ts, n)
    if init == "logsnr":
        lam = noise.lam(ts) + s * (noise.lam(te) - noise.lam(ts))
    elif init == "time":
        lam = noise.lam(ts + s * (te - ts))
    else:  # quadratic in t (DM-NonUniform's "quad")
        lam = noise.lam((jnp.sqrt(ts) + s * (jnp.sqrt(te) - jnp.sqrt(ts))) ** 2)
    return lam.at[0].set(noise.lam(ts)).at[-1].set(noise.lam(te))


def _local(noise, rho, t_start, t_end, spf, table, cfg: HSOConfig):
    """The compiled single-level run: initial grid, refinement, the refined grid."""
    lam_init = _init_grid(noise, cfg.init, rho, t_start, t_end, cfg.n)
    r, pen = lower_level(noise, cfg, lam_init, spf, table)
    return r, pen, refined_grid(noise, r.lam, t_start, t_end)


def _ends(noise: NoiseSchedule, cfg: HSOConfig, end: str, start_max) -> tuple[float, float]:
    """``(t_start, t_end)`` of the optimised points: the options, or their defaults, checked
    against the process. With a fixed final step (``end`` ``"t_min"`` or ``"zero"``) the
    optimised points are the network points, and ``t_end`` (the last of them) defaults to
    the centre of HSO's ``t_eps`` box, normalised time 0.02."""
    t_hi = noise.t_max if start_max is None else min(noise.t_max, start_max)
    t_start = t_hi if cfg.t_start is None else cfg.t_start
    fixed = end != "free"
    if cfg.t_end is None:
        t_end = (
            float(time_from_normalised(noise, jnp.asarray(0.02, jnp.float64)))
            if fixed
            else noise.t_min
        )
    else:
        t_end = cfg.t_end
    t_start = _validate.real("t_start", t_start)
    t_end = _validate.real("t_end", t_end)
    lo_end = noise.t_min
    if not (lo_end <= t_end < t_start <= t_hi) or (end == "t_min" and t_end <= lo_end):
        need = "t_min < t_end" if end == "t_min" else "t_min <= t_end"
        final = {"t_min": "; the final step to t_min is fixed", "zero": "; the final step to "
                 "the data (t = 0) is fixed", "free": ""}[end]  # fmt: skip
        raise ValueError(
            f"need {need} < t_start <= {t_hi:g} (t_min = {noise.t_min:g}, t_max = "
            f"{noise.t_max:g}{final}), got t_start={t_start!r}, t_end={t_end!r}"
        )
    return t_start, t_end


def optimize_dmn(
    noise: NoiseSchedule,
    nfe: int,
    *,
    method: str = "dmn",
    solver: Any = "unipc",
    end: str | None = None,
    grid: str = "continuous",
    start_max: float | None = None,
    **options,
) -> OptimizeResult:
    """DM-NonUniform (``method="dmn"``) or HSO's lower level alone (``"mep-local"``).

    The public entry point is :func:`hso_jax.optimize` (``method="dmn"``); see there for the
    options (those :meth:`HSOConfig.option_names` lists for the method).

    Args:
      noise: the noise process (the methods are model-free).
      nfe: network evaluations of the sampler.
      method: ``"dmn"`` or ``"mep-local"``.
      solver: a flavour name or solver object (:func:`~hso_jax.optimizers.hso.solver_flavour`).
      end, grid, start_max: the target's conventions (see
        :func:`~hso_jax.optimizers.hso.optimize_hso`).
      **options: the method's options.

    Returns:
      The :class:`~hso_jax.optimizers.OptimizeResult`; ``params`` holds the end points and the
      initial grid (and ``rho`` for the Karras grid).
    """
    if variant(method).bilevel:
        raise ValueError(f"optimize_dmn runs the single-level methods, not {method!r}")
    solver = solver_flavour(solver, method)
    end = check_end(end, solver)
    grid = _validate.choice("grid", grid, GRIDS)
    cfg = HSOConfig.from_options(method, n_intervals(end, nfe), options)
    with jax.enable_x64(True):
        res = _single(noise, nfe, cfg, solver, end, start_max, dict(options))
        return on_steps(res, noise, cfg, None, d_min(nfe)) if grid == "steps" else res


def _single(noise, nfe: int, cfg: HSOConfig, solver: str, end, start_max, options: dict):
    t_start, t_end = _ends(noise, cfg, end, start_max)
    why = "the MEP / DMN error weights diverge where lam is infinite"
    check_finite_ends(noise, t_start, t_end, cfg.method, why)
    init = cfg.init or _default_init(noise, cfg.method)
    cfg = dataclasses.replace(cfg, init=init)  # the grid is part of the compiled program
    dmin = d_min(nfe)
    spf = np.asarray([dmin, cfg.gamma], np.float64)
    ends = np.float64(t_start), np.float64(t_end)
    out, timings = run_compiled(_local, cfg, noise, np.float64(cfg.rho), *ends, spf, None)
    loc, pen, grid = jax.tree.map(np.asarray, out)  # host copies: no eager JAX work from here on
    info = base_info(cfg, dmin, loc, timings)
    info.update(init=init, spf_penalty=float(pen))
    params = {"t_start": float(t_start), "t_end": float(t_end), "init": init}
    if init == "karras":
        params["rho"] = cfg.rho
    return search_result(
        noise, cfg, grid, loc, None, solver=solver, end=end, nfe=nfe, dmin=dmin, info=info,
        params=params, options=options,
    )  # fmt: skip


DMN = add_variant(Variant("dmn", bilevel=False, objective="dmn", trunc_num=DMN_TRUNC_NUM))
MEP_LOCAL = add_variant(Variant("mep-local", bilevel=False, objective="mep"))


def _runner(v: Variant):
    def run(problem, nfe, solver, options, seed):
        return optimize_dmn(
            problem.noise, nfe, method=v.name, solver=solver, **problem.conventions(),
            **given_options(options),
        )  # fmt: skip

    return run


register_variant(
    MEP_LOCAL,
    _runner(MEP_LOCAL),
    "HSO's lower level alone: the Midpoint Error Proxy minimised from Karras rho = 7",
)
register_variant(DMN, _runner(DMN), "DM-NonUniform as its authors ship it (CVPR 2024, truncNum 3)")
