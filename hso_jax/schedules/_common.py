"""What every schedule function shares: eager argument checks, float64 evaluation, the end.

The public schedule functions validate their arguments eagerly and compute in float64 whatever
``jax_enable_x64`` says (:func:`x64`), even while a user's ``jax.jit`` traces (:func:`eager`),
then return the default float dtype (:func:`finish`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validate
from ..noise import NoiseSchedule

Array = Any

# Schedules may overshoot [t_min, t_max] by float rounding (e.g. t_from_lam(lam(t_max)) in
# float32); anything further out is rejected, never clipped.
RANGE_RTOL = 1e-5


def x64():
    """Float64 available inside, whatever the user's ``jax_enable_x64``."""
    return jax.enable_x64(True)


def eager():
    """Evaluate JAX ops on concrete values now, even when called while tracing (a user's
    ``jax.jit`` that builds its schedule inside): the eager paths here need NumPy values."""
    return jax.ensure_compile_time_eval()


def out_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def check_noise(noise) -> NoiseSchedule:
    if not isinstance(noise, NoiseSchedule):
        raise TypeError(
            "noise must be a hso_jax.noise.NoiseSchedule (e.g. hso_jax.noise.preset('sd15')), "
            f"got {type(noise).__name__}"
        )
    return noise


def check_nfe(nfe) -> int:
    return _validate.nfe(nfe, meaning=" (the number of intervals; the schedule has nfe + 1 points)")


def check_real(name: str, value) -> float:
    """A concrete, finite real scalar (Python, NumPy or 0-d array), as a float."""
    if isinstance(value, (bool, str, bytes)) or isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete real number, got {value!r}")
    try:
        arr = np.asarray(value)
    except Exception as e:  # e.g. objects NumPy cannot convert
        raise TypeError(f"{name} must be a real number, got {value!r}") from e
    if (
        arr.shape != ()
        or arr.dtype == bool
        or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer))
    ):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(arr)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def check_positive(name: str, value) -> float:
    v = check_real(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v:g}")
    return v


RHO_RANGE = {"karras": (0.01, 100.0), "polyexponential": (0.01, 10.0)}
"""Allowed ``rho`` of karras (EDM: 7) and polyexponential (1 = log-SNR uniform): past these
ends the points collapse onto one end in float32 (or overflow to NaN)."""
C_RANGE = (1e-3, 1e3)
"""Allowed data standard deviation ``c`` of kl-optimal (latents ~0.5-1, pixels ~0.5)."""


def check_range(name: str, value, bounds: tuple[float, float], meaning: str = "") -> float:
    """A concrete real in the closed interval ``bounds``."""
    return _validate.in_range(name, check_real(name, value), bounds, meaning)


def check_concrete(**scalars) -> None:
    """Validate the concrete (non-traced) scalar arguments of the jit-able helpers."""
    for name, value in scalars.items():
        if isinstance(value, jax.core.Tracer):
            continue
        if np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
        check_positive(name, value)


def endpoints(noise: NoiseSchedule, t_start, t_end) -> tuple[float, float]:
    """Resolve ``t_start`` / ``t_end`` (``None`` -> ``t_max`` / ``t_min``) and validate them.

    A value within float rounding (relative 1e-5) of a bound is taken as the bound itself.
    """
    lo, hi = float(noise.t_min), float(noise.t_max)
    tol = RANGE_RTOL * max(1.0, abs(hi))

    def resolve(name, value, default):
        if value is None:
            return default
        v = check_real(name, value)
        if v > hi + tol or v < lo - tol:
            raise ValueError(
                f"{name} must lie in [t_min, t_max] = [{lo:g}, {hi:g}] of {noise!r}, got {v:.9g}"
            )
        return min(max(v, lo), hi)

    t0 = resolve("t_start", t_start, hi)
    t1 = resolve("t_end", t_end, lo)
    if not t0 > t1:
        raise ValueError(
            "t_start must be greater than t_end (a schedule runs from noise to data), "
            f"got t_start={t0:.9g}, t_end={t1:.9g}"
        )
    return t0, t1


def setup(noise, nfe, t_start, t_end) -> tuple[int, float, float]:
    check_noise(noise)
    n = check_nfe(nfe)
    t0, t1 = endpoints(noise, t_start, t_end)
    return n, t0, t1


def eval_float64(noise: NoiseSchedule, method: str, x) -> np.ndarray:
    """``noise.<method>(x)`` evaluated eagerly in float64, as a NumPy array.

    The input is padded (edge values) to a power-of-two length >= 16, so JAX's per-shape
    compilation of the eager primitives is shared across step counts and processes.
    """
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1)
    size = max(16, 1 << (flat.size - 1).bit_length())
    padded = np.pad(flat, (0, size - flat.size), mode="edge")
    with x64(), eager():
        y = np.asarray(getattr(noise, method)(jnp.asarray(padded, jnp.float64)), np.float64)
    return y[: flat.size].reshape(x.shape)


def finish(t, what: str, nfe: int, ends: tuple[float | None, float | None]) -> jax.Array:
    """Pin the exact end points, cast to the default float dtype, check strict decrease."""
    t = np.array(t, dtype=np.float64)
    if ends[0] is not None:
        t[0] = ends[0]
    if ends[1] is not None:
        t[-1] = ends[1]
    with eager():
        out = jnp.asarray(t, dtype=out_dtype())
    v = np.asarray(out, np.float64)
    bad = ~(np.diff(v) < 0)
    if not np.all(np.isfinite(v)) or np.any(bad):
        k = int(np.argmax(bad)) if np.any(bad) else 0
        raise ValueError(
            f"{what} with nfe={nfe} does not give strictly decreasing {out.dtype} times: "
            f"t[{k}] = {v[k]:.9g}, t[{k + 1}] = {v[k + 1]:.9g}; the steps are finer than the "
            "precision (use a smaller nfe or a wider [t_end, t_start], or enable jax_enable_x64)"
        )
    return out


def float_dtype(*xs):
    dt = jnp.result_type(*xs)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


def unit_grid(nfe: int, dtype) -> Array:
    """s_i = i / nfe for i = 0..nfe (normalised step position)."""
    return jnp.arange(nfe + 1, dtype=dtype) / nfe
