"""Published schedules: the Align Your Steps tables and the Optimal-Steps (OSS) tables.

References:
  Sabour et al., "Align Your Steps" (ICML 2024), Theorem 3.1 and the published 10-step
  schedules; "Optimal Stepsize for Diffusion Sampling" (2025, ComfyUI's
  ``nodes_optimalsteps.py``).
"""

from __future__ import annotations

import math
import types
from typing import Any

import jax
import numpy as np

from ..noise import NoiseSchedule, RectifiedFlow
from ._common import check_nfe, check_noise, endpoints, eval_float64, finish
from .baselines import loglinear_core
from .flow import check_flow_model

Array = Any

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
    check_noise(noise)
    n = check_nfe(nfe)
    if not isinstance(model, str) or model not in AYS_TABLES:
        raise ValueError(f"model must be one of {sorted(AYS_TABLES)} (AYS tables), got {model!r}")
    table = np.asarray(AYS_TABLES[model], np.float64)
    if t_start is None and t_end is None:
        s_lo = float(eval_float64(noise, "sigma_edm", noise.t_min))
        s_hi = float(eval_float64(noise, "sigma_edm", noise.t_max))
        sig, snapped = _fit_table(table, s_lo, s_hi, model, noise)
        t = eval_float64(noise, "t_from_sigma_edm", loglinear_core(np, sig, n + 1))
        ends = (noise.t_max if snapped[0] else None, noise.t_min if snapped[1] else None)
        return finish(t, f"ays(model={model!r})", n, ends)
    t0, t1 = endpoints(noise, t_start, t_end)
    log_sig = np.log(loglinear_core(np, table, n + 1))
    u = (log_sig - log_sig[-1]) / (log_sig[0] - log_sig[-1])  # 1 at the start, 0 at the end
    lo, hi = -eval_float64(noise, "lam", [t1, t0])  # log sigma_edm = -lam
    t = eval_float64(noise, "t_from_lam", -(lo + u * (hi - lo)))
    return finish(t, f"ays(model={model!r})", n, (t0, t1))


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
    ns = check_flow_model(noise, "optimal_steps")
    n = check_nfe(nfe)
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
    sig = table if n + 1 == table.size else loglinear_core(np, table, n + 1)
    sig = sig.copy()
    sig[-1] = 0.0
    return finish(sig, f"optimal_steps(model={model!r})", n, (None, 0.0))
