"""Schedules: validation, baseline discretisations, published tables, exports.

A schedule is a 1-D array of model times ``t``, strictly decreasing, inside the noise
process's ``[t_min, t_max]``: ``ts[0]`` is the start time (most noise), ``ts[-1]`` the end
time. Every baseline here is ``f(noise, nfe, ...) -> ts`` with ``nfe + 1`` points, i.e. ``nfe``
intervals. A multistep solver (DDIM, DPM-Solver++(2M), UniPC) spends exactly ``nfe`` network
evaluations on such a schedule (one per interval, at its left end); a solver with ``k`` calls
per step spends ``k * nfe`` (see ``Solver.num_points``). A sampler that also evaluates the
network at the last point (the latent-diffusion DDIM convention, see HSO) needs ``f(noise,
nfe - 1)`` for ``nfe`` evaluations.

By default a baseline runs from ``noise.t_max`` to ``noise.t_min``; the keyword-only
``t_start`` / ``t_end`` move the end points inside that range (the AYS tables are the exception,
see :func:`ays`). The spacing maths lives in small pure functions of the end points
(:func:`karras_sigmas`, :func:`polyexponential_sigmas`, :func:`kl_optimal_sigmas`,
:func:`loglinear_interp`) that can be ``jit``-ed, ``vmap``-ed and differentiated (``nfe`` /
``num_points`` static); the public schedule functions validate their arguments eagerly and
compute in float64 whatever ``jax_enable_x64`` says, then return the default float dtype
(they also work with concrete arguments inside a user's ``jax.jit``).

Exports: :func:`to_diffusers` (a schedule's network ``timesteps``, ``sigmas`` and final
sigma type) and :func:`to_comfyui` (its ``SIGMAS`` list), exactly as optimised: nothing is
appended or rounded; a schedule a runtime cannot run as it is, is refused
(:mod:`hso_jax.export` has the per-scheduler targets, adapters and checks).

References:
  Lu et al., "DPM-Solver" (NeurIPS 2022), step-size schedules (time-uniform, time-quadratic and
  logSNR-uniform steps); Karras et al., "Elucidating the Design Space of Diffusion-Based
  Generative Models" (NeurIPS 2022), Eq. 5; Sabour et al., "Align Your Steps" (ICML 2024),
  Theorem 3.1 and the published 10-step schedules.
"""

from __future__ import annotations

import math
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate
from .noise import DATA_END, NoiseSchedule, RectifiedFlow

__all__ = [
    "check_schedule",
    "time_uniform",
    "time_quadratic",
    "logsnr_uniform",
    "karras",
    "polyexponential",
    "kl_optimal",
    "ays",
    "AYS_TABLES",
    "flow_default",
    "beta",
    "BETA_VARIANTS",
    "optimal_steps",
    "OSS_TABLES",
    "karras_sigmas",
    "polyexponential_sigmas",
    "kl_optimal_sigmas",
    "loglinear_interp",
    "to_diffusers",
    "to_comfyui",
    "ENDS",
    "GRIDS",
    "end_of",
    "on_training_steps",
    "check_on_steps",
    "FLOW_SCHEDULER_CONFIG",
    "BASELINES",
    "baseline",
    "RANGE_RTOL",
    "eval_float64",
]

Array = Any

# Schedules may overshoot [t_min, t_max] by float rounding (e.g. t_from_lam(lam(t_max)) in
# float32); anything further out is rejected, never clipped.
RANGE_RTOL = 1e-5


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


# --------------------------------------------------------------------------------------
# Eager argument checks (shared by every public function below)
# --------------------------------------------------------------------------------------


def _x64():
    """Float64 available inside, whatever the user's ``jax_enable_x64``."""
    return jax.enable_x64(True)


def _eager():
    """Evaluate JAX ops on concrete values now, even when called while tracing (a user's
    ``jax.jit`` that builds its schedule inside): the eager paths here need NumPy values."""
    return jax.ensure_compile_time_eval()


def _out_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _check_noise(noise) -> NoiseSchedule:
    if not isinstance(noise, NoiseSchedule):
        raise TypeError(
            "noise must be a hso_jax.noise.NoiseSchedule (e.g. hso_jax.noise.preset('sd15')), "
            f"got {type(noise).__name__}"
        )
    return noise


def _check_nfe(nfe) -> int:
    return _validate.integer(
        "nfe", nfe, 1, meaning=" (the number of intervals; the schedule has nfe + 1 points)"
    )


def _check_real(name: str, value) -> float:
    """A concrete, finite real scalar (Python, NumPy or 0-d array), as a float."""
    if isinstance(value, (bool, str, bytes)) or isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete real number, got {value!r}")
    try:
        arr = np.asarray(value)
    except Exception as e:  # e.g. objects NumPy cannot convert
        raise TypeError(f"{name} must be a real number, got {value!r}") from e
    if arr.shape != () or arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(arr)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _check_positive(name: str, value) -> float:
    v = _check_real(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v:g}")
    return v


def _check_concrete(**scalars) -> None:
    """Validate the concrete (non-traced) scalar arguments of the jit-able helpers."""
    for name, value in scalars.items():
        if isinstance(value, jax.core.Tracer):
            continue
        if np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
        _check_positive(name, value)


def _endpoints(noise: NoiseSchedule, t_start, t_end) -> tuple[float, float]:
    """Resolve ``t_start`` / ``t_end`` (``None`` -> ``t_max`` / ``t_min``) and validate them.

    A value within float rounding (relative 1e-5) of a bound is taken as the bound itself.
    """
    lo, hi = float(noise.t_min), float(noise.t_max)
    tol = RANGE_RTOL * max(1.0, abs(hi))

    def resolve(name, value, default):
        if value is None:
            return default
        v = _check_real(name, value)
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


def _setup(noise, nfe, t_start, t_end) -> tuple[int, float, float]:
    _check_noise(noise)
    n = _check_nfe(nfe)
    t0, t1 = _endpoints(noise, t_start, t_end)
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
    with _x64(), _eager():
        y = np.asarray(getattr(noise, method)(jnp.asarray(padded, jnp.float64)), np.float64)
    return y[: flat.size].reshape(x.shape)


def _finish(t, what: str, nfe: int, ends: tuple[float | None, float | None]) -> jax.Array:
    """Pin the exact end points, cast to the default float dtype, check strict decrease."""
    t = np.array(t, dtype=np.float64)
    if ends[0] is not None:
        t[0] = ends[0]
    if ends[1] is not None:
        t[-1] = ends[1]
    with _eager():
        out = jnp.asarray(t, dtype=_out_dtype())
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


def _float_dtype(*xs):
    dt = jnp.result_type(*xs)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


def _unit_grid(nfe: int, dtype) -> Array:
    """s_i = i / nfe for i = 0..nfe (normalised step position)."""
    return jnp.arange(nfe + 1, dtype=dtype) / nfe


# --------------------------------------------------------------------------------------
# Spacing formulas (pure, jit-able; nfe static)
# --------------------------------------------------------------------------------------

# Each core takes the array namespace ``xp`` (NumPy for the eager float64 path of the public
# schedule functions, jax.numpy for the jit-able helpers) and the unit grid s_i = i / n.


def _time_uniform_core(xp, s, t_start, t_end):
    return t_start + s * (t_end - t_start)


def _time_quadratic_core(xp, s, t_start, t_end):
    a, b = xp.sqrt(t_start), xp.sqrt(t_end)
    return (a + s * (b - a)) ** 2


def _karras_core(xp, s, sigma_max, sigma_min, rho):
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (a + s * (b - a)) ** rho


def _polyexponential_core(xp, s, sigma_max, sigma_min, rho):
    lo, hi = xp.log(sigma_min), xp.log(sigma_max)
    return xp.exp(lo + (1.0 - s) ** rho * (hi - lo))


def _kl_optimal_core(xp, s, sigma_max, sigma_min, c):
    th_max, th_min = xp.arctan(sigma_max / c), xp.arctan(sigma_min / c)
    return c * xp.tan((1.0 - s) * th_max + s * th_min)


def _loglinear_core(xp, sigmas, num_points: int):
    x_old = xp.linspace(0.0, 1.0, sigmas.shape[0], dtype=sigmas.dtype)
    x_new = xp.linspace(0.0, 1.0, num_points, dtype=sigmas.dtype)
    return xp.exp(xp.interp(x_new, x_old, xp.log(sigmas)))


def _np_grid(nfe: int) -> np.ndarray:
    return np.arange(nfe + 1, dtype=np.float64) / nfe


def _sigma_helper(core, sigma_max, sigma_min, nfe, param, param_name):
    """Shared body of the public jit-able sigma helpers."""
    n = _check_nfe(nfe)
    _check_concrete(sigma_max=sigma_max, sigma_min=sigma_min, **{param_name: param})
    if not any(isinstance(v, jax.core.Tracer) for v in (sigma_max, sigma_min)):
        hi, lo = float(np.asarray(sigma_max)), float(np.asarray(sigma_min))
        if not hi > lo:
            raise ValueError(
                f"sigma_max must be greater than sigma_min, got sigma_max={hi:g}, "
                f"sigma_min={lo:g}"
            )
    dt = _float_dtype(sigma_max, sigma_min, param)
    hi, lo = jnp.asarray(sigma_max, dt), jnp.asarray(sigma_min, dt)
    sig = core(jnp, _unit_grid(n, dt), hi, lo, param)
    return sig.at[0].set(hi).at[-1].set(lo)


def karras_sigmas(sigma_max, sigma_min, nfe: int, rho=7.0) -> Array:
    """Karras et al. (EDM) spacing of noise levels, from ``sigma_max`` down to ``sigma_min``.

    .. math::
        \\sigma_i = \\big(\\sigma_{max}^{1/\\rho}
        + \\tfrac{i}{n} (\\sigma_{min}^{1/\\rho} - \\sigma_{max}^{1/\\rho})\\big)^{\\rho},
        \\qquad i = 0, \\dots, n.

    ``rho = 1`` is uniform in sigma; large ``rho`` tends to uniform in ``log sigma``; EDM uses
    ``rho = 7``. Pure and jit-able (``nfe`` static); differentiable in the end points and
    ``rho``. Concrete arguments are validated; traced ones are not.

    Args:
      sigma_max: largest noise level (``sigma_0``), > ``sigma_min`` > 0.
      sigma_min: smallest noise level (``sigma_n``).
      nfe: number of intervals ``n`` (static Python int >= 1).
      rho: exponent, > 0.

    Returns:
      ``(nfe + 1,)`` noise levels, decreasing, with exact end points.

    Reference: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
    Models" (NeurIPS 2022), Eq. 5.
    """
    return _sigma_helper(_karras_core, sigma_max, sigma_min, nfe, rho, "rho")


def polyexponential_sigmas(sigma_max, sigma_min, nfe: int, rho=1.0) -> Array:
    """Polynomial spacing in ``log sigma`` (k-diffusion's "polyexponential"), high to low.

    .. math::
        \\log \\sigma_i = \\log \\sigma_{min}
        + (1 - \\tfrac{i}{n})^{\\rho} (\\log \\sigma_{max} - \\log \\sigma_{min}).

    ``rho = 1`` is uniform in ``log sigma`` (= uniform in log-SNR); ``rho > 1`` puts more steps
    at low noise. Pure and jit-able (``nfe`` static).

    Args:
      sigma_max, sigma_min: end noise levels, ``sigma_max > sigma_min > 0``.
      nfe: number of intervals ``n`` (static Python int >= 1).
      rho: exponent, > 0.

    Returns:
      ``(nfe + 1,)`` noise levels, decreasing, with exact end points.

    Reference: Crowson, k-diffusion (``get_sigmas_polyexponential``); same family as
    DPM-Solver's logSNR-uniform steps for ``rho = 1``.
    """
    return _sigma_helper(_polyexponential_core, sigma_max, sigma_min, nfe, rho, "rho")


def kl_optimal_sigmas(sigma_max, sigma_min, nfe: int, c=1.0) -> Array:
    """AYS Theorem 3.1: the KL-optimal Euler schedule for Gaussian data ``N(0, c^2 I)``.

    .. math::
        \\sigma_i = c \\tan\\big((1 - \\tfrac{i}{n}) \\arctan(\\sigma_{max}/c)
        + \\tfrac{i}{n} \\arctan(\\sigma_{min}/c)\\big),

    i.e. uniform steps in ``theta = arctan(sigma / c)``. For that data the Euler / DDIM solution
    of the probability-flow ODE equals the exact one times ``prod_i cos(theta_{i-1} -
    theta_i)``, which uniform ``theta`` steps bring closest to 1. With ``c = 1`` this is the
    "KL optimal" scheduler of several UIs (not the AYS tables). Pure and jit-able.

    Args:
      sigma_max, sigma_min: end noise levels, ``sigma_max > sigma_min > 0``.
      nfe: number of intervals ``n`` (static Python int >= 1).
      c: data standard deviation, > 0.

    Returns:
      ``(nfe + 1,)`` noise levels, decreasing, with exact end points.

    Reference: Sabour et al., "Align Your Steps" (ICML 2024), Theorem 3.1.
    """
    return _sigma_helper(_kl_optimal_core, sigma_max, sigma_min, nfe, c, "c")


def loglinear_interp(sigmas, num_points: int) -> Array:
    """Resample a noise-level schedule to ``num_points`` points, linearly in ``log sigma``.

    With positions ``x_j = j / (m - 1)`` of the ``m`` input points and ``u_k = k / (M - 1)`` of
    the ``M = num_points`` output points, ``log sigma_out(u)`` is the piecewise-linear
    interpolant of ``(x_j, log sigma_j)``. End points are kept exactly; doubling the number of
    intervals (``m -> 2 m - 1``) inserts the geometric midpoints ``sqrt(sigma_j sigma_{j+1})``.
    This is how the AYS paper extends its schedules to other step counts. Pure and jit-able
    (``num_points`` static).

    Args:
      sigmas: 1-D array of >= 2 positive, strictly monotone noise levels.
      num_points: number of output points (static Python int >= 2).

    Returns:
      ``(num_points,)`` noise levels, monotone in the same direction as ``sigmas``.

    Reference: Sabour et al., "Align Your Steps" (ICML 2024), extension to other step counts.
    """
    m = _validate.integer("num_points", num_points, 2)
    if isinstance(sigmas, (list, tuple)):
        sigmas = np.asarray(sigmas, dtype=float)
    if not hasattr(sigmas, "shape") or not hasattr(sigmas, "dtype"):
        raise TypeError(f"sigmas must be a 1-D array of noise levels, got {type(sigmas).__name__}")
    if len(sigmas.shape) != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 points, got shape {sigmas.shape}")
    if not jnp.issubdtype(sigmas.dtype, jnp.floating):
        raise TypeError(f"sigmas must be a floating-point array, got dtype {sigmas.dtype}")
    if isinstance(sigmas, jax.core.Tracer):
        out = _loglinear_core(jnp, sigmas, m)
        return out.at[0].set(sigmas[0]).at[-1].set(sigmas[-1])
    v = np.asarray(sigmas, np.float64)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"sigmas must be finite and > 0, got {v.tolist()}")
    d = np.diff(v)
    if not (np.all(d < 0) or np.all(d > 0)):
        raise ValueError(f"sigmas must be strictly monotone, got {v.tolist()}")
    # Concrete input: the same formula in float64 NumPy (no per-shape compilation).
    out = _loglinear_core(np, v, m)
    out[0], out[-1] = v[0], v[-1]
    with _eager():
        return jnp.asarray(out, dtype=jax.dtypes.canonicalize_dtype(sigmas.dtype))


# --------------------------------------------------------------------------------------
# Baseline schedules (model times t, strictly decreasing, nfe + 1 points)
# --------------------------------------------------------------------------------------


def time_uniform(noise: NoiseSchedule, nfe: int, *, t_start=None, t_end=None) -> jax.Array:
    """Equal steps in model time: ``t_i = t_start + (i / n) (t_end - t_start)``.

    DPM-Solver's "time_uniform", recommended there for latent / high-resolution models; the
    AYS paper's initialisation for discrete-time models.

    Args:
      noise: the noise process.
      nfe: number of intervals ``n`` (>= 1); a multistep solver spends ``n`` network
        evaluations on the ``n + 1`` points.
      t_start: start time (most noise); default ``noise.t_max``. Keyword-only.
      t_end: end time; default ``noise.t_min``. Both in ``[t_min, t_max]``, ``t_start > t_end``.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing from ``t_start`` to ``t_end``.

    Reference: Lu et al., "DPM-Solver" (NeurIPS 2022), step-size schedules.
    """
    n, t0, t1 = _setup(noise, nfe, t_start, t_end)
    t = _time_uniform_core(np, _np_grid(n), t0, t1)
    return _finish(t, "time_uniform", n, (t0, t1))


def time_quadratic(noise: NoiseSchedule, nfe: int, *, t_start=None, t_end=None) -> jax.Array:
    """Equal steps in ``sqrt(t)``: ``t_i = (sqrt(t_start) + (i/n)(sqrt(t_end) - sqrt(t_start)))^2``.

    DPM-Solver's "time_quadratic" (the quadratic DDIM spacing used for low-resolution data):
    steps shrink quadratically towards ``t_end``.

    Args:
      noise: the noise process.
      nfe: number of intervals ``n`` (>= 1); ``n + 1`` points.
      t_start: start time; default ``noise.t_max``. Keyword-only.
      t_end: end time; default ``noise.t_min``. Both in ``[t_min, t_max]``, ``t_start > t_end``.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing from ``t_start`` to ``t_end``.

    Reference: Lu et al., "DPM-Solver" (NeurIPS 2022), step-size schedules; Song et al.,
    "Denoising Diffusion Implicit Models" (ICLR 2021), quadratic sub-sequence selection.
    """
    n, t0, t1 = _setup(noise, nfe, t_start, t_end)
    t = _time_quadratic_core(np, _np_grid(n), t0, t1)
    return _finish(t, "time_quadratic", n, (t0, t1))


def logsnr_uniform(noise: NoiseSchedule, nfe: int, *, t_start=None, t_end=None) -> jax.Array:
    """Equal steps in half log-SNR: ``lam_i = lam(t_start) + (i/n)(lam(t_end) - lam(t_start))``,
    ``t_i = t_from_lam(lam_i)``.

    DPM-Solver's "logSNR" steps, recommended there for pixel-space models; equal to
    :func:`polyexponential` with ``rho = 1`` (``lam = -log sigma_edm``).

    Args:
      noise: the noise process.
      nfe: number of intervals ``n`` (>= 1); ``n + 1`` points.
      t_start: start time; default ``noise.t_max``. Keyword-only.
      t_end: end time; default ``noise.t_min``. Both in ``[t_min, t_max]``, ``t_start > t_end``.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing from ``t_start`` to ``t_end``.

    Reference: Lu et al., "DPM-Solver" (NeurIPS 2022), step-size schedules.
    """
    n, t0, t1 = _setup(noise, nfe, t_start, t_end)
    lam0, lam1 = _finite_lam_ends(noise, "logsnr_uniform", t0, t1)
    lam = _time_uniform_core(np, _np_grid(n), lam0, lam1)  # linear in lam
    t = eval_float64(noise, "t_from_lam", lam)
    return _finish(t, "logsnr_uniform", n, (t0, t1))


def _finite_lam_ends(noise, what: str, t0: float, t1: float) -> np.ndarray:
    """lam at the end points, which a spacing in lam / sigma_edm needs finite (a flow model's
    range [0, 1] has lam = -inf at t = 1 and +inf at t = 0)."""
    lam = eval_float64(noise, "lam", [t0, t1])
    if not np.all(np.isfinite(lam)):
        bad = t0 if not np.isfinite(lam[0]) else t1
        raise ValueError(
            f"{what} spaces steps in log-SNR, which is infinite at t = {bad:g} of {noise!r}; "
            "pass t_start= < 1 and t_end= > 0 (e.g. t_start=0.999, t_end=0.001)"
        )
    return lam


def _from_sigmas(noise, core, what, n, t0, t1, param) -> jax.Array:
    """A sigma_edm spacing between sigma_edm(t0) and sigma_edm(t1), converted to times."""
    s_max, s_min = np.exp(-_finite_lam_ends(noise, what, t0, t1))
    t = eval_float64(noise, "t_from_sigma_edm", core(np, _np_grid(n), s_max, s_min, param))
    return _finish(t, what, n, (t0, t1))


def karras(
    noise: NoiseSchedule, nfe: int, rho: float = 7.0, *, t_start=None, t_end=None
) -> jax.Array:
    """Karras (EDM) spacing in the EDM noise level ``sigma_edm = sigma / alpha``, as times.

    ``sigma_i = (smax^(1/rho) + (i/n)(smin^(1/rho) - smax^(1/rho)))^rho`` with
    ``smax = sigma_edm(t_start)``, ``smin = sigma_edm(t_end)``, then ``t_i =
    t_from_sigma_edm(sigma_i)`` (see :func:`karras_sigmas`). This is also HSO's initialisation
    family and AYS's initialisation for continuous-time models (``rho = 7``).

    Args:
      noise: the noise process.
      nfe: number of intervals ``n`` (>= 1); ``n + 1`` points.
      rho: exponent, > 0 (EDM: 7).
      t_start: start time; default ``noise.t_max``. Keyword-only.
      t_end: end time; default ``noise.t_min``. Both in ``[t_min, t_max]``, ``t_start > t_end``.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing from ``t_start`` to ``t_end``.

    Reference: Karras et al., "Elucidating the Design Space" (NeurIPS 2022), Eq. 5.
    """
    n, t0, t1 = _setup(noise, nfe, t_start, t_end)
    rho = _check_positive("rho", rho)
    return _from_sigmas(noise, _karras_core, "karras", n, t0, t1, rho)


def polyexponential(
    noise: NoiseSchedule, nfe: int, rho: float = 1.0, *, t_start=None, t_end=None
) -> jax.Array:
    """Polynomial spacing in ``log sigma_edm`` (k-diffusion's "polyexponential"), as times.

    ``log sigma_i = log smin + (1 - i/n)^rho (log smax - log smin)`` between ``smax =
    sigma_edm(t_start)`` and ``smin = sigma_edm(t_end)`` (see :func:`polyexponential_sigmas`);
    ``rho = 1`` equals :func:`logsnr_uniform`.

    Args:
      noise: the noise process.
      nfe: number of intervals ``n`` (>= 1); ``n + 1`` points.
      rho: exponent, > 0.
      t_start: start time; default ``noise.t_max``. Keyword-only.
      t_end: end time; default ``noise.t_min``. Both in ``[t_min, t_max]``, ``t_start > t_end``.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing from ``t_start`` to ``t_end``.

    Reference: Crowson, k-diffusion (``get_sigmas_polyexponential``).
    """
    n, t0, t1 = _setup(noise, nfe, t_start, t_end)
    rho = _check_positive("rho", rho)
    return _from_sigmas(noise, _polyexponential_core, "polyexponential", n, t0, t1, rho)


def kl_optimal(
    noise: NoiseSchedule, nfe: int, c: float = 1.0, *, t_start=None, t_end=None
) -> jax.Array:
    """The AYS closed-form KL-optimal schedule for Gaussian data, in ``sigma_edm``, as times.

    ``sigma_i = c tan((1 - i/n) atan(smax/c) + (i/n) atan(smin/c))`` with ``smax =
    sigma_edm(t_start)``, ``smin = sigma_edm(t_end)`` (see :func:`kl_optimal_sigmas`). For data
    ``N(0, c^2 I)`` and the Euler / DDIM solver it minimises the KL divergence of the output
    among all schedules with these end points; ``c = 1`` is the common "KL optimal" UI scheduler.

    Args:
      noise: the noise process.
      nfe: number of intervals ``n`` (>= 1); ``n + 1`` points.
      c: data standard deviation, > 0.
      t_start: start time; default ``noise.t_max``. Keyword-only.
      t_end: end time; default ``noise.t_min``. Both in ``[t_min, t_max]``, ``t_start > t_end``.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing from ``t_start`` to ``t_end``.

    Reference: Sabour et al., "Align Your Steps" (ICML 2024), Theorem 3.1.
    """
    n, t0, t1 = _setup(noise, nfe, t_start, t_end)
    c = _check_positive("c", c)
    return _from_sigmas(noise, _kl_optimal_core, "kl_optimal", n, t0, t1, c)


# --------------------------------------------------------------------------------------
# Published AYS schedules
# --------------------------------------------------------------------------------------

AYS_TABLES = types.MappingProxyType(
    {
        # sigma_edm, high to low, 10 steps (11 values), as published with the AYS paper.
        "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
        "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
        "deepfloyd-if": (
            160.41, 8.081, 3.315, 1.885, 1.207, 0.785, 0.553, 0.293, 0.186, 0.030, 0.006,
        ),
        "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
    }
)
"""Published 10-step Align-Your-Steps schedules (EDM noise levels, high to low).

``sd15`` / ``sdxl`` (scaled-linear betas, timesteps 999 .. 0), ``deepfloyd-if`` (stage 1,
cosine "squaredcos_cap_v2" betas, timesteps 995 .. 0), ``svd`` (Stable Video Diffusion, EDM
form, sigma 700 .. 0.002)."""

# The tables are printed to 3 decimals or 5 significant digits: half a unit of the last digit.
_TABLE_ATOL = 5e-4
_TABLE_RTOL = 5e-5


def _fit_table(table: np.ndarray, s_lo: float, s_hi: float, model: str, noise) -> tuple:
    """Match the table's end points to the process's sigma_edm range ``[s_lo, s_hi]``.

    An end within the table's printing precision of a bound becomes the bound (flagged so the
    caller pins the exact time); any value further outside the range is an error.
    """
    sig = table.copy()
    snapped = [False, False]
    for j, bound in ((0, s_hi), (-1, s_lo)):
        # (an infinite bound -- a flow model's sigma_edm(1) -- is never within precision)
        if math.isfinite(bound) and abs(sig[j] - bound) <= _TABLE_ATOL + _TABLE_RTOL * bound:
            sig[j] = bound
            snapped[j] = True
    outside = [float(x) for x in sig if x > s_hi or x < s_lo]
    if outside:
        hint = (
            " (e.g. hso_jax.noise.EDM(t_min=0.002, t_max=700.0))" if model == "svd" else ""
        )
        raise ValueError(
            f"model={model!r}: the AYS table spans sigma_edm [{table[-1]:g}, {table[0]:g}], but "
            f"{noise!r} covers only [{s_lo:.6g}, {s_hi:.6g}] (t in [{noise.t_min:g}, "
            f"{noise.t_max:g}]); out of range: {outside}. The table is not clipped: use a noise "
            f"process that covers it{hint}, or pass t_start= and t_end= to rescale the table's "
            "spacing onto a range of this process"
        )
    return sig, snapped


def ays(
    noise: NoiseSchedule, nfe: int, model: str = "sd15", *, t_start=None, t_end=None
) -> jax.Array:
    """A published Align-Your-Steps schedule, log-linearly interpolated to ``nfe`` intervals.

    The 10-step table :data:`AYS_TABLES` ``[model]`` (EDM noise levels) is resampled with
    :func:`loglinear_interp` to ``nfe + 1`` points (``nfe = 10`` returns the table itself) and
    converted to model times with ``noise.t_from_sigma_edm``.

    End points. Without ``t_start`` / ``t_end`` the table keeps its own noise range: a table end
    that agrees with the process's ``sigma_edm(t_max)`` or ``sigma_edm(t_min)`` up to the
    table's printing precision (3 decimals or 5 significant digits) is taken as that exact
    bound (so ``sd15`` on :func:`~hso_jax.noise.preset` ``("sd15")`` runs from ``t_max`` to
    ``t_min``, timesteps 999 .. 0), other ends are used as published (``deepfloyd-if`` starts
    at timestep 995). The published sigma lists and timestep lists are not fully consistent:
    ``sd15``'s 0.399 lies at step 124.6 of SD's schedule, so it exports as timestep 125, not
    the published 124. A table reaching outside the process's range raises ``ValueError``
    (nothing is clipped), e.g. ``svd`` (sigma up to 700) on ``sd15``. With ``t_start`` and/or
    ``t_end`` (the missing one defaults to ``t_max`` / ``t_min``) the interpolated table's
    spacing -- its normalised ``log sigma`` positions -- is rescaled affinely onto
    ``[log sigma_edm(t_end), log sigma_edm(t_start)]``; this also lets a table be used on a
    process that does not cover it.

    Args:
      noise: the noise process.
      nfe: number of intervals ``n`` (>= 1); ``n + 1`` points.
      model: which table: ``"sd15"``, ``"sdxl"``, ``"deepfloyd-if"`` or ``"svd"``.
      t_start: start time for rescaling (see above); keyword-only.
      t_end: end time for rescaling (see above); keyword-only.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing.

    Reference: Sabour et al., "Align Your Steps: Optimizing Sampling Schedules in Diffusion
    Models" (ICML 2024): log-linear extension to other step counts, published schedules.
    """
    _check_noise(noise)
    n = _check_nfe(nfe)
    if not isinstance(model, str) or model not in AYS_TABLES:
        raise ValueError(f"model must be one of {sorted(AYS_TABLES)} (AYS tables), got {model!r}")
    table = np.asarray(AYS_TABLES[model], np.float64)
    if t_start is None and t_end is None:
        s_lo = float(eval_float64(noise, "sigma_edm", noise.t_min))
        s_hi = float(eval_float64(noise, "sigma_edm", noise.t_max))
        sig, snapped = _fit_table(table, s_lo, s_hi, model, noise)
        t = eval_float64(noise, "t_from_sigma_edm", _loglinear_core(np, sig, n + 1))
        ends = (noise.t_max if snapped[0] else None, noise.t_min if snapped[1] else None)
        return _finish(t, f"ays(model={model!r})", n, ends)
    t0, t1 = _endpoints(noise, t_start, t_end)
    log_sig = np.log(_loglinear_core(np, table, n + 1))
    u = (log_sig - log_sig[-1]) / (log_sig[0] - log_sig[-1])  # 1 at the start, 0 at the end
    lo, hi = -eval_float64(noise, "lam", [t1, t0])  # log sigma_edm = -lam
    t = eval_float64(noise, "t_from_lam", -(lo + u * (hi - lo)))
    return _finish(t, f"ays(model={model!r})", n, (t0, t1))


# --------------------------------------------------------------------------------------
# Flow-matching models (SD3, Flux, Wan): their default schedules, Beta and Optimal-Steps
# --------------------------------------------------------------------------------------


def _check_flow_model(noise, what: str) -> RectifiedFlow:
    """A flow-matching model preset: a RectifiedFlow whose range is the whole [0, 1]."""
    _check_noise(noise)
    if not isinstance(noise, RectifiedFlow):
        raise TypeError(
            f"{what} needs a flow-matching model (a RectifiedFlow preset: sd3, flux-dev, "
            f"flux-schnell, wan or flow with shift=), got {noise!r}"
        )
    if noise.t_min > 0.0 or noise.t_max < 1.0:
        raise ValueError(
            f"{what} gives the sigmas a flow model's pipeline steps through, from 1 to 0, but "
            f"{noise!r} covers only t in [{noise.t_min:g}, {noise.t_max:g}]; use a model preset "
            "(e.g. hso_jax.noise.preset('flow', shift=1.0) or preset('sd3'))"
        )
    return noise


# UniPCMultistepScheduler (use_flow_sigmas) lowers a first sigma within 1e-6 of 1 by 1e-6.
_UNIPC_EPS = 1e-6


def _flow_pipeline_sigmas(noise: RectifiedFlow, n: int, spacing: str) -> np.ndarray:
    """The ``n`` sigmas (no final 0) of the diffusers rule ``spacing``, float64."""
    shift = lambda u: np.where(u == 1.0, 1.0, noise.shift_sigma(u))  # noqa: E731 (pin 1 -> 1)
    n_train = noise.num_train_timesteps
    if spacing == "euler":
        # FlowMatchEulerDiscreteScheduler: __init__ stores sigma_min = the *shifted* last
        # training sigma (static shift only); set_timesteps(n) spaces timesteps linearly from
        # sigma_max to sigma_min and shifts them (again).
        lo = 1.0 / n_train if noise.mu is not None else float(shift(np.float64(1.0 / n_train)))
        return shift(np.linspace(1.0 * n_train, lo * n_train, n) / n_train)
    if spacing == "flux":
        return shift(np.linspace(1.0, 1.0 / n, n))  # FluxPipeline's sigmas, then set_timesteps
    if spacing == "unipc":
        sig = shift(np.linspace(1.0, 1.0 / n_train, n + 1)[:-1])
        if abs(sig[0] - 1.0) < _UNIPC_EPS:
            sig[0] -= _UNIPC_EPS
        return sig
    raise ValueError(f"spacing must be 'euler', 'flux' or 'unipc', got {spacing!r}")


def flow_default(noise: RectifiedFlow, nfe: int) -> jax.Array:
    """The schedule a flow model's diffusers pipeline steps through by default, with the final 0.

    With ``n = nfe`` inference steps and the shift ``a s / (1 + (a - 1) s)`` of the preset
    (:meth:`~hso_jax.noise.RectifiedFlow.shift_sigma`; ``a = e^mu`` for Flux), by the preset's
    ``spacing``:

    * ``"euler"`` (``sd3``, ``flow`` with ``shift=``; StableDiffusion3Pipeline and
      FlowMatchEulerDiscreteScheduler ``set_timesteps(n)``): ``u_i`` linear from 1 to
      ``shift(1/1000)`` in ``n`` points, ``sigma_i = shift(u_i)``. The last point is shifted
      twice (diffusers' scheduler stores the shifted ``sigma_min`` and shifts again): for SD3
      the schedule ends at 0.00893, not 0.00299. This is what the pipeline does, kept as is.
    * ``"flux"`` (``flux-dev``, ``flux-schnell``; FluxPipeline): ``sigma_i =
      shift(linspace(1, 1/n, n))``; for ``flux-dev`` the dynamic shift at the preset's
      resolution, for ``flux-schnell`` no shift.
    * ``"unipc"`` (``wan``; WanPipeline with its UniPCMultistepScheduler, ``use_flow_sigmas``):
      ``sigma_i = shift(linspace(1, 1/1000, n + 1)[:-1])``, the first lowered by 1e-6 from 1
      (as the scheduler does, to keep log(alpha) finite).

    then ``sigma_n = 0``. Model time is ``t = sigma``; the network sees ``1000 sigma_i`` for
    ``i < n``. Diffusers computes in float32; these values are the same formulas in float64.

    Args:
      noise: a flow-model preset (``hso_jax.noise.preset("sd3")``, ``("flux-dev",
        resolution=1024)``, ``("flux-schnell")``, ``("wan", shift=5.0)``, ``("flow",
        shift=1.0)``).
      nfe: number of steps ``n`` (>= 1): ``n`` network evaluations of the Euler sampler.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing, from 1 (Wan: 1 - 1e-6) to 0.

    References: diffusers ``FlowMatchEulerDiscreteScheduler.set_timesteps``,
    ``FluxPipeline.__call__``, ``UniPCMultistepScheduler.set_timesteps``; Esser et al., "Scaling
    Rectified Flow Transformers" (SD3, ICML 2024), Sec. 5.3.2.
    """
    ns = _check_flow_model(noise, "flow_default")
    n = _check_nfe(nfe)
    sig = _flow_pipeline_sigmas(ns, n, ns.spacing)
    return _finish(np.append(sig, 0.0), f"flow_default({ns.name!r})", n, (None, 0.0))


BETA_VARIANTS = ("comfyui", "diffusers")

# Size of ComfyUI's discrete sigma table: ModelSamplingFlux (Flux) has 10000 entries,
# ModelSamplingDiscreteFlow (SD3, Wan, other flow models) 1000.
_COMFYUI_TABLE_SIZE = {"flux": 10000, "euler": 1000, "unipc": 1000}


def beta(
    noise: RectifiedFlow,
    nfe: int,
    alpha: float = 0.6,
    beta: float = 0.6,
    *,
    variant: str = "comfyui",
) -> jax.Array:
    """Beta-quantile steps (Lee et al. 2024) for a flow model, with the final 0.

    Both variants place ``n = nfe`` points at quantiles ``F^{-1}(q)`` of the Beta(``alpha``,
    ``beta``) distribution, ``q`` falling from 1 (for ``alpha = beta = 0.6`` the points are
    dense at both ends), then append 0; they differ in the grid of ``q`` and in the variable
    the quantiles are spread over:

    * ``"comfyui"`` (default; ComfyUI's "beta" scheduler): over the *unshifted* training time.
      With ComfyUI's table of ``N`` sigmas ``shift(k / N)``, ``k = 1 .. N`` (``N = 10000`` for
      Flux's ``ModelSamplingFlux``, 1000 otherwise), ``k_i = rint(F^{-1}(1 - i/n) (N - 1))``
      for ``i = 0 .. n - 1`` and ``sigma_i = shift((k_i + 1) / N)``. The shift therefore
      moves the interior points, as it does for the model's default schedule. ComfyUI drops a
      step that rounds onto the previous one; here that raises ``ValueError`` instead.
    * ``"diffusers"`` (``use_beta_sigmas=True`` of FlowMatchEulerDiscreteScheduler):
      linearly between the end points of the model's default sigmas at ``n`` steps (see
      :func:`flow_default`; Wan's UniPC rule is replaced by the Euler scheduler's):
      ``sigma_i = s_min + F^{-1}(1 - i/(n - 1)) (s_max - s_min)``. The shift only moves the
      ends. This is the paper's formula in sigma, with the shifted range.

    The paper defines the quantiles over the model's time variable; ComfyUI's variant is the
    common one for flow models (Flux + "beta"), so it is the default.

    Args:
      noise: a flow-model preset (see :func:`flow_default`).
      nfe: number of steps ``n`` (>= 1).
      alpha: first shape parameter of the Beta distribution, > 0.
      beta: second shape parameter, > 0.
      variant: ``"comfyui"`` or ``"diffusers"`` (keyword-only).

    Returns:
      ``(nfe + 1,)`` model times (``t = sigma``), strictly decreasing, ending at 0.

    Reference: Lee et al., "Beta Sampling is All You Need: Efficient Image Generation Strategy
    for Diffusion Models using Stepwise Spectral Analysis" (arXiv:2407.12173, 2024); ComfyUI
    ``comfy/samplers.py`` (``beta_scheduler``); diffusers ``_convert_to_beta``.
    """
    import scipy.stats  # a dependency of jax

    ns = _check_flow_model(noise, "beta")
    n = _check_nfe(nfe)
    a = _check_positive("alpha", alpha)
    b = _check_positive("beta", beta)
    if not isinstance(variant, str) or variant not in BETA_VARIANTS:
        raise ValueError(f"variant must be one of {list(BETA_VARIANTS)}, got {variant!r}")
    what = f"beta({ns.name!r}, variant={variant!r})"
    if variant == "comfyui":
        size = _COMFYUI_TABLE_SIZE[ns.spacing]
        k = np.rint(scipy.stats.beta.ppf(1.0 - np.arange(n) / n, a, b) * (size - 1))
        dup = np.flatnonzero(np.diff(k) == 0)
        if dup.size:
            raise ValueError(
                f"{what} with nfe={n}: steps {int(dup[0])} and {int(dup[0]) + 1} round to the "
                f"same entry {int(k[dup[0]])} of ComfyUI's {size}-entry sigma table (ComfyUI "
                "would silently drop one step); use a smaller nfe"
            )
        u = (k + 1.0) / size
        sig = np.where(u == 1.0, 1.0, ns.shift_sigma(u))
    else:
        spacing = "euler" if ns.spacing == "unipc" else ns.spacing
        ends = _flow_pipeline_sigmas(ns, n, spacing)
        s_max, s_min = float(ends[0]), float(ends[-1])
        sig = s_min + scipy.stats.beta.ppf(1.0 - np.linspace(0.0, 1.0, n), a, b) * (s_max - s_min)
    return _finish(np.append(sig, 0.0), what, n, (None, 0.0))


OSS_TABLES = types.MappingProxyType(
    {
        # flow sigmas (= t), high to low, as published with the Optimal-Steps paper (ComfyUI's
        # OptimalStepsScheduler); the last value is replaced by 0 when used.
        "flux": (0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808,
                 0.001),
        "wan": (1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968,
                0.96, 0.946, 0.927, 0.902, 0.864, 0.776, 0.539, 0.208, 0.001),
    }
)  # fmt: skip
"""Published Optimal-Steps (OSS) schedules: ``flux`` (FLUX.1-dev, 10 steps) and ``wan``
(Wan 2.1, 20 steps), flow sigmas from high to low."""

_OSS_DEFAULT_TABLE = {"flux-dev": "flux", "wan": "wan"}


def optimal_steps(noise: RectifiedFlow, nfe: int, model: str | None = None) -> jax.Array:
    """A published Optimal-Steps schedule, log-linearly interpolated to ``nfe`` steps, with 0.

    As ComfyUI's OptimalStepsScheduler: the table :data:`OSS_TABLES` ``[model]`` (``n_0 + 1``
    sigmas) is used as is when ``nfe = n_0``, else resampled to ``nfe + 1`` points with
    :func:`loglinear_interp` (linear in ``log sigma`` over equally spaced positions); then the
    last value (0.001) is replaced by 0. The values are flow sigmas, i.e. model times; the
    tables were searched for the models' own shifted schedules, so they do not depend on the
    preset's shift or resolution.

    Args:
      noise: a flow-model preset (see :func:`flow_default`).
      nfe: number of steps (>= 1).
      model: ``"flux"`` or ``"wan"``; default: the table of the preset (``flux-dev`` -> flux,
        ``wan`` -> wan; other presets must name one).

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing, ending at 0.

    Reference: Pei et al., "Optimal Stepsize for Diffusion Sampling" (arXiv:2503.21774,
    2025), published schedules; ComfyUI ``comfy_extras/nodes_optimalsteps.py``.
    """
    ns = _check_flow_model(noise, "optimal_steps")
    n = _check_nfe(nfe)
    if model is None:
        model = _OSS_DEFAULT_TABLE.get(ns.name)
        if model is None:
            raise ValueError(
                f"model must be given for noise {ns.name!r} (no table of its own): one of "
                f"{sorted(OSS_TABLES)}"
            )
    if not isinstance(model, str) or model not in OSS_TABLES:
        raise ValueError(f"model must be one of {sorted(OSS_TABLES)} (OSS tables), got {model!r}")
    table = np.asarray(OSS_TABLES[model], np.float64)
    sig = table if n + 1 == table.size else _loglinear_core(np, table, n + 1)
    sig = sig.copy()
    sig[-1] = 0.0
    return _finish(sig, f"optimal_steps(model={model!r})", n, (None, 0.0))


# --------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------


def _concrete_schedule(ts, noise, what: str) -> np.ndarray:
    _check_noise(noise)
    ts = getattr(ts, "t", ts)  # an OptimizeResult: its schedule
    ts = check_schedule(ts, noise)
    if isinstance(ts, jax.core.Tracer):
        raise TypeError(f"{what} is eager: ts must be a concrete array, not a traced value")
    return np.asarray(ts, np.float64)


# The scheduler config that makes FlowMatchEulerDiscreteScheduler step through given sigmas as
# they are: set_timesteps(sigmas=...) applies the static shift (sigma' = shift s / (1 + (shift -
# 1) s)) or, with use_dynamic_shifting, the time shift with the pipeline's mu, to the sigmas it
# is given; shift 1 without dynamic shifting is the identity.
FLOW_SCHEDULER_CONFIG = types.MappingProxyType({"shift": 1.0, "use_dynamic_shifting": False})

_FLOW_PIPELINES = {
    "sd3": "StableDiffusion3Pipeline",
    "flux-dev": "FluxPipeline",
    "flux-schnell": "FluxPipeline",
    "wan": "WanPipeline",
}

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


def _flow_pipeline_note(noise: RectifiedFlow) -> tuple[str, str]:
    pipeline = _FLOW_PIPELINES.get(noise.name, "FluxPipeline / StableDiffusion3Pipeline")
    note = (
        f"pass sigmas=sigmas to {pipeline} after pipe.scheduler = FlowMatchEulerDiscreteScheduler"
        ".from_config(pipe.scheduler.config, shift=1.0, use_dynamic_shifting=False) (its "
        "set_timesteps shifts the sigmas it is given, with the static shift or the pipeline's "
        "mu; shift 1 keeps them): it steps through exactly these sigmas and its final 0"
    )
    if noise.name == "wan":
        note = (
            "WanPipeline takes no sigmas= (it calls scheduler.set_timesteps(num_inference_steps)); "
            "use hso_jax.export.diffusers_scheduler(...), which installs the schedule in the "
            "pipeline's scheduler"
        )
    return pipeline, note


def to_diffusers(ts, noise: NoiseSchedule) -> dict[str, Any]:
    """The values diffusers takes for a schedule: its network calls and where it ends.

    A schedule of ``n + 1`` points makes ``n`` network calls, at ``ts[:-1]`` (one-call
    solvers); its last point is where the last step lands, which in diffusers is the
    scheduler's ``final_sigmas_type``: the data end ``t = 0`` (``"zero"``) or ``t_min``
    (``"sigma_min"``, the first training step). A schedule whose last point is neither (HSO's
    multistep flavour ends at its optimised ``t_eps``) has no diffusers form; it is refused,
    as is one whose network points lie between training steps (diffusers passes integer
    timesteps). Optimise for the target instead: ``hso_jax.optimize(..., target=...)``;
    :func:`hso_jax.export.export` adds each scheduler's config and the code to paste.

    **Discrete-time processes**: ``timesteps[i] = round(N t_i) - 1`` for the ``n`` network
    points (``scheduler.set_timesteps(timesteps=...)`` / ``pipe(..., timesteps=...)``),
    ``sigmas`` the ``n + 1`` values ``sigma / alpha`` the scheduler steps through (its final
    value included: 0 or ``sigma(t_min)``), ``final_sigmas_type`` and ``nfe = n``.

    **Flow models** (:class:`~hso_jax.noise.RectifiedFlow`: ``sd3``, ``flux-dev``, ...): the
    schedule must end at ``t = 0`` (the flow schedulers append the final 0). ``sigmas`` are
    the ``n`` flow times ``t`` to pass as ``pipe(..., sigmas=sigmas)``, ``timesteps`` the
    network's ``1000 sigma``; ``scheduler_config`` (:data:`FLOW_SCHEDULER_CONFIG`: ``shift=1.0,
    use_dynamic_shifting=False``) keeps ``FlowMatchEulerDiscreteScheduler`` from shifting the
    sigmas a second time; ``pipeline`` and ``note`` say so in words.

    Args:
      ts: schedule (strictly decreasing model times), ending at 0 or at ``t_min``, or an
        :class:`~hso_jax.optimizers.OptimizeResult` (its ``t``).
      noise: a discrete-time process (e.g. ``preset("sd15")``) or a flow model's.

    Returns:
      Discrete: ``{"timesteps": list[int], "sigmas": list[float], "final_sigmas_type": str,
      "nfe": int}``. Flow: ``{"sigmas", "timesteps": list[float], "scheduler_config": dict,
      "pipeline", "note": str, "nfe": int}``.

    Raises:
      ValueError: a continuous-time process other than a flow, another end, or network
        points off the training steps.
    """
    t = _concrete_schedule(ts, noise, "to_diffusers")
    end = end_of(t, noise)
    n = t.shape[0] - 1
    if isinstance(noise, RectifiedFlow):
        if end != "zero":
            raise ValueError(
                f"ts ends at t = {t[-1]:.9g}, but the flow schedulers of diffusers append a final "
                f"0: the pipeline would make {n + 1} network calls on another trajectory. Use a "
                "schedule ending at 0 (hso_jax.optimize(..., target='diffusers:euler'))"
            )
        pipeline, note = _flow_pipeline_note(noise)
        sig = t[:-1]
        return {
            "sigmas": [float(x) for x in sig],
            "timesteps": [float(x) for x in noise.num_train_timesteps * sig],
            "scheduler_config": dict(FLOW_SCHEDULER_CONFIG),
            "pipeline": pipeline,
            "note": note,
            "nfe": n,
        }
    if not noise.is_discrete:
        raise ValueError(
            f"to_diffusers needs a discrete-time process with integer training steps, but "
            f"{noise!r} is continuous; export its sigmas with to_comfyui or use the times ts "
            "directly"
        )
    if end == "free":
        raise ValueError(
            f"ts ends at t = {t[-1]:.9g}, but diffusers' schedulers end their last step at the "
            f"data (final_sigmas_type='zero') or at t_min = {noise.t_min:g} ('sigma_min'); "
            "optimise for a diffusers target (hso_jax.optimize(..., target="
            "'diffusers:unipc'); hso-jax optimize --format diffusers)"
        )
    check_on_steps(t, noise, "diffusers")
    return {
        "timesteps": [int(x) for x in noise.index_from_t(t[:-1])],
        "sigmas": [float(x) for x in eval_float64(noise, "sigma_edm", t)],
        "final_sigmas_type": "zero" if end == "zero" else "sigma_min",
        "nfe": n,
    }


def to_comfyui(ts, noise: NoiseSchedule) -> list[float]:
    """A schedule as a k-diffusion / ComfyUI ``SIGMAS`` list (high to low), exactly.

    The values are ``sigma_edm(t) = sigma / alpha``, the noise level k-diffusion and ComfyUI
    use for VP (eps / v) and EDM models, ending at 0 where the schedule ends at the data
    (``t = 0``). For :class:`~hso_jax.noise.RectifiedFlow` they are the flow times ``t``
    themselves, because ComfyUI's flow models (SD3, Flux) read ``sigma`` as
    ``x = (1 - sigma) x_0 + sigma eps``. A list of ``n + 1`` values makes ``n`` network calls
    with a one-call sampler (Euler, DPM++ 2M; Heun: ``2 n``, ``2 n - 1`` when it ends at 0).
    Nothing is appended or replaced: a schedule optimised to end at 0 gives a list ending at
    0 (ComfyUI's convention), one optimised with a free end keeps it.

    ComfyUI evaluates a discrete-time model at the training step nearest to each sigma, so
    for such a model the network points must lie on training steps (``ValueError``
    otherwise, as for :func:`to_diffusers`).

    Paste the list into ComfyUI's ``SamplerCustom`` (or ``SamplerCustomAdvanced``) through a
    ``SIGMAS`` input; :func:`hso_jax.export.export` names the sampler that equals the
    optimised one.

    Args:
      ts: schedule (strictly decreasing model times), or an
        :class:`~hso_jax.optimizers.OptimizeResult` (its ``t``).
      noise: its noise process.

    Returns:
      List of Python floats, decreasing.
    """
    t = _concrete_schedule(ts, noise, "to_comfyui")
    if noise.is_discrete:
        check_on_steps(t, noise, "ComfyUI")
    sig = t.copy() if isinstance(noise, RectifiedFlow) else eval_float64(noise, "sigma_edm", t)
    return [float(x) for x in sig]


# --------------------------------------------------------------------------------------
# Where a schedule ends, and the training-step grid of discrete-time models
# --------------------------------------------------------------------------------------

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
    _check_noise(noise)
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


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------

BASELINES = types.MappingProxyType(
    {
        "time": time_uniform,
        "quadratic": time_quadratic,
        "logsnr": logsnr_uniform,
        "karras": karras,
        "polyexponential": polyexponential,
        "kl-optimal": kl_optimal,
        "ays": ays,
        "default": flow_default,
        "beta": beta,
        "oss": optimal_steps,
    }
)
"""The one name -> schedule table (read-only): every ``f(noise, nfe, ...)`` of this module by
the name the rest of the package (optimisers' ``init``, teacher grids, the CLI's ``--kind``)
uses for it. ``"uniform"`` is accepted as an alias of ``"time"`` by :func:`baseline`."""

_ALIASES = {"uniform": "time"}


def baseline(name: str, noise: NoiseSchedule, nfe: int, **kwargs) -> jax.Array:
    """The baseline schedule called ``name`` in :data:`BASELINES` (``"uniform"`` = ``"time"``).

    Args:
      name: a key of :data:`BASELINES` or an alias.
      noise, nfe, kwargs: passed to the schedule function.

    Raises:
      ValueError: an unknown name (the known ones are listed).
    """
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if not isinstance(key, str) or key not in BASELINES:
        raise ValueError(
            f"unknown baseline schedule {name!r}; known: {sorted(BASELINES)} (alias "
            "'uniform' = 'time')"
        )
    return BASELINES[key](noise, nfe, **kwargs)
