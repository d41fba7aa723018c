"""The sampling driver: one ``lax.scan`` over the schedule, for every solver.

``sample(model, x_T, ts, solver)`` integrates from ``ts[0]`` to ``ts[-1]``; with ``n = len(ts) - 1``
steps it spends ``solver.nfe(n)`` network evaluations, plus one with ``denoise_final=True``
(which returns the data prediction D(x, ts[-1]) -- the "end at sigma = 0" convention of
diffusers / ComfyUI, whose last step jumps to x0).

``model`` is a :class:`~hso_jax.Denoiser` or a plain network ``fn(x, t_in)`` with
``noise=`` (preset name or NoiseSchedule), ``prediction=`` (default ``"eps"``) and
``time_input=`` (default ``"auto"``), exactly as :class:`~hso_jax.Denoiser` takes them.

Everything is a pure function of ``ts``: ``jax.jit``, ``jax.vmap`` over a batch of equal-length
schedules and ``jax.grad`` w.r.t. ``ts`` all work. Validation runs eagerly on concrete inputs
and is skipped for traced ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _progress
from .._validate import callback as _check_callback
from ..batch import check_conditions
from ..denoiser import Denoiser, OutputShapeError, as_denoiser, check_denoiser
from ..noise import DATA_END
from ..schedules import check_schedule
from .base import Solver

__all__ = ["sample", "sample_trajectory", "Trajectory", "check_model_input"]

Array = Any


class Trajectory(NamedTuple):
    """Every state of one sampling run.

    Attributes:
      t: (n + 1,) the schedule.
      x: (n + 1, *x_T.shape) states, x[0] = x_T, x[-1] = final state (before ``denoise_final``).
      x0: (n, *x_T.shape) data prediction at t[i] used by step i.
      final: the returned sample (x[-1], or D(x[-1], t[-1]) with ``denoise_final``).
    """

    t: Array
    x: Array
    x0: Array
    final: Array


def _validate(model, x_T, ts, solver, key, nfe, denoise_final):
    check_denoiser(model)
    if not isinstance(solver, Solver):
        raise TypeError(
            f"solver must be a hso_jax solver (e.g. hso_jax.solvers.ddim()), got {solver!r}"
        )
    if not hasattr(x_T, "shape") or not jnp.issubdtype(jnp.asarray(x_T).dtype, jnp.floating):
        raise TypeError("x_T must be a floating-point array")
    if jnp.ndim(x_T) >= 1:
        check_conditions(model, jnp.shape(x_T)[0], "x_T")
    ts = check_schedule(ts, model.noise)
    if _is_concrete(ts):
        solver.check_ends(model.noise, ts)
    if solver.stochastic and key is None:
        raise ValueError(f"{type(solver).__name__} is stochastic: pass key=jax.random.key(...)")
    if nfe is not None:
        to_data = _is_concrete(ts) and float(ts[-1]) == DATA_END
        expected = solver.num_points(nfe, to_data)  # validates nfe
        if denoise_final:
            expected = solver.num_points(nfe - 1) if nfe - 1 >= solver.calls_per_step else -1
        if ts.shape[0] != expected:
            raise ValueError(
                f"ts has {ts.shape[0]} points, but {type(solver).__name__} with nfe={nfe}"
                f"{' and denoise_final' if denoise_final else ''} needs {expected} points"
            )
    return ts


def check_model_input(model: Denoiser, x: Array, t: Array, name: str = "x_T") -> None:
    """Raise ``ValueError`` naming ``name`` if ``model`` cannot map a state of ``x``'s shape.

    Traces ``model.x0(x, t)`` abstractly (``jax.eval_shape``: no network evaluation, no
    compilation) and checks that it accepts ``x`` and returns a prediction of the same shape,
    so that a wrongly shaped batch gets one clear error instead of a broadcasting error from
    inside the solver.
    """
    spec = jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
    t_spec = jax.ShapeDtypeStruct((), jnp.result_type(x))
    try:
        out = jax.eval_shape(model.x0, spec, t_spec)
    except OutputShapeError:
        raise  # the network's output is at fault, not the input
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} has shape {tuple(spec.shape)}, which the model does not accept: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from e
    if tuple(out.shape) != tuple(spec.shape):
        raise ValueError(
            f"{name} has shape {tuple(spec.shape)}, but the model maps it to a prediction of "
            f"shape {tuple(out.shape)}; {name} must be a batch of states of the model's sample "
            "shape, (B, *sample_shape)"
        )


def _check_unroll(unroll) -> int | bool | None:
    if unroll is None or isinstance(unroll, bool):
        return unroll
    if isinstance(unroll, (int, np.integer)) and unroll >= 1:
        return int(unroll)
    raise ValueError(f"unroll must be None, a bool or an integer >= 1, got {unroll!r}")


AUTO_UNROLL_MAX = 64
"""``unroll=None`` differentiates schedules of up to this many steps through the unrolled
scan (longer ones through the rolled one: compile time grows with every unrolled step)."""


def _run_auto(model, x_T, ts, solver, key, denoise_final, keep, remat=False, report=False):
    """``_run`` rolled when evaluated, fully unrolled when differentiated (any mode, up to
    :data:`AUTO_UNROLL_MAX` steps).

    On CPU, reverse mode through the rolled scan costs about 10x the forward pass, through
    the unrolled one under 3x (``benchmarks/bench_solvers.py``); the unrolled forward pass only
    compiles longer. The switch is a ``custom_jvp`` whose rule is the JVP of the unrolled run,
    so forward and reverse mode, ``vmap`` and higher derivatives all see the same function.
    """
    if ts.shape[0] - 1 > AUTO_UNROLL_MAX:
        return _run(model, x_T, ts, solver, key, denoise_final, keep, 1, remat, report)
    return _rolled_or_unrolled(model, x_T, ts, key, solver, denoise_final, keep, remat, report)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6, 7, 8))
def _rolled_or_unrolled(model, x_T, ts, key, solver, denoise_final, keep, remat, report):
    return _run(model, x_T, ts, solver, key, denoise_final, keep, 1, remat, report)


@_rolled_or_unrolled.defjvp
def _unrolled_jvp(solver, denoise_final, keep, remat, report, primals, tangents):
    def unrolled(model, x_T, ts, key):
        return _run(model, x_T, ts, solver, key, denoise_final, keep, True, remat, report)

    return jax.jvp(unrolled, primals, tangents)


@functools.partial(
    jax.jit, static_argnames=("solver", "denoise_final", "keep", "unroll", "remat", "report")
)
def _run(model, x_T, ts, solver, key, denoise_final, keep, unroll=1, remat=False, report=False):
    ts = ts.astype(x_T.dtype)
    n = ts.shape[0] - 1
    keys = None if key is None else jax.random.split(key, n)
    state = solver.init(model, x_T, ts)

    def body(carry, inp):
        x, state = carry
        i, t_cur, t_next, k = inp
        x_next, state, x0 = solver.step(model, x, state, t_cur, t_next, i, n, k)
        if report:  # the fraction of steps done, to hso_jax._progress's listener
            # (x_next's first entry as an argument: the call waits for the step)
            jax.debug.callback(lambda f, _: _progress.solve_step(f), (i + 1) / n, x_next.ravel()[0])
        return (x_next, state), ((x_next, x0) if keep else None)

    if remat:
        # Reverse mode keeps only each step's input (x, solver state) and recomputes the
        # step's network activations on the way back.
        body = jax.checkpoint(body)
    (x, _), hist = jax.lax.scan(
        body, (x_T, state), (jnp.arange(n), ts[:-1], ts[1:], keys), unroll=unroll
    )
    final = model.x0(x, ts[-1]) if denoise_final else x
    if not keep:
        return final
    xs, x0s = hist
    return Trajectory(ts, jnp.concatenate([x_T[None], xs]), x0s, final)


def _is_concrete(tree) -> bool:
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(tree))


def _all_finite(v) -> bool:
    return bool(np.all(np.isfinite(np.asarray(v))))


def _locate_nonfinite(traj: Trajectory) -> str:
    """Where a trajectory first goes non-finite, in words (eager, on concrete arrays)."""
    t = np.asarray(traj.t, np.float64)
    xs, x0s = np.asarray(traj.x), np.asarray(traj.x0)
    if not _all_finite(xs[0]):
        return "x_T itself contains NaN or inf"
    for k in range(x0s.shape[0]):
        if not _all_finite(x0s[k]):
            return (
                f"the model returned NaN/inf at step {k} (t = {t[k]:.6g}) on a finite input "
                f"state: the data prediction D(x, t[{k}]) is not finite"
            )
        if not _all_finite(xs[k + 1]):
            return (
                f"the state became non-finite at step {k} (t = {t[k]:.6g} -> {t[k + 1]:.6g}) "
                "although the data prediction at t[k] was finite (an intermediate network call "
                "or the update itself overflowed)"
            )
    return "the final data prediction (denoise_final) is not finite"


def _check_finite(out, what, locate=None):
    """Raise ``FloatingPointError`` if the (concrete) output has NaN / inf.

    ``locate``: a callable returning the :class:`Trajectory` of the same run, used to name the
    first bad step (run only on failure, so the happy path costs nothing).
    """
    if not _is_concrete(out):
        return
    if all(_all_finite(v) for v in jax.tree_util.tree_leaves(out)):
        return
    where = ""
    if locate is not None:
        traj = locate()
        where = ": " + _locate_nonfinite(traj)
    raise FloatingPointError(f"{what} produced NaN or inf values{where}")


def sample(
    model: Denoiser | Callable,
    x_T: Array,
    ts: Array,
    solver: Solver,
    key: Array | None = None,
    *,
    nfe: int | None = None,
    denoise_final: bool = False,
    check_finite: bool = True,
    unroll: int | bool | None = None,
    remat: bool = False,
    callback: Callable[[dict], None] | None = None,
    noise: Any = None,
    prediction: str | None = None,
    time_input: str | Callable | None = None,
) -> Array:
    """Sample from ``model`` along the schedule ``ts`` with ``solver``.

    Args:
      model: a :class:`~hso_jax.Denoiser`, or a plain network callable ``fn(x, t_in)`` together
        with ``noise=`` (e.g. ``sample(fn, x_T, ts, solver, noise="sd21")``).
      x_T: initial noise at ``ts[0]`` (e.g. ``model.noise.prior(key, shape)``). A model with
        per-sample conditions needs one condition row per sample of ``x_T`` (see
        :mod:`hso_jax.batch`; a mismatch raises ``ValueError``).
      ts: strictly decreasing model times, ``len(ts) = n + 1`` for n steps.
      solver: a solver object, e.g. ``hso_jax.solvers.dpm_solver_pp(order=2)``.
      key: PRNG key, required by stochastic solvers.
      nfe: if given, checks that ``ts`` spends exactly this many network evaluations.
      denoise_final: return D(x, ts[-1]) after the last step (one more network evaluation).
      check_finite: raise ``FloatingPointError`` if the result contains NaN / inf (default on;
        eager calls only: under ``jit`` / ``grad`` / ``vmap`` the check is skipped). The
        message names the first bad step and whether the model or the update produced it
        (found by re-running the schedule with :func:`sample_trajectory`, on failure only).
        The check costs one host copy of the result (about 10 us for 64 x 28 x 28 floats);
        ``False`` returns non-finite results as they are.
      unroll: unrolling of the ``lax.scan`` over the steps. ``None`` (default): rolled when
        the call is evaluated, fully unrolled when it is differentiated (w.r.t. ``ts``,
        ``x_T`` or the model; schedules of up to :data:`AUTO_UNROLL_MAX` steps): a gradient
        then costs under 3x the forward pass instead of about 10x (MNIST UNet, CPU;
        ``benchmarks/bench_solvers.py``), for more compile time (one copy of the step per
        step). An integer or ``True`` fixes the unrolling whatever happens. The result is the
        same either way.
      remat: rematerialise each step under reverse-mode differentiation (``jax.checkpoint``
        of the step): a gradient w.r.t. ``ts`` then stores one state per step instead of every
        network activation of every step, and recomputes one step's forward pass on the way
        back (about one more network call per step). The result is the same.
      callback: ``callback({"solved": fraction of the steps done, "elapsed": seconds})``,
        called from inside the compiled run after every step while this call runs (eager
        calls; it waits for each step, and the program carries one host callback per step).
      noise: only with a callable ``model`` (required then): the noise process it was trained
        under, a preset name (:func:`hso_jax.noise.preset`) or a NoiseSchedule.
      prediction: only with a callable ``model``: what it returns, ``"eps"`` (default), ``"x0"``,
        ``"v"``, ``"flow"`` or ``"score"``.
      time_input: only with a callable ``model``: what it receives as time (default ``"auto"``:
        the continuous step index for discrete-time processes, ``t`` otherwise; see
        :class:`~hso_jax.Denoiser`).

    Returns:
      The sample at ``ts[-1]`` (or its data prediction), same shape and dtype as ``x_T``.
    """
    model = as_denoiser(
        model,
        noise=noise,
        prediction=prediction,
        time_input=time_input,
        example="hso_jax.sample(model_fn, x_T, ts, solver, noise='sd21')",
    )
    ts = _validate(model, x_T, ts, solver, key, nfe, denoise_final)
    unroll = _check_unroll(unroll)
    if not isinstance(remat, bool):
        raise TypeError(f"remat must be a bool, got {remat!r}")
    report = _check_callback(callback) is not None
    try:
        with _progress.listening(_progress.as_fraction_callback(callback, "solved")):
            if unroll is None:
                out = _run_auto(
                    model, x_T, ts, solver, key, bool(denoise_final), False, remat, report
                )
            else:
                out = _run(
                    model, x_T, ts, solver, key, bool(denoise_final), False, unroll, remat, report
                )
    except (TypeError, ValueError) as e:
        check_model_input(model, x_T, ts[0])  # names x_T if its shape is what failed
        raise e
    if check_finite:
        _check_finite(
            out,
            f"sample with {type(solver).__name__}",
            lambda: _run(model, x_T, ts, solver, key, bool(denoise_final), True),
        )
    return out


def sample_trajectory(
    model: Denoiser | Callable,
    x_T: Array,
    ts: Array,
    solver: Solver,
    key: Array | None = None,
    *,
    denoise_final: bool = False,
    check_finite: bool = True,
    callback: Callable[[dict], None] | None = None,
    noise: Any = None,
    prediction: str | None = None,
    time_input: str | Callable | None = None,
) -> Trajectory:
    """Like :func:`sample` but returns every intermediate state and data prediction (a callable
    ``model`` takes ``noise=``, ``prediction=``, ``time_input=``, and ``callback`` reports the
    steps, as there)."""
    model = as_denoiser(
        model,
        noise=noise,
        prediction=prediction,
        time_input=time_input,
        example="hso_jax.sample_trajectory(model_fn, x_T, ts, solver, noise='sd21')",
    )
    ts = _validate(model, x_T, ts, solver, key, None, denoise_final)
    report = _check_callback(callback) is not None
    try:
        with _progress.listening(_progress.as_fraction_callback(callback, "solved")):
            out = _run_auto(model, x_T, ts, solver, key, bool(denoise_final), True, False, report)
    except (TypeError, ValueError) as e:
        check_model_input(model, x_T, ts[0])
        raise e
    if check_finite:
        _check_finite(out, f"sample_trajectory with {type(solver).__name__}", lambda: out)
    return out
