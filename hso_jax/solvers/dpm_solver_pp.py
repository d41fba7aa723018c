r"""DPM-Solver++: multistep (1M / 2M / 3M) and singlestep (2S / 3S), data-prediction form.

All updates discretise the exact solution of the probability-flow ODE in the half log-SNR
``lam`` (variation of constants; DPM-Solver++ Eq. (9)): from ``s`` to ``t`` with
``h = lam_t - lam_s > 0``,

.. math::

    x_t = \frac{\sigma_t}{\sigma_s} x_s + \sigma_t \int_{\lambda_s}^{\lambda_t} e^{\lambda}
          x_0(\lambda)\, d\lambda
        = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t (e^{-h} - 1)\, x_0(\lambda_s)
          + \alpha_t \sum_{k \ge 1} h^{k+1} \varphi_{k+1}(-h)\, x_0^{(k)}(\lambda_s),

with :math:`\varphi_k` the exponential-integrator functions (:func:`._common.phi`). The
derivatives :math:`h^k x_0^{(k)}` are estimated from previous data predictions (multistep) or
from intermediate evaluations (singlestep).

Multistep (one network call per step; NFE = n for n steps, n + 1 schedule points). With
``m0 = x0(x_s, s)``, previous predictions ``m1, m2`` at ``lam_s - h0`` and ``lam_s - h0 - h1``,
``r0 = h0 / h``, ``r1 = h1 / h``:

* order 1 (DDIM): ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m0``;
* order 2 (2M, Alg. 2): add ``-alpha_t (e^{-h} - 1) / (2 r0) (m0 - m1)``;
* order 3 (3M): with ``D1_0 = (m0 - m1) / r0``, ``D1_1 = (m1 - m2) / r1``,
  ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)`` (~ h x0') and
  ``D2 = 2 (D1_0 - D1_1) / (r0 + r1)`` (~ h^2 x0''), add
  ``alpha_t h phi_2(-h) D1 + alpha_t h phi_3(-h) D2``.

The first steps use lower orders (the history is empty), decided from the carried history
count; with ``lower_order_final`` and fewer than 15 steps, step ``i`` uses order
``min(order, n - i)`` (the "denoising trick" of the reference implementation).

**3M and the reference code.** The DPM-Solver / diffusers implementations use
``D2 = (D1_0 - D1_1) / (r0 + r1)``, half of the Taylor estimate of ``h^2 x0''`` above, with
the same ``phi_3`` coefficient: their third-order term is half the right one, the local
error keeps an O(h^3) term and the method converges with order 2 (measured in
``tests/test_solvers_order.py``). The default here is the Taylor-consistent coefficient
(order 3); ``legacy_3m=True`` reproduces the reference code.

Singlestep (``order`` network calls per step; NFE = order * n). Intermediate points at
``lam_s + r h`` (times from ``noise.t_from_lam``):

* 2S (Alg. 1, r1 = 1/2): ``u = (sigma_s1 / sigma_s) x_s - alpha_s1 (e^{-r1 h} - 1) m0``,
  ``m1 = x0(u, s1)``, ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1)
  [(1 - 1/(2 r1)) m0 + m1 / (2 r1)]``;
* 3S (r1 = 1/3, r2 = 2/3; the data-prediction form of DPM-Solver-3, DPM-Solver Alg. 2):
  ``u1`` as ``u`` above, ``m1 = x0(u1, s1)``,
  ``u2 = (sigma_s2 / sigma_s) x_s - alpha_s2 (e^{-r2 h} - 1) m0
  + (r2 / r1) alpha_s2 r2 h phi_2(-r2 h) (m1 - m0)``, ``m2 = x0(u2, s2)``,
  ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m0
  + alpha_t h phi_2(-h) (m2 - m0) / r2``.

References:
  Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
  (arXiv:2211.01095, 2022), Eq. (9), Alg. 1 (2S), Alg. 2 (2M);
  Lu et al., "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling"
  (NeurIPS 2022), Eq. (3.4), Alg. 1 / 2 (singlestep orders 2 / 3, r = 1/2 and 1/3, 2/3).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from .. import _validate
from ._common import lam_ends, lam_step, phis, safe_h, select_by_order, step_order
from .base import MultistepSolver, Solver

__all__ = [
    "DPMSolverPP",
    "DPMSolverPPSinglestep",
    "dpm_solver_pp",
]


@dataclasses.dataclass(frozen=True)
class DPMSolverPP(MultistepSolver):
    """Multistep DPM-Solver++ (1M / 2M / 3M), one network call per step (see module docstring).

    The state is the history of the previous data predictions at their lam.

    Attributes:
      order: 1, 2 or 3.
      lower_order_final: order ``min(order, n - i)`` at step ``i`` when ``n < 15``.
      legacy_3m: use the reference code's third-order coefficient (global order 2).
    """

    order: int = 2
    lower_order_final: bool = True
    legacy_3m: bool = False

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        x0 = model.x0(x, t_cur)
        lam_s, lam_t, h, a_t, s_s, s_t = lam_step(model.noise, t_cur, t_next)
        # order 1 (DDIM); finite at both ends: from sigma = 1 (h = inf) it is
        # sigma_t x + alpha_t x0, into sigma = 0 it returns x0.
        x_next = (s_t / s_s) * x - a_t * jnp.expm1(-h) * x0
        if self.order >= 2:
            p = step_order(self.order, state.count, i, n, self.lower_order_final, lam_t)
            # Safe step sizes and ratios where the history is missing or the step is infinite
            # (first order there, masked out below).
            h = safe_h(h)
            phi_1 = jnp.expm1(-h)
            r0 = state.gap(0, lam_s, h) / h  # h0 / h (1 where the history is missing)
            m1 = state.values[0]
            D1_0 = (x0 - m1) / r0
            x2 = x_next - (0.5 * a_t * phi_1) * D1_0
            candidates = [x_next, x2]
            if self.order >= 3:
                r1 = state.gap(1, lam_s, h) / h  # h1 / h
                D1_1 = (m1 - state.values[1]) / r1
                D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
                D2 = (D1_0 - D1_1) / (r0 + r1)  # ~ h^2 x0'' / 2
                if not self.legacy_3m:
                    D2 = 2.0 * D2  # ~ h^2 x0''
                _, phi_2, phi_3 = phis(-h, 3)
                x3 = x_next + (a_t * h * phi_2) * D1 + (a_t * h * phi_3) * D2
                candidates.append(x3)
            x_next = select_by_order(p, candidates)
        return x_next, state.push(x0, lam_s), x0


@dataclasses.dataclass(frozen=True)
class DPMSolverPPSinglestep(Solver):
    """Singlestep DPM-Solver++ (2S / 3S), ``order`` network calls per step.

    Attributes:
      order: 1 (DDIM), 2 (2S, r1 = 1/2) or 3 (3S, r1 = 1/3, r2 = 2/3).
    """

    order: int = 2

    @property
    def calls_per_step(self) -> int:  # type: ignore[override]
        return self.order

    def check_ends(self, noise, ts) -> None:
        if self.order == 1:
            return
        lam_0, lam_n = lam_ends(noise, ts)
        if np.isinf(lam_0) or np.isinf(lam_n):
            raise ValueError(
                f"singlestep DPM-Solver++ (order {self.order}) cannot take a step from sigma = 1 "
                f"or to sigma = 0 (here lam(ts[0]) = {lam_0:g}, lam(ts[-1]) = {lam_n:g}): its "
                "intermediate points lam_s + r h are undefined for an infinite step h. Use a "
                "schedule with finite log-SNR at both ends (t in (0, 1) for a flow), or the "
                "multistep method (dpm_solver_pp(order, 'multistep')), which starts and ends "
                "there with first-order steps"
            )

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        ns = model.noise
        x0 = model.x0(x, t_cur)
        lam_s, lam_t, h, a_t, s_s, s_t = lam_step(ns, t_cur, t_next)
        x_next = (s_t / s_s) * x - a_t * jnp.expm1(-h) * x0
        if self.order == 1:
            return x_next, state, x0

        def intermediate(r):
            s_r = ns.t_from_lam(lam_s + r * h)
            return s_r, ns.alpha(s_r), ns.sigma(s_r)

        r1 = 0.5 if self.order == 2 else 1.0 / 3.0
        s1, a_1, sg_1 = intermediate(r1)
        u1 = (sg_1 / s_s) * x - a_1 * jnp.expm1(-r1 * h) * x0
        m1 = model.x0(u1, s1)
        if self.order == 2:
            x_next = x_next - (a_t * jnp.expm1(-h) / (2.0 * r1)) * (m1 - x0)
            return x_next, state, x0
        r2 = 2.0 / 3.0
        s2, a_2, sg_2 = intermediate(r2)
        u2 = (
            (sg_2 / s_s) * x
            - a_2 * jnp.expm1(-r2 * h) * x0
            + (r2 / r1) * a_2 * (r2 * h) * phis(-r2 * h, 2)[1] * (m1 - x0)
        )
        m2 = model.x0(u2, s2)
        x_next = x_next + (a_t * h * phis(-h, 2)[1] / r2) * (m2 - x0)
        return x_next, state, x0


def dpm_solver_pp(
    order: int = 2,
    method: str = "multistep",
    lower_order_final: bool = True,
    *,
    legacy_3m: bool = False,
) -> DPMSolverPP | DPMSolverPPSinglestep:
    """DPM-Solver++ (Lu et al. 2022), data-prediction exponential integrator in ``lam``.

    Args:
      order: 1, 2 or 3 (default 2: DPM-Solver++(2M), the paper's recommendation for guided
        sampling).
      method: ``"multistep"`` (1 network call per step, NFE = n, n + 1 points) or
        ``"singlestep"`` (``order`` calls per step, NFE = order * n; 2S / 3S).
      lower_order_final: multistep only: with fewer than 15 steps, step ``i`` of ``n`` uses
        order ``min(order, n - i)`` (so the last step is first order). Singlestep steps always
        spend their ``order`` calls, so it has no effect there (the reference code uses lower
        final orders to fit an NFE that is not a multiple of ``order``; here the schedule
        length fixes the NFE).
      legacy_3m: multistep order 3 only: use the third-order coefficient of the reference
        DPM-Solver / diffusers code, which is half the Taylor one and converges with order 2
        (see module docstring); default False (order 3).

    Returns:
      A :class:`DPMSolverPP` (multistep) or :class:`DPMSolverPPSinglestep` solver.

    Raises:
      ValueError: ``order`` not in (1, 2, 3), unknown ``method``, non-bool flags.
    """
    order = _validate.integer("order", order, allowed=(1, 2, 3))
    method = _validate.choice("method", method, ("multistep", "singlestep"))
    lower_order_final = _validate.boolean("lower_order_final", lower_order_final)
    legacy_3m = _validate.boolean("legacy_3m", legacy_3m)
    if method == "singlestep":
        return DPMSolverPPSinglestep(order=order)
    return DPMSolverPP(order=order, lower_order_final=lower_order_final, legacy_3m=legacy_3m)
