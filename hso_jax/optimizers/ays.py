r"""Align Your Steps (AYS): schedule search on the Monte-Carlo KL upper bound.

The objective is the KLUB of the stochastic-DDIM discretisation (:mod:`hso_jax.objectives.klub`),
a sum over reverse steps in the EDM noise level ``sigma = sigma_edm``,

.. math::

    \mathrm{KLUB}(\sigma_0 < \dots < \sigma_n) = \sum_i \int_{\sigma_{i-1}}^{\sigma_i}
        \sigma^{-3}\, \mathbb{E}\|D(x_\sigma, \sigma) - D(x_{\sigma_i}, \sigma_i)\|^2 d\sigma,

in which an interior point ``sigma_i`` only enters the two terms next to it. The search
(Algorithm 1 of the paper, measurable stopping rules added):

1. **Initialise** 10 steps (``init`` overrides): Karras ``rho = 7`` for continuous-time models,
   time-uniform for discrete-time ones (``noise.is_discrete``).
2. **Coordinate search.** A sweep updates the even interior points, then the odd ones; points of
   one parity are not adjacent, so all their candidates are scored together in one batched
   evaluation (:meth:`hso_jax.objectives.klub.KLUB.neighbourhood`). Each point gets
   ``candidates`` (11) values in ``(sigma_{i+1}, sigma_{i-1})``, the current one always among
   them; the KLUB argmin (its two neighbouring terms) is kept. The other candidates are spread
   evenly in ``log sigma`` on both sides of the current value, up to a fraction
   ``radius * k / (k + 1)`` of the log-distance to each neighbour (``k`` candidates per side).
   Every point starts with ``radius = 1`` (the whole neighbourhood, as in the paper). As in a
   pattern search, the radius halves when the winner lies inside the grid (the optimum is then
   bracketed within one spacing) and doubles, up to 1, when an outermost candidate wins, so
   the search resolves the optimum far finer than one 11-point grid. All candidates of a point
   use common random numbers, fixed for the whole level: the objective is a sample average, so
   a pass never raises a point's own local estimate.
3. **Early stopping** (the KLUB bounds path divergence, not sample quality, so the paper stops
   early by inspection). Measurable rules, checked after every sweep, whichever fires first
   (``info["stop_reason"]``):

   * ``"rel_tol"``: the relative KLUB decrease of the sweep, ``(K_prev - K) / K_prev``, is below
     ``rel_tol`` (the KLUB of the whole schedule re-estimated with fixed random numbers);
   * ``"validation"``: a metric ``validation(t) -> float`` (lower is better, e.g. an error
     to reference samples) did not improve for ``patience`` sweeps; the best iterate is kept.
     ``validation="klub"`` is the KLUB re-estimated with independent random numbers (a
     held-out estimate): the search's own estimate uses common random numbers fixed for the
     level, so with few Monte-Carlo samples it keeps falling by fitting them (seen on MNIST
     with 16 samples: more than 1 % per sweep for 20 sweeps), while the held-out one stops
     improving once the schedule only fits noise;
   * ``"converged"``: every point's radius fell below ``min_radius`` (nothing moves any more);
   * ``"max_sweeps"``.

4. **Subdivide** ``10 -> 20 -> 40``: keep the points, insert geometric midpoints
   ``sqrt(sigma_i sigma_{i+1})``, and optimise only the new points. Each new point sits between
   two fixed old ones, so all new points are independent and are scored in one call per pass;
   passes repeat until every new point has converged or ``refine_sweeps`` is reached (no early
   stopping).
5. **Interpolate** log-linearly (``log sigma`` against normalised position) to the ``nfe + 1``
   points the solver needs (:func:`hso_jax.schedules.loglinear_interp`). Old points are kept
   by subdivision, so the 10- and 20-step results are recovered exactly from the 40-step one.

Below, one function per stage (:func:`optimize_ays` calls them in this order); the candidate
grid and one pass of the coordinate search are in :mod:`hso_jax.optimizers.ays_search`.

The KLUB is derived for stochastic DDIM; the same schedule is used for every ``solver``
(``solver`` only fixes how many points a given NFE needs, and is recorded). The paper reports
that the schedules transfer to ODE solvers.

Reference: Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion
Models", ICML 2024 (arXiv 2404.14507), Sec. 3 (Algorithm 1, subdivision, interpolation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _progress, _validate, schedules, solvers
from ..denoiser import Denoiser, check_denoiser
from ..noise import NoiseSchedule
from ..objectives.klub import KLUB, klub
from ..schedules import check_schedule
from ._ends import check_finite_ends
from .ays_search import CoordinateSearch
from .base import Method, given_options, register
from .model_inputs import fixed_end, resolve_solver, to_data_end
from .result import OptimizeResult

__all__ = ["optimize_ays", "BASE_STEPS"]

Array = Any

BASE_STEPS = 10
"""Steps of the first level (the paper's coarse schedule)."""

STOP_REASONS = ("rel_tol", "validation", "converged", "max_sweeps")

_AYS_ENDS = (
    "the KLUB and its search live on sigma_edm = exp(-lam) in [sigma_min, sigma_max]; pass "
    "init=<a schedule with finite ends> or use such a process"
)


def optimize_ays(
    model: Denoiser,
    nfe: int,
    *,
    solver: str | solvers.Solver = "dpm-solver-pp",
    key: Array,
    data: Array | None = None,
    num_samples: int | None = None,
    init: Array | None = None,
    candidates: int = 11,
    max_sweeps: int = 20,
    rel_tol: float | None = 1e-2,
    validation: Callable[[np.ndarray], float] | None = None,
    patience: int = 2,
    subdivide: bool | int = True,
    refine_sweeps: int = 12,
    min_radius: float = 1.0 / 32.0,
    c: float = 0.5,
    shape: tuple[int, ...] | None = None,
    batch_size: int | None = None,
    mesh: Any = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    end: str | None = None,
    grid: str = "continuous",
    _include_normaliser: bool = True,
) -> OptimizeResult:
    r"""Optimise a sampling schedule with Align Your Steps (see the module docstring).

    Args:
      model: the :class:`~hso_jax.Denoiser` (any noise process; searched in ``sigma_edm``).
      nfe: network evaluations of the returned schedule (``solver.num_points(nfe)`` points).
      solver: a solver object or the name of a factory in :mod:`hso_jax.solvers`
        (``"dpm-solver-pp"``, ``"sde-dpm-solver-pp"``, ``"unipc"``, ``"ddim"``, ...); sets the
        number of points and is recorded (the KLUB itself is that of stochastic DDIM).
      key: PRNG key of all random numbers; the same key gives the same result.
      data: ``(N, *sample_shape)`` data samples ``x0``; ``None`` draws ``num_samples`` samples
        from the model by a tight PF-ODE solve (:func:`hso_jax.objectives.klub.model_samples`,
        needs ``shape``).
      num_samples: Monte-Carlo samples per interval estimate (default ``min(N, 1024)``; the
        paper used 8192).
      init: initial schedule of model times (strictly decreasing, >= 3 points, inside the
        model's range); its length sets the first level. Default: 10 steps of Karras
        ``rho = 7`` (continuous time) or time-uniform (discrete time) over the full range.
      candidates: values tried per point and pass, current one included (paper: 11; at
        least 3, one on each side).
      max_sweeps: most sweeps (even + odd pass) of the first level.
      rel_tol: stop the first level when a sweep lowers the KLUB by less than this fraction;
        ``None`` disables the rule.
      validation: optional ``validation(t) -> float`` on the first-level schedule (model times,
        NumPy), lower is better; evaluated at the initialisation and after every sweep; the
        best iterate is kept and the level stops after ``patience`` sweeps without improvement.
        ``"klub"``: the held-out KLUB (same data and ``num_samples``, independent random
        numbers; ``2 N num_samples`` network calls per sweep for N intervals).
      patience: sweeps without validation improvement before stopping.
      subdivide: ``True`` (two rounds, ``10 -> 20 -> 40``), ``False`` (none) or the number of
        rounds.
      refine_sweeps: most passes per subdivision level (stops earlier when converged).
      min_radius: a point has converged when its candidate radius is below this.
      c: importance-sampling constant ``c > 0`` (paper: 0.5).
      shape: one sample's shape (checked against ``data``; required when ``data`` is None).
      batch_size: samples per network call.
      mesh: ``None`` (one device), ``"auto"`` (all of ``jax.devices()``) or a
        :class:`jax.sharding.Mesh` with a ``"batch"`` axis: every network call's samples and
        their condition rows are split over the devices (:func:`hso_jax.objectives.klub.klub`).

    Conditions: with per-sample conditions (:mod:`hso_jax.batch`), ``data`` holds one row per
    condition (``data[i]`` drawn given condition ``i``; ``data=None`` draws them from the
    model), every KLUB sample is denoised under its row's condition, and the result is one
    schedule for the whole batch of conditions.
      progress: show a tqdm progress bar (sweep, KLUB, elapsed time).
      callback: called after every sweep / pass with a dict: ``level`` (steps), ``sweep``,
        ``klub``, ``elapsed`` (s), ``t`` (current schedule), ``sigmas``; and while a sweep
        scores its candidates, after every batch of network calls, with ``level``, ``sweep``,
        ``scored`` (the fraction of the sweep's candidate scoring done) and ``elapsed``.
      end: ``"t_min"`` (default; the paper's schedules end there) or ``"zero"``: the last
        point is moved to the data end ``t = 0`` after the search (a runtime's final sigma of
        0, as ComfyUI's AYS node does; a warning says so).
      grid: ``"steps"`` (discrete-time models, for runtimes that pass integer timesteps): the
        points but the last are moved onto training steps
        (:func:`hso_jax.schedules.on_training_steps`) and the KLUB re-estimated there.

    Returns:
      An :class:`~hso_jax.optimizers.OptimizeResult` with ``method="ays"``, ``objective`` the
      KLUB estimate of the returned schedule, and ``info`` holding ``stop_reason``,
      ``sweeps``, ``best_sweep``, ``klub_history``, ``validation_history``, ``levels`` (per
      level: steps, passes, converged, klub, t, sigmas, seconds), ``candidate_evaluations``,
      ``network_evaluations``, ``timings`` (``total_s``, ``levels_s``).

    Raises:
      ValueError / TypeError naming the argument: data of the wrong shape or with too few
      samples, ``init`` outside the model's range or not decreasing, ``c <= 0``, bad integers.
      FloatingPointError if the model produces NaN / inf.

    Example:
      >>> res = optimize_ays(model, 10, key=jax.random.key(0), data=x0)
      >>> x = hso_jax.sample(model, x_T, res.t, hso_jax.solvers.dpm_solver_pp())
    """
    t_begin = time.perf_counter()
    end = fixed_end(end, "ays")
    grid = _validate.choice("grid", grid, schedules.GRIDS)
    if grid == "steps" and not model.noise.is_discrete:
        raise ValueError(f"grid='steps' needs a discrete-time model, got {model.noise!r}")
    solver_name, num_points, opts = _check_arguments(
        model, nfe, solver, candidates, max_sweeps, rel_tol, validation, patience, subdivide,
        refine_sweeps, min_radius, callback, end,
    )
    ns = model.noise
    t0, init_name = _initial_schedule(ns, init)
    key_obj, key_search = jax.random.split(_validate.prng_key("key", key))
    same = dict(c=c, shape=shape, batch_size=batch_size, _include_normaliser=_include_normaliser)
    obj = klub(model, data, key=key_obj, num_samples=num_samples, mesh=mesh, **same)
    sig = _sigma_of_t(ns, t0)
    if not np.all(np.diff(sig) < 0):
        raise ValueError("init maps to non-decreasing sigma_edm values; pass distinct times")
    run = _Run(
        obj=obj,
        noise=ns,
        t_start=float(t0[0]),
        t_end=float(t0[-1]),
        t_begin=t_begin,
        bar=_progress_bar(progress, opts.max_sweeps + opts.rounds * opts.refine_sweeps),
        callback=callback,
    )
    # "klub": the held-out KLUB, the same data and sample size with independent random numbers
    held_out = None
    if validation == "klub":
        key_val = jax.random.fold_in(key_obj, 1)
        held_out = klub(model, data, key=key_val, num_samples=obj.num_samples, **same)
    metric, validation_name = _validation_metric(run, validation, held_out)

    # steps 2-3 of the module docstring, then 4 (subdivision rounds), then 5
    first = _coordinate_level(run, sig, metric, jax.random.fold_in(key_search, 0), opts)
    levels = [first.record]
    for rnd in range(1, opts.rounds + 1):
        key_level = jax.random.fold_in(key_search, rnd)
        levels.append(_subdivision_level(run, levels[-1]["sigmas"], key_level, opts))
    run.close()

    t_out = _interpolate(run, levels[-1]["sigmas"], num_points)
    if grid == "steps":
        t_out = schedules.on_training_steps(t_out, ns)
    objective = run.klub(_sigma_of_t(ns, t_out)) if num_points > 1 else 0.0
    if end == "zero":
        t_out, note = to_data_end(t_out, "AYS")
        run.warnings.append(note)
    return _result(
        run,
        t_out,
        objective,
        first,
        levels,
        opts,
        init=init_name if init is None else np.asarray(init, np.float64),
        init_name=init_name,
        validation_name=validation_name,
        solver_name=solver_name,
        nfe=int(nfe),
    )


# --------------------------------------------------------------------------------------
# Set-up: arguments, the initial schedule (step 1), the validation metric
# --------------------------------------------------------------------------------------


class _Settings(NamedTuple):
    """The validated search settings (see :func:`optimize_ays` for each)."""

    candidates: int
    max_sweeps: int
    rel_tol: float | None
    patience: int
    rounds: int  # subdivision rounds
    refine_sweeps: int
    min_radius: float


def _check_arguments(
    model, nfe, solver, candidates, max_sweeps, rel_tol, validation, patience, subdivide,
    refine_sweeps, min_radius, callback, end,
) -> tuple[str, int, _Settings]:
    """Validate the arguments (eagerly, naming each); returns the solver's name, the number of
    points of the returned schedule and the search settings."""
    check_denoiser(model)
    solver_obj, solver_name = resolve_solver(solver)
    num_points = solver_obj.num_points(_validate.nfe(nfe), to_data=end == "zero")
    candidates = _validate.integer("candidates", candidates, 3)
    max_sweeps = _validate.integer("max_sweeps", max_sweeps, 1)
    refine_sweeps = _validate.integer("refine_sweeps", refine_sweeps, 1)
    patience = _validate.integer("patience", patience, 1)
    rounds = {True: 2, False: 0}[subdivide] if isinstance(subdivide, bool) else subdivide
    rounds = _validate.integer("subdivide", rounds, 0)
    if rel_tol is not None and (not isinstance(rel_tol, (int, float)) or not rel_tol >= 0):
        raise ValueError(f"rel_tol must be a float >= 0 or None, got {rel_tol!r}")
    if not isinstance(min_radius, (int, float)) or not 0 < min_radius <= 1:
        raise ValueError(f"min_radius must be in (0, 1], got {min_radius!r}")
    if validation is not None and not callable(validation) and validation != "klub":
        raise TypeError(f"validation must be a callable t -> float or 'klub', got {validation!r}")
    _validate.callback(callback)
    return solver_name, num_points, _Settings(
        candidates, max_sweeps, rel_tol, patience, rounds, refine_sweeps, min_radius
    )


def _initial_schedule(ns: NoiseSchedule, init: Array | None) -> tuple[np.ndarray, str]:
    """The first level's schedule (model times, float64) and its name for the result.

    Paper: ``BASE_STEPS`` steps of Karras ``rho = 7`` for continuous-time models,
    time-uniform for discrete-time ones, over the process's full range; or the user's ``init``.
    """
    if init is None:
        check_finite_ends(ns, ns.t_max, ns.t_min, "AYS", _AYS_ENDS)
        # float64 whatever the x64 flag, so the search starts from the same schedule
        with jax.enable_x64(True):
            if ns.is_discrete:
                t0 = schedules.time_uniform(ns, BASE_STEPS)
                init_name = "time-uniform"
            else:
                t0 = schedules.karras(ns, BASE_STEPS, rho=7.0)
                init_name = "karras-rho7"
            t0 = np.array(t0, np.float64)
        t0[0], t0[-1] = ns.t_max, ns.t_min
    else:
        t0 = np.array(check_schedule(init, ns, name="init", min_points=3), np.float64)
        init_name = "user"
    check_finite_ends(ns, float(t0[0]), float(t0[-1]), "AYS", _AYS_ENDS)
    return t0, init_name


def _validation_metric(
    run: _Run, validation: Any, held_out: KLUB | None
) -> tuple[Callable[[np.ndarray], float] | None, str | None]:
    """The first level's validation metric ``t -> float`` and its name for the result."""
    if validation is None:
        return None, None
    if validation == "klub":

        def held_out_klub(t: np.ndarray) -> float:
            return run.klub(_sigma_of_t(run.noise, np.asarray(t, np.float64)), held_out)

        return held_out_klub, "klub"
    return validation, getattr(validation, "__name__", "callable")


# --------------------------------------------------------------------------------------
# What the stages share
# --------------------------------------------------------------------------------------


def _sigma_of_t(noise: NoiseSchedule, t) -> np.ndarray:
    """EDM noise levels of model times (float64 whatever the x64 flag)."""
    with jax.enable_x64(True):
        return np.array(noise.sigma_edm(jnp.asarray(np.asarray(t, np.float64))), np.float64)


@dataclasses.dataclass(eq=False)
class _Run:
    """What every stage of one run shares (host side, mutable): the objective, the fixed ends
    of the schedule, the progress report, the warnings and the evaluation counts."""

    obj: KLUB
    noise: NoiseSchedule  # the model's (the objective holds a replicated copy of the model)
    t_start: float
    t_end: float
    t_begin: float  # perf_counter at the call
    bar: Any  # tqdm bar or None
    callback: Callable[[dict[str, Any]], None] | None
    warnings: list[str] = dataclasses.field(default_factory=list)
    candidate_evals: int = 0
    network_evals: int = 0

    def times(self, sig: np.ndarray) -> np.ndarray:
        """Model times of EDM sigmas, with the ends exactly ``t_start`` and ``t_end``."""
        with jax.enable_x64(True):
            t = np.array(self.noise.t_from_sigma_edm(jnp.asarray(sig, jnp.float64)), np.float64)
        t[0], t[-1] = self.t_start, self.t_end
        return t

    def klub(self, sig: np.ndarray, obj: KLUB | None = None) -> float:
        """KLUB of the whole schedule ``sig`` (float32 terms summed in float64), counted.

        ``obj`` defaults to the search's objective (its fixed random numbers).
        """
        obj = self.obj if obj is None else obj
        self.network_evals += 2 * (sig.shape[0] - 1) * obj.num_samples
        return float(np.sum(np.asarray(obj.terms_from_sigmas(sig.astype(np.float32)), np.float64)))

    def count(self, search: CoordinateSearch) -> None:
        """Add a finished search's evaluations to the run's."""
        self.candidate_evals += search.candidate_evals
        self.network_evals += search.network_evals

    def scoring(self, level: int, sweep: int):
        """Within: the candidate scoring of one sweep reports its progress to the callback
        (``scored``: the fraction of its network batches done)."""
        if self.callback is None:
            return contextlib.nullcontext()

        def scored(fraction: float) -> None:
            elapsed = time.perf_counter() - self.t_begin
            self.callback(dict(level=level, sweep=sweep, scored=fraction, elapsed=elapsed))

        return _progress.listening(scored)

    def report(self, level: int, sweep: int, value: float, sig: np.ndarray) -> None:
        """After every sweep / pass: advance the progress bar and call the callback."""
        elapsed = time.perf_counter() - self.t_begin
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(steps=level, sweep=sweep, klub=f"{value:.5g}", s=f"{elapsed:.1f}")
        if self.callback is not None:
            self.callback(
                dict(
                    level=level,
                    sweep=sweep,
                    klub=value,
                    elapsed=elapsed,
                    t=self.times(sig),
                    sigmas=sig.copy(),
                )
            )

    def record(self, steps, passes, stop_reason, klub, sig, t_level) -> dict[str, Any]:
        """``info["levels"]`` entry of a finished level (``t_level``: its perf_counter start)."""
        return dict(
            steps=steps,
            passes=passes,
            converged=stop_reason == "converged",
            stop_reason=stop_reason,
            klub=klub,
            sigmas=sig.copy(),
            t=self.times(sig),
            seconds=time.perf_counter() - t_level,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(progress: bool, total: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="AYS", leave=False)


# --------------------------------------------------------------------------------------
# Steps 2-3: coordinate search on the first level, with early stopping
# --------------------------------------------------------------------------------------


class _FirstLevel(NamedTuple):
    """Outcome of the first level: the kept iterate and the histories for ``info``."""

    sig: np.ndarray  # the kept (best) iterate
    stop_reason: str
    sweeps: int
    best_sweep: int
    klub_history: list[float]
    validation_history: list[float] | None
    record: dict[str, Any]


def _coordinate_level(
    run: _Run,
    sig: np.ndarray,
    validation: Callable[[np.ndarray], float] | None,
    key: Array,
    opts: _Settings,
) -> _FirstLevel:
    """Sweeps (even interior points, then odd ones) until a stopping rule fires.

    The kept iterate is the one with the best validation metric, or without one the lowest
    KLUB (the last such sweep on ties).
    """
    t_level = time.perf_counter()
    search = CoordinateSearch(run.obj, sig, key, opts.candidates, opts.min_radius)
    n0 = sig.shape[0] - 1
    interior = np.arange(1, n0)
    # points of one parity are not adjacent: each pass scores all their candidates at once
    parities = [p for p in (interior[interior % 2 == 0], interior[interior % 2 == 1]) if p.size]
    k_hist = [run.klub(search.sig)]
    v_hist = None if validation is None else [float(validation(run.times(search.sig)))]
    best_sig, best_sweep, best_k = search.sig.copy(), 0, k_hist[0]
    since_best = 0  # sweeps without validation improvement
    stop_reason, sweep = "max_sweeps", 0
    for sweep in range(1, opts.max_sweeps + 1):
        with run.scoring(n0, sweep):
            for i, pts in enumerate(parities):  # each pass one share of the sweep's progress
                with _progress.part(i / len(parities), (i + 1) / len(parities)):
                    search.update(pts)
        k_now = run.klub(search.sig)
        k_hist.append(k_now)
        run.report(n0, sweep, k_now, search.sig)
        if v_hist is not None:
            v_hist.append(float(validation(run.times(search.sig))))
            improved = v_hist[-1] < min(v_hist[:-1])
            since_best = 0 if improved else since_best + 1
        else:
            improved = k_now <= best_k
        if improved:
            best_sig, best_sweep, best_k = search.sig.copy(), sweep, k_now
        rule = _stop_rule(opts, k_hist, since_best, search.converged(interior))
        if rule is not None:
            stop_reason = rule
            break
    run.count(search)
    if stop_reason == "max_sweeps" and opts.max_sweeps > 1:
        run.warnings.append(
            f"level {n0}: stopped at max_sweeps={opts.max_sweeps} before any stopping rule fired"
        )
    if validation is not None and best_sweep == 0:
        run.warnings.append(
            "the validation metric never improved on the initialisation: the first level "
            "returns the initial schedule"
        )
    record = run.record(n0, sweep, stop_reason, best_k, best_sig, t_level)
    return _FirstLevel(best_sig, stop_reason, sweep, best_sweep, k_hist, v_hist, record)


def _stop_rule(opts: _Settings, k_hist: list[float], since_best: int, converged: bool):
    """The early-stopping rule that fires after a sweep (checked in this order), or None.

    ``"validation"``: ``patience`` sweeps without improvement; ``"rel_tol"``: the sweep lowered
    the KLUB by less than ``rel_tol * |K_prev|``; ``"converged"``: every point's radius is below
    ``min_radius``.
    """
    if since_best >= opts.patience:
        return "validation"
    k_prev, k_now = k_hist[-2], k_hist[-1]
    if opts.rel_tol is not None and (k_prev - k_now) < opts.rel_tol * abs(k_prev):
        return "rel_tol"
    if converged:
        return "converged"
    return None


# --------------------------------------------------------------------------------------
# Step 4: subdivision 10 -> 20 -> 40, only the new points move
# --------------------------------------------------------------------------------------


def _subdivide(sig: np.ndarray) -> np.ndarray:
    """Keep the points and insert geometric midpoints ``sqrt(sigma_i sigma_{i+1})``."""
    fine = np.empty(2 * (sig.shape[0] - 1) + 1)
    fine[0::2] = sig
    fine[1::2] = np.sqrt(sig[:-1] * sig[1:])
    return fine


def _subdivision_level(run: _Run, sig: np.ndarray, key: Array, opts: _Settings) -> dict[str, Any]:
    """Subdivide ``sig`` and search the new points until converged or ``refine_sweeps`` passes.

    Each new point sits between two fixed old ones, so all new points are independent and are
    scored in one call per pass; there is no early stopping. Returns the level's record.
    """
    t_level = time.perf_counter()
    search = CoordinateSearch(run.obj, _subdivide(sig), key, opts.candidates, opts.min_radius)
    n = search.sig.shape[0] - 1
    new = np.arange(1, n, 2)
    done = False
    for p in range(1, opts.refine_sweeps + 1):
        # each interval touches exactly one new point: the sum is the whole KLUB
        with run.scoring(n, p):
            k_now = float(np.sum(search.update(new)))
        run.report(n, p, k_now, search.sig)
        if search.converged(new):
            done = True
            break
    if not done:
        run.warnings.append(
            f"level {n}: not all new points converged within refine_sweeps={opts.refine_sweeps}"
        )
    run.count(search)
    stop_reason = "converged" if done else "refine_sweeps"
    return run.record(n, p, stop_reason, k_now, search.sig, t_level)


# --------------------------------------------------------------------------------------
# Step 5: log-linear interpolation to the requested number of points; the result
# --------------------------------------------------------------------------------------


def _interpolate(run: _Run, sig: np.ndarray, num_points: int) -> np.ndarray:
    """Model times of ``num_points`` points, piecewise linear in ``log sigma`` against the
    normalised step position (the last level's schedule itself when the sizes agree)."""
    if num_points == sig.shape[0]:
        sig_out = sig
    else:
        with jax.enable_x64(True):
            sig_out = np.asarray(schedules.loglinear_interp(jnp.asarray(sig), num_points))
    t_out = run.times(sig_out)
    return np.asarray(check_schedule(t_out, run.noise, name="optimised schedule"), np.float64)


def _result(
    run: _Run,
    t_out: np.ndarray,
    objective: float,
    first: _FirstLevel,
    levels: list[dict[str, Any]],
    opts: _Settings,
    *,
    init: Any,
    init_name: str,
    validation_name: str | None,
    solver_name: str,
    nfe: int,
) -> OptimizeResult:
    """The :class:`OptimizeResult` with ``info``, ``options`` and ``params`` of the run."""
    obj = run.obj
    info = dict(
        stop_reason=first.stop_reason,
        sweeps=first.sweeps,
        best_sweep=first.best_sweep,
        klub_history=first.klub_history,
        validation_history=first.validation_history,
        levels=levels,
        candidate_evaluations=run.candidate_evals,
        network_evaluations=run.network_evals,
        timings=dict(
            total_s=time.perf_counter() - run.t_begin, levels_s=[lv["seconds"] for lv in levels]
        ),
    )
    options = dict(
        num_samples=obj.num_samples,
        init=init,
        candidates=opts.candidates,
        max_sweeps=opts.max_sweeps,
        rel_tol=opts.rel_tol,
        validation=validation_name,
        patience=opts.patience,
        subdivide=opts.rounds,
        refine_sweeps=opts.refine_sweeps,
        min_radius=opts.min_radius,
        c=obj.c,
        batch_size=obj.batch_size,
    )
    base_steps = levels[0]["steps"]
    params = dict(c=obj.c, num_samples=obj.num_samples, init=init_name, base_steps=base_steps)
    return OptimizeResult.from_t(
        t_out,
        run.noise,
        objective=objective,
        penalty=None,
        method="ays",
        solver=solver_name,
        nfe=nfe,
        params=params,
        info=info,
        warnings=tuple(run.warnings),
        options=options,
    )


@dataclasses.dataclass(frozen=True)
class AYSOptions:
    """The options of ``method="ays"`` (see :func:`optimize_ays`; ``key=None``: made from the
    seed)."""

    key: Any = None
    data: Any = None
    num_samples: int | None = None
    init: Any = None
    candidates: int = 11
    max_sweeps: int = 20
    rel_tol: float | None = 1e-2
    validation: Any = None
    patience: int = 2
    subdivide: bool | int = True
    refine_sweeps: int = 12
    min_radius: float = 1.0 / 32.0
    c: float = 0.5
    shape: tuple[int, ...] | None = None
    batch_size: int | None = None
    mesh: Any = None
    progress: bool = True
    callback: Any = None


def _run(problem, nfe: int, solver, options: AYSOptions, seed: int) -> OptimizeResult:
    problem.starts_at_t_max("ays")
    opts = given_options(options)
    key = opts.pop("key", None)
    key = jax.random.key(seed) if key is None else key
    return optimize_ays(
        problem.model, nfe, solver=solver, key=key, **problem.conventions(), **opts
    )


register(
    Method(
        "ays",
        needs_model=True,
        options=AYSOptions,
        run=_run,
        summary="Align Your Steps: coordinate search on a Monte-Carlo KL upper bound "
        "(ICML 2024); needs data samples",
        inputs=("data",),
    )
)
