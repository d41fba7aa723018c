"""Spacing penalty of HSO's Spacing-Penalized Fitness (SPF), in normalised model time.

    SPF = J(Lambda) + gamma sum_i max(0, d_min(NFE) - |u_{i+1} - u_i|)^2,     gamma = 1e9,
    d_min(NFE) = clip(0.15 + (0.01 - 0.15) / (20 - 4) (NFE - 4), 0.01, 0.15),

where ``u`` is the *normalised model time* of the schedule points (this module). The official
code measures spacing in the continuous time ``t in (0, 1]`` of a discrete VP model with 1000
training steps, so ``d_min = 0.15`` means 150 training steps.

Normalised time ``u(t)`` for every process (increasing in ``t``, ``u = t`` where the model time
already lives in the unit interval):

* VP discrete (``t = (k + 1) / N``), VP-linear, VP-cosine, rectified flow, and any process with
  ``0 <= t_min < t_max <= 1``: ``u = t``. The fractions keep their meaning: for VP discrete
  models ``d_min`` is a fraction of the N training steps (exactly the official definition when
  N = 1000: ``u = t``, no rescaling by ``t_max - t_min = 0.999``), for flow a fraction of the
  flow time.
* EDM (``t = sigma``): ``u = log(t / t_min) / log(t_max / t_min)``. EDM networks are conditioned
  on ``c_noise = log(sigma) / 4``, so log-sigma is the time axis the network sees (as the step
  index is for discrete models); spacing linear in sigma would call points 0.002 and 1 "close".
* any other process: the affine map ``u = (t - t_min) / (t_max - t_min)``.

Reference: HSO (arXiv 2511.11688, AAAI 2026), Sec. 3 (SPF); official
``stages_step_optim.py`` (``min_t_distance``, penalty weight 1e9).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from .. import _validate
from ..noise import EDM, NoiseSchedule
from .mep import Objective

__all__ = [
    "GAMMA",
    "d_min",
    "normalised_time",
    "time_from_normalised",
    "spacing_penalty",
    "spacing_violations",
]

Array = Any
GAMMA = 1e9


def d_min(nfe: int) -> float:
    """Minimum spacing in normalised time: 0.15 at NFE <= 4, linear down to 0.01 at NFE >= 20."""
    nfe = _validate.nfe(nfe)
    lo_nfe, lo_d, hi_nfe, hi_d = 4.0, 0.15, 20.0, 0.01
    d = lo_d + (hi_d - lo_d) / (hi_nfe - lo_nfe) * (nfe - lo_nfe)
    return float(min(max(d, hi_d), lo_d))


def _kind(noise: NoiseSchedule) -> str:
    if isinstance(noise, EDM):
        return "log"
    if 0.0 <= noise.t_min < noise.t_max <= 1.0:
        return "unit"
    return "affine"


def normalised_time(noise: NoiseSchedule, t: Array) -> Array:
    """Normalised model time ``u(t)`` in which spacing is measured (module docstring)."""
    kind = _kind(noise)
    if kind == "unit":
        return jnp.asarray(t)
    if kind == "log":
        return jnp.log(t / noise.t_min) / math.log(noise.t_max / noise.t_min)
    return (t - noise.t_min) / (noise.t_max - noise.t_min)


def time_from_normalised(noise: NoiseSchedule, u: Array) -> Array:
    """Inverse of :func:`normalised_time`."""
    kind = _kind(noise)
    if kind == "unit":
        return jnp.asarray(u)
    if kind == "log":
        return noise.t_min * jnp.exp(u * math.log(noise.t_max / noise.t_min))
    return noise.t_min + u * (noise.t_max - noise.t_min)


def spacing_violations(noise: NoiseSchedule, t: Array, dmin: float | Array) -> Array:
    """``max(0, d_min - |u_{i+1} - u_i|)`` per interval of the schedule ``t``."""
    u = normalised_time(noise, jnp.asarray(t))
    return jnp.maximum(0.0, dmin - jnp.abs(u[1:] - u[:-1]))


def spacing_penalty(
    noise: NoiseSchedule,
    nfe: int | None = None,
    *,
    dmin: float | None = None,
    gamma: float = GAMMA,
) -> Objective:
    """SPF penalty ``gamma sum_i max(0, d_min - |u_{i+1} - u_i|)^2``.

    Args:
      noise: the noise process (defines ``t(lam)`` and the normalised time).
      nfe: network evaluations the schedule is meant for; gives ``d_min(nfe)``. For DDIM the
        schedule has ``nfe`` points (``nfe - 1`` intervals) but ``d_min`` still uses ``nfe``.
      dmin: explicit minimum spacing instead of ``nfe``.
      gamma: penalty weight (official 1e9).

    Returns:
      An :class:`~hso_jax.objectives.mep.Objective` whose terms are the per-interval penalties.
    """
    if (nfe is None) == (dmin is None):
        raise ValueError("give exactly one of nfe (to use d_min(nfe)) or dmin")
    dm = d_min(nfe) if dmin is None else float(dmin)
    if not dm >= 0:
        raise ValueError(f"dmin must be >= 0, got {dmin!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
        raise ValueError(f"gamma must be a non-negative number, got {gamma!r}")
    gamma = float(gamma)

    def terms_of_lam(lam):
        v = spacing_violations(noise, noise.t_from_lam(jnp.asarray(lam)), dm)
        return gamma * v * v

    def of_lam(lam):
        return jnp.sum(terms_of_lam(lam))

    return Objective("spacing", noise, of_lam, terms_of_lam)
