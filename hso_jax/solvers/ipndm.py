r"""iPNDM: improved pseudo numerical method (Adams-Bashforth on the eps form of the PF-ODE).

In EDM variables ``x~ = x / alpha``, ``sigma~ = sigma / alpha = exp(-lam)`` the PF-ODE is
``dx~/dsigma~ = eps_hat = (x~ - D(x, t)) / sigma~`` (data prediction ``D`` turned into the
noise prediction it implies, so any Denoiser works). iPNDM integrates it with the explicit
Adams-Bashforth formula of order ``p`` on the stored noise predictions
``eps_i, eps_{i-1}, ...``, one network call per step (NFE = n for n + 1 schedule points):

.. math::

    \tilde x_{i+1} = \tilde x_i + (\tilde\sigma_{i+1} - \tilde\sigma_i) \sum_{j=0}^{p-1}
                     w_j\, \epsilon_{i-j}, \qquad x_{i+1} = \alpha_{i+1} \tilde x_{i+1},

with the constant-step weights ``w = (1)``, ``(3, -1)/2``, ``(23, -16, 5)/12``,
``(55, -59, 37, -9)/24`` for p = 1..4. Each step is DDIM with the extrapolated noise
``sum_j w_j eps_{i-j}`` (the exponential-integrator / DEIS form). Warm-up: p = min(order,
i + 1) from the carried history (the "improved" part: lower-order multistep starts instead of
PNDM's Runge-Kutta warm-up steps).

**Order.** The constant weights are exact for steps of equal length in ``sigma~``. On other
grids (Karras, logSNR-uniform: geometric in sigma~) the step-size ratio enters the local
error at O(h^3), so the fixed-weight method converges with order 2 whatever ``order`` is
(measured in ``tests/test_solvers_order.py``); its strength is at very low NFE, where the
published tables put it. ``variable_step=True`` uses the Adams-Bashforth weights of the
actual nodes (integrals of the Lagrange basis through ``sigma~_{i-j}``, as in diff-sampler's
"iPNDM_v"): order ``order`` on any grid, identical to the fixed weights on grids uniform in
sigma~.

References: Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator"
(DEIS, ICLR 2023): iPNDM, their improved PNDM (Adams-Bashforth with lower-order warm start);
Liu et al., "Pseudo Numerical Methods for Diffusion Models on Manifolds" (PNDM, ICLR 2022),
the linear multistep (PLMS) update; Karras et al. (EDM, NeurIPS 2022), Eq. (1), (3) for
dx~/dsigma~ = (x~ - D) / sigma~.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .. import _validate
from ._common import finite_or, lagrange_weights, select_by_order
from ._edm import edm_slope, edm_vars
from .base import MultistepSolver

__all__ = ["IPNDM", "ipndm"]

# Adams-Bashforth weights for equal steps, most recent first.
_AB_WEIGHTS = (
    (1.0,),
    (3.0 / 2.0, -1.0 / 2.0),
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
)


@dataclasses.dataclass(frozen=True)
class IPNDM(MultistepSolver):
    """iPNDM, one network call per step (see module docstring).

    The state is the history of the previous noise predictions at their sigma~ (the method
    steps in sigma~, not in lam).

    Attributes:
      order: maximal Adams-Bashforth order, 1 to 4.
      variable_step: use the Adams-Bashforth weights of the actual (unequal) steps.
    """

    order: int = 4
    variable_step: bool = False

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        ns = model.noise
        a_s, sg_s = edm_vars(ns, t_cur)
        a_t, sg_t = edm_vars(ns, t_next)
        dsg = sg_t - sg_s
        eps, x0 = edm_slope(model, x, t_cur, a_s, sg_s)
        eps_hist = [eps] + [state.values[k] for k in range(state.size)]
        if self.variable_step:
            # Nodes u_j = (sigma~_{i-j} - sigma~_i) / dsg (u_0 = 0, u_j < 0 for the past);
            # weights integrate the interpolant over u in [0, 1]: sum_j w_j u_j^k = 1 / (k + 1).
            # (safe values on a step from alpha = 0, sigma~ = inf, where the order is 1)
            sg_s_, dsg_ = finite_or(sg_s, 0.0), finite_or(dsg, -1.0)
            u = [jnp.zeros_like(sg_s)] + state.relative_nodes(sg_s_, dsg_)
            weights = [
                lagrange_weights(u[:q], [1.0 / (k + 1) for k in range(q)])
                for q in range(1, self.order + 1)
            ]
        else:
            weights = _AB_WEIGHTS[: self.order]
        candidates = [
            sum(w * e for w, e in zip(ws, eps_hist[: len(ws)], strict=True)) for ws in weights
        ]
        p = jnp.minimum(self.order, state.count + 1)
        eps_eff = select_by_order(p, candidates)
        # a_t (x~ + dsg eps_eff) with x~ = D + sigma~_s eps, without dividing by alpha (finite
        # from alpha = 0, where the step is first order, eps_eff = eps, and the last term is 0).
        sg_hist = jnp.where(p > 1, sg_s, 0.0)
        x_next = a_t * x0 + ns.sigma(t_next) * eps_eff + (a_t * sg_hist) * (eps - eps_eff)
        return x_next, state.push(eps, sg_s), x0


def ipndm(order: int = 4, variable_step: bool = False) -> IPNDM:
    """iPNDM (Zhang & Chen 2023): Adams-Bashforth on the eps form of the PF-ODE.

    One network call per step (NFE = n for n + 1 schedule points); the first ``order - 1``
    steps warm up with orders 1, 2, ...

    Args:
      order: maximal order, 1 to 4 (default 4, as published).
      variable_step: Adams-Bashforth weights of the actual step sizes (order ``order`` on any
        grid) instead of the published constant-step weights (order 2 on unequal grids).

    Raises:
      ValueError: ``order`` not in 1..4 or a non-bool flag.
    """
    order = _validate.integer("order", order, allowed=(1, 2, 3, 4))
    variable_step = _validate.boolean("variable_step", variable_step)
    return IPNDM(order=order, variable_step=variable_step)
