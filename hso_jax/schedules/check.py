"""Validation of schedules, where they end, and the training-step grid of discrete models.

A schedule is a 1-D array of model times ``t``, strictly decreasing, inside the noise
process's ``[t_min, t_max]``, except that its last point may be the data end ``t = 0``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..noise import DATA_END, NoiseSchedule
from ._common import RANGE_RTOL, check_noise

Array = Any



def check_schedule(
    ts, noise: NoiseSchedule | None = None, *, name: str = "ts", min_points: int = 2
) -> Array:
    """Validate a schedule and return it as a JAX array.

    Checks: 1-D, at least ``min_points`` entries, floating point, and -- when the values are
    concrete (not traced under jit / vmap / grad) -- finite, strictly decreasing and inside
    ``[noise.t_min, noise.t_max]`` (up to a relative rounding tolerance of 1e-5), except that
    the last point may be the data end ``t = 0`` (:data:`hso_jax.noise.DATA_END`).

    Raises:
      ValueError / TypeError naming ``name``, the offending value and what is allowed.
    """
    if isinstance(ts, (list, tuple)):
        ts = np.asarray(ts, dtype=float)
    if not hasattr(ts, "shape") or not hasattr(ts, "dtype"):
        raise TypeError(f"{name} must be a 1-D array of times, got {type(ts).__name__}")
    if len(ts.shape) != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(ts.shape)}")
    if ts.shape[0] < min_points:
        raise ValueError(f"{name} must have at least {min_points} points, got {ts.shape[0]}")
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        if jnp.issubdtype(ts.dtype, jnp.integer):
            raise TypeError(
                f"{name} must hold float model times t, got integer dtype {ts.dtype}; convert "
                "training-step indices with noise.t_from_index(k)"
            )
        raise TypeError(f"{name} must be a floating-point array, got dtype {ts.dtype}")
    if isinstance(ts, jax.core.Tracer):
        return ts
    v = np.asarray(ts, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        k = int(np.argmin(np.isfinite(v)))
        raise ValueError(f"{name} must be finite; {name}[{k}] = {v[k]}")
    d = np.diff(v)
    if np.any(d >= 0):
        k = int(np.argmax(d >= 0))
        raise ValueError(
            f"{name} must be strictly decreasing (from the start time to the end time); "
            f"{name}[{k}] = {v[k]:.9g} <= {name}[{k + 1}] = {v[k + 1]:.9g}"
        )
    if noise is not None:
        lo, hi = noise.t_min, noise.t_max
        tol = RANGE_RTOL * max(1.0, abs(hi))
        # the data end t = 0 may close any schedule (one step to the data prediction)
        last = v[-2] if v[-1] == DATA_END and v.shape[0] >= 2 else v[-1]
        if v[0] > hi + tol or last < lo - tol:
            raise ValueError(
                f"{name} must lie in [t_min, t_max] = [{lo:g}, {hi:g}] of {noise!r}, except "
                f"that it may end at the data, t = 0; got [{v[-1]:.9g}, {v[0]:.9g}]"
            )
    return jnp.asarray(ts)


ENDS = ("free", "t_min", "zero")
"""How a schedule of ``nfe`` network calls ends (its last point is never a network point):

* ``"free"``: the last point is chosen by the optimiser, like the others (HSO's multistep
  flavour ends at its ``t_eps``; a ComfyUI ``SIGMAS`` list that does not end in 0);
* ``"t_min"``: the last point is the process's ``t_min``, the first training step of a
  discrete model (diffusers' ``final_sigmas_type="sigma_min"``, ``DDIMScheduler`` with
  ``set_alpha_to_one=False``, HSO's DDIM flavour);
* ``"zero"``: the last point is the data end ``t = 0``, so the last step returns the data
  prediction (diffusers' ``final_sigmas_type="zero"``, ComfyUI ``SIGMAS`` ending in 0).
"""


GRIDS = ("continuous", "steps")
"""Where the network is evaluated: at any time, or on the training steps of a discrete-time
model (a runtime that passes integer timesteps; :func:`on_training_steps`)."""


def end_of(ts, noise: NoiseSchedule) -> str:
    """The end convention (:data:`ENDS`) a concrete schedule follows: ``"zero"`` if it ends at
    ``t = 0``, ``"t_min"`` if at the process's ``t_min`` (> 0), else ``"free"``."""
    last = float(np.asarray(ts, np.float64)[-1])
    if last == DATA_END:
        return "zero"
    tol = RANGE_RTOL * max(1.0, abs(noise.t_max))
    return "t_min" if abs(last - noise.t_min) <= tol else "free"


def on_training_steps(ts, noise: NoiseSchedule) -> np.ndarray:
    """Move the network points of a discrete-time schedule onto the training steps.

    Every point but the last (where no network call is made) goes to the nearest training
    step, ``t = (k + 1) / N`` with ``k = round(N t) - 1``, which is what a runtime that takes
    integer ``timesteps`` evaluates the network at; the last point (``t_min``, the data end
    ``0`` or a free end) is kept. Points that round to the same step are spread to the next
    free steps below (towards low noise), so the result stays strictly decreasing.

    Args:
      ts: a concrete schedule of a discrete-time process.
      noise: its process (:class:`~hso_jax.noise.VPDiscrete`).

    Returns:
      The projected schedule, float64.

    Raises:
      ValueError: a continuous-time process, or more network points than training steps
        above the last point.
    """
    check_noise(noise)
    if not noise.is_discrete:
        raise ValueError(
            f"on_training_steps needs a discrete-time process, got {noise!r} (its network "
            "takes continuous times: nothing to project)"
        )
    check_schedule(ts, noise)
    t = np.array(ts, np.float64)
    n_steps = noise.num_steps
    k = np.rint(t[:-1] * n_steps).astype(np.int64) - 1
    for i in range(1, k.size):  # strictly decreasing steps: push collisions down
        k[i] = min(k[i], k[i - 1] - 1)
    if k.size and (k[-1] + 1.0) / n_steps <= t[-1]:
        raise ValueError(
            f"ts has {k.size} network points, which do not fit on distinct training steps above "
            f"its last point t = {t[-1]:.9g} (N = {n_steps}): the schedule is finer than the "
            "model's steps; use fewer steps, or a runtime that takes continuous times"
        )
    t[:-1] = (k + 1.0) / n_steps
    return t


_ON_STEP_ATOL = 1e-9


def check_on_steps(t: np.ndarray, noise: NoiseSchedule, who: str) -> None:
    """Raise ``ValueError`` if a network point of ``t`` (every point but the last) of a
    discrete-time schedule lies between training steps (``who`` evaluates the network there
    only)."""
    x = t[:-1] * noise.num_steps
    off = np.abs(x - np.rint(x))
    if off.size and off.max() > _ON_STEP_ATOL:
        k = int(np.argmax(off))
        step = int(noise.index_from_t(t[k]))
        raise ValueError(
            f"{who} evaluates a discrete-time model on training steps only, but network point "
            f"t[{k}] = {t[k]:.9g} lies between steps (it would run at step {step}, t = "
            f"{(step + 1) / noise.num_steps:.9g}, another trajectory): optimise for the target "
            "(hso_jax.optimize(..., target=...)), or project with "
            "hso_jax.schedules.on_training_steps and re-score"
        )
