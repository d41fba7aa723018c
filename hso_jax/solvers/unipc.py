r"""UniPC: the UniP-p multistep predictor with the UniC-p corrector, data-prediction form.

Step from ``s`` to ``t``, ``h = lam_t - lam_s > 0``, ``m0 = x0(x_s, s)``; previous data
predictions ``m_k`` at ``lam_s + r_k h`` (``r_k < 0``), ``D_k = (m_k - m0) / r_k``
(~ sum_j r_k^{j-1} h^j x0^{(j)} / j!). The predictor of order p is

.. math::

    \tilde x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t (e^{-h} - 1)\, m_0
                 - \alpha_t B(h) \sum_{k=1}^{p-1} a_k D_k,

and the corrector of order p, using the evaluation ``m_t = x0(x~_t, t)`` at the predicted
point as one more node ``r_p = 1``, ``D_p = m_t - m0``, is

.. math::

    x_t^c = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t (e^{-h} - 1)\, m_0
            - \alpha_t B(h) \Big(\sum_{k=1}^{p-1} c_k D_k + c_p D_p\Big).

The weights solve the order conditions (UniPC Thm. 3.1, with the Taylor expansion of the
exact solution, DPM-Solver++ Eq. (9))
:math:`\sum_k a_k r_k^{j-1} = j!\,(-h)\,\varphi_{j+1}(-h) / B(h)`, j = 1..p-1 (predictor)
or 1..p (corrector), a small Vandermonde system solved in closed form (Lagrange weights).
``B(h) = -h`` (``"bh1"``) or ``B(h) = e^{-h} - 1`` (``"bh2"``), the two choices of the paper
(written for the data-prediction sign convention of the reference code). As in the reference
implementation, UniP-2 uses ``a_1 = 1/2`` and UniC-1 ``c_1 = 1/2`` (the leading-order value
of both the bh1 and bh2 solutions) instead of solving the 1 x 1 system.

Network calls: one per step (NFE = n for n + 1 schedule points). The corrector costs no
evaluation: the step that starts at ``t`` evaluates ``x0(x~_t, t)`` anyway (its ``m0``); it
first corrects the carried previous step to ``x_t^c`` with that evaluation, then predicts
from ``x_t^c`` with ``m0 = x0(x~_t, t)`` (evaluated at the *predicted* point, as in the paper).
So the corrector is applied after every step but the last, and the sample returned is the
last prediction. Everything the corrector needs from its own step (base point, weighted
history differences, the weight of the new point) is computed with the predictor and carried
in :class:`UniPCState`, so correcting costs one fused update; a trajectory
(:func:`~hso_jax.sample_trajectory`) records the predicted points.

Orders: UniP-p has order p; with the corrector, UniPC-p has order p + 1 (Thm. 3.1; for
p = 3 the first-order warm-up step limits it asymptotically, see the tests). Warm-up: the
first steps use lower orders (history count); with ``lower_order_final`` and fewer than 15
steps, step ``i`` uses order ``min(order, n - i)``, for its predictor and the corrector that
follows it. ``unipc(order=1, corrector=False)`` is DDIM.

Reference: Zhao, Bai, Rao, Zhou, Lu, "UniPC: A Unified Predictor-Corrector Framework for
Fast Sampling of Diffusion Models" (NeurIPS 2023), Alg. 1 (UniC), Alg. 2 / 3 (UniP,
UniPC), Thm. 3.1 (order conditions), Sec. 3.3 (B(h) = h or e^h - 1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from .. import _validate
from ._common import lagrange_weights, lam_ends, lam_step, phis, safe_h, select_by_order, step_order
from .base import MultistepSolver
from .history import History

__all__ = ["UniPC", "UniPCState", "unipc"]

Array = Any


class UniPCState(NamedTuple):
    """Carry of UniPC: the history and the previous step's corrector.

    The corrector of the step ``t_prev -> t`` needs, besides the new evaluation ``m_t``, only
    quantities of that step, so the step computes them once and carries them:
    ``x_t^c = corr_base - corr_coef * m_t``.

    Attributes:
      corr_base: ``x_base - alpha_t B(h) (sum_{k<p} c_k D_k - c_p m0)`` of the previous step.
      corr_coef: ``alpha_t B(h) c_p`` of the previous step (scalar).
      history: the previous ``order - 1`` data predictions at their lam (the most recent one
        at the previous time point, evaluated at the predicted point).
    """

    corr_base: Array
    corr_coef: Array
    history: History


@dataclasses.dataclass(frozen=True)
class UniPC(MultistepSolver):
    """UniPC multistep predictor-corrector (see module docstring).

    Attributes:
      order: predictor order p, 1 to 3.
      variant: ``"bh1"`` (B(h) = h) or ``"bh2"`` (B(h) = e^h - 1).
      corrector: apply UniC after every step but the last (no extra network call).
      lower_order_final: order ``min(order, n - i)`` at step ``i`` when ``n < 15``
        (``"always"``: at every ``n``).
    """

    order: int = 2
    variant: str = "bh2"
    corrector: bool = True
    lower_order_final: bool | str = True

    def _B(self, h: Array) -> Array:
        return -h if self.variant == "bh1" else jnp.expm1(-h)

    def check_ends(self, noise, ts) -> None:
        if self.variant == "bh1" and self.corrector and np.isneginf(lam_ends(noise, ts)[0]):
            raise ValueError(
                "unipc(variant='bh1') cannot start at sigma = 1 (lam(ts[0]) = -inf): the "
                "corrector of the first step has the weight B(h) = h, infinite for the infinite "
                "first step. Use variant='bh2' (B(h) = e^h - 1, finite there), corrector=False, "
                "or a schedule starting at t < 1"
            )

    def init(self, model, x: Array, ts: Array) -> UniPCState:
        return UniPCState(
            corr_base=jnp.zeros_like(x),
            corr_coef=jnp.zeros((), x.dtype),
            history=super().init(model, x, ts),
        )

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        m0 = model.x0(x, t_cur)  # at the predicted point x~_i (x_T at i = 0)
        if self.corrector:
            # UniC for the previous step t_prev -> t_cur, with the evaluation just made.
            x_c = state.corr_base - state.corr_coef * m0
            x = jnp.where(i >= 1, x_c, x)

        lam_s, lam_t, h, a_t, s_s, s_t = lam_step(model.noise, t_cur, t_next)
        hist = state.history
        p = step_order(self.order, hist.count, i, n, self.lower_order_final, lam_t)
        x_base = (s_t / s_s) * x - a_t * jnp.expm1(-h) * m0  # UniP-1 = DDIM, finite for h = inf
        # UniC-1 keeps the true h: on a step from sigma = 1 (h = inf) its bh2 weight
        # B = e^{-h} - 1 = -1 is finite. Everything else uses a safe h: it is masked out on
        # infinite steps (first order; the corrector of a step into sigma = 0 is never applied).
        h_c = jnp.where(jnp.isposinf(lam_t), safe_h(h), h)
        h = safe_h(h)
        aB = a_t * self._B(h)
        aB_1 = a_t * self._B(h_c)
        # Order conditions: b_j = j! (-h) phi_{j+1}(-h) / B(h), j = 1..order.
        phi = phis(-h, self.order + 1)
        b = [math.factorial(j) * -h * phi[j] / self._B(h) for j in range(1, self.order + 1)]
        # History nodes r_k = (lam_k - lam_s) / h < 0 (safe placeholders where missing) and
        # differences D_k = (m_k - m0) / r_k.
        r = hist.relative_nodes(lam_s, h)
        D = [(hist.values[k] - m0) / r[k] for k in range(hist.size)]

        preds = [x_base]  # UniP-q uses q - 1 differences
        for q in range(2, self.order + 1):
            a = [0.5] if q == 2 else lagrange_weights(r[: q - 1], b[: q - 1])
            preds.append(
                x_base - aB * sum(a_k * D_k for a_k, D_k in zip(a, D[: q - 1], strict=True))
            )
        x_next = select_by_order(p, preds)

        history = hist.push(m0, lam_s)
        if not self.corrector:
            return x_next, state._replace(history=history), m0
        # UniC-q uses the q - 1 differences and the next evaluation at r = 1.
        bases, coefs = [x_base + 0.5 * aB_1 * m0], [0.5 * aB_1]
        for q in range(2, self.order + 1):
            c = lagrange_weights(r[: q - 1] + [1.0], b[:q])
            res = sum(c_k * D_k for c_k, D_k in zip(c[:-1], D[: q - 1], strict=True))
            bases.append(x_base - aB * (res - c[-1] * m0))
            coefs.append(aB * c[-1])
        state = UniPCState(select_by_order(p, bases), select_by_order(p, coefs), history)
        return x_next, state, m0


def unipc(
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool | str = True,
) -> UniPC:
    """UniPC (Zhao et al. 2023): UniP-``order`` predictor + UniC corrector, data prediction.

    One network call per step (NFE = n for n + 1 schedule points); the corrector reuses the
    evaluation at the next point, so it is free.

    Args:
      order: predictor order, 1 to 3 (default 2, the paper's choice for guided sampling).
      variant: ``"bh2"`` (B(h) = e^h - 1, default) or ``"bh1"`` (B(h) = h; the paper
        recommends it for unconditional sampling at very low NFE).
      corrector: apply UniC after every step but the last (order p + 1 with UniP-p).
      lower_order_final: with fewer than 15 steps, step ``i`` of ``n`` uses order
        ``min(order, n - i)`` (the official UniPC and diffusers' DPM-Solver++ limit it to
        short schedules); ``"always"`` does so at every length, as diffusers'
        ``UniPCMultistepScheduler`` does.

    Raises:
      ValueError: ``order`` not in (1, 2, 3), unknown ``variant``, non-bool flags.
    """
    order = _validate.integer("order", order, allowed=(1, 2, 3))
    variant = _validate.choice("variant", variant, ("bh2", "bh1"))
    corrector = _validate.boolean("corrector", corrector)
    if not (isinstance(lower_order_final, bool) or lower_order_final == "always"):
        raise TypeError(
            f"lower_order_final must be True, False or 'always', got {lower_order_final!r}"
        )
    return UniPC(
        order=order, variant=variant, corrector=corrector, lower_order_final=lower_order_final
    )
