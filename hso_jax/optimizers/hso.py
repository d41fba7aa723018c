"""HSO: Hierarchical Schedule Optimization (bi-level search), and its single-level relatives.

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

Methods: ``"hso"`` (bi-level, MEP), ``"hso-dmn"`` (bi-level, DMN), ``"mep-model"`` (bi-level,
the model-aware MEP of :mod:`hso_jax.objectives.mep_model` on a table of teacher predictions,
passed as a traced argument so that one executable serves every table of the same size),
``"mep-local"`` (lower level
alone, MEP, from Karras rho = 7), ``"dmn"`` (DM-NonUniform as its authors ship it: the lower
level alone with the DMN objective at the official truncNum 3, from DM-NonUniform's
recommended initialisation: uniform in t for latent models -- presets sd15 / sd21 / sdxl --
and uniform in lam otherwise). Single-level methods use the end points ``t_start`` (default
``t_max``) and ``t_end`` (default ``t_min``; for DDIM the centre of HSO's ``t_eps`` box,
normalised time 0.02, because the final step to ``t_min`` is fixed).

truncNum of the DMN objective (option ``trunc_num``, see :mod:`hso_jax.objectives.dmn`):
``"dmn"`` defaults to 3, the value hard-coded in DM-NonUniform's ``step_optim.py`` (it
reproduces the official schedules: DDPM linear NFE 5 -> timesteps [999, 658, 498, 309, 100, 0],
objective 51.18); ``"hso-dmn"`` defaults to ``"hso"``, HSO's rule (0 for N <= 5, 3 for
N = 6, 7, 0 for N >= 8; ``StepOptim.get_ts_lambdas`` in HSO's ``stages_step_optim.py``).
Either is one keyword away: ``trunc_num="hso"`` (the behaviour of ``"dmn"`` before it followed
the official code) or ``trunc_num=3``.

Cost of ``"hso-dmn"``: DMN is not smooth (its ``|.|`` terms), so the lower level is a
four-stage continuation (:func:`~hso_jax.optimizers.refine.refine_continuation`) of up to
``local_maxiter`` = 100 L-BFGS iterations per stage, and the stages use them (the smoothed
curvature grows like ``1 / mu``): 300-400 iterations per lower-level solve, against tens for
MEP, and the DE seldom meets its tolerance on this fitness, so it runs its ``maxiter``
generations. Measured on SD 2.1's process with UniPC (2-core CPU, shared with other jobs, so
the absolute times are pessimistic): NFE 10, ``"hso"`` 0.12 s and ``"hso-dmn"`` 112 s of
execution (4,260 lower-level solves); NFE 20, 0.2 s against 243 s. Fewer stages are not free:
from the time-uniform grid at NFE 10 the DMN objective after 1, 2, 4 stages is 2.60, 1.88,
1.60. The cost scales with the options ``maxiter`` (generations; ``maxiter=10``: 660 solves,
objective 2.84 against 2.79) and ``popsize``; ``"dmn"`` (one lower-level solve) takes 0.02 s.

Everything numerical runs in float64 (``jax.enable_x64`` inside), so the result does not
depend on the caller's ``jax_enable_x64``. The whole search (DE generations, every lower-level
solve, polish) is one compiled function per (process type, N, structural options); ``d_min``,
``gamma``, the box, the seed and the process's arrays are arguments, so e.g. SD 2.1 and DDPM,
or UniPC at NFE n and DDIM at NFE n + 1, share an executable. Executables are cached (AOT);
``info["timings"]`` says whether a call traced and compiled (cold) or not (warm). The seed
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

from .. import _validate, solvers
from ..noise import NoiseSchedule
from ..objectives import dmn, hso_trunc_num, mep, mep_model, spacing
from ..objectives.dmn import DMN_TRUNC_NUM
from ..objectives.spacing import d_min, normalised_time, time_from_normalised
from ._ends import check_finite_ends
from .compiled import run_compiled
from .de import differential_evolution
from .refine import RefineResult, refine, refine_continuation
from .result import OptimizeResult

__all__ = [
    "BOUNDS",
    "METHODS",
    "SOLVERS",
    "box",
    "init_family",
    "karras_lam",
    "n_intervals",
    "optimize_hso",
    "solver_flavour",
]

Array = Any

METHODS = ("hso", "mep-local", "dmn", "hso-dmn", "mep-model")
SOLVERS = ("unipc", "dpm-solver-pp", "ddim")
BOUNDS = ((3.0, 16.0), (0.01, 0.03), (0.96, 1.0))
INITS = ("karras", "logsnr", "time", "quadratic")
_LATENT = ("sd15", "sd21", "sdxl")

_COMMON = ("p", "frame", "gamma", "local_maxiter", "local_gtol", "local_ftol")
_BILEVEL = ("popsize", "maxiter", "tol", "mutation", "recombination", "polish", "bounds")
_SINGLE = ("t_start", "t_end", "init", "rho")
OPTIONS = {
    "hso": _COMMON + _BILEVEL,
    "hso-dmn": _COMMON + _BILEVEL + ("trunc_num",),
    "mep-local": _COMMON + _SINGLE,
    "dmn": _COMMON + _SINGLE + ("trunc_num",),
    "mep-model": ("gamma", "local_maxiter", "local_gtol", "local_ftol") + _BILEVEL,
}


# --------------------------------------------------------------------------------------
# Pure pieces (jit / vmap-able)
# --------------------------------------------------------------------------------------


def solver_flavour(solver: Any, method: str = "hso") -> str:
    """HSO's solver flavour (one of :data:`SOLVERS`) of a solver name or object.

    Objects map by type: :class:`~hso_jax.solvers.UniPC` -> ``"unipc"``, multistep
    :class:`~hso_jax.solvers.DPMSolverPP` -> ``"dpm-solver-pp"``, :class:`~hso_jax.solvers.DDIM`
    -> ``"ddim"`` (the order and other settings do not change the schedule). ``method`` only
    names the method in error messages.
    """
    if isinstance(solver, str):
        if solver in SOLVERS:
            return solver
        raise ValueError(
            f"solver must be one of {SOLVERS} or a solver object of these kinds (e.g. "
            f"hso_jax.solvers.unipc()) for method={method!r}, got {solver!r}"
        )
    kinds = (
        (solvers.UniPC, "unipc"),
        (solvers.DPMSolverPP, "dpm-solver-pp"),
        (solvers.DDIM, "ddim"),
    )
    for cls, name in kinds:
        if isinstance(solver, cls):
            return name
    if isinstance(solver, solvers.Solver):
        raise ValueError(
            f"method={method!r} has schedule flavours for UniPC, DPM-Solver++ (multistep) and "
            f"DDIM solver objects, got {type(solver).__name__}; for another solver with one "
            "network call per step, solver='unipc' gives NFE + 1 points"
        )
    raise TypeError(
        f"solver must be one of {SOLVERS} or a hso_jax solver object (e.g. "
        f"hso_jax.solvers.unipc()) for method={method!r}, got {type(solver).__name__}"
    )


def n_intervals(solver: str, nfe: int) -> int:
    """Optimised intervals: NFE for multistep solvers, NFE - 1 for DDIM."""
    return nfe - 1 if solver == "ddim" else nfe


def karras_lam(noise: NoiseSchedule, rho: Array, t_eps: Array, t_max: Array, n: int) -> Array:
    """Karras spacing in ``sigma_edm`` between ``t_max`` and ``t_eps`` as an increasing lam grid.

    Jit-able and differentiable in ``(rho, t_eps, t_max)``; the end points are exactly
    ``lam(t_max)`` and ``lam(t_eps)``.
    """
    ends = noise.lam(jnp.stack([jnp.asarray(t_max), jnp.asarray(t_eps)]))
    lam_lo, lam_hi = ends[0], ends[1]
    s = jnp.linspace(0.0, 1.0, n + 1, dtype=jnp.result_type(lam_lo, float))
    lam = -rho * jnp.log((1.0 - s) * jnp.exp(-lam_lo / rho) + s * jnp.exp(-lam_hi / rho))
    return lam.at[0].set(lam_lo).at[-1].set(lam_hi)


def init_family(noise: NoiseSchedule, psi: Array, n: int) -> Array:
    """HSO's initialisation from ``psi = (rho, u_eps, u_max)`` (end points in normalised time)."""
    rho, u_eps, u_max = psi[0], psi[1], psi[2]
    t_eps = time_from_normalised(noise, u_eps)
    t_max = time_from_normalised(noise, u_max)
    return karras_lam(noise, rho, t_eps, t_max, n)


def box(noise: NoiseSchedule, bounds=BOUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Search box ``(lower, upper)`` for ``(rho, u_eps, u_max)``, end points clipped to the
    process's normalised range."""
    with jax.enable_x64(True):
        u_lo = float(normalised_time(noise, jnp.asarray(noise.t_min, jnp.float64)))
        u_hi = float(normalised_time(noise, jnp.asarray(noise.t_max, jnp.float64)))
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


class _Config(NamedTuple):
    """Static configuration of a compiled search (hashable). ``d_min`` and ``gamma`` are not in
    here: they are traced arguments, so one executable serves every NFE with the same number of
    intervals (e.g. UniPC at NFE n and DDIM at NFE n + 1) and every noise process of one type."""

    n: int
    objective: str  # "mep" | "dmn" | "mep-model"
    p: float
    frame: str
    trunc_num: int | None
    local_maxiter: int
    local_gtol: float
    local_ftol: float
    popsize: int = 20
    maxiter: int = 60
    tol: float = 0.01
    mutation: tuple[float, float] = (0.5, 1.0)
    recombination: float = 0.7
    polish: bool = True
    init: str = "karras"  # single-level methods: initial grid


def _objective(noise, cfg: _Config, table):
    if cfg.objective == "mep-model":
        return mep_model(noise, table)
    if cfg.objective == "dmn":
        return dmn(noise, trunc_num=cfg.trunc_num, p=cfg.p, frame=cfg.frame)
    return mep(noise, p=cfg.p, frame=cfg.frame)


def _lower(noise, cfg: _Config, lam_init, spf, table):
    """Lower level from ``lam_init``: refined grid, objective, spacing penalty.

    ``spf = (d_min, gamma)``; ``table`` is the :class:`~hso_jax.objectives.MEPTable` of
    ``"mep-model"`` (``None`` otherwise); the penalty is
    ``gamma sum max(0, d_min - |du|)^2`` at the refined grid (:mod:`hso_jax.objectives.spacing`).
    """
    obj = _objective(noise, cfg, table)
    kw = dict(max_iter=cfg.local_maxiter, gtol=cfg.local_gtol, ftol=cfg.local_ftol)
    if obj.smoothed_of_lam is not None:  # DMN: non-smooth, continuation in the smoothing
        r = refine_continuation(obj.smoothed_of_lam, obj.of_lam, lam_init, **kw)
    else:
        r = refine(obj.of_lam, lam_init, **kw)
    v = spacing.spacing_violations(noise, noise.t_from_lam(r.lam), spf[0])
    return r, spf[1] * jnp.sum(v * v)


class _Aux(NamedTuple):
    local: RefineResult
    penalty: Array


class _Schedule(NamedTuple):
    """What the host needs about a refined grid, computed inside the compiled function (so
    assembling the result runs no eager JAX operations)."""

    t: Array  # model times of the refined grid (decreasing)
    t_start: Array
    t_end: Array
    spacing: Array  # |u_{i+1} - u_i| per interval, normalised time


def _schedule(noise, lam, t_start, t_end) -> _Schedule:
    t = noise.t_from_lam(lam)
    t = t.at[0].set(t_start).at[-1].set(t_end)  # exact end points
    return _Schedule(t, t_start, t_end, jnp.abs(jnp.diff(normalised_time(noise, t))))


def _search(noise, seed, lower, upper, spf, table, cfg: _Config):
    key = jax.random.key(seed, impl="rbg")

    def fitness_one(psi):
        r, p = _lower(noise, cfg, init_family(noise, psi, cfg.n), spf, table)
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
    return de, _schedule(noise, de.aux.local.lam, t_max, t_eps)


def _local(noise, rho, t_start, t_end, spf, table, cfg: _Config):
    lam_init = _init_grid(noise, cfg.init, rho, t_start, t_end, cfg.n)
    r, pen = _lower(noise, cfg, lam_init, spf, table)
    return r, pen, _schedule(noise, r.lam, t_start, t_end)


# --------------------------------------------------------------------------------------
# Option validation
# --------------------------------------------------------------------------------------


def _check_bounds(bounds):
    try:
        b = tuple((float(lo), float(hi)) for lo, hi in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be three (low, high) pairs for (rho, t_eps, T_max), got {bounds!r}"
        ) from None
    if len(b) != 3 or not all(np.isfinite(x).all() and x[0] < x[1] for x in b):
        raise ValueError(
            "bounds must be three finite (low, high) pairs with low < high for "
            f"(rho, t_eps, T_max), got {bounds!r}"
        )
    if b[0][0] <= 0:
        raise ValueError(f"rho bounds must be positive, got {b[0]}")
    return b


def _trunc_num(method: str, tn) -> int | None:
    """``trunc_num`` option -> the objective's (``None`` = HSO's rule). Default: 3 (the official
    DM-NonUniform value) for ``"dmn"``, HSO's rule for ``"hso-dmn"``."""
    if tn is None:
        tn = DMN_TRUNC_NUM if method == "dmn" else "hso"
    if isinstance(tn, str) and tn == "hso":
        return None
    if isinstance(tn, bool) or not isinstance(tn, (int, np.integer)) or tn < 0:
        raise ValueError(
            f"trunc_num must be a non-negative integer (DM-NonUniform: {DMN_TRUNC_NUM}) or 'hso' "
            f"(HSO's rule: 0 for N <= 5, 3 for N = 6, 7, 0 for N >= 8), got {tn!r}"
        )
    return int(tn)


def _check_options(method: str, options: dict) -> dict:
    known = OPTIONS[method]
    bad = sorted(set(options) - set(known))
    if bad:
        raise ValueError(
            f"unknown option(s) {bad} for method={method!r}; known options: {sorted(known)}"
        )
    o = dict(options)
    out = {
        "p": _validate.real("p", o.get("p", 2.0), 0.0, open_lo=True),
        "frame": o.get("frame", "vp"),
        "gamma": _validate.real("gamma", o.get("gamma", spacing.GAMMA), 0.0),
        "local_maxiter": _validate.integer("local_maxiter", o.get("local_maxiter", 100), 1),
        "local_gtol": _validate.real("local_gtol", o.get("local_gtol", 1e-9), 0.0),
        "local_ftol": _validate.real("local_ftol", o.get("local_ftol", 1e-13), 0.0),
    }
    if out["frame"] not in ("vp", "native"):
        raise ValueError(f"frame must be one of ('vp', 'native'), got {out['frame']!r}")
    if "trunc_num" in known:
        out["trunc_num"] = _trunc_num(method, o.get("trunc_num"))
    if method in ("hso", "hso-dmn", "mep-model"):
        mut = o.get("mutation", (0.5, 1.0))
        if not (isinstance(mut, (tuple, list)) and len(mut) == 2):
            raise ValueError(f"mutation must be a (low, high) pair in [0, 2), got {mut!r}")
        mut = (
            _validate.real("mutation[0]", mut[0], 0.0),
            _validate.real("mutation[1]", mut[1], 0.0, 2.0),
        )
        if not mut[0] <= mut[1]:
            raise ValueError(f"mutation must satisfy low <= high, got {mut!r}")
        polish = o.get("polish", True)
        if not isinstance(polish, bool):
            raise ValueError(f"polish must be True or False, got {polish!r}")
        out.update(
            popsize=_validate.integer("popsize", o.get("popsize", 20), 2),
            maxiter=_validate.integer("maxiter", o.get("maxiter", 60), 1),
            tol=_validate.real("tol", o.get("tol", 0.01), 0.0),
            mutation=mut,
            recombination=_validate.real("recombination", o.get("recombination", 0.7), 0.0, 1.0),
            polish=polish,
            bounds=_check_bounds(o.get("bounds", BOUNDS)),
        )
    else:
        init = o.get("init")
        if init is not None and init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        out.update(
            init=init,
            rho=_validate.real("rho", o.get("rho", 7.0), 0.0, open_lo=True),
            t_start=o.get("t_start"),
            t_end=o.get("t_end"),
        )
    return out


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def optimize_hso(
    noise: NoiseSchedule,
    nfe: int,
    *,
    method: str = "hso",
    solver: Any = "unipc",
    seed: int = 66,
    table=None,
    **options,
) -> OptimizeResult:
    """HSO and its relatives on a noise process. Inputs are validated by
    :func:`hso_jax.optimize`, which is the public entry point; see there for the options.
    ``"mep-model"`` needs ``table``, the :class:`~hso_jax.objectives.MEPTable` of its teacher
    trajectories (built by :func:`hso_jax.optimize`); the other methods are model-free."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    solver = solver_flavour(solver, method)
    if (method == "mep-model") != (table is not None):
        raise ValueError("table is required by method='mep-model' and only by it")
    opts = _check_options(method, options)
    n = n_intervals(solver, nfe)
    with jax.enable_x64(True):
        if table is not None:
            table = jax.tree.map(lambda a: np.asarray(a, np.float64), table)
        if method in ("hso", "hso-dmn", "mep-model"):
            return _bilevel(noise, nfe, n, method, solver, seed, opts, options, table)
        return _single(noise, nfe, n, method, solver, opts, options)


def _config(method, n, nfe, opts) -> _Config:
    extra = {
        k: opts[k]
        for k in ("popsize", "maxiter", "tol", "mutation", "recombination", "polish")
        if k in opts
    }
    return _Config(
        n=n,
        objective={"dmn": "dmn", "hso-dmn": "dmn", "mep-model": "mep-model"}.get(method, "mep"),
        p=opts["p"],
        frame=opts["frame"],
        trunc_num=opts.get("trunc_num"),
        local_maxiter=opts["local_maxiter"],
        local_gtol=opts["local_gtol"],
        local_ftol=opts["local_ftol"],
        **extra,
    )


def _bilevel(noise, nfe, n, method, solver, seed, opts, options, table=None) -> OptimizeResult:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    cfg = _config(method, n, nfe, opts)
    lower, upper = box(noise, opts["bounds"])
    dmin, gamma = d_min(nfe), opts["gamma"]
    spf = np.asarray([dmin, gamma], np.float64)
    out, timings = run_compiled(_search, cfg, noise, np.int64(seed), lower, upper, spf, table)
    de, sched = jax.tree.map(np.asarray, out)  # host copies: no eager JAX work from here on
    loc, penalty = de.aux
    pl = de.population_aux.local
    psi = de.x
    gens = int(de.generations)
    fitness = float(loc.value) + float(penalty)
    info = {
        "n_intervals": n,
        "d_min": dmin,
        "gamma": gamma,
        "objective_name": cfg.objective,
        "fitness": fitness,
        "fitness_de": float(de.fun_de),
        "fitness_search": float(de.fun),
        "generations": gens,
        "de_converged": bool(de.converged),
        "nfev": int(de.nfev),
        "fitness_history": de.history[: gens + 1],
        "spread_history": de.spread[: gens + 1],
        "polish_iterations": int(de.polish_iterations),
        "polish_improved": bool(de.polish_improved),
        "init_objective": float(loc.init_value),
        "local": _local_info(loc),
        "population_local": {
            "converged_fraction": float(np.mean(np.asarray(pl.converged))),
            "iterations_mean": float(np.mean(np.asarray(pl.iterations))),
            "iterations_max": int(np.max(np.asarray(pl.iterations))),
        },
        "timings": timings,
        "key_impl": "rbg",
    }
    info.update(_trunc_info(cfg))
    warnings = _warnings(loc, penalty, nfe, dmin, sched, cfg, info)
    if not bool(de.converged):
        warnings.append(
            f"upper level stopped at maxiter={cfg.maxiter} generations before reaching "
            f"tol={cfg.tol} (std/|mean| of the population fitness = "
            f"{float(de.spread[gens]):.3g})"
        )
    params = {"rho": float(psi[0]), "t_eps": float(sched.t_end), "T_max": float(sched.t_start)}
    return _result(
        noise,
        sched.t,
        solver,
        nfe,
        method,
        loc,
        penalty,
        params,
        info,
        warnings,
        dict(options, seed=seed),
    )


def _default_init(noise: NoiseSchedule, method: str) -> str:
    if method == "mep-local":
        return "karras"
    return "time" if getattr(noise, "name", "") in _LATENT else "logsnr"


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


def _single(noise, nfe, n, method, solver, opts, options) -> OptimizeResult:
    t_start = noise.t_max if opts["t_start"] is None else opts["t_start"]
    if opts["t_end"] is None:
        t_end = (
            float(time_from_normalised(noise, jnp.asarray(0.02, jnp.float64)))
            if solver == "ddim"
            else noise.t_min
        )
    else:
        t_end = opts["t_end"]
    t_start = _validate.real("t_start", t_start)
    t_end = _validate.real("t_end", t_end)
    lo_end = noise.t_min
    if not (lo_end <= t_end < t_start <= noise.t_max) or (solver == "ddim" and t_end <= lo_end):
        need = "t_min < t_end" if solver == "ddim" else "t_min <= t_end"
        raise ValueError(
            f"need {need} < t_start <= t_max = {noise.t_max:g} (t_min = {noise.t_min:g}; for "
            f"DDIM the final step to t_min is fixed), got t_start={t_start!r}, t_end={t_end!r}"
        )
    check_finite_ends(
        noise, t_start, t_end, method, "the MEP / DMN error weights diverge where lam is infinite"
    )
    init = opts["init"] or _default_init(noise, method)
    cfg = _config(method, n, nfe, opts)._replace(init=init)
    dmin = d_min(nfe)
    spf = np.asarray([dmin, opts["gamma"]], np.float64)
    f64 = np.float64
    out, timings = run_compiled(
        _local, cfg, noise, f64(opts["rho"]), f64(t_start), f64(t_end), spf, None
    )
    loc, pen, sched = jax.tree.map(np.asarray, out)
    info = {
        "n_intervals": n,
        "d_min": dmin,
        "objective_name": cfg.objective,
        "init": init,
        "init_objective": float(loc.init_value),
        "spf_penalty": float(pen),
        "local": _local_info(loc),
        "timings": timings,
    }
    info.update(_trunc_info(cfg))
    warnings = _warnings(loc, None, nfe, dmin, sched, cfg, info)
    params = {"t_start": float(t_start), "t_end": float(t_end), "init": init}
    if init == "karras":
        params["rho"] = opts["rho"]
    return _result(
        noise,
        sched.t,
        solver,
        nfe,
        method,
        loc,
        None,
        params,
        info,
        warnings,
        dict(options),
    )


def _trunc_info(cfg: _Config) -> dict:
    """The truncNum a DMN objective used: ``trunc_num`` (effective, for N intervals) and
    ``trunc_num_rule`` (``"hso"`` or ``"fixed"``); nothing for the other objectives."""
    if cfg.objective != "dmn":
        return {}
    if cfg.trunc_num is None:
        return {"trunc_num": hso_trunc_num(cfg.n), "trunc_num_rule": "hso"}
    return {"trunc_num": min(cfg.trunc_num, cfg.n), "trunc_num_rule": "fixed"}


def _local_info(loc: RefineResult) -> dict:
    return {
        "iterations": int(loc.iterations),
        "converged": bool(loc.converged),
        "grad_norm": float(loc.grad_norm),
        "rel_change": float(loc.rel_change),
        "init_objective": float(loc.init_value),
    }


_COLLAPSED = 1e-6  # interval width (normalised time) below which a schedule is degenerate


def _warnings(loc, penalty, nfe, dmin, sched, cfg, info) -> list[str]:
    w = []
    if not bool(loc.converged):
        budget = f"{cfg.local_maxiter}" if cfg.objective != "dmn" else f"4 x {cfg.local_maxiter}"
        w.append(
            "local level did not converge for the best candidate: "
            f"max|grad| = {float(loc.grad_norm):.3g} after {int(loc.iterations)} of {budget} "
            f"iterations (relative change {float(loc.rel_change):.3g}); the schedule is the best "
            "iterate"
        )
    du = np.asarray(sched.spacing, np.float64)
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
    if du[k] < _COLLAPSED:
        w.append(
            f"degenerate schedule: points {k} and {k + 1} are {du[k]:.2g} apart in normalised "
            f"time (t = {float(sched.t[k]):.9g}, {float(sched.t[k + 1]):.9g}); the lower-level "
            "optimum collapsed an interval, which the spacing penalty (seen only by the upper "
            "level) could not prevent. In float32 the two points may coincide: do not sample "
            "with this schedule"
        )
    return w


def _result(
    noise, t, solver, nfe, method, loc, penalty, params, info, warnings, options
) -> OptimizeResult:
    t = np.asarray(t, np.float64)
    if solver == "ddim":  # the fixed final DDIM step to the first training step
        t = np.append(t, noise.t_min)
    return OptimizeResult.from_t(
        t,
        noise,
        objective=float(loc.value),
        penalty=None if penalty is None else float(penalty),
        method=method,
        solver=solver,
        nfe=nfe,
        params=params,
        info=info,
        warnings=tuple(warnings),
        options=options,
    )
