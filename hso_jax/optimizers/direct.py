r"""Direct schedule optimisation: gradient descent on the sample error, through the solver.

Every solver here is a pure, differentiable function of its schedule, so the quantity users
care about -- the error of the sampler's output against the exact PF-ODE solution from the
same initial noise -- can be minimised directly:

    L(z) = (1/B) sum_b RMSE( sample(x_T^b; ts(z)), x_ref^b ),
    ts(z) = t(lam(z)),   lam(z) = lam_start + cumsum( (lam_end - lam_start) softmax(z) ),

with ``x_ref^b`` the tight reference solution from ``x_T^b`` (at the process's ``t_max``) to
the process's ``t_min`` -- the target of :mod:`hso_jax.evaluation.grid`, so the loss *is* the
benchmark's metric, and a schedule that stops early is charged for it. The ``N`` logits ``z``
(one per interval) give a strictly decreasing schedule with fixed end points by construction
(:func:`hso_jax.optimizers.refine.lam_from_logits`); no sorting or clipping. On a range whose
ends have an infinite log-SNR (a flow model's whole ``[0, 1]``, from pure noise to the data,
as its pipelines run) the softmax increments are of ``t`` instead, and the pipelines' own
schedules (``default``, ``beta``) are among the initial candidates.

The end is a runtime's (``end=``, :data:`hso_jax.schedules.ENDS`): ``"t_min"`` (the last step
lands on ``t_min``) or ``"zero"`` (it lands on the data and returns the data prediction, as
diffusers' ``final_sigmas_type="zero"``; the loss then compares with the reference passed
through the same last step). With ``grid="steps"`` the result is moved onto the training steps
of a discrete model (a runtime passing integer timesteps) and its held-out error re-measured.

Algorithm. Adam (``optax.scale_by_adam``) with a cosine-decayed learning rate on ``z``; the
gradient is exact (reverse mode through every network call of the solver). The noises are
split into a training batch (gradients) and a held-out batch (early stopping): the held-out
loss of every iterate is computed in the same compiled step, the best iterate on the held-out
batch is returned and the run stops after ``patience`` iterations without a held-out
improvement. Both losses are reported. The initial schedule is the best, on the training
batch, of the candidates given (default: time-uniform, logSNR-uniform and Karras rho = 7;
any schedule or :class:`~hso_jax.optimizers.OptimizeResult`, e.g. HSO or AYS, warm-starts it),
so the held-out error never ends above that of the initialisation.

Cost per iteration: one forward and one reverse pass of the solver on the training batch
(about 3x the network calls of sampling it) plus one forward pass on the held-out batch.
Without rematerialisation the reverse pass stores every network activation of the forward pass
(memory grows linearly with NFE and batch; see ``benchmarks/bench_direct.py``); with
``remat=True`` (``jax.checkpoint`` of each solver step, the default for samples of 4096 values
or more, e.g. Stable Diffusion latents) it stores one state per step and recomputes each step's
network calls on the way back (about one more forward pass; the result is the same; XLA's
memory analysis for an SD-sized network in ``benchmarks/bench_sd_memory.py``). One compilation
per (model, solver, number of points, batch shapes).

Conditions and devices. With per-sample conditions (:mod:`hso_jax.batch`; e.g. a batch of
prompt embeddings, one per noise) every noise is solved under its own condition, in the
reference solve and in the loss: the training / held-out split by ``val_fraction`` takes the
conditions' rows with the noises' rows (the last rows are held out, so order the batch so that
they hold the prompts to validate on), and an explicit ``x_T_val`` comes with ``cond_val`` /
``uncond_val``. The loss averages over all noises and conditions: one schedule for the model,
not one per prompt. With ``mesh`` the noises, references and condition rows of both batches
are split over the devices along the sample axis; the result equals the single-device one up
to round-off.

Reference: Tong et al., "Learning to Discretize Denoising Diffusion ODEs" (LD3, ICLR 2025),
which learns the time steps of a fixed solver against teacher samples; here the teacher is the
exact ODE solution and the loss is the evaluation RMSE.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _validate, schedules
from ..batch import (
    check_chunk,
    check_conditions,
    condition_batch,
    resolve_mesh,
    shard_batch,
    shard_model,
    take_conditions,
)
from ..denoiser import Denoiser
from ..noise import DATA_END
from ..schedules import check_schedule
from ..solvers import sample
from ..solvers.driver import check_model_input
from ._ends import lam_is_finite
from .base import Method, given_options, register
from .model_inputs import check_model, check_noise_batch, fixed_end, resolve_solver
from .refine import lam_from_logits, logits_from_lam
from .result import OptimizeResult

__all__ = ["optimize_direct", "direct_loss", "schedule_loss", "BASELINE_INITS", "FLOW_INITS"]

Array = Any

BASELINE_INITS = ("time", "logsnr", "karras")
"""The default initial candidates (``init="best"``) where the log-SNR of both ends is finite;
on a flow model's whole range [0, 1] they are :data:`FLOW_INITS`."""
FLOW_INITS = ("time", "default", "beta")
COORDINATES = ("lam", "t")
_ADAM = optax.scale_by_adam()


def _schedule(z, ends, noise, coordinate="lam"):
    """Strictly decreasing times with exact end points from the logits ``z``: softmax
    increments of ``lam`` between the ends, or of ``t`` where an end has an infinite ``lam``
    (a flow model's t = 1 and t = 0)."""
    if coordinate == "lam":
        t = noise.t_from_lam(lam_from_logits(z, ends[0], ends[1]))
    else:
        t = -lam_from_logits(z, -ends[2], -ends[3])  # -t increases
    return t.at[0].set(ends[2]).at[-1].set(ends[3])


def direct_loss(
    z, model: Denoiser, solver, x_T, reference, ends, unroll=True, remat=False, coordinate="lam"
) -> Array:
    """Mean per-sample RMSE of ``solver`` on the schedule of logits ``z``.

    ``ends = (lam_start, lam_end, t_start, t_end)``. Pure: jit, grad and vmap apply.
    ``unroll``: of the solver's step loop (:func:`~hso_jax.sample`); unrolled, the gradient is
    several times faster on CPU (``benchmarks/bench_direct.py``). ``remat``:
    rematerialise each solver step in the gradient (``jax.checkpoint``; same value).
    ``coordinate``: ``"lam"`` (the logits space the log-SNR) or ``"t"`` (model time, for a
    range whose ends have infinite log-SNR).
    """
    ts = _schedule(z, ends, model.noise, coordinate)
    return schedule_loss(ts, model, solver, x_T, reference, unroll, remat)


def schedule_loss(ts, model: Denoiser, solver, x_T, reference, unroll=1, remat=False) -> Array:
    """Mean per-sample RMSE of ``solver``'s samples on the schedule ``ts`` to ``reference``."""
    x = sample(model, x_T, ts, solver, unroll=unroll, remat=remat)
    err = jnp.sqrt(jnp.mean(jnp.square(x - reference).reshape(x.shape[0], -1), axis=1))
    return jnp.mean(err)


def _step(z, state, lr, m_tr, x_tr, r_tr, m_va, x_va, r_va, ends, solver, remat, coordinate):
    loss, g = jax.value_and_grad(direct_loss)(
        z, m_tr, solver, x_tr, r_tr, ends, True, remat, coordinate
    )
    val = direct_loss(z, m_va, solver, x_va, r_va, ends, coordinate=coordinate)
    u, state = _ADAM.update(g, state, z)
    return z - lr * u, state, loss, val, jnp.max(jnp.abs(g))


_STEP = jax.jit(_step, static_argnames=("solver", "remat", "coordinate"))
REMAT_MIN_SIZE = 4096
"""``remat=None`` turns rematerialisation on for samples of at least this many values."""
_LOSS = jax.jit(direct_loss, static_argnames=("solver", "coordinate"))


def _as_times(name, v, noise, num_points) -> np.ndarray:
    if isinstance(v, OptimizeResult):
        v = v.t
    t = np.asarray(check_schedule(v, noise, name=name), np.float64)
    if t.shape[0] != num_points:
        raise ValueError(
            f"{name} has {t.shape[0]} points, but the solver needs {num_points} for this nfe"
        )
    return t


def _candidates(init, noise, num_points, t_start, t_end) -> dict[str, np.ndarray]:
    """Named initial schedules (float64, model times)."""
    if isinstance(init, str):
        finite = lam_is_finite(noise, noise.t_max) and lam_is_finite(noise, noise.t_min)
        names = (BASELINE_INITS if finite else FLOW_INITS) if init == "best" else (init,)
        if init != "best" and init not in schedules.BASELINES:
            raise ValueError(
                f"init must be 'best', a baseline name of hso_jax.schedules.BASELINES "
                f"{sorted(schedules.BASELINES)}, a schedule, an OptimizeResult or a dict of "
                f"them, got {init!r}"
            )
        ts = t_start if t_start is not None else noise.t_max
        te = t_end if t_end is not None else noise.t_min
        out = {}
        with jax.enable_x64(True):
            for n in names:
                fn = schedules.BASELINES[n]
                if "t_start" in inspect.signature(fn).parameters:
                    t = fn(noise, num_points - 1, t_start=ts, t_end=te)
                else:  # a pipeline's schedule over the model's whole range (flow models)
                    t = np.array(fn(noise, num_points - 1), np.float64)
                    t[0] = min(t[0], ts)  # a target's latest start
                out[n] = np.asarray(t, np.float64)
        return out
    if isinstance(init, Mapping):
        if not init:
            raise ValueError("init must not be an empty dict")
        return {str(k): _as_times(f"init[{k!r}]", v, noise, num_points) for k, v in init.items()}
    return {"user": _as_times("init", init, noise, num_points)}


def _split(model, x_T, reference, x_T_val, reference_val, val_fraction, cond_val, uncond_val):
    """Training and held-out batches ``(model, x_T, reference)``, each model carrying the
    condition rows of its noises."""
    check_conditions(model, x_T.shape[0], "x_T")
    if x_T_val is not None:
        changes = {k: v for k, v in (("cond", cond_val), ("uncond", uncond_val)) if v is not None}
        m_va = model.replace(**changes)
        if condition_batch(model) is not None and "cond" not in changes:
            raise ValueError(
                "the model has per-sample conditions (one row per x_T sample): x_T_val needs its "
                "own, pass cond_val= (and uncond_val= for per-sample unconditional rows)"
            )
        check_conditions(m_va, x_T_val.shape[0], "x_T_val")
        return (model, x_T, reference), (m_va, x_T_val, reference_val)
    if cond_val is not None or uncond_val is not None:
        raise ValueError("cond_val / uncond_val are given without x_T_val")
    if reference_val is not None:
        raise ValueError("reference_val is given without x_T_val")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    b = x_T.shape[0]
    n_val = int(round(b * val_fraction))
    if n_val < 1 or n_val > b - 1:
        raise ValueError(
            f"x_T holds {b} samples: val_fraction={val_fraction} leaves no training or no "
            "held-out sample (pass at least 2 samples, or x_T_val)"
        )
    tr, va = slice(0, b - n_val), slice(b - n_val, b)
    ref_tr = None if reference is None else reference[tr]
    ref_va = None if reference is None else reference[va]
    return (take_conditions(model, tr), x_T[tr], ref_tr), (
        take_conditions(model, va),
        x_T[va],
        ref_va,
    )


def _reference(name, ref, model, x, rtol, atol, batch_size, mesh, callback):
    noise = model.noise
    if ref is None:
        from ..reference.solve import reference_solve  # diffrax, imported on use

        def report(d):  # the fraction of this batch's references solved
            callback({name: d["solved"], "elapsed": d["elapsed"]})

        return reference_solve(
            model,
            x,
            noise.t_max,
            noise.t_min,
            rtol=rtol,
            atol=atol,
            batch_size=batch_size,
            mesh=mesh,
            callback=None if callback is None else report,
        ).astype(x.dtype)
    ref = jnp.asarray(ref)
    if ref.shape != x.shape:
        raise ValueError(
            f"{name} must have the shape of its noise batch {x.shape}, got {ref.shape}"
        )
    if not bool(jnp.all(jnp.isfinite(ref))):
        raise ValueError(f"{name} contains NaN or inf")
    return ref.astype(x.dtype)


def optimize_direct(
    model: Denoiser,
    nfe: int,
    *,
    solver: str | Any = "unipc",
    x_T: Array | None = None,
    reference: Array | None = None,
    x_T_val: Array | None = None,
    reference_val: Array | None = None,
    val_fraction: float = 0.5,
    init: str | Array | OptimizeResult | Mapping[str, Any] = "best",
    t_start: float | None = None,
    t_end: float | None = None,
    steps: int = 100,
    learning_rate: float = 0.01,
    patience: int = 25,
    reference_rtol: float = 1e-4,
    reference_atol: float = 1e-4,
    cond_val: Any = None,
    uncond_val: Any = None,
    remat: bool | None = None,
    batch_size: int | None = None,
    mesh: Any = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    end: str | None = None,
    grid: str = "continuous",
    start_max: float | None = None,
) -> OptimizeResult:
    """Optimise a schedule by gradient descent on the held-out sample error (see module doc).

    Args:
      model: the :class:`~hso_jax.Denoiser`.
      nfe: network evaluations of the schedule (``solver.num_points(nfe)`` points).
      solver: a solver object or the name of a factory in :mod:`hso_jax.solvers`.
      x_T: ``(B, ...)`` initial noise at the process's ``t_max``; split into training and
        held-out parts by ``val_fraction`` unless ``x_T_val`` is given.
      reference: exact PF-ODE solutions from ``x_T`` at ``t_min`` (default: computed with
        :func:`~hso_jax.evaluation.reference_solve` at ``reference_rtol`` / ``reference_atol``).
      x_T_val, reference_val: an explicit held-out batch (and its references).
      val_fraction: held-out share of ``x_T`` when ``x_T_val`` is not given (default 0.5).
      init: ``"best"`` (default: the best on the training batch of time-uniform,
        logSNR-uniform and Karras rho = 7), one of those names, a schedule (array or
        :class:`OptimizeResult`, e.g. from HSO or AYS) or a dict of named schedules (the best
        on the training batch is used). The end points of the initial schedule are kept.
        The choice is only as good as the training batch: with 8 MNIST noises it picked a
        candidate that is worse on held-out noise (see README), so pass more noises or name
        the initialisation.
      t_start, t_end: end points of the named baseline initialisations (default ``t_max`` and
        ``t_min`` of the process).
      steps: most Adam iterations (default 100).
      learning_rate: peak learning rate on the logits (cosine decay to 0 over ``steps``).
        Adam moves every logit by about this much per step. The default 0.01 suits trained
        networks (on the shipped MNIST model, NFE 5, UniPC: 0.01 lowered the held-out error by
        14 %, while 0.03 and 0.1 overshoot and end within 6 % of the initialisation); smooth
        problems such as the Gaussian-mixture oracles converge faster with 0.1.
      patience: iterations without a held-out improvement before stopping.
      reference_rtol, reference_atol: tolerances of the reference solves when they are
        computed here.
      cond_val, uncond_val: conditions of ``x_T_val`` (pytrees like the model's ``cond`` /
        ``uncond``, one row per held-out sample or one shared row); required with ``x_T_val``
        when the model has per-sample conditions; default: the model's.
      remat: rematerialise every solver step in the gradient (``jax.checkpoint``): ``True``,
        ``False``, or ``None`` (default: on for samples of at least ``REMAT_MIN_SIZE`` = 4096
        values, where the stored activations dominate memory). Same result either way.
      batch_size: samples per reference solve (default: all at once; see
        :func:`~hso_jax.evaluation.reference_solve`).
      mesh: ``None`` (one device), ``"auto"`` (all devices) or a Mesh with a ``"batch"``
        axis: the training and held-out noises, references and condition rows are split over
        its devices (batch sizes divisible by their number), as is each reference solve.
      callback: called after every iteration with a dict ``iteration``, ``train``, ``val``,
        ``t`` (the iterate's schedule, NumPy), ``elapsed``; before, while the references are
        solved, with ``reference`` (or ``reference_val``): the fraction solved, ``elapsed``.
      end: ``"t_min"`` (default: the last step lands on ``t_min``) or ``"zero"``: it lands on
        the data end ``t = 0`` (a runtime's final sigma of 0) and returns the data prediction,
        in the loss as in the result; the target is then the reference passed through the
        same final step, ``D(reference, t_min)`` (as :func:`~hso_jax.evaluation.evaluate_grid`
        with ``denoise_final``).
      grid: ``"steps"`` (discrete-time models, for runtimes that pass integer timesteps): the
        result's points but the last are moved onto training steps and its held-out error
        re-measured there (``info["grid"]`` keeps the continuous optimum's).
      start_max: the latest start time (default ``t_max``; a runtime's own limit).

    Returns:
      An :class:`OptimizeResult` with ``method="direct"``, ``objective`` the held-out mean RMSE
      of the returned schedule, ``info`` holding ``train_loss`` / ``val_loss`` of the returned
      schedule, their initial values, the histories, ``best_iteration``, ``stop_reason``,
      ``init`` (the chosen candidate and every candidate's training loss) and timings
      (``compile_s``, ``run_s``, ``per_iteration_s``, ``reference_s``) and
      ``step_memory_bytes`` (XLA's memory analysis of one compiled iteration: ``argument``,
      ``output``, ``temp``; ``None`` where the backend gives none), ``remat``, ``devices``
      and ``condition_batch`` (per-sample condition rows, ``None`` when shared or none).

    Raises:
      TypeError / ValueError naming the argument (model, solver, nfe, noise batches,
      references, init, numbers).
    """
    t_begin = time.perf_counter()
    model = check_model(model, "direct")
    noise = model.noise
    solver_obj, solver_name = resolve_solver(solver)
    nfe = _validate.nfe(nfe)
    end = fixed_end(end, "direct")
    grid = _validate.choice("grid", grid, schedules.GRIDS)
    if grid == "steps" and not noise.is_discrete:
        raise ValueError(f"grid='steps' needs a discrete-time model, got {noise!r}")
    num_points = solver_obj.num_points(nfe, to_data=end == "zero")
    if start_max is not None and t_start is None and start_max < noise.t_max:
        t_start = float(start_max)
    steps = _validate.integer("steps", steps, 1)
    patience = _validate.integer("patience", patience, 1)
    learning_rate = _validate.real("learning_rate", learning_rate, 0.0, open_lo=True)
    _validate.callback(callback)
    x_T = check_noise_batch("x_T", x_T, "direct")
    check_model_input(model, x_T, model.noise.t_max)
    if remat is not None and not isinstance(remat, bool):
        raise TypeError(f"remat must be None or a bool, got {remat!r}")
    if remat is None:
        remat = math.prod(x_T.shape[1:]) >= REMAT_MIN_SIZE
    batch_size, mesh = check_chunk("batch_size", batch_size), resolve_mesh(mesh)
    if x_T_val is not None:
        x_T_val = check_noise_batch("x_T_val", x_T_val, "direct")
        if x_T_val.shape[1:] != x_T.shape[1:] or x_T_val.dtype != x_T.dtype:
            raise ValueError(
                f"x_T_val must have x_T's sample shape {x_T.shape[1:]} and dtype {x_T.dtype}, "
                f"got {x_T_val.shape[1:]} and {x_T_val.dtype}"
            )
    (m_tr, x_tr, r_tr), (m_va, x_va, r_va) = _split(
        model, x_T, reference, x_T_val, reference_val, val_fraction, cond_val, uncond_val
    )
    cands = _candidates(init, noise, num_points, t_start, t_end)
    # the points move by softmax increments of lam between the ends, or of t on a range whose
    # ends have infinite lam (a flow model's [0, 1]); in lam, a data end 0 is anchored at
    # t_min and the last point set to 0 after the parametrisation
    finite = {k: all(lam_is_finite(noise, x) for x in _anchor(v, noise)[[0, -1]])
              for k, v in cands.items()}  # fmt: skip
    coordinate = "lam" if all(finite.values()) else "t"
    if coordinate == "lam":
        cands = {k: _anchor(v, noise) for k, v in cands.items()}
    elif end == "zero":
        cands = {k: np.append(v[:-1], DATA_END) for k, v in cands.items()}
    final = DATA_END if end == "zero" and coordinate == "lam" else None

    t_ref = time.perf_counter()
    tols = (reference_rtol, reference_atol, batch_size, mesh)
    r_tr = _reference("reference", r_tr, m_tr, x_tr, *tols, callback)
    r_va = _reference("reference_val", r_va, m_va, x_va, *tols, callback)
    if end == "zero" and noise.t_min > 0:
        # the target of a last step into the data: the same step on the reference
        r_tr, r_va = _DENOISE(m_tr, r_tr, noise.t_min), _DENOISE(m_va, r_va, noise.t_min)
    reference_s = time.perf_counter() - t_ref
    if mesh is not None:
        m_tr, x_tr, r_tr = shard_model(m_tr, mesh), shard_batch(x_tr, mesh), shard_batch(r_tr, mesh)
        m_va, x_va, r_va = shard_model(m_va, mesh), shard_batch(x_va, mesh), shard_batch(r_va, mesh)

    dtype = x_tr.dtype
    f64 = jnp.float64
    with jax.enable_x64(True):
        lam_of = {  # the increasing coordinate of the parametrisation
            k: np.asarray(noise.lam(jnp.asarray(v, f64)), np.float64) if coordinate == "lam"
            else -np.asarray(v, np.float64)
            for k, v in cands.items()
        }  # fmt: skip
    # choose the initialisation on the training batch (forward passes only)
    init_losses = {}
    for k, t in cands.items():
        lam = lam_of[k]
        ends = _ends(lam, t, dtype, final)
        z = logits_from_lam(jnp.asarray(lam, dtype))
        init_losses[k] = float(_LOSS(z, m_tr, solver_obj, x_tr, r_tr, ends, coordinate=coordinate))
    best_init = min(init_losses, key=init_losses.get)
    t0, lam0 = cands[best_init], lam_of[best_init]
    ends = _ends(lam0, t0, dtype, final)
    ends64 = (lam0[0], lam0[-1], t0[0], t0[-1] if final is None else final)
    z = logits_from_lam(jnp.asarray(lam0, dtype))
    state = _ADAM.init(z)

    args = (z, state, jnp.asarray(0.0, dtype), m_tr, x_tr, r_tr, m_va, x_va, r_va, ends)
    t_c = time.perf_counter()
    step = _STEP.lower(*args, solver=solver_obj, remat=remat, coordinate=coordinate).compile()
    compile_s = time.perf_counter() - t_c
    memory = _memory(step)

    train_hist, val_hist = [], []
    best = (np.inf, None, -1, np.nan)  # (val, z, iteration, train)
    stop_reason = "steps"
    t_run = time.perf_counter()
    for i in range(steps):
        lr = learning_rate * 0.5 * (1.0 + math.cos(math.pi * i / steps))
        z_new, state, loss, val, _ = step(z, state, jnp.asarray(lr, dtype), *args[3:])
        loss, val = float(loss), float(val)
        if not (math.isfinite(loss) and math.isfinite(val)):
            stop_reason = f"non-finite loss at iteration {i}"
            break
        train_hist.append(loss)
        val_hist.append(val)
        if val < best[0]:
            best = (val, z, i, loss)
        if callback is not None:
            callback(
                {
                    "iteration": i,
                    "train": loss,
                    "val": val,
                    "t": _times(z, ends64, noise, coordinate),
                    "elapsed": time.perf_counter() - t_begin,
                }
            )
        z = z_new
        if i - best[2] >= patience:
            stop_reason = f"no held-out improvement for {patience} iterations"
            break
    run_s = time.perf_counter() - t_run
    if best[1] is None:
        raise FloatingPointError(f"direct optimisation failed: {stop_reason}")
    val_best, z_best, it_best, train_best = best
    t_best = _times(z_best, ends64, noise, coordinate)
    iters = len(train_hist)
    warnings = []
    grid_info = None
    if grid == "steps":
        t_cont, val_cont = t_best, val_best
        t_best = schedules.on_training_steps(t_cont, noise)
        val_best = float(_LOSS_T(jnp.asarray(t_best, dtype), m_va, solver_obj, x_va, r_va))
        grid_info = {
            "grid": "steps",
            "val_loss_continuous": val_cont,
            "max_shift": float(np.max(np.abs(t_best - t_cont))),
        }
    if it_best == 0:
        warnings.append(
            "no iterate improved the held-out error over the initialisation "
            f"({best_init!r}); the result is the initial schedule"
        )
    if stop_reason.startswith("non-finite"):
        warnings.append(f"stopped early: {stop_reason}; the result is the best finite iterate")
    info = {
        "train_loss": train_best,
        "val_loss": val_best,
        "init_train_loss": train_hist[0] if train_hist else np.nan,
        "init_val_loss": val_hist[0] if val_hist else np.nan,
        "train_history": np.asarray(train_hist),
        "val_history": np.asarray(val_hist),
        "best_iteration": it_best,
        "iterations": iters,
        "stop_reason": stop_reason,
        "init": best_init,
        "init_candidates_train_loss": init_losses,
        "train_batch": int(x_tr.shape[0]),
        "val_batch": int(x_va.shape[0]),
        "timings": {
            "compile_s": compile_s,
            "run_s": run_s,
            "per_iteration_s": run_s / max(iters, 1),
            "reference_s": reference_s,
            "total_s": time.perf_counter() - t_begin,
        },
        "step_memory_bytes": memory,
        "remat": remat,
        "devices": 1 if mesh is None else int(mesh.shape["batch"]),
        "condition_batch": condition_batch(model),
        "end": end,
        **({} if grid_info is None else {"grid": grid_info}),
    }
    params = {"t_start": float(t_best[0]), "t_end": float(t_best[-1])}
    options = {
        "steps": steps,
        "learning_rate": learning_rate,
        "patience": patience,
        "val_fraction": val_fraction if x_T_val is None else None,
        "init": init if isinstance(init, str) else "user",
    }
    return OptimizeResult.from_t(
        t_best,
        noise,
        objective=val_best,
        penalty=None,
        method="direct",
        solver=solver_name,
        nfe=nfe,
        params=params,
        info=info,
        warnings=tuple(warnings),
        options=options,
    )


def _memory(compiled) -> dict[str, int] | None:
    """XLA's memory analysis of the compiled step (arguments, outputs, temporaries: the
    activations kept for the reverse pass), or None where the backend gives none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    return {k.replace("_size_in_bytes", ""): int(getattr(m, k, 0)) for k in keys}


def _ends(lam, t, dtype, final=None):
    last = t[-1] if final is None else final
    return tuple(jnp.asarray(v, dtype) for v in (lam[0], lam[-1], t[0], last))


def _anchor(t: np.ndarray, noise) -> np.ndarray:
    """A schedule's lam anchors: its data end 0 (if any) replaced by ``t_min``."""
    if t[-1] != DATA_END:
        return t
    t = np.array(t, np.float64)
    t[-1] = noise.t_min
    return t


_LOSS_T = jax.jit(schedule_loss, static_argnames=("solver", "unroll", "remat"))
_DENOISE = jax.jit(lambda model, x, t: model.x0(x, t))


def _times(z, ends, noise, coordinate) -> np.ndarray:
    """The schedule of logits ``z`` in float64 (end points exact)."""
    with jax.enable_x64(True):
        e = tuple(jnp.asarray(np.float64(v), jnp.float64) for v in ends)
        t = np.asarray(_schedule(jnp.asarray(z, jnp.float64), e, noise, coordinate), np.float64)
    return t


@dataclasses.dataclass(frozen=True)
class DirectOptions:
    """The options of ``method="direct"`` (see :func:`optimize_direct`)."""

    x_T: Any = None
    reference: Any = None
    x_T_val: Any = None
    reference_val: Any = None
    val_fraction: float = 0.5
    init: Any = "best"
    t_start: float | None = None
    t_end: float | None = None
    steps: int = 100
    learning_rate: float = 0.01
    patience: int = 25
    reference_rtol: float = 1e-4
    reference_atol: float = 1e-4
    cond_val: Any = None
    uncond_val: Any = None
    remat: bool | None = None
    batch_size: int | None = None
    mesh: Any = None
    callback: Any = None


def _run(problem, nfe: int, solver, options: DirectOptions, seed: int) -> OptimizeResult:
    return optimize_direct(
        problem.model, nfe, solver=solver, **problem.conventions(), **given_options(options)
    )


register(
    Method(
        "direct",
        needs_model=True,
        options=DirectOptions,
        run=_run,
        summary="gradient descent on the held-out sample error through the solver, against "
        "the exact ODE solution (as LD3, ICLR 2025)",
        inputs=("x_T",),
    )
)
