r"""SDE-DPM-Solver++ (1 and 2M): the reverse diffusion SDE in data-prediction form.

The reverse SDE (noise level eta = 1) has the exact solution, with ``h = lam_t - lam_s > 0``,

.. math::

    x_t = \frac{\sigma_t}{\sigma_s} e^{-h} x_s
          + 2 \alpha_t \int_{\lambda_s}^{\lambda_t} e^{-2(\lambda_t - \lambda)} x_0(\lambda)\,
          d\lambda + \sigma_t \sqrt{1 - e^{-2h}}\, z, \qquad z \sim N(0, I),

discretised with one network call per step (NFE = n, n + 1 schedule points). With
``m0 = x0(x_s, s)``, the previous prediction ``m1`` at ``lam_s - h0`` and ``r0 = h0 / h``:

* order 1: ``x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) m0
  + sigma_t sqrt(1 - e^{-2h}) z`` (identical to stochastic DDIM with eta = 1);
* order 2 (2M, "midpoint" form): add ``alpha_t (1 - e^{-2h}) (m0 - m1) / (2 r0)``.

The first step is first order (empty history); with ``lower_order_final`` and fewer than
15 steps, the last step is first order too. A fresh ``z`` per step comes from the key that
the driver splits per step, so the same key gives the same sample.

References:
  Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
  (arXiv:2211.01095, 2022), SDE-DPM-Solver++(2M) (the SDE counterpart of Alg. 2);
  Song, Meng, Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), Eq. (12), eta = 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .. import _validate
from ._common import lam_step, safe_h, step_order
from .base import MultistepSolver

__all__ = ["SDEDPMSolverPP", "sde_dpm_solver_pp"]


@dataclasses.dataclass(frozen=True)
class SDEDPMSolverPP(MultistepSolver):
    """SDE-DPM-Solver++(1 / 2M): one network call per step, needs a PRNG key.

    The state is the history of the previous data predictions at their lam.

    Attributes:
      order: 1 or 2.
      lower_order_final: first-order last step when the schedule has fewer than 15 steps.
    """

    stochastic = True
    order: int = 2
    lower_order_final: bool = True

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        x0 = model.x0(x, t_cur)
        lam_s, lam_t, h, a_t, s_s, s_t = lam_step(model.noise, t_cur, t_next)
        one_m_e2h = -jnp.expm1(-2.0 * h)  # 1 - e^{-2h}
        z = jax.random.normal(key, x.shape, x.dtype)
        # finite at both ends: from sigma = 1 (h = inf) alpha_t x0 + sigma_t z, into sigma = 0 x0
        x_next = (s_t / s_s) * jnp.exp(-h) * x + a_t * one_m_e2h * x0
        if self.order >= 2:
            p = step_order(self.order, state.count, i, n, self.lower_order_final, lam_t)
            hs = safe_h(h)  # masked out (first order) on infinite steps
            h0 = state.gap(0, lam_s, hs)  # safe when masked
            D1_0 = (x0 - state.values[0]) / (h0 / hs)
            x_next = jnp.where(p >= 2, x_next + (0.5 * a_t * -jnp.expm1(-2.0 * hs)) * D1_0, x_next)
        x_next = x_next + s_t * jnp.sqrt(one_m_e2h) * z
        return x_next, state.push(x0, lam_s), x0


def sde_dpm_solver_pp(order: int = 2, lower_order_final: bool = True) -> SDEDPMSolverPP:
    """SDE-DPM-Solver++ (Lu et al. 2022): stochastic sampler, ``order`` 1 or 2 (2M).

    One network call per step (NFE = n for n + 1 schedule points); pass ``key=`` to
    :func:`hso_jax.sample`.

    Args:
      order: 1 (= stochastic DDIM with eta = 1) or 2 (SDE-DPM-Solver++(2M), default).
      lower_order_final: with fewer than 15 steps, the last step is first order.

    Raises:
      ValueError: ``order`` not in (1, 2) or a non-bool flag.
    """
    order = _validate.integer("order", order, allowed=(1, 2))
    lower_order_final = _validate.boolean("lower_order_final", lower_order_final)
    return SDEDPMSolverPP(order=order, lower_order_final=lower_order_final)
