r"""GITS: Geometry-Inspired Time Scheduling by dynamic programming on a teacher grid.

Sampling trajectories of the probability-flow ODE share a strong shape regularity, so a
schedule fitted to a handful of *teacher* trajectories transfers to every sample. GITS picks
the ``n`` sampling steps among the points ``t_0 > t_1 > ... > t_{K-1}`` of a fine teacher grid:

1. **Teacher.** Exact PF-ODE states ``x_k`` and data predictions ``x0_k = D(x_k, t_k)`` on the
   grid for a batch of initial noises (:func:`hso_jax.evaluation.teacher_trajectories`).
2. **Cost matrix.** In EDM's frame ``y = x / alpha`` with noise level
   ``s = sigma_edm = sigma / alpha`` the PF-ODE reads ``dy/ds = (y - D(y, s)) / s``. A jump
   from grid point ``i`` to ``j > i`` is *one* Euler (= DDIM) step from the teacher state,
   re-using the cached prediction ``x0_i``:
   ``\hat y_j = y_i + (s_j - s_i)(y_i - x0_i) / s_i``. Its cost ``C_ij`` (``inf`` for
   ``j <= i``) is, by ``metric``,

   * ``"dev"`` (the official default): how much further the step lands from the straight line
     through the trajectory's end points than the teacher does,

     .. math::

         C_{ij} = \frac{1}{B} \sum_b \big[\mathrm{dev}_b(\hat y_j^{(b)})
                  - \mathrm{dev}_b(y_j^{(b)})\big], \qquad
         \mathrm{dev}_b(z) = \big\| (I - u_b u_b^\top)(y_{K-1}^{(b)} - z) \big\|_2,

     with ``u_b`` the unit vector from ``y_0^{(b)}`` to ``y_{K-1}^{(b)}``: sampling
     trajectories are nearly straight (the paper's regularity), and a step that leaves the
     line more than the teacher does is the one that errs. It may be negative;
   * ``"l2"`` / ``"l1"``: the batch mean of ``|| \hat y_j - y_j ||`` (the local error).

3. **Dynamic programming.** The schedule is the path ``0 = i_0 < i_1 < ... < i_n = K - 1``
   minimising ``sum_m coeff**m C[i_m, i_{m+1}]`` (``m = 0`` is the step from the noisiest
   point). With ``V_k(j)`` the best weighted cost of reaching ``K - 1`` from ``j`` in ``k``
   steps, ``V_1(j) = C[j, K-1]`` and ``V_k(j) = min_{i > j} C[j, i] + coeff V_{k-1}(i)``;
   the answer is ``V_n(0)``, in ``O(n K^2)`` operations. ``coeff = 1`` is the plain
   minimum-sum path (the paper's definition); ``coeff > 1`` weights the later, low-noise steps
   more and so spends more of the budget near the data.

The cost measures first-order steps whichever ``solver`` the schedule is for (so does the
official code): ``solver`` only fixes how many points an NFE buys, and every solver of one call
per step (iPNDM, the official pairing, UniPC, DPM-Solver++, DDIM to ``t = 0``) gets the same
schedule.

**Variants.** ``variant="official"`` (default) is the configuration of the official code's
command line and launch script: the ``"dev"`` metric, ``coeff = 1.15``, and a teacher of a
60-step iPNDM run on a 61-point Karras (``rho = 7``) grid (``teacher_solver="ipndm"``,
``teacher_points=61``, ``teacher_grid="karras"``; it draws 256 warm-up noises, the command
line's default here too). ``variant="exact"`` scores the local error against exact
trajectories instead: ``"l2"`` on a 100-point log-SNR grid solved by a tight adaptive solver
(about ten times the teacher's network calls). Any of these options given explicitly overrides
the variant's. Where the official code differs and is not followed: its cost matrix keeps only
the last of its batch rounds (then divides by their number), whereas here every teacher
sample counts.

Reference: Chen, Zhou, Wang, Shen, Lyu, "On the Trajectory Regularity of ODE-based Diffusion
Sampling", ICML 2024 (arXiv 2405.11326), Sec. 4 (dynamic-programming time schedule).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .. import _validate, schedules
from ..denoiser import Denoiser
from ..noise import NoiseSchedule
from ..reference.teacher import Teacher
from ..schedules import GRIDS
from ._ends import check_finite_ends
from .base import Method, given_options, register
from .model_inputs import (
    TEACHER_FIELDS,
    TEACHER_OPTIONS,
    check_model,
    fixed_end,
    resolve_solver,
    teacher_from_options,
    to_data_end,
)
from .result import OptimizeResult

__all__ = [
    "gits_cost_matrix",
    "gits_dp",
    "optimize_gits",
    "DEFAULT_COEFF",
    "METRICS",
    "OPTIONS",
    "VARIANTS",
]

Array = Any

DEFAULT_COEFF = 1.15
"""The official GITS default of ``coeff`` (its CLI default and every recommended setting except
Stable Diffusion, which uses 1.20)."""

METRICS = ("dev", "l2", "l1")
"""Costs of a jump: the official deviation from the end-point line, or the L2 / L1 error."""

VARIANTS = {
    "official": {
        "metric": "dev",
        "teacher_solver": "ipndm",
        "teacher_points": 61,
        "teacher_grid": "karras",
    },
    "exact": {
        "metric": "l2",
        "teacher_solver": "exact",
        "teacher_points": 100,
        "teacher_grid": None,  # log-SNR (uniform time where lam is infinite)
    },
}
"""What ``variant=`` sets: the official code's defaults, or the L2 error on exact
trajectories (see the module docstring)."""

OFFICIAL_WARMUP = 256
"""Warm-up noises (teacher trajectories) of the official code (``--num_warmup``)."""

OPTIONS = tuple(sorted(TEACHER_OPTIONS + ("coeff", "metric", "variant")))
"""Option names :func:`optimize_gits` accepts besides ``solver``."""

# Elements of one float64 (pairs, B, ...) block of the cost computation (~64 MiB each).
_BLOCK_ELEMENTS = 2**23


# --------------------------------------------------------------------------------------
# Cost matrix
# --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("batch_size", "metric"))
def _pair_costs(x, x0, alpha, s, ii, jj, batch_size: int, metric: str):
    """The cost of one Euler step ``i -> j`` in EDM's frame, per pair (batch means)."""
    b = x.shape[1]

    def frame(k):  # teacher state k in EDM's frame, (B, D) float64
        return (x[k].astype(jnp.float64) / alpha[k]).reshape(b, -1)

    end = frame(-1)
    u = end - frame(0)
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)

    def deviation(z):  # per sample: distance of z from the line through y_0 and y_{K-1}
        d = end - z
        return jnp.linalg.norm(d - jnp.sum(d * u, axis=-1, keepdims=True) * u, axis=-1)

    def one(pair):
        i, j = pair
        y_i, y_j = frame(i), frame(j)
        x0_i = x0[i].astype(jnp.float64).reshape(b, -1)
        y_hat = y_i + (s[j] - s[i]) * (y_i - x0_i) / s[i]
        if metric == "dev":
            return jnp.mean(deviation(y_hat) - deviation(y_j))
        err = y_hat - y_j
        if metric == "l1":
            return jnp.mean(jnp.sum(jnp.abs(err), axis=-1))
        return jnp.mean(jnp.sqrt(jnp.sum(err * err, axis=-1)))

    return jax.lax.map(one, (ii, jj), batch_size=batch_size)


def gits_cost_matrix(teacher: Teacher, noise: NoiseSchedule, metric: str = "dev") -> np.ndarray:
    r"""The GITS cost of every single-step jump between points of a teacher grid.

    For ``i < j``, one first-order step (DDIM, i.e. Euler in ``s``) from the teacher state at
    ``t_i`` with the cached prediction ``x0_i``, in EDM's frame ``y = x / alpha``,

    .. math:: \hat y_j = y_i + (s_j - s_i) (y_i - x0_i) / s_i, \qquad s = \sigma / \alpha,

    is compared with the teacher state ``y_j`` at ``t_j`` by ``metric`` (norms over all
    non-batch dimensions, then the batch mean): ``"dev"``, the increase of the distance from
    the line through the sample's end points ``y_0``, ``y_{K-1}`` (the official default; see
    the module docstring), or the ``"l2"`` / ``"l1"`` norm of ``\hat y_j - y_j``.
    ``C[i, j] = inf`` for ``j <= i``.

    Why EDM's frame: GITS measures distances in EDM's ``x`` (there ``alpha = 1``). The ODE
    trajectory in ``y`` is the same curve however the process is written (VP, VE, rectified
    flow, or any rescaling ``x -> c(t) x``), and the DDIM step is the same Euler step in ``s``,
    so the cost matrix, hence the schedule, depends only on the log-SNR path and the denoiser,
    not on the parameterisation. In a VP frame the late (small-noise) errors would be weighed
    by ``alpha_j``, which is a property of the parameterisation, not of the trajectory.

    Computed in float64 (whatever ``jax_enable_x64`` says), vectorised over blocks of pairs
    (about 64 MiB of working memory per block), with no network calls.

    Args:
      teacher: a :class:`~hso_jax.evaluation.Teacher` with ``K >= 2`` points.
      noise: the noise process the teacher was computed under (``model.noise``).
      metric: ``"dev"`` (default, as the official code), ``"l2"`` or ``"l1"``.

    Returns:
      ``(K, K)`` float64 NumPy array, finite on the strict upper triangle, ``inf`` elsewhere.

    Raises:
      TypeError for a wrong teacher or noise type; ValueError for inconsistent shapes or an
      unknown metric.
    """
    if not isinstance(teacher, Teacher):
        raise TypeError(
            "teacher must be a hso_jax.evaluation.Teacher (from teacher_trajectories), got "
            f"{type(teacher).__name__}"
        )
    if not isinstance(noise, NoiseSchedule):
        raise TypeError(f"noise must be a hso_jax.noise.NoiseSchedule, got {type(noise).__name__}")
    metric = _validate.choice("metric", metric, METRICS)
    t = np.asarray(teacher.t, np.float64)
    if t.ndim != 1 or t.shape[0] < 2:
        raise ValueError(f"teacher.t must be 1-D with at least 2 points, got shape {t.shape}")
    k = t.shape[0]
    x_shape, x0_shape = tuple(np.shape(teacher.x)), tuple(np.shape(teacher.x0))
    if len(x_shape) < 3 or x_shape[0] != k or x0_shape != x_shape:
        raise ValueError(
            f"teacher.x and teacher.x0 must have shape (K, B, ...) = ({k}, B, ...), got "
            f"{x_shape} and {x0_shape}"
        )
    ii, jj = np.triu_indices(k, 1)
    per_pair = math.prod(x_shape[1:])
    batch_size = int(max(1, min(ii.shape[0], _BLOCK_ELEMENTS // max(per_pair, 1))))
    with jax.enable_x64(True):
        t64 = jnp.asarray(t, jnp.float64)
        alpha = noise.alpha(t64)
        s = noise.sigma_edm(t64)
        vals = _pair_costs(
            jnp.asarray(teacher.x),
            jnp.asarray(teacher.x0),
            alpha,
            s,
            jnp.asarray(ii),
            jnp.asarray(jj),
            batch_size,
            metric,
        )
        vals = np.asarray(vals, np.float64)
    cost = np.full((k, k), np.inf)
    cost[ii, jj] = vals
    return cost


# --------------------------------------------------------------------------------------
# Dynamic programming
# --------------------------------------------------------------------------------------


def gits_dp(cost: Array, num_steps: int, coeff: float = 1.0) -> tuple[np.ndarray, float]:
    r"""The minimum weighted-cost path of ``num_steps`` jumps through a grid.

    Finds ``0 = i_0 < i_1 < ... < i_n = K - 1`` (``n = num_steps``) minimising

    .. math:: \sum_{m=0}^{n-1} \mathrm{coeff}^m\, C[i_m, i_{m+1}]

    by the recursion ``V_1(j) = C[j, K-1]``, ``V_k(j) = min_{i > j} C[j, i] + coeff V_{k-1}(i)``
    (that of the official GITS code), ``O(n K^2)`` operations vectorised over ``j`` and ``i``.
    Only the strict upper triangle of ``cost`` is read. Ties go to the smallest index.

    Args:
      cost: ``(K, K)`` matrix, ``C[i, j]`` the cost of one step from grid point ``i`` to
        ``j > i`` (finite there; the rest is ignored).
      num_steps: ``n``, steps of the path, ``1 <= n <= K - 1``.
      coeff: weight ratio of consecutive steps (> 0); ``1`` gives the plain minimum-sum path.

    Returns:
      ``(indices, value)``: the ``n + 1`` increasing grid indices (int64 NumPy array) and the
      minimal weighted cost.

    Raises:
      ValueError for a non-square cost matrix, a non-finite upper triangle, ``num_steps``
      outside ``[1, K - 1]`` or ``coeff <= 0``.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"cost must be a square (K, K) matrix with K >= 2, got shape {c.shape}")
    k = c.shape[0]
    upper = np.triu(np.ones((k, k), bool), 1)
    if not np.all(np.isfinite(c[upper])):
        i, j = np.argwhere(upper & ~np.isfinite(c))[0]
        raise ValueError(f"cost must be finite above the diagonal; cost[{i}, {j}] = {c[i, j]}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be an integer in [1, {k - 1}], got {num_steps!r}")
    n = int(num_steps)
    if not 1 <= n <= k - 1:
        raise ValueError(
            f"num_steps must be in [1, K - 1] = [1, {k - 1}] for a {k}-point grid, got {n}"
        )
    coeff = _check_coeff(coeff)

    c = np.where(upper, c, np.inf)
    value = c[:, -1].copy()  # V_1(j); V_1(K-1) = inf (no step from the end to itself)
    choice = np.empty((n + 1, k), np.int64)
    choice[1] = k - 1
    for steps in range(2, n + 1):
        total = c + coeff * value[None, :]  # total[j, i] = C[j, i] + coeff V_{k-1}(i)
        choice[steps] = np.argmin(total, axis=1)  # first minimum: the smallest index
        value = total[np.arange(k), choice[steps]]
    indices = [0]
    for steps in range(n, 0, -1):
        indices.append(int(choice[steps][indices[-1]]))
    return np.asarray(indices, np.int64), float(value[0])


def _check_coeff(coeff) -> float:
    if (
        isinstance(coeff, bool)
        or not isinstance(coeff, (int, float, np.integer, np.floating))
        or not np.isfinite(coeff)
        or coeff <= 0
    ):
        raise ValueError(f"coeff must be a finite number > 0, got {coeff!r}")
    return float(coeff)


# --------------------------------------------------------------------------------------
# The optimiser
# --------------------------------------------------------------------------------------


def _planned_points(opts: dict) -> int | None:
    """Grid size the teacher will have, when it is known before computing it."""
    teacher = opts.get("teacher")
    if isinstance(teacher, Teacher):
        return int(np.shape(teacher.t)[0])
    if teacher is not None:
        return None
    grid = opts.get("teacher_grid")
    if grid is not None and not isinstance(grid, str):
        return int(np.shape(grid)[0]) if np.ndim(grid) == 1 else None
    points = opts.get("teacher_points", 100)
    if isinstance(points, (int, np.integer)) and not isinstance(points, bool):
        return int(points)
    return None


def _check_grid_size(k: int, n: int, nfe: int, solver_name: str) -> None:
    if k < n + 1:
        raise ValueError(
            f"nfe={nfe} with solver={solver_name!r} needs {n} steps, i.e. a teacher grid of at "
            f"least {n + 1} points, but the grid has {k} points; raise teacher_points or lower nfe"
        )


def _describe(v) -> Any:
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"array{tuple(v.shape)} {v.dtype}"
    if isinstance(v, Teacher):
        return f"Teacher(K={np.shape(v.t)[0]}, B={np.shape(v.x)[1]})"
    if isinstance(v, Mesh):
        return f"Mesh({dict(v.shape)})"
    return v


def optimize_gits(
    model: Denoiser,
    nfe: int,
    *,
    solver: Any = "unipc",
    coeff: float = DEFAULT_COEFF,
    variant: str = "official",
    metric: str | None = None,
    end: str | None = None,
    grid: str = "continuous",
    **teacher_options: Any,
) -> OptimizeResult:
    """GITS: the schedule whose steps best fit a batch of teacher trajectories.

    Builds (or takes) teacher trajectories on a fine grid, scores every single-step jump
    between grid points (:func:`gits_cost_matrix`) and picks the ``n`` steps of minimal
    weighted cost (:func:`gits_dp`). The schedule is a subset of the grid: it starts at the
    grid's first time and ends at its last.

    By default everything is as the official code runs it (``variant="official"``: the
    ``"dev"`` metric, a 60-step iPNDM teacher on a 61-point Karras grid, ``coeff = 1.15``;
    pass the official 256 noises as ``x_T``); ``variant="exact"`` scores the L2 error against
    exact trajectories on a 100-point log-SNR grid (see the module docstring). ``coeff``
    defaults to 1.15, the official default (its command-line default and the recommended
    setting of its launch script; 1.20 for Stable Diffusion; ``coeff = 1`` gives the plain
    minimum-sum path of the paper).

    Args:
      model: the :class:`~hso_jax.Denoiser` (evaluated only for the teacher).
      nfe: network evaluations of the sampler; the schedule has ``solver.num_points(nfe)``
        points, i.e. ``n = solver.num_points(nfe) - 1`` steps.
      solver: a solver name (``"unipc"``, ``"ddim"``, ``"heun"``, ...) or object; it fixes how
        many points ``nfe`` buys (the cost itself measures first-order steps).
      coeff: weight ratio of consecutive steps in the DP, > 0 (default 1.15).
      variant: ``"official"`` (default) or ``"exact"``: the defaults of ``metric`` and of the
        teacher options ``teacher_solver``, ``teacher_points``, ``teacher_grid``.
      metric: cost of a jump, ``"dev"`` | ``"l2"`` | ``"l1"`` (default: the variant's).
      end: ``"t_min"`` (default: the grid's last point) or ``"zero"``: the last point is
        moved to the data end ``t = 0`` (a runtime's final sigma of 0; a warning says that the
        DP scored the step to ``t_min``).
      grid: ``"steps"`` (discrete-time models, for runtimes that pass integer timesteps): the
        teacher grid is made of training steps (the default grid rounded to steps, duplicates
        dropped), so the schedule, a subset of it, lies on them.
      **teacher_options: ``x_T`` ((B, ...) initial noise at the grid start) or ``teacher`` (a
        ready :class:`~hso_jax.evaluation.Teacher`), ``teacher_solver`` (``"ipndm"`` |
        ``"exact"``), ``teacher_points`` (K), ``teacher_grid`` (``"logsnr"`` | ``"karras"`` |
        ``"time"`` | an array of times), ``teacher_rtol`` / ``teacher_atol`` (1e-4, of the
        exact teacher), ``callback`` (the teacher's progress, see
        :func:`~hso_jax.evaluation.teacher_trajectories`), ``teacher_batch_size`` (samples per
        teacher solve, default all), ``mesh`` (``None``, ``"auto"`` or a Mesh: the teacher
        solve's samples split over the devices). Per-sample conditions of the model
        (:mod:`hso_jax.batch`) go with their rows of ``x_T``: the cost averages over the
        whole batch of conditions, one schedule for all of them.

    Returns:
      :class:`~hso_jax.optimizers.OptimizeResult` with ``method="gits"``, ``objective`` the
      DP value, ``params`` (``indices`` into the grid, ``coeff``, ``grid_points``) and ``info``
      (the teacher description, ``cost_min`` / ``cost_max`` of the finite costs, ``steps``,
      ``timings``: ``teacher_s``, ``cost_s``, ``dp_s``, ``total_s``).

    Raises:
      TypeError for a non-Denoiser model or a wrong teacher type; ValueError for an unknown
      option, variant or metric, ``coeff <= 0``, a missing ``x_T`` / ``teacher``, an invalid
      ``nfe`` or an ``nfe`` that needs more steps than the grid has.
    """
    t_start = time.perf_counter()
    unknown = sorted(set(teacher_options) - set(TEACHER_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method='gits'; known options: {list(OPTIONS)}"
        )
    model = check_model(model, "gits")
    coeff = _check_coeff(coeff)
    defaults = VARIANTS[_validate.choice("variant", variant, tuple(VARIANTS))]
    metric = _validate.choice("metric", defaults["metric"] if metric is None else metric, METRICS)
    teacher_options = {
        **{k: v for k, v in defaults.items() if k != "metric"},
        **{k: v for k, v in teacher_options.items() if v is not None},
    }
    nfe = _validate.nfe(nfe)
    solver_obj, solver_name = resolve_solver(solver)
    end = fixed_end(end, "gits")
    n = solver_obj.num_points(nfe, to_data=end == "zero") - 1
    if _validate.choice("grid", grid, GRIDS) == "steps":
        teacher_options = _steps_grid(model.noise, teacher_options)
    planned = _planned_points(teacher_options)
    if planned is not None:  # fail before the expensive teacher solve
        _check_grid_size(planned, n, nfe, solver_name)

    check_finite_ends(
        model.noise,
        model.noise.t_max,
        model.noise.t_min,
        "GITS",
        "its cost is measured in "
        "EDM's frame x / alpha on a teacher grid over the process's range, infinite at alpha = 0",
    )
    teacher, teacher_info = teacher_from_options(model, "gits", teacher_options)
    k = int(np.shape(teacher.t)[0])
    _check_grid_size(k, n, nfe, solver_name)
    jax.block_until_ready(teacher.x0)
    t_teacher = time.perf_counter()

    cost = gits_cost_matrix(teacher, model.noise, metric)
    t_cost = time.perf_counter()
    indices, value = gits_dp(cost, n, coeff)
    t_dp = time.perf_counter()

    grid = np.asarray(teacher.t, np.float64)
    finite = cost[np.isfinite(cost)]
    info = dict(
        teacher_info,
        variant=variant,
        metric=metric,
        steps=n,
        cost_min=float(finite.min()),
        cost_max=float(finite.max()),
        timings=dict(
            teacher_s=t_teacher - t_start,
            cost_s=t_cost - t_teacher,
            dp_s=t_dp - t_cost,
            total_s=time.perf_counter() - t_start,
        ),
    )
    options = {k: _describe(v) for k, v in teacher_options.items() if k != "callback"}
    options.update(coeff=coeff, variant=variant, metric=metric)
    t, warnings = grid[indices], ()
    if end == "zero":
        t, note = to_data_end(t, "GITS")
        warnings = (note,)
    info["end"], info["grid"] = end, grid
    return OptimizeResult.from_t(
        t,
        model.noise,
        objective=value,
        penalty=None,
        method="gits",
        solver=solver_name,
        nfe=nfe,
        params={"indices": indices.tolist(), "coeff": coeff, "grid_points": k},
        info=info,
        warnings=warnings,
        options=options,
    )


def _steps_grid(noise, opts: dict) -> dict:
    """Teacher options whose grid lies on the training steps of a discrete model."""
    if not noise.is_discrete:
        raise ValueError(
            f"grid='steps' needs a discrete-time model (training steps), got {noise!r}"
        )
    if opts.get("teacher") is not None:
        t = np.asarray(opts["teacher"].t, np.float64)
        if np.any(np.abs(t * noise.num_steps - np.rint(t * noise.num_steps)) > 1e-9):
            raise ValueError(
                "grid='steps': the given teacher's grid is not on training steps; compute it "
                "with teacher_grid=<times on steps> or let GITS build it (pass x_T)"
            )
        return opts
    base = opts.get("teacher_grid") or "logsnr"
    if isinstance(base, str):
        with jax.enable_x64(True):
            base = schedules.baseline(base, noise, int(opts["teacher_points"]) - 1)
    k = np.unique(noise.index_from_t(np.asarray(base, np.float64)))[::-1]
    return {**opts, "teacher_grid": (k + 1.0) / noise.num_steps}


# the teacher options a variant sets default to None (= the variant's)
_BY_VARIANT = ("teacher_points", "teacher_grid", "teacher_solver")
GITSOptions = dataclasses.make_dataclass(
    "GITSOptions",
    [
        ("coeff", float, dataclasses.field(default=DEFAULT_COEFF)),
        ("variant", str, dataclasses.field(default="official")),
        ("metric", Any, dataclasses.field(default=None)),
        *(
            (n, Any, dataclasses.field(default=None)) if n in _BY_VARIANT else (n, t, f)
            for n, t, f in TEACHER_FIELDS
        ),
    ],
    frozen=True,
)
GITSOptions.__doc__ = """The options of ``method="gits"``: ``coeff``, ``variant``, ``metric``
and the teacher's (see :func:`optimize_gits`)."""


def _run(problem, nfe: int, solver, options, seed: int) -> OptimizeResult:
    problem.starts_at_t_max("gits")
    return optimize_gits(
        problem.model, nfe, solver=solver, **problem.conventions(), **given_options(options)
    )


register(
    Method(
        "gits",
        needs_model=True,
        options=GITSOptions,
        run=_run,
        summary="GITS: dynamic programming over a fine grid with the local truncation error "
        "along teacher trajectories (ICML 2024)",
        inputs=("x_T",),
    )
)
