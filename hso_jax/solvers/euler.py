r"""EDM's Euler sampler on the probability-flow ODE, for any noise process.

In EDM variables ``x~ = x / alpha``, ``sigma~ = sigma / alpha = exp(-lam)`` the PF-ODE is
``dx~/dsigma~ = d(x~, sigma~) = (x~ - D(x, t)) / sigma~``. One network call per step
(NFE = n for n + 1 schedule points):

.. math::

    \tilde x_{i+1} = \tilde x_i + (\tilde\sigma_{i+1} - \tilde\sigma_i)\, d_i, \qquad
    x_{i+1} = \alpha_{i+1} \tilde x_{i+1}.

Mathematically this is DDIM (the exponential integrator of order 1 is Euler in these
variables); the two agree to rounding (tested). First order.

Reference: Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based
Generative Models" (NeurIPS 2022), Alg. 1 without the Heun correction (lines 1-5, 8).
"""

from __future__ import annotations

import dataclasses

from ._edm import edm_slope, edm_vars
from .base import Solver

__all__ = ["Euler", "euler"]


@dataclasses.dataclass(frozen=True)
class Euler(Solver):
    """Euler in (sigma_edm, x / alpha): one network call per step, order 1."""

    order: int = 1

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        ns = model.noise
        a_s, sg_s = edm_vars(ns, t_cur)
        a_t, sg_t = edm_vars(ns, t_next)
        d, x0 = edm_slope(model, x, t_cur, a_s, sg_s)
        x_next = a_t * (x / a_s + (sg_t - sg_s) * d)
        return x_next, state, x0


def euler() -> Euler:
    """EDM's Euler sampler (Karras et al. 2022) in sigma_edm / x-over-alpha variables.

    One network call per step (NFE = n for n + 1 schedule points); first order; works for
    any noise process (VP, EDM, rectified flow).
    """
    return Euler()
