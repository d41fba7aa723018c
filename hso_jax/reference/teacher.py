r"""Teacher trajectories: exact PF-ODE states and data predictions on a fine grid of times.

The trajectory-based optimisers (:mod:`hso_jax.optimizers.gits`, the model-aware MEP of
:mod:`hso_jax.objectives.mep_model`) look at the model only through a batch of *teacher*
trajectories cached on a fine grid ``t_0 > t_1 > ... > t_{K-1}``:

* ``x[k]``: the exact probability-flow ODE state at ``t_k`` from ``x[0] = x_T``, by one tight
  adaptive solve (:func:`~hso_jax.reference.reference_trajectory`) whose steps land
  on every grid point (no interpolation error);
* ``x0[k] = D(x[k], t_k)``: the network's data prediction there (K more calls per sample).

Cost: about ``6 (K - 1)`` network calls per sample for the solve (Tsit5 needs at least one
step per grid interval) plus ``K`` for the predictions; the grid default (100 points uniform in
lam, ``h ~ 0.1``) keeps the solve far inside its tolerance.

``solver="ipndm"`` is the teacher of the official GITS code instead: one run of the fixed-step
iPNDM (order 4, the published constant weights, :func:`hso_jax.solvers.ipndm`) through every
grid point, its states and the predictions it evaluated there (``K`` calls per sample, the last
one at ``t_{K-1}`` added): a 60-step numerical solution, not the exact one, at a tenth of the
cost.

References: GITS (Chen et al., "On the Trajectory Regularity of ODE-based Diffusion Sampling",
ICML 2024), Sec. 4 (teacher trajectories on a fine grid); HSO (AAAI 2026), Lemma 1 (the
network term of the midpoint error).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _progress, _validate, schedules
from ..batch import check_chunk, check_conditions, resolve_mesh, shard_model, take_conditions
from ..denoiser import Denoiser, check_denoiser

__all__ = ["Teacher", "teacher_trajectories", "GRIDS", "SOLVERS"]

Array = Any

GRIDS = ("logsnr", "karras", "time")
SOLVERS = ("exact", "ipndm")
"""Teacher states: ``"exact"`` (tight adaptive solve) or ``"ipndm"`` (the official GITS
teacher, a fixed-step iPNDM run through the grid)."""


class Teacher(NamedTuple):
    """A batch of teacher trajectories on a fine grid (a pytree).

    Attributes:
      t: (K,) decreasing model times of the grid (float64 NumPy, exact whatever the dtype
        of the solve).
      lam: (K,) half log-SNR ``lam(t)`` (increasing, float64 NumPy).
      x: (K, B, ...) exact PF-ODE states, ``x[0] = x_T``.
      x0: (K, B, ...) data predictions ``D(x[k], t[k])``.
    """

    t: Array
    lam: Array
    x: Array
    x0: Array


def _grid(noise, kind: str, num_points: int, t_start, t_end) -> np.ndarray:
    ts = schedules.baseline(kind, noise, num_points - 1, t_start=t_start, t_end=t_end)
    return np.asarray(ts, np.float64)


def teacher_trajectories(
    model: Denoiser,
    x_T: Array,
    *,
    num_points: int = 100,
    grid: str | Array = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    chunk: int = 8,
    batch_size: int | None = None,
    mesh: Any = None,
    solver: str = "exact",
    callback: Any = None,
) -> Teacher:
    """Exact (or iPNDM) states and data predictions of the PF-ODE from ``x_T`` on a fine grid.

    Args:
      model: the :class:`~hso_jax.Denoiser`.
      x_T: (B, ...) initial noise at the grid's first time.
      num_points: K, points of the grid (>= 3), used when ``grid`` is a name.
      grid: ``"logsnr"`` (default: uniform in lam), ``"karras"`` (rho = 7) or ``"time"``
        between ``t_start`` and ``t_end``, or an explicit decreasing array of model times.
      t_start, t_end: grid ends for a named grid (default: the process's ``t_max`` /
        ``t_min``).
      rtol, atol: tolerances of the adaptive solve (float32 solves are limited to ~1.9e-6).
      chunk: grid points whose predictions are computed in one batched network call.
      batch_size: samples per solve and per prediction call (default: the whole batch); each
        chunk of samples takes its own condition rows (:mod:`hso_jax.batch`) and has its own
        adaptive step sequence (results agree with the joint solve within ``rtol`` /
        ``atol``). Memory: one chunk's solve and ``chunk`` x ``batch_size`` predictions.
      mesh: ``None``, ``"auto"`` or a Mesh with a ``"batch"`` axis: every chunk of samples
        (with its condition rows) is split over the devices for the solve and the
        predictions (chunk size divisible by their number).
      solver: ``"exact"`` (default) or ``"ipndm"``: the states of one iPNDM run stepping
        through every grid point and the predictions it made (the official GITS teacher;
        ``rtol`` / ``atol`` / ``chunk`` do not apply).
      callback: progress while the teacher runs: ``{"teacher": f, "elapsed": s}`` with ``f``
        the fraction of the solves done (over all chunks), at about every 1 % (the exact
        solve) or every grid step (iPNDM), from inside the compiled solves.

    Returns:
      A :class:`Teacher`: ``x`` and ``x0`` in the dtype of the solve, ``t`` and ``lam`` in
      float64.

    Raises:
      TypeError / ValueError naming the bad argument.
    """
    from . import solve  # diffrax, imported on use

    check_denoiser(model)
    _validate.choice("solver", solver, SOLVERS)
    if not hasattr(x_T, "shape") or jnp.ndim(x_T) < 1:
        raise TypeError("x_T must be a batch of initial noise with shape (B, ...)")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    batch_size, mesh = check_chunk("batch_size", batch_size), resolve_mesh(mesh)
    if jnp.ndim(x_T) >= 1:
        check_conditions(model, jnp.shape(x_T)[0], "x_T")
    noise = model.noise
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS} or an array of times, got {grid!r}")
        if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)):
            raise ValueError(f"num_points must be an integer >= 3, got {num_points!r}")
        if num_points < 3:
            raise ValueError(f"num_points must be an integer >= 3, got {num_points}")
        ts = _grid(noise, grid, int(num_points), t_start, t_end)
    else:
        ts = np.asarray(schedules.check_schedule(grid, noise, name="grid"), np.float64)
        if ts.shape[0] < 3:
            raise ValueError(f"grid must have at least 3 points, got {ts.shape[0]}")
    _validate.callback(callback)
    b = int(jnp.shape(x_T)[0])
    size = b if batch_size is None else batch_size
    xs, x0 = [], []
    with _progress.listening(_progress.as_fraction_callback(callback, "teacher")):
        for start in range(0, b, size):
            rows = slice(start, min(start + size, b))
            m = take_conditions(model, rows)
            with _progress.part(start / b, rows.stop / b):
                if solver == "ipndm":
                    x, p = _ipndm_run(m, x_T[rows], ts, mesh)
                else:
                    x = solve.reference_trajectory(
                        m, x_T[rows], ts, rtol=rtol, atol=atol, mesh=mesh
                    )
                    t = jnp.asarray(ts, x.dtype)
                    p = _predictions(shard_model(m, mesh), x, t, int(chunk))
                xs.append(jax.block_until_ready(x))
                x0.append(p)
    xs, x0 = jnp.concatenate(xs, axis=1), jnp.concatenate(x0, axis=1)
    with jax.enable_x64(True):
        lam = np.asarray(noise.lam(jnp.asarray(ts, jnp.float64)), np.float64)
    return Teacher(t=ts, lam=lam, x=xs, x0=x0)


def _ipndm_run(model, x_T, ts, mesh):
    """States of one iPNDM run through every grid point and its predictions there."""
    from ..batch import shard_batch
    from ..solvers import ipndm, sample_trajectory

    if mesh is not None:
        model, x_T = shard_model(model, mesh), shard_batch(x_T, mesh)
    t = jnp.asarray(ts, jnp.result_type(x_T))
    traj = sample_trajectory(
        model, x_T, t, ipndm(), denoise_final=True, callback=_progress.to_listener()
    )
    return traj.x, jnp.concatenate([traj.x0, traj.final[None]])


@jax.jit
def _predict_chunk(model, x, t):
    """``D(x[k], t[k])`` for a chunk of grid points, one batched network call."""
    return jax.vmap(model.x0)(x, t)


def _predictions(model, xs, t, chunk: int):
    out = []
    for s in range(0, xs.shape[0], chunk):
        out.append(_predict_chunk(model, xs[s : s + chunk], t[s : s + chunk]))
    return jnp.concatenate(out, axis=0)
