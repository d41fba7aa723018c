"""EDM variables shared by Euler, Heun and iPNDM.

Any process ``x = alpha x0 + sigma eps`` becomes EDM's variance-exploding form with
``x~ = x / alpha`` and noise level ``sigma~ = sigma / alpha = exp(-lam)`` (``sigma_edm``); the
probability-flow ODE is then ``dx~/dsigma~ = (x~ - D(x, t)) / sigma~ = eps_hat`` (Karras et
al. 2022, Eq. (4) with s(t) = 1, sigma(t) = t, and Alg. 1, line 4).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

Array = Any


def edm_vars(ns, t: Array) -> tuple[Array, Array]:
    """(alpha(t), sigma_edm(t) = exp(-lam(t)))."""
    return ns.alpha(t), jnp.exp(-ns.lam(t))


def edm_slope(model, x: Array, t: Array, alpha: Array, sigma_edm: Array):
    """(dx~/dsigma~ = (x~ - D) / sigma~, D) at the state ``x`` (not scaled) and time ``t``.

    Computed as the noise prediction ``(x - alpha D) / sigma`` (the same number), which stays
    finite at alpha = 0 (sigma~ = inf, the start of a flow).
    """
    x0 = model.x0(x, t)
    return (x - alpha * x0) / model.noise.sigma(t), x0
