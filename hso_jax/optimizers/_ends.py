"""Eager checks of schedule ends where the half log-SNR is infinite (a flow's t = 1 and t = 0).

Flow presets span ``t`` in [0, 1]: ``lam(1) = -inf`` (pure noise) and ``lam(0) = +inf`` (the
data). Samplers take both ends as limits (:mod:`hso_jax.solvers`); methods whose objective or
search space is built on ``lam`` or ``sigma_edm = exp(-lam)`` (MEP, DMN, KLUB, uniform-lam
grids, Karras grids) are undefined there and say so before they start, naming the end and the
fix, instead of returning NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ..noise import NoiseSchedule

__all__ = ["lam_is_finite", "check_finite_ends"]


def lam_is_finite(noise: NoiseSchedule, t: float) -> bool:
    """Whether ``lam(t)`` is finite (float64, eager)."""
    with jax.enable_x64(True):
        return math.isfinite(float(noise.lam(jnp.asarray(float(t), jnp.float64))))


def check_finite_ends(noise: NoiseSchedule, t_start, t_end, method: str, why: str) -> None:
    """Raise ``ValueError`` if ``lam(t_start)`` or ``lam(t_end)`` is infinite.

    Args:
      noise: the noise process.
      t_start, t_end: the ends the method would use.
      method: the method's name, for the message.
      why: what makes the method undefined at such an end, for the message.
    """
    bad = [
        f"{name} = {float(t):g} (lam = {'-inf' if name == 't_start' else '+inf'})"
        for name, t in (("t_start", t_start), ("t_end", t_end))
        if not lam_is_finite(noise, t)
    ]
    if bad:
        raise ValueError(
            f"{method} needs finite log-SNR at both ends of the schedule ({why}), but "
            f"{' and '.join(bad)} on {noise!r}. Pass ends inside (0, 1), e.g. t_start=0.999, "
            "t_end=1e-3 (the range of hso_jax.noise.preset('flow')), or optimise on that range "
            "(RectifiedFlow(t_min=1e-3, t_max=0.999)); a flow sampler then starts from x_T at "
            "t_start"
        )
