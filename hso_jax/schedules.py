"""Schedules: validation, baseline discretisations, published tables, exports.

A schedule is a 1-D array of model times ``t``, strictly decreasing, inside the noise
process's ``[t_min, t_max]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .noise import NoiseSchedule

__all__ = ["check_schedule"]

Array = Any

# Schedules may overshoot [t_min, t_max] by float rounding (e.g. t_from_lam(lam(t_max)) in
# float32); anything further out is rejected, never clipped.
_RANGE_RTOL = 1e-5


def check_schedule(
    ts, noise: NoiseSchedule | None = None, *, name: str = "ts", min_points: int = 2
) -> Array:
    """Validate a schedule and return it as a JAX array.

    Checks: 1-D, at least ``min_points`` entries, floating point, and -- when the values are
    concrete (not traced under jit / vmap / grad) -- finite, strictly decreasing and inside
    ``[noise.t_min, noise.t_max]`` (up to a relative rounding tolerance of 1e-5).

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
        tol = _RANGE_RTOL * max(1.0, abs(hi))
        if v[0] > hi + tol or v[-1] < lo - tol:
            raise ValueError(
                f"{name} must lie in [t_min, t_max] = [{lo:g}, {hi:g}] of {noise!r}; "
                f"got [{v[-1]:.9g}, {v[0]:.9g}]"
            )
    return jnp.asarray(ts)
