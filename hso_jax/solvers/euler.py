r"""EDM's Euler sampler on the probability-flow ODE, for any noise process.

In EDM variables ``x~ = x / alpha``, ``sigma~ = sigma / alpha = exp(-lam)`` the PF-ODE is
``dx~/dsigma~ = d(x~, sigma~) = (x~ - D(x, t)) / sigma~``. One network call per step
(NFE = n for n + 1 schedule points):

.. math::

    \tilde x_{i+1} = \tilde x_i + (\tilde\sigma_{i+1} - \tilde\sigma_i)\, d_i, \qquad
    x_{i+1} = \alpha_{i+1} \tilde x_{i+1}.

Mathematically this is DDIM (the exponential integrator of order 1 is Euler in these
variables); the two agree to rounding (tested). First order. Since
``x~_i - sigma~_i d_i = D_i``, the update is computed as

.. math::

    x_{i+1} = \alpha_{i+1} D_i + \sigma_{i+1} \hat\epsilon_i, \qquad
    \hat\epsilon_i = (x_i - \alpha_i D_i) / \sigma_i,

which never divides by ``alpha``: it is finite at the start of a flow (``alpha = 0``,
``sigma~ = inf``: ``x_1 = alpha_1 D_0 + sigma_1 x_0``) and a step into sigma = 0 returns
``D``. For rectified flow (``alpha = 1 - t``, ``sigma = t``, velocity ``v = (x - D) / t``) it is
``x_{i+1} = x_i + (t_{i+1} - t_i) v_i``, the update of diffusers'
``FlowMatchEulerDiscreteScheduler`` (tested step by step).

Reference: Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based
Generative Models" (NeurIPS 2022), Alg. 1 without the Heun correction (lines 1-5, 8).
"""

from __future__ import annotations

import dataclasses

from .base import Solver

__all__ = ["Euler", "euler"]


@dataclasses.dataclass(frozen=True)
class Euler(Solver):
    """Euler in (sigma_edm, x / alpha): one network call per step, order 1."""

    order: int = 1

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        ns = model.noise
        x0 = model.x0(x, t_cur)
        eps = (x - ns.alpha(t_cur) * x0) / ns.sigma(t_cur)  # = d, the slope in sigma~
        return ns.alpha(t_next) * x0 + ns.sigma(t_next) * eps, state, x0


def euler() -> Euler:
    """EDM's Euler sampler (Karras et al. 2022) in sigma_edm / x-over-alpha variables.

    One network call per step (NFE = n for n + 1 schedule points); first order; works for
    any noise process (VP, EDM, rectified flow).
    """
    return Euler()
