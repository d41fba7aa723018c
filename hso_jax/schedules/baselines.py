"""Baseline schedules: time-uniform, time-quadratic, logSNR-uniform, Karras, polyexponential,
KL-optimal, and their spacing formulas.

Every baseline is ``f(noise, nfe, ...) -> ts`` with ``nfe + 1`` points from ``noise.t_max`` to
``noise.t_min`` (the keyword-only ``t_start`` / ``t_end`` move the ends inside that range). The
spacing maths lives in small pure functions of the end points (:func:`karras_sigmas`,
:func:`polyexponential_sigmas`, :func:`kl_optimal_sigmas`, :func:`loglinear_interp`) that can
be ``jit``-ed, ``vmap``-ed and differentiated (``nfe`` / ``num_points`` static).

References:
  Lu et al., "DPM-Solver" (NeurIPS 2022), step-size schedules (time-uniform, time-quadratic and
  logSNR-uniform steps); Karras et al., "Elucidating the Design Space of Diffusion-Based
  Generative Models" (NeurIPS 2022), Eq. 5.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validate
from ..noise import NoiseSchedule
from ._common import (
    C_RANGE,
    RHO_RANGE,
    check_concrete,
    check_nfe,
    check_range,
    eager,
    eval_float64,
    finish,
    float_dtype,
    setup,
    unit_grid,
)

Array = Any

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


def loglinear_core(xp, sigmas, num_points: int):
    x_old = xp.linspace(0.0, 1.0, sigmas.shape[0], dtype=sigmas.dtype)
    x_new = xp.linspace(0.0, 1.0, num_points, dtype=sigmas.dtype)
    return xp.exp(xp.interp(x_new, x_old, xp.log(sigmas)))


def _np_grid(nfe: int) -> np.ndarray:
    return np.arange(nfe + 1, dtype=np.float64) / nfe


def _sigma_helper(core, sigma_max, sigma_min, nfe, param, param_name):
    """Shared body of the public jit-able sigma helpers."""
    n = check_nfe(nfe)
    check_concrete(sigma_max=sigma_max, sigma_min=sigma_min, **{param_name: param})
    if not any(isinstance(v, jax.core.Tracer) for v in (sigma_max, sigma_min)):
        hi, lo = float(np.asarray(sigma_max)), float(np.asarray(sigma_min))
        if not hi > lo:
            raise ValueError(
                f"sigma_max must be greater than sigma_min, got sigma_max={hi:g}, sigma_min={lo:g}"
            )
    dt = float_dtype(sigma_max, sigma_min, param)
    hi, lo = jnp.asarray(sigma_max, dt), jnp.asarray(sigma_min, dt)
    sig = core(jnp, unit_grid(n, dt), hi, lo, param)
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
        out = loglinear_core(jnp, sigmas, m)
        return out.at[0].set(sigmas[0]).at[-1].set(sigmas[-1])
    v = np.asarray(sigmas, np.float64)
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"sigmas must be finite and > 0, got {v.tolist()}")
    d = np.diff(v)
    if not (np.all(d < 0) or np.all(d > 0)):
        raise ValueError(f"sigmas must be strictly monotone, got {v.tolist()}")
    # Concrete input: the same formula in float64 NumPy (no per-shape compilation).
    out = loglinear_core(np, v, m)
    out[0], out[-1] = v[0], v[-1]
    with eager():
        return jnp.asarray(out, dtype=jax.dtypes.canonicalize_dtype(sigmas.dtype))


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
    n, t0, t1 = setup(noise, nfe, t_start, t_end)
    t = _time_uniform_core(np, _np_grid(n), t0, t1)
    return finish(t, "time_uniform", n, (t0, t1))


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
    n, t0, t1 = setup(noise, nfe, t_start, t_end)
    t = _time_quadratic_core(np, _np_grid(n), t0, t1)
    return finish(t, "time_quadratic", n, (t0, t1))


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
    n, t0, t1 = setup(noise, nfe, t_start, t_end)
    lam0, lam1 = _finite_lam_ends(noise, "logsnr_uniform", t0, t1)
    lam = _time_uniform_core(np, _np_grid(n), lam0, lam1)  # linear in lam
    t = eval_float64(noise, "t_from_lam", lam)
    return finish(t, "logsnr_uniform", n, (t0, t1))


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
    return finish(t, what, n, (t0, t1))


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
    n, t0, t1 = setup(noise, nfe, t_start, t_end)
    rho = check_range("rho", rho, RHO_RANGE["karras"])
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
    n, t0, t1 = setup(noise, nfe, t_start, t_end)
    rho = check_range("rho", rho, RHO_RANGE["polyexponential"])
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
    n, t0, t1 = setup(noise, nfe, t_start, t_end)
    c = check_range("c", c, C_RANGE)
    return _from_sigmas(noise, _kl_optimal_core, "kl_optimal", n, t0, t1, c)
