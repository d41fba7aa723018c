r"""Reference (teacher) solutions of the probability-flow ODE by a tight adaptive diffrax solve.

Formulation. For any noise process ``x_t = alpha_t x0 + sigma_t eps`` with half log-SNR
``lam = log(alpha / sigma)``, the probability-flow ODE written with the data prediction
``D(x, t) = E[x0 | x_t = x]`` is

.. math::

    \frac{dx}{dt} = \frac{\sigma'_t}{\sigma_t} x + \frac{d\lambda}{dt}\, \alpha_t\, D(x, t)

(from ``dx/dt = f x - g^2 / 2 * score`` with ``f = (log alpha)'``,
``g^2 = (sigma^2)' - 2 f sigma^2`` and ``score = -(x - alpha D) / sigma^2``). The linear part
is removed exactly by the change of variables ``y = x / sigma``; since
``alpha / sigma = e^lam``, changing time to ``lam`` gives

.. math::

    \frac{dy}{d\lambda} = e^{\lambda}\, D\big(\sigma(t(\lambda))\, y,\; t(\lambda)\big),
    \qquad y = x / \sigma,

equivalently ``x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lam_s}^{lam_t} e^lam D dlam``
(the variation-of-constants formula behind DDIM and DPM-Solver++). This is the ODE solved here,
forward in ``lam`` from ``lam(t_start)`` to ``lam(t_end)``, for every process alike. It is
well conditioned over the whole range: its Jacobian ``alpha * dD/dx`` equals
``alpha^2 s^2 / (alpha^2 s^2 + sigma^2)`` in [0, 1) for Gaussian data of variance ``s^2`` (per
direction), so the equation is never stiff, neither near the noise end (EDM: ``sigma`` up to
80) nor near the data end; ``lam`` spans only 10 to 14 units for the usual processes (EDM
-4.4 to 6.2, rectified flow -6.9 to 6.9); and the state stays O(1) at the noise end
(``y_T = x_T / sigma_T ~ N(0, I)``) and grows smoothly like ``e^lam x0`` towards the data end,
where an error control relative in ``y`` is relative in ``x`` (same ``lam``, same ``sigma``).
In ``x`` and ``t`` instead, EDM's ``dx/dsigma = (x - D) / sigma`` varies over four orders of
magnitude of ``sigma`` and VP processes have ``beta(t)`` factors near ``t = 1``.

**Ends at lam = -inf / +inf** (a flow's t = 1, pure noise, and t = 0, the data). There the
solve starts / stops at ``lam = -/+`` :data:`LAM_END` (40) instead: the omitted part of the
integral is ``|int_{-inf}^{-40} e^lam D dlam| <= e^{-40} max|D|`` (4e-18 of the data scale) at
the noise end, and ``x(t) - x(0) = O(sigma) = O(e^{-40})`` at the data end (the velocity is
finite), both below float64 resolution; the state at such an end is converted with the sigma
of the lam actually reached (at t = 0, sigma = 4e-18 instead of 0).

Steps are chosen by a PID controller (``diffrax.PIDController``) with the max-norm, so every
component of the batch meets ``|err| <= atol + rtol |y|``; the whole batch shares one step
sequence (``jax.vmap`` for independent per-sample steps). Computation runs in float64 when
``jax_enable_x64`` is on, else in float32, where the tolerances default to
``16 * eps ~ 1.9e-6`` (float32 cannot meet tighter ones; explicit tighter values are raised
to that floor with a warning). One program is compiled per network
function, shape, dtype, solver, tolerances and schedule-length bucket (8, 16, 32, ... points:
shorter schedules are padded with their end time), so ``reference_solve`` and the
trajectories of all schedules up to 8 points share it.

References:
  Song et al., "Score-Based Generative Modeling through SDEs" (ICLR 2021), Eq. (13) (PF-ODE);
  Lu et al., "DPM-Solver++" (2022), Eq. (9) (data-prediction exponential integrator);
  Tsitouras, "Runge-Kutta pairs of order 5(4)..." (Comput. Math. Appl. 2011) (Tsit5);
  Kidger, "On Neural Differential Equations" (2021) (diffrax).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .. import _progress, _validate
from ..batch import (
    check_chunk,
    check_conditions,
    resolve_mesh,
    shard_batch,
    shard_model,
    take_conditions,
)
from ..denoiser import Denoiser, check_denoiser
from ..schedules import RANGE_RTOL, check_schedule

__all__ = ["reference_solve", "reference_trajectory", "REFERENCE_SOLVERS"]

Array = Any

# Default tolerance (float64); float32 solves use the dtype's floor instead.
_DEFAULT_TOL = 1e-9

# Names accepted for ``solver`` (any adaptive explicit Runge-Kutta instance of diffrax works too).
REFERENCE_SOLVERS = ("tsit5", "dopri5", "dopri8")


def _make_solver(solver) -> diffrax.AbstractERK:
    if isinstance(solver, str):
        if solver == "tsit5":
            return diffrax.Tsit5()
        if solver == "dopri5":
            return diffrax.Dopri5()
        if solver == "dopri8":
            return diffrax.Dopri8()
        raise ValueError(
            f"solver must be one of {REFERENCE_SOLVERS} or a diffrax adaptive explicit "
            f"Runge-Kutta solver instance, got {solver!r}"
        )
    if isinstance(solver, diffrax.AbstractERK):
        tab = solver.tableau
        if getattr(tab, "b_error", None) is None or not hasattr(tab, "num_stages"):
            raise ValueError(
                f"solver must have an embedded error estimate (adaptive steps), got {solver!r}"
            )
        return solver
    raise TypeError(
        f"solver must be one of {REFERENCE_SOLVERS} or a diffrax adaptive explicit Runge-Kutta "
        f"solver instance (e.g. diffrax.Dopri8()), got {type(solver).__name__}"
    )


def _compute_dtype(x_T) -> np.dtype:
    # float64 under jax_enable_x64, else float32 (low-precision inputs are upcast).
    return jnp.promote_types(jnp.asarray(x_T).dtype, jnp.result_type(float))


def _tolerances(rtol, atol, dtype) -> tuple[float, float]:
    floor = 16.0 * float(jnp.finfo(dtype).eps)  # ~1.9e-6 in float32, ~3.6e-15 in float64
    default = max(_DEFAULT_TOL, floor)
    out = []
    for name, v in (("rtol", rtol), ("atol", atol)):
        if v is None:
            out.append(default)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)):
            raise TypeError(f"{name} must be a positive float or None, got {v!r}")
        if not (math.isfinite(float(v)) and float(v) > 0):
            raise ValueError(f"{name} must be a positive finite float, got {v!r}")
        if float(v) < floor:
            warnings.warn(
                f"reference solve runs in {jnp.dtype(dtype).name}, which cannot meet "
                f"{name}={v:g}: using {name}={floor:g} (enable jax_enable_x64 for tighter "
                "tolerances)",
                stacklevel=3,
            )
        out.append(max(float(v), floor))
    return out[0], out[1]


def _check_common(model, x_T, max_steps):
    check_denoiser(model)
    if not hasattr(x_T, "shape") or not hasattr(x_T, "dtype"):
        raise TypeError(f"x_T must be a floating-point array, got {type(x_T).__name__}")
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise TypeError(f"x_T must be a floating-point array, got dtype {x_T.dtype}")
    if not isinstance(x_T, jax.core.Tracer):
        v = np.asarray(x_T)
        if not np.all(np.isfinite(v)):
            raise ValueError(
                f"x_T must be finite; it has {int(np.size(v) - np.isfinite(v).sum())} NaN/inf "
                "entries"
            )
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if jnp.ndim(x_T) >= 1:
        check_conditions(model, jnp.shape(x_T)[0], "x_T")


def _check_time(name: str, t, noise) -> Array:
    if isinstance(t, jax.core.Tracer):
        if jnp.ndim(t) != 0:
            raise ValueError(f"{name} must be a scalar time, got shape {jnp.shape(t)}")
        return t
    v = np.asarray(t)
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar time, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a real number, got {t!r}")
    v = float(v)
    lo, hi = noise.t_min, noise.t_max
    tol = RANGE_RTOL * max(1.0, abs(hi))
    if not math.isfinite(v) or v < lo - tol or v > hi + tol:
        raise ValueError(
            f"{name} must lie in [t_min, t_max] = [{lo:g}, {hi:g}] of {noise!r}, got {v!r}"
        )
    return t


# |lam| at which a solve starts or stops for an end at lam = -inf / +inf (see module docstring).
LAM_END = 40.0


class _Meter(diffrax.TextProgressMeter):
    """diffrax's progress meter (a report at every 1 % of the solve) with its lines replaced
    by :func:`hso_jax._progress.solve_step`: silent unless someone listens."""

    @staticmethod
    def _init_bar() -> list[float]:
        return [0.0]

    @staticmethod
    def _step_bar(bar: list[float], progress) -> None:
        bar[0] = float(np.asarray(progress))
        _progress.solve_step(bar[0])

    @staticmethod
    def _close_bar(bar: list[float]) -> None:
        _progress.solve_step(1.0)


_METER = _Meter(minimum_increase=0.01)


@functools.partial(jax.jit, static_argnames=("solver", "rtol", "atol", "max_steps"))
def _integrate(model, x_T, ts, solver, rtol, atol, max_steps):
    """States at every time of ``ts`` (decreasing), integrating y = x / sigma in lam."""
    ns = model.noise
    ts = ts.astype(x_T.dtype)
    raw = ns.lam(ts)
    finite = jnp.isfinite(raw)
    lams = jnp.where(finite, raw, jnp.sign(raw) * LAM_END)  # infinite ends: module docstring
    sigmas = jnp.where(finite, ns.sigma(ts), ns.sigma(ns.t_from_lam(lams)))

    def vector_field(lam, y, model):
        t = model.noise.t_from_lam(lam)
        return jnp.exp(lam) * model.x0(model.noise.sigma(t) * y, t)

    controller = diffrax.ClipStepSizeController(
        diffrax.PIDController(rtol=rtol, atol=atol, norm=_max_norm), step_ts=lams
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=lams[0],
        t1=lams[-1],
        # An explicit first step (the controller adapts it at once): no hidden evaluations
        # for an initial step-size estimate, so ``model_evals`` below is exact.
        dt0=0.01 * (lams[-1] - lams[0]),
        y0=x_T / sigmas[0],
        args=model,
        saveat=diffrax.SaveAt(ts=lams),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        progress_meter=_METER,
    )
    ok = sol.result == diffrax.RESULTS.successful
    sig = sigmas.reshape(sigmas.shape + (1,) * x_T.ndim)
    xs = jnp.where(ok, sig * sol.ys, jnp.nan)
    xs = xs.at[0].set(jnp.where(ok, x_T, jnp.nan))  # exact start state, no x / sigma * sigma
    num_steps = sol.stats["num_steps"]
    tab = solver.tableau
    # Evaluations: the first stage of an FSAL method once, then (stages - FSAL) per attempted
    # step (rejected ones included); one guided call counts as one evaluation.
    evals = int(tab.fsal) + (tab.num_stages - int(tab.fsal)) * num_steps
    stats = {
        "num_steps": num_steps,
        "num_accepted": sol.stats["num_accepted_steps"],
        "num_rejected": sol.stats["num_rejected_steps"],
        "model_evals": evals,
        "successful": ok,
    }
    return xs, stats


def _max_norm(y):
    return jnp.max(jnp.abs(y))


def _solve(model, x_T, ts, solver, rtol, atol, max_steps):
    """Pads ``ts`` by repeating its end time to a bucket length (8, 16, 32, ...), so schedules
    of different lengths (and the two-point ``reference_solve``) share one compiled solve."""
    n = ts.shape[0]
    m = max(8, 1 << (n - 1).bit_length())
    ts = jnp.concatenate([ts, jnp.broadcast_to(ts[-1], (m - n,))])
    xs, stats = _integrate(model, x_T, ts, solver, rtol, atol, max_steps)
    return xs[:n], stats


def _solve_batched(model, x_T, ts, solver, rtol, atol, max_steps, batch_size, mesh):
    """``_solve`` over chunks of ``batch_size`` samples (each with its own condition rows and
    its own adaptive step sequence), each chunk split over ``mesh``; stats summed."""
    batch_size, mesh = check_chunk("batch_size", batch_size), resolve_mesh(mesh)
    if batch_size is None and mesh is None:
        return _solve(model, x_T, ts, solver, rtol, atol, max_steps)
    if x_T.ndim < 1:
        raise ValueError("batch_size / mesh need x_T with a leading sample axis")
    b = x_T.shape[0]
    size = b if batch_size is None else batch_size
    outs, stats = [], []
    for start in range(0, b, size):
        rows = slice(start, min(start + size, b))
        m, x = take_conditions(model, rows), x_T[rows]
        if mesh is not None:
            m, x = shard_model(m, mesh), shard_batch(x, mesh)
        with _progress.part(start / b, rows.stop / b):  # progress over all the chunks
            xs, st = _solve(m, x, ts, solver, rtol, atol, max_steps)
            if not isinstance(xs, jax.core.Tracer):
                jax.block_until_ready(xs)
        outs.append(xs)
        stats.append(st)
    merged = {k: sum(st[k] for st in stats) for k in stats[0] if k != "successful"}
    merged["successful"] = jnp.all(jnp.stack([st["successful"] for st in stats]))
    return jnp.concatenate(outs, axis=1), merged


def _finish(xs, stats, what, max_steps, rtol, atol):
    leaves = jax.tree_util.tree_leaves((xs, stats))
    if not any(isinstance(v, jax.core.Tracer) for v in leaves):
        if not bool(np.all(np.asarray(stats["successful"]))):
            raise RuntimeError(
                f"{what} did not reach the end time within max_steps={max_steps} steps at "
                f"rtol={rtol:g}, atol={atol:g}; raise max_steps, loosen the tolerances or use "
                "solver='dopri8' (or the model returns NaN/inf)"
            )
    stats = dict(stats, rtol=rtol, atol=atol)
    return stats


def reference_trajectory(
    model: Denoiser,
    x_T: Array,
    ts: Array,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    solver: str | diffrax.AbstractERK = "tsit5",
    max_steps: int = 16_384,
    return_stats: bool = False,
    batch_size: int | None = None,
    mesh: Any = None,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> Array | tuple[Array, dict]:
    r"""Exact probability-flow ODE states at every time of a schedule ``ts``.

    Solves ``dy/dlam = e^lam D(sigma y, t(lam))`` with ``y = x / sigma`` (see the module
    docstring for the derivation) from ``lam(ts[0])`` to ``lam(ts[-1])`` in one adaptive solve
    whose steps are clipped to land exactly on every ``lam(ts[k])``, so each saved state is a
    step end point (no dense-output interpolation error), then maps back ``x = sigma y``.
    Used for teacher trajectories and for the error of a sampler at every schedule point.

    Args:
      model: the :class:`~hso_jax.Denoiser` whose PF-ODE is solved.
      x_T: state at ``ts[0]``, any shape the model accepts (a batch is solved jointly).
      ts: strictly decreasing model times inside ``[noise.t_min, noise.t_max]``, >= 2 points.
      rtol, atol: local error tolerances on ``y`` (max-norm over all components); default
        1e-9 in float64 and ``16 eps ~ 1.9e-6`` in float32 (tighter values are raised to that
        floor with a warning).
      solver: ``"tsit5"`` (default), ``"dopri5"``, ``"dopri8"`` or a diffrax adaptive explicit
        Runge-Kutta instance.
      max_steps: limit on attempted steps; exceeding it raises ``RuntimeError`` (eager) or
        returns NaN (under ``jit`` / ``vmap``).
      return_stats: also return the solver statistics.
      batch_size, mesh, callback: see :func:`reference_solve`.

    Returns:
      ``xs`` of shape ``(len(ts), *x_T.shape)`` with ``xs[0] = x_T`` and ``xs[k]`` the ODE state
      at ``ts[k]``, in float64 when ``jax_enable_x64`` is on (else float32); with
      ``return_stats`` also a dict: ``num_steps`` (attempted), ``num_accepted``,
      ``num_rejected``, ``model_evals`` (network evaluations), ``successful``, and the
      effective ``rtol`` / ``atol``.

    Raises:
      TypeError / ValueError for a non-Denoiser model, a non-float or non-finite ``x_T``, an
      invalid schedule or tolerances; RuntimeError when the solve fails (eager calls).
    """
    _check_common(model, x_T, max_steps)
    ts = check_schedule(ts, model.noise, name="ts")
    dtype = _compute_dtype(x_T)
    rtol, atol = _tolerances(rtol, atol, dtype)
    opts = (rtol, atol, int(max_steps), batch_size, mesh)
    report = _progress.as_fraction_callback(_validate.callback(callback), "solved")
    with _progress.listening(report):
        xs, stats = _solve_batched(model, jnp.asarray(x_T, dtype), ts, _make_solver(solver), *opts)
        stats = _finish(xs, stats, "reference_trajectory", max_steps, rtol, atol)
    return (xs, stats) if return_stats else xs


def reference_solve(
    model: Denoiser,
    x_T: Array,
    t_start: float | Array,
    t_end: float | Array,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    solver: str | diffrax.AbstractERK = "tsit5",
    max_steps: int = 16_384,
    return_stats: bool = False,
    batch_size: int | None = None,
    mesh: Any = None,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> Array | tuple[Array, dict]:
    r"""Tight adaptive solution of the probability-flow ODE from ``t_start`` to ``t_end``.

    Integrates, in the half log-SNR ``lam = log(alpha / sigma)`` and the scaled state
    ``y = x / sigma``,

    .. math::

        \frac{dy}{d\lambda} = e^{\lambda} D\big(\sigma(t(\lambda))\, y, t(\lambda)\big),
        \quad \lambda: \lambda(t_{start}) \to \lambda(t_{end}),

    which is the PF-ODE ``x_t = (sigma_t / sigma_s) x_s + sigma_t int e^lam D dlam`` of any
    noise process (VP discrete / continuous, EDM, rectified flow) with its linear part removed
    exactly (derivation and conditioning in the module docstring). Adaptive steps (PID
    controller, max-norm, diffrax), compiled once per network function, vmappable over ``x_T``
    and the end times.

    Args:
      model: the :class:`~hso_jax.Denoiser`.
      x_T: state at ``t_start`` (any shape the model accepts; a batch is solved jointly).
      t_start, t_end: model times with ``t_start > t_end``, both in ``[t_min, t_max]`` of
        ``model.noise`` (up to the rounding tolerance of
        :func:`hso_jax.schedules.check_schedule`).
      rtol, atol: local error tolerances on ``y``; default 1e-9 in float64 and
        ``16 eps ~ 1.9e-6`` in float32 (tighter values are raised to that floor with a
        warning).
      solver: ``"tsit5"`` (default), ``"dopri5"``, ``"dopri8"`` or a diffrax adaptive explicit
        Runge-Kutta instance.
      max_steps: limit on attempted steps (``RuntimeError`` beyond it in eager calls, NaN
        under ``jit`` / ``vmap``).
      return_stats: also return a dict with ``num_steps``, ``num_accepted``, ``num_rejected``,
        ``model_evals``, ``successful``, ``rtol``, ``atol``.
      batch_size: solve the samples in chunks of this many (default: all at once), each chunk
        with its own condition rows (:mod:`hso_jax.batch`) and its own step sequence, so the
        memory of one solve is that of one chunk; results agree with the joint solve within
        the tolerances (not bit for bit: the step sequences differ). Stats are summed.
      mesh: ``None``, ``"auto"`` or a Mesh with a ``"batch"`` axis: each chunk (its samples and
        condition rows) is split over the devices (chunk size divisible by their number).
      callback: progress while the solve runs: called with ``{"solved": f, "elapsed": s}``,
        ``f`` the fraction done (of the log-SNR range, over all chunks), at about every 1 %,
        from inside the compiled solve (eager calls only).

    Returns:
      The state at ``t_end``, shape of ``x_T``, float64 when ``jax_enable_x64`` is on (else
      float32); with ``return_stats`` the pair ``(x, stats)``.

    Raises:
      TypeError / ValueError naming the bad argument (model, x_T, t_start, t_end, rtol, atol,
      solver, max_steps); RuntimeError if the solve fails (eager calls).

    Example:
      >>> ns = hso_jax.noise.preset("edm")
      >>> model = hso_jax.models.GaussianMixture([[0.0, 1.0]], 0.5).denoiser(ns)
      >>> x = reference_solve(model, 80.0 * jax.random.normal(key, (4, 2)), 80.0, 0.002)
    """
    _check_common(model, x_T, max_steps)
    ns = model.noise
    t_start = _check_time("t_start", t_start, ns)
    t_end = _check_time("t_end", t_end, ns)
    if not isinstance(t_start, jax.core.Tracer) and not isinstance(t_end, jax.core.Tracer):
        if not float(t_start) > float(t_end):
            raise ValueError(
                f"t_start must be greater than t_end (the PF-ODE runs from noise to data), got "
                f"t_start={float(t_start)!r}, t_end={float(t_end)!r}"
            )
    dtype = _compute_dtype(x_T)
    rtol, atol = _tolerances(rtol, atol, dtype)
    ts = jnp.stack([jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype)])
    opts = (rtol, atol, int(max_steps), batch_size, mesh)
    report = _progress.as_fraction_callback(_validate.callback(callback), "solved")
    with _progress.listening(report):
        xs, stats = _solve_batched(model, jnp.asarray(x_T, dtype), ts, _make_solver(solver), *opts)
        stats = _finish(xs, stats, "reference_solve", max_steps, rtol, atol)
    return (xs[-1], stats) if return_stats else xs[-1]
