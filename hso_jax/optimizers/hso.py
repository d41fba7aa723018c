"""HSO: Hierarchical Schedule Optimization, the bi-level search (and its entry point).

Upper level (differential evolution, :mod:`hso_jax.optimizers.de`) over the initialisation
family ``psi = (rho, t_eps, T_max)``; lower level (:mod:`hso_jax.optimizers.refine`) minimises
the objective ``J`` (MEP, or DMN for ``"hso-dmn"``) over the interior lam's from the
initialisation; a candidate's fitness is the Spacing-Penalized Fitness

    SPF(psi) = J(Lambda*(psi)) + gamma sum_i max(0, d_min(NFE) - |u_{i+1} - u_i|)^2,

with ``u`` the normalised model time (:mod:`hso_jax.objectives.spacing`). The lower level sees
``J`` alone, as in the paper.

Initialisation family (jit-able in ``psi``): Karras / EDM spacing of the EDM noise level
``sigma = sigma/alpha = e^{-lam}`` between ``sigma(T_max)`` and ``sigma(t_eps)``,

    sigma_k = (sigma_hi^{1/rho} (1 - s_k) + sigma_lo^{1/rho} s_k)^rho,  s_k = k / N,

i.e. ``lam_k = -rho log((1 - s_k) e^{-lam(T_max)/rho} + s_k e^{-lam(t_eps)/rho})``.

Box (official): ``rho in [3, 16]``, ``t_eps in [0.01, 0.03]``, ``T_max in [0.96, 1.0]``. The end
points are searched in *normalised time* ``u`` (equal to ``t`` for VP discrete, VP continuous
and flow processes; log-sigma normalised to [0, 1] for EDM), intersected with the process's
range ``[u(t_min), u(t_max)]`` (e.g. ``T_max <= 0.9946`` for VP-cosine, ``<= 0.999`` for flow;
for EDM the box is sigma in [52.3, 80] at the start and [0.00222, 0.00275] at the end).

Solver flavours (NFE network evaluations), chosen by name or by a solver object's type
(:func:`solver_flavour`: :class:`~hso_jax.solvers.UniPC`, multistep
:class:`~hso_jax.solvers.DPMSolverPP`, :class:`~hso_jax.solvers.DDIM`):

* ``"unipc"`` / ``"dpm-solver-pp"`` (multistep): N = NFE intervals, NFE + 1 optimised points;
  the network is called at the first NFE of them. The two give *identical* schedules: the
  objectives (MEP, DMN) depend on the lam grid and the noise process, not on the multistep
  solver, and the official HSO code has only two flavours (``run_unipc_search`` and
  ``run_ddim_search``). The name is kept so that the result (and its exports) records the
  solver the schedule is meant for.
* ``"ddim"``: N = NFE - 1 optimised intervals (NFE points, one network call at each), then the
  final DDIM step from ``t_eps`` to the first training step (``t_min``, index 0) that is fixed
  and not optimised; ``d_min`` is still ``d_min(NFE)``. The returned ``t`` holds the NFE
  optimised points followed by ``t_min`` (NFE + 1 points), so a DDIM sampler run on it makes
  exactly NFE network calls; the spacing penalty covers the optimised points only.

The flavour sets the default *end* (:data:`hso_jax.schedules.ENDS`): ``"free"`` for the
multistep flavours, ``"t_min"`` for DDIM. ``end`` overrides it for any solver, as a runtime
needs (:class:`hso_jax.export.Target`): ``"t_min"`` or ``"zero"`` is the DDIM structure
(NFE optimised network points, then a fixed final step to ``t_min`` or to the data end
``t = 0``). ``grid="steps"`` moves the network points onto the training steps and re-scores
the result there (:func:`~hso_jax.optimizers.hso_report.on_steps`).

Methods: ``"hso"`` (bi-level, MEP), ``"hso-dmn"`` (bi-level, DMN), ``"mep-model"`` (bi-level,
the model-aware MEP of :mod:`hso_jax.objectives.mep_model` on a table of teacher predictions,
passed as a traced argument so that one executable serves every table of the same size).
:func:`optimize_hso` also runs the single-level methods of :mod:`hso_jax.optimizers.single_level`:
``"dmn"`` (DM-NonUniform as its authors ship it, truncNum 3) and ``"mep-local"`` (the lower
level alone, MEP, from Karras rho = 7). Options: :class:`~hso_jax.optimizers.hso_config.HSOConfig`.

truncNum of the DMN objective of ``"hso-dmn"`` (option ``trunc_num``, see
:mod:`hso_jax.objectives.dmn`): by default HSO's rule (0 for N <= 5, 3 for N = 6, 7, 0 for
N >= 8; ``StepOptim.get_ts_lambdas`` in HSO's ``stages_step_optim.py``); ``trunc_num=3`` gives
DM-NonUniform's official value, the default of ``"dmn"``.

Cost of ``"hso-dmn"``: DMN is not smooth (its ``|.|`` terms), so the lower level is a
four-stage continuation (:func:`~hso_jax.optimizers.refine.refine_continuation`) of up to
``local_maxiter`` = 100 L-BFGS iterations per stage, and the stages use them (the smoothed
curvature grows like ``1 / mu``): 300-400 iterations per lower-level solve, against tens for
MEP, and the DE seldom meets its tolerance on this fitness, so it runs its ``maxiter``
generations: it costs about a thousand times ``"hso"`` (``info["nfev"]`` counts the fitness
evaluations, the polish batch included; the timings are in the documentation's Methods page).
Fewer stages are not free: each lowers the DMN objective further. The cost scales with the
options ``maxiter`` (generations) and ``popsize``.

Everything numerical runs in float64 (``jax.enable_x64`` inside), so the result does not
depend on the caller's ``jax_enable_x64``. The whole search (DE generations, every lower-level
solve, polish) is one compiled function per (process type, N, structural options); ``d_min``,
``gamma``, the box, the seed and the process's arrays are arguments, so e.g. SD 2.1 and DDPM,
or UniPC at NFE n and DDIM at NFE n + 1, share an executable. Executables are cached (AOT,
:mod:`~hso_jax.optimizers.programs`; with the package's compilation cache on, the traced search
is stored too, so a new process neither traces nor compiles it again);
``info["timings"]`` says whether a call compiled (cold) or not (warm), and ``loaded`` whether
its traced program came from the store. The seed
becomes ``jax.random.key(seed, impl="rbg")`` inside the compiled search: XLA's
RngBitGenerator compiles in a fraction of a second on CPU where threefry takes seconds; its
streams are deterministic for a given backend and JAX version.

References: HSO (arXiv 2511.11688, AAAI 2026), Sec. 3-4 and the official
``stages_step_optim.py``; Karras et al., EDM (NeurIPS 2022), Eq. (5); Xue et al.,
DM-NonUniform (CVPR 2024).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validate
from ..noise import NoiseSchedule
from ..objectives.spacing import d_min, normalised_time, time_from_normalised
from .base import given_options
from .de import differential_evolution
from .hso_config import (
    BOUNDS,
    GRIDS,
    SOLVERS,
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
from .refine import RefineResult
from .result import OptimizeResult
from .single_level import optimize_dmn

__all__ = [
    "BOUNDS",
    "HSO",
    "HSO_DMN",
    "SOLVERS",
    "HSOConfig",
    "box",
    "init_family",
    "karras_lam",
    "n_intervals",
    "optimize_hso",
    "solver_flavour",
]

Array = Any


def init_family(noise: NoiseSchedule, psi: Array, n: int) -> Array:
    """HSO's initialisation from ``psi = (rho, u_eps, u_max)`` (end points in normalised time)."""
    rho, u_eps, u_max = psi[0], psi[1], psi[2]
    t_eps = time_from_normalised(noise, u_eps)
    t_max = time_from_normalised(noise, u_max)
    return karras_lam(noise, rho, t_eps, t_max, n)


def box(noise: NoiseSchedule, bounds=BOUNDS, start_max=None) -> tuple[np.ndarray, np.ndarray]:
    """Search box ``(lower, upper)`` for ``(rho, u_eps, u_max)``, end points clipped to the
    process's normalised range (its start to ``start_max`` if given)."""
    t_hi = noise.t_max if start_max is None else min(noise.t_max, start_max)
    with jax.enable_x64(True):
        u_lo = float(normalised_time(noise, jnp.asarray(noise.t_min, jnp.float64)))
        u_hi = float(normalised_time(noise, jnp.asarray(t_hi, jnp.float64)))
    lo = np.array([b[0] for b in bounds], np.float64)
    hi = np.array([b[1] for b in bounds], np.float64)
    lo[1:], hi[1:] = np.clip(lo[1:], u_lo, u_hi), np.clip(hi[1:], u_lo, u_hi)
    if not np.all(lo < hi) or not hi[1] < lo[2]:
        raise ValueError(
            f"bounds {bounds} leave an empty search box on {noise!r} (normalised range "
            f"[{u_lo:g}, {u_hi:g}]): need rho_lo < rho_hi, t_eps_lo < t_eps_hi < T_max_lo < "
            "T_max_hi inside the range"
        )
    return lo, hi


class _Aux(NamedTuple):
    """A candidate's lower-level outcome, carried by the DE for the best one."""

    local: RefineResult
    penalty: Array


def _search(noise, seed, lower, upper, spf, table, cfg: HSOConfig):
    """The compiled bi-level search: DE over ``psi``, each candidate refined and scored."""
    key = jax.random.key(seed, impl="rbg")

    def fitness_one(psi):
        r, p = lower_level(noise, cfg, init_family(noise, psi, cfg.n), spf, table)
        return r.value + p, _Aux(r, p)

    de = differential_evolution(
        jax.vmap(fitness_one),
        lower,
        upper,
        key,
        popsize=cfg.popsize,
        maxiter=cfg.maxiter,
        tol=cfg.tol,
        mutation=cfg.mutation,
        recombination=cfg.recombination,
        polish=cfg.polish,
        has_aux=True,
    )
    t_eps = time_from_normalised(noise, de.x[1])
    t_max = time_from_normalised(noise, de.x[2])
    return de, refined_grid(noise, de.aux.local.lam, t_max, t_eps)


def optimize_hso(
    noise: NoiseSchedule,
    nfe: int,
    *,
    method: str = "hso",
    solver: Any = "unipc",
    seed: int = 66,
    table=None,
    end: str | None = None,
    grid: str = "continuous",
    start_max: float | None = None,
    **options,
) -> OptimizeResult:
    """HSO and its relatives on a noise process. Inputs are validated by
    :func:`hso_jax.optimize`, which is the public entry point; see there for the options.
    ``"mep-model"`` needs ``table``, the :class:`~hso_jax.objectives.MEPTable` of its teacher
    trajectories (built by :func:`hso_jax.optimize`); the other methods are model-free. The
    single-level methods ``"dmn"`` and ``"mep-local"`` run
    :func:`~hso_jax.optimizers.single_level.optimize_dmn`.

    ``end`` (:data:`hso_jax.schedules.ENDS`; default: the flavour's, :func:`default_end`),
    ``grid`` (``"steps"``: the network points are moved onto training steps and the result
    re-scored there) and ``start_max`` (the latest start time) are the conventions of the
    runtime the schedule is for (:class:`hso_jax.export.Target`)."""
    v = variant(method)
    if (v.objective == "mep-model") != (table is not None):
        raise ValueError(f"table is required by method={method!r} and only by it")
    if not v.bilevel:
        return optimize_dmn(
            noise, nfe, method=method, solver=solver, end=end, grid=grid,
            start_max=start_max, **options,
        )  # fmt: skip
    solver = solver_flavour(solver, method)
    end = check_end(end, solver)
    seed = _validate.seed(seed)
    cfg = HSOConfig.from_options(method, n_intervals(end, nfe), options)
    with jax.enable_x64(True):
        if table is not None:
            table = jax.tree.map(lambda a: np.asarray(a, np.float64), table)
        res = _bilevel(
            noise, nfe, cfg, solver, end, start_max, seed, table, dict(options, seed=seed)
        )
        if _validate.choice("grid", grid, GRIDS) == "steps":
            res = on_steps(res, noise, cfg, table, d_min(nfe))
        return res


def _bilevel(noise, nfe: int, cfg: HSOConfig, solver: str, end, start_max, seed, table, options):
    lower, upper = box(noise, cfg.bounds, start_max)
    dmin = d_min(nfe)
    spf = np.asarray([dmin, cfg.gamma], np.float64)
    out, timings = run_compiled(_search, cfg, noise, np.int64(seed), lower, upper, spf, table)
    de, grid = jax.tree.map(np.asarray, out)  # host copies: no eager JAX work from here on
    loc, penalty = de.aux
    pl = de.population_aux.local
    gens = int(de.generations)
    info = base_info(cfg, dmin, loc, timings)
    info.update(
        gamma=cfg.gamma,
        fitness=float(loc.value) + float(penalty),
        fitness_de=float(de.fun_de),
        fitness_search=float(de.fun),
        generations=gens,
        de_converged=bool(de.converged),
        nfev=int(de.nfev),
        fitness_history=de.history[: gens + 1],
        spread_history=de.spread[: gens + 1],
        polish_iterations=int(de.polish_iterations),
        polish_improved=bool(de.polish_improved),
        population_local={
            "converged_fraction": float(np.mean(np.asarray(pl.converged))),
            "iterations_mean": float(np.mean(np.asarray(pl.iterations))),
            "iterations_max": int(np.max(np.asarray(pl.iterations))),
        },
        key_impl="rbg",
    )
    de_warnings = []  # the lower level's come from search_result
    if not bool(de.converged):
        de_warnings.append(
            f"upper level stopped at maxiter={cfg.maxiter} generations before reaching "
            f"tol={cfg.tol} (std/|mean| of the population fitness = "
            f"{float(de.spread[gens]):.3g})"
        )
    params = {"rho": float(de.x[0]), "t_eps": float(grid.t_end), "T_max": float(grid.t_start)}
    return search_result(
        noise, cfg, grid, loc, penalty, solver=solver, end=end, nfe=nfe, dmin=dmin, info=info,
        params=params, options=options, warnings=tuple(de_warnings),
    )  # fmt: skip


HSO = add_variant(Variant("hso", bilevel=True, objective="mep"))
HSO_DMN = add_variant(Variant("hso-dmn", bilevel=True, objective="dmn", trunc_num="hso"))


def _runner(v: Variant):
    def run(problem, nfe, solver, options, seed):
        return optimize_hso(
            problem.noise, nfe, method=v.name, solver=solver, seed=seed,
            **problem.conventions(), **given_options(options),
        )  # fmt: skip

    return run


register_variant(
    HSO,
    _runner(HSO),
    "Hierarchical Schedule Optimization: differential evolution over the Karras family, each "
    "candidate refined under the Midpoint Error Proxy (AAAI 2026)",
)
register_variant(
    HSO_DMN, _runner(HSO_DMN), "HSO's bi-level search with the DM-NonUniform objective"
)
