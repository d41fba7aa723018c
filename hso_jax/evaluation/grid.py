"""Evaluate a grid of (schedule x solver) against one reference, optionally sharded over devices.

Fair comparison. Every entry of the grid starts from the *same* initial noise ``x_T`` and is
judged against the *same* target: ``reference``, the exact probability-flow ODE solution from
that ``x_T`` carried to the process's end time ``t_min`` (the caller computes it once, e.g. with
:func:`hso_jax.reference.reference_solve` or :func:`~.cache.cached_reference`, and
passes it in). A schedule that starts later or stops earlier than the process's range is not
excused: its output is still compared with the state at ``t_min``, so stopping early shows up
as error. Metrics are per sample (``rmse``, ``psnr`` or any ``(x, ref) -> (B,)`` function) and
the records carry both the per-sample arrays and their batch means.

Two modes:

* ``denoise_final=False`` (default): the output is the solver's last state ``x(ts[-1])``;
  NFE = ``solver.nfe(len(ts) - 1)``.
* ``denoise_final=True``: every method gets the same final data-prediction step
  ``D(x(ts[-1]), ts[-1])`` (the "jump to sigma = 0" of diffusers / ComfyUI), counted as one
  extra NFE; the target is then the reference passed through the same step,
  ``D(reference, reference_time)``, so that the shared last step is not charged as error (the
  gap between ``x(t_min)`` and ``D(x(t_min), t_min)`` is of order ``sigma(t_min)`` and would
  otherwise dominate at large NFE). That one evaluation on the reference is not counted.

Compilation. Schedules may have different lengths: they are grouped by length, and each
(solver, length) group runs as one ``jax.jit``-compiled call that ``jax.vmap``-s the sampler
and the metrics over the group's stacked schedules; a grid with mixed lengths is grouped, never
rejected. Compiled functions are cached by JAX, so a second grid with the same shapes does not
recompile.

Sharded evaluation. With ``mesh`` (a :class:`jax.sharding.Mesh` with an axis named ``"batch"``, or
``"auto"`` for all of ``jax.devices()`` on one axis), ``x_T`` and the reference are placed with
``NamedSharding(mesh, PartitionSpec("batch"))`` (split along the sample axis), so are the model's
per-sample condition rows (:func:`hso_jax.batch.shard_model`), and the rest of the model, the
schedules and the key are replicated; ``jit`` then runs every group data-parallel, one slice of the
batch per device, and the per-sample results are gathered on the host. Samples never interact, so
the results equal the unsharded ones up to floating-point round-off: XLA may fuse or contract a
per-sample reduction differently for another per-device shape (about one ulp; in the 8-device CPU
test the samples are bit-identical). The batch size must be divisible by the number of devices on
the ``"batch"`` axis. The same call runs unchanged on a multi-GPU or TPU host: ``jax.devices()``
lists the accelerators, ``mesh="auto"`` uses all of them; on CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set before importing JAX) simulates eight
devices. Multi-host (multi-process) runs would need globally sharded inputs built with
``jax.make_array_from_process_local_data``; this module handles one host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ..batch import (
    check_conditions,
    make_batch_mesh,
    replicate,
    resolve_mesh,
    shard_batch,
    shard_model,
)
from ..denoiser import Denoiser, check_denoiser
from ..schedules import RANGE_RTOL, check_schedule
from ..solvers import Solver, sample
from .metrics import psnr, rmse

__all__ = [
    "GridRecord",
    "evaluate_grid",
    "format_table",
    "make_batch_mesh",
    "shard_batch",
    "BUILTIN_METRICS",
]

Array = Any

BUILTIN_METRICS = ("rmse", "psnr")


@dataclasses.dataclass(frozen=True)
class _PSNR:
    """PSNR with a fixed data range; hashable by value, so jit caches do not grow per call."""

    data_range: float

    def __call__(self, x, ref):
        return psnr(x, ref, self.data_range)


@dataclasses.dataclass(frozen=True)
class GridRecord:
    """One (schedule, solver) entry of a grid evaluation.

    Attributes:
      schedule: the schedule's name (key of ``schedules``).
      solver: the solver's name (key of ``solvers``).
      nfe: network evaluations per sample, ``solver.nfe(num_points - 1)`` (+1 with
        ``denoise_final``).
      num_points: length of the schedule.
      metrics: batch mean of each metric, ``{name: float}``.
      per_sample: per-sample values of each metric, ``{name: (B,) np.ndarray}``.
      num_nonfinite: samples whose output contains NaN/inf (a warning is issued when > 0).
      samples: the outputs ``(B, ...)`` with ``return_samples=True``, else ``None``.
    """

    schedule: str
    solver: str
    nfe: int
    num_points: int
    metrics: dict[str, float]
    per_sample: dict[str, np.ndarray] = dataclasses.field(repr=False)
    num_nonfinite: int = 0
    samples: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-serialisable dict (per-sample values as lists only if ``per_sample``)."""
        d = {
            "schedule": self.schedule,
            "solver": self.solver,
            "nfe": self.nfe,
            "num_points": self.num_points,
            "metrics": dict(self.metrics),
            "num_nonfinite": self.num_nonfinite,
        }
        if per_sample:
            d["per_sample"] = {k: v.tolist() for k, v in self.per_sample.items()}
        return d


# --------------------------------------------------------------------------------------
# Sharding helpers
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_batch(name: str, x) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be a floating-point array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    if len(x.shape) < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have a leading batch axis of size >= 1, got {x.shape}")
    if isinstance(x, jax.core.Tracer):
        raise TypeError(f"evaluate_grid needs a concrete {name} (it cannot run under jit)")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")


def _metric_fns(metrics, data_range) -> tuple[tuple[str, Callable], ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
        for name, fn in items:
            if not isinstance(name, str) or not callable(fn):
                raise TypeError(
                    f"metrics mapping must be {{name: fn(x, ref) -> (B,) array}}, got entry "
                    f"{name!r}: {fn!r}"
                )
    else:
        items = []
        for name in metrics:
            if name == "rmse":
                items.append(("rmse", rmse))
            elif name == "psnr":
                items.append(("psnr", _PSNR(float(data_range))))
            else:
                raise ValueError(
                    f"metric names must be among {BUILTIN_METRICS} (pass a mapping "
                    f"{{name: fn(x, ref) -> (B,) array}} for others), got {name!r}"
                )
    if not items:
        raise ValueError("metrics must name at least one metric")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"metric names must be unique, got {names}")
    return tuple(items)


def _named(kind: str, d, check) -> list[tuple[str, Any]]:
    if not isinstance(d, Mapping) or not d:
        raise TypeError(f"{kind} must be a non-empty dict name -> {kind[:-1]}, got {d!r}")
    out = []
    for name, v in d.items():
        if not isinstance(name, str):
            raise TypeError(f"{kind} names must be strings, got {name!r}")
        out.append((name, check(name, v)))
    return out


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@functools.partial(
    jax.jit, static_argnames=("solver", "denoise_final", "metric_fns", "return_samples")
)
def _eval_group(
    model, x_T, target, ts_stack, key, solver, denoise_final, metric_fns, return_samples
):
    """Per-sample metrics ``{name: (G, B)}``, finiteness ``(G, B)`` and (optionally) the
    outputs ``(G, B, ...)`` for G schedules."""
    batch = x_T.shape[0]

    def one(ts):
        x = sample(model, x_T, ts, solver, key, denoise_final=denoise_final)
        vals = {}
        for name, fn in metric_fns:
            v = fn(x, target)
            if jnp.shape(v) != (batch,):
                raise ValueError(
                    f"metric {name!r} must return one value per sample, shape ({batch},), got "
                    f"{jnp.shape(v)}"
                )
            vals[name] = v
        finite = jnp.all(jnp.isfinite(x.reshape(batch, -1)), axis=1)
        return vals, finite, (x if return_samples else None)

    return jax.vmap(one)(ts_stack)


@jax.jit
def _denoise(model, x, t):
    return model.x0(x, t)


def evaluate_grid(
    model: Denoiser,
    x_T: Array,
    reference: Array,
    schedules: Mapping[str, Array],
    solvers: Mapping[str, Solver],
    *,
    metrics: Sequence[str] | Mapping[str, Callable] = ("rmse", "psnr"),
    denoise_final: bool = False,
    mesh: Mesh | str | None = None,
    key: Array | None = None,
    data_range: float = 2.0,
    reference_time: float | None = None,
    return_samples: bool = False,
) -> list[GridRecord]:
    """Sample with every (schedule, solver) pair from ``x_T`` and score against ``reference``.

    See the module docstring for the fair-comparison protocol, grouping and sharding.

    Args:
      model: the :class:`~hso_jax.Denoiser`.
      x_T: initial noise, shape ``(B, ...)``, shared by every entry.
      reference: exact PF-ODE solution from ``x_T`` at ``reference_time`` (same shape).
      schedules: ``{name: ts}``; each ``ts`` a valid schedule of ``model.noise``, any lengths.
      solvers: ``{name: solver}``, e.g. ``{"ddim": hso_jax.solvers.ddim()}``.
      metrics: names among ``("rmse", "psnr")``, or a mapping ``{name: fn(x, ref) -> (B,)}``
        of per-sample metrics (pure JAX, traced under ``jit`` / ``vmap``).
      denoise_final: give every entry the same final data-prediction step (one more NFE) and
        compare with the equally denoised reference.
      mesh: ``None`` (no sharding), ``"auto"`` (all devices) or a Mesh with a ``"batch"`` axis.
      key: PRNG key, required if a solver is stochastic (the same key for every entry).
      data_range: data range of the ``"psnr"`` metric (2 for data in ``[-1, 1]``).
      reference_time: model time of ``reference`` (default ``model.noise.t_min``); used only
        with ``denoise_final``.
      return_samples: keep every entry's outputs in :attr:`GridRecord.samples` (host memory:
        one batch per entry).

    Returns:
      A list of :class:`GridRecord`, schedule-major in the order of ``schedules`` then
      ``solvers``.

    Raises:
      TypeError / ValueError: invalid model, arrays, schedules, solvers, metrics or mesh, shape
      mismatch between ``x_T`` and ``reference``, batch not divisible by the device count, or a
      stochastic solver without ``key``.
    """
    check_denoiser(model)
    _check_batch("x_T", x_T)
    _check_batch("reference", reference)
    if tuple(reference.shape) != tuple(x_T.shape):
        raise ValueError(
            f"reference must have the shape of x_T {tuple(x_T.shape)}, got {tuple(reference.shape)}"
        )
    sched = _named(
        "schedules",
        schedules,
        lambda n, ts: check_schedule(ts, model.noise, name=f"schedules[{n!r}]"),
    )

    def _check_solver(name, s):
        if not isinstance(s, Solver):
            raise TypeError(
                f"solvers[{name!r}] must be a hso_jax solver (e.g. hso_jax.solvers.ddim()), "
                f"got {s!r}"
            )
        if s.stochastic and key is None:
            raise ValueError(
                f"solvers[{name!r}] is stochastic: pass key=jax.random.key(...) (shared by all "
                "entries)"
            )
        return s

    solv = _named("solvers", solvers, _check_solver)
    metric_fns = _metric_fns(metrics, data_range)
    denoise_final = bool(denoise_final)
    mesh = resolve_mesh(mesh)

    x_T = jnp.asarray(x_T)
    target = jnp.asarray(reference, x_T.dtype)
    if denoise_final:
        ns = model.noise
        t_ref = ns.t_min if reference_time is None else float(reference_time)
        tol = RANGE_RTOL * max(1.0, abs(ns.t_max))
        if not (math.isfinite(t_ref) and ns.t_min - tol <= t_ref <= ns.t_max + tol):
            raise ValueError(
                f"reference_time must lie in [t_min, t_max] = [{ns.t_min:g}, {ns.t_max:g}], got "
                f"{reference_time!r}"
            )

    check_conditions(model, x_T.shape[0], "x_T")
    if mesh is not None:
        x_T = shard_batch(x_T, mesh)
        target = shard_batch(target, mesh)
        model = shard_model(model, mesh)  # per-sample conditions split like x_T
        key = replicate(key, mesh)

    if denoise_final:
        target = _denoise(model, target, jnp.asarray(t_ref, x_T.dtype))

    groups: dict[int, list[tuple[str, Array]]] = {}
    for name, ts in sched:
        groups.setdefault(int(ts.shape[0]), []).append((name, ts))

    results: dict[tuple[str, str], GridRecord] = {}
    for sv_name, solver in solv:
        for length, members in groups.items():
            ts_stack = jnp.stack([jnp.asarray(ts, x_T.dtype) for _, ts in members])
            ts_stack = replicate(ts_stack, mesh)
            vals, finite, outs = _eval_group(
                model,
                x_T,
                target,
                ts_stack,
                key,
                solver,
                denoise_final,
                metric_fns,
                bool(return_samples),
            )
            vals = {k: np.asarray(v) for k, v in vals.items()}
            finite = np.asarray(finite)
            nfe = solver.nfe(length - 1) + int(denoise_final)
            for g, (sc_name, _) in enumerate(members):
                bad = int(finite.shape[1] - finite[g].sum())
                if bad:
                    warnings.warn(
                        f"{bad} of {finite.shape[1]} samples of schedule {sc_name!r} with solver "
                        f"{sv_name!r} are NaN/inf; their metrics are not finite",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                per = {k: v[g] for k, v in vals.items()}
                results[(sc_name, sv_name)] = GridRecord(
                    schedule=sc_name,
                    solver=sv_name,
                    nfe=nfe,
                    num_points=length,
                    metrics={k: float(np.mean(v)) for k, v in per.items()},
                    per_sample=per,
                    num_nonfinite=bad,
                    samples=None if outs is None else np.asarray(outs[g]),
                )
    return [results[(sc, sv)] for sc, _ in sched for sv, _ in solv]


def format_table(records: Sequence[GridRecord], precision: int = 4) -> str:
    """Markdown table of the records' mean metrics (one row per record)."""
    if not records:
        return ""
    names = list(records[0].metrics)
    head = ["schedule", "solver", "NFE", *names]
    rows = [
        [
            r.schedule,
            r.solver,
            str(r.nfe),
            *(f"{r.metrics.get(n, float('nan')):.{precision}g}" for n in names),
        ]
        for r in records
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
