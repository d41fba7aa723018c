r"""EDM's Heun sampler (2nd order) on the probability-flow ODE, for any noise process.

In EDM variables ``x~ = x / alpha``, ``sigma~ = sigma / alpha = exp(-lam)`` the PF-ODE is
``dx~/dsigma~ = d(x~, sigma~) = (x~ - D(x, t)) / sigma~``. Two network calls per step
(NFE = 2 n for n + 1 schedule points):

.. math::

    d_i = d(\tilde x_i, \tilde\sigma_i), \quad
    \tilde x' = \tilde x_i + (\tilde\sigma_{i+1} - \tilde\sigma_i)\, d_i, \quad
    \tilde x_{i+1} = \tilde x_i + (\tilde\sigma_{i+1} - \tilde\sigma_i)
                     \tfrac{1}{2} \big(d_i + d(\tilde x', \tilde\sigma_{i+1})\big),

and ``x_{i+1} = alpha_{i+1} x~_{i+1}``. EDM's Alg. 1 skips the correction on a last step
that ends at sigma = 0 (where d is undefined); schedules here always end at ``t_min > 0``
(sigma > 0), so every step, the last included, is a full Heun step. To end at the data
prediction, use ``sample(..., denoise_final=True)`` (one more call). Deterministic sampler
(S_churn = 0).

Reference: Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based
Generative Models" (NeurIPS 2022), Alg. 1.
"""

from __future__ import annotations

import dataclasses

from ._edm import edm_slope, edm_vars
from .base import Solver

__all__ = ["Heun", "heun"]


@dataclasses.dataclass(frozen=True)
class Heun(Solver):
    """Heun in (sigma_edm, x / alpha): two network calls per step, order 2."""

    calls_per_step = 2
    order: int = 2

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        ns = model.noise
        a_s, sg_s = edm_vars(ns, t_cur)
        a_t, sg_t = edm_vars(ns, t_next)
        dsg = sg_t - sg_s
        xs = x / a_s
        d, x0 = edm_slope(model, x, t_cur, a_s, sg_s)
        x_euler = xs + dsg * d
        d_next, _ = edm_slope(model, a_t * x_euler, t_next, a_t, sg_t)
        x_next = a_t * (xs + dsg * 0.5 * (d + d_next))
        return x_next, state, x0


def heun() -> Heun:
    """EDM's Heun sampler (Karras et al. 2022, Alg. 1) in sigma_edm / x-over-alpha variables.

    Two network calls per step (NFE = 2 n for n + 1 schedule points, so ``nfe`` must be
    even); second order; every step is a full Heun step (schedules never end at sigma = 0).
    """
    return Heun()
