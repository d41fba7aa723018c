"""Midpoint Error Proxy (MEP): HSO's model-free objective, and the shared objective container.

The data-prediction form of the probability-flow ODE (DPM-Solver++) advances one interval
``[lam_i, lam_{i+1}]`` of half log-SNR with the integral ``int e^lam x_theta(x_lam, lam) dlam``.
The hybrid midpoint rule integrates ``e^lam`` exactly and freezes the network term at the
lam-midpoint (HSO, Lemma 1); replacing the unknown error magnitude of the network term by the
closed form ``eps_tilde`` gives

    J_MEP(Lambda) = sum_i eps_tilde(lam_{i+1/2}) (e^{lam_{i+1}} - e^{lam_i}),
    lam_{i+1/2} = (lam_i + lam_{i+1}) / 2,       eps_tilde = sigma^p / alpha,  p = 2.

``eps_tilde`` for any noise process (``frame``):

* ``"vp"`` (default): ``sigma`` and ``alpha`` of the *variance-preserving equivalent* of the
  process at the same lam, ``alpha_vp = (1 + e^{-2 lam})^{-1/2}``, ``sigma_vp = e^{-lam}
  alpha_vp``, so ``log eps_tilde = -p lam - (p - 1)/2 log(1 + e^{-2 lam})``. Every process
  ``x_t = alpha x_0 + sigma eps`` is the VP process scaled by ``alpha / alpha_vp`` (same lam,
  same ODE for ``x / alpha``), so this is the only choice under which the same denoiser gets the
  same lam-schedule whether it is written as VP, EDM (VE) or rectified flow. For VP processes
  (``alpha^2 + sigma^2 = 1``: every VP discrete model, VP-linear, VP-cosine) it *is* the native
  ``sigma^p / alpha`` -- exactly what the official HSO and DM-NonUniform code compute.
* ``"native"``: the process's own ``sigma(t)^p / alpha(t)`` at ``t = t_from_lam(lam)``. For EDM
  this is ``e^{-p lam}`` (unbounded growth at high noise, where a denoiser's error is in fact
  bounded by the data scale); for flow ``sigmoid(-lam)^p / sigmoid(lam)``. Offered for
  comparison only.

Objectives are factories closing over fixed data; they return an :class:`Objective`, callable
on a schedule of model times ``t`` and exposing its per-interval ``terms`` (and the same on the
lam grid, which is what the optimisers work with). All are pure: jit, vmap and grad apply.

Reference: HSO (arXiv 2511.11688, AAAI 2026), Sec. 3 (MEP, Eq. of Lemma 1); official code
``ldm/models/diffusion/stages_step_optim.py`` (``objective_type='midpoint'``, ``p = 2``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from .. import _validate
from ..noise import NoiseSchedule

__all__ = ["Objective", "FRAMES", "log_eps_tilde", "eps_tilde", "mep", "finite_grid"]

Array = Any
FRAMES = ("vp", "native")


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """A schedule objective: ``obj(t) -> scalar`` plus its non-negative per-term parts.

    Attributes:
      name: short name (``"mep"``, ``"dmn"``, ``"spacing"``).
      noise: the noise process (maps ``t`` to ``lam``).
      of_lam: ``lam -> scalar`` on the increasing lam grid ``lam_0 < ... < lam_N`` (lam_0 at
        the start time, the noisiest point).
      terms_of_lam: ``lam -> (K,)`` array of terms with ``sum(terms) == of_lam(lam)``.
      smoothed_of_lam: optional ``(lam, mu) -> scalar``, a smooth approximation of a
        non-smooth objective that tends to ``of_lam`` as ``mu -> 0`` (``None`` when ``of_lam``
        is smooth).

    Calling the object on a schedule of model times ``t`` (decreasing, start to end) evaluates
    the objective on ``lam = noise.lam(t)``. Hashable by identity, so it can be a static
    argument of ``jax.jit``.
    """

    name: str
    noise: NoiseSchedule
    of_lam: Callable[[Array], Array]
    terms_of_lam: Callable[[Array], Array]
    smoothed_of_lam: Callable[[Array, Array], Array] | None = None

    def __call__(self, t: Array) -> Array:
        return self.of_lam(self.noise.lam(t))

    def terms(self, t: Array) -> Array:
        """Per-term parts at the schedule ``t`` (their sum is ``self(t)``)."""
        return self.terms_of_lam(self.noise.lam(t))


def finite_grid(lam: Array) -> tuple[Array, Array]:
    """(a safe lam grid, whether the given one is finite).

    A grid reaching lam = -inf or +inf (a flow's t = 1 or t = 0) has no finite MEP / DMN: the
    closed-form error weight of an interval that reaches the noise end grows without bound
    (``eps_tilde e^lam ~ 1`` over an infinite interval), and at the data end the interval
    midpoint is infinite. Such a grid scores ``+inf`` (never NaN, so a search never picks it;
    :func:`hso_jax.optimize` refuses such ends up front). The terms are computed on the safe
    grid ``0, 1, ..., N`` there so that gradients stay finite (the "double where" trick).
    """
    lam = jnp.asarray(lam)
    finite = jnp.all(jnp.isfinite(lam))
    return jnp.where(finite, lam, jnp.arange(lam.shape[0], dtype=lam.dtype)), finite


def log_eps_tilde(noise: NoiseSchedule, lam: Array, p: float = 2.0, frame: str = "vp") -> Array:
    """``log(sigma^p / alpha)`` at half log-SNR ``lam`` (see module docstring for ``frame``).

    In the VP frame ``log alpha_vp = -softplus(-2 lam) / 2``, hence
    ``log eps_tilde = -p lam + (p - 1) log alpha_vp`` (stable for any lam).
    """
    lam = jnp.asarray(lam)
    if frame == "vp":
        log_alpha_vp = -0.5 * jnp.logaddexp(0.0, -2.0 * lam)
        return -p * lam + (p - 1.0) * log_alpha_vp
    t = noise.t_from_lam(lam)
    return p * noise.log_sigma(t) - noise.log_alpha(t)


def eps_tilde(noise: NoiseSchedule, lam: Array, p: float = 2.0, frame: str = "vp") -> Array:
    """Closed-form error weight ``sigma^p / alpha`` at half log-SNR ``lam``."""
    return jnp.exp(log_eps_tilde(noise, lam, p, frame))


def mep(noise: NoiseSchedule, *, p: float = 2.0, frame: str = "vp") -> Objective:
    """Midpoint Error Proxy of a schedule.

    ``terms_i = eps_tilde(lam_{i+1/2}) e^{lam_i} expm1(lam_{i+1} - lam_i)`` (the form avoids
    cancellation in ``e^{lam_{i+1}} - e^{lam_i}`` for short intervals); ``J_MEP = sum_i terms_i``.

    Args:
      noise: the noise process.
      p: exponent of ``sigma`` in ``eps_tilde`` (the official code fixes ``p = 2``).
      frame: ``"vp"`` (default) or ``"native"``, see the module docstring.

    Returns:
      An :class:`Objective`; ``obj(t)`` for decreasing model times ``t`` (N + 1 points gives N
      terms), ``obj.of_lam(lam)`` for the increasing lam grid.
    """
    p = _validate.real("p", p, 0.0, open_lo=True)
    frame = _validate.choice("frame", frame, FRAMES)

    def terms_of_lam(lam):
        lam, finite = finite_grid(lam)
        h = lam[1:] - lam[:-1]
        mid = 0.5 * (lam[1:] + lam[:-1])
        terms = jnp.exp(log_eps_tilde(noise, mid, p, frame) + lam[:-1]) * jnp.expm1(h)
        return jnp.where(finite, terms, jnp.inf)

    def of_lam(lam):
        return jnp.sum(terms_of_lam(lam))

    return Objective("mep", noise, of_lam, terms_of_lam)
