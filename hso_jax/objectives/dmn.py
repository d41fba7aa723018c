"""DM-NonUniform (DMN) objective: error bound of the multistep Lagrange quadrature.

A multistep exponential integrator (DPM-Solver++ / UniPC in data-prediction form) approximates,
on the step ``s: lam_s -> lam_{s+1}`` with ``h = lam_{s+1} - lam_s``,

    int_{lam_s}^{lam_{s+1}} e^lam x_theta dlam  ~=  sum_k J_{s,k} x_theta(lam_k),
    J_{s,k} = int_{lam_s}^{lam_{s+1}} e^lam L_k(lam) dlam,

with ``L_k`` the Lagrange basis through the ``q`` most recent nodes ``lam_{s-q+1} .. lam_s``.
Order ``q`` per step (steps ``s = 0 .. N-1``): 1 at the first and last step, 2 at the second and
second-to-last, 3 elsewhere (``N = 2``: 1, 1; ``N = 3``: 1, 2, 1; ``N = 4``: 1, 2, 2, 1; ...).
With ``u = lam - lam_s`` and ``H0 = e^h - 1``, ``H1 = h e^h - H0``, ``H2 = h^2 e^h - 2 H1``
(``int_0^h e^u u^m du``), the weights are ``e^{lam_s}`` times

* ``q = 1``: ``J_s = H0``;
* ``q = 2`` (``a = h_{s-1}``): ``J_{s-1} = -H1 / a``, ``J_s = (H1 + a H0) / a``;
* ``q = 3`` (``a = h_{s-2}``, ``b = h_{s-1}``): ``J_{s-2} = (H2 + b H1) / (a (a + b))``,
  ``J_{s-1} = -(H2 + (a + b) H1) / (a b)``,
  ``J_s = (H2 + (a + 2b) H1 + b (a + b) H0) / (b (a + b))``.

Every node carries the error weight ``eps_tilde_j = sigma_j^2 / alpha_j`` (see
:mod:`hso_jax.objectives.mep` for how it is defined for non-VP processes). The objective is

    sum_{order-1 steps} |eps_tilde_s J_s|
  + sum_{multistep steps s < truncNum} || (eps_tilde_k J_{s,k})_k ||_2
  + sum_j | sum_{multistep steps s >= truncNum} eps_tilde_j J_{s,j} |

(signed in the last sum: errors of later steps may cancel). ``truncNum`` is
:data:`DMN_TRUNC_NUM` = 3 in the DM-NonUniform code (``StepOptim.sel_lambdas_lof_obj`` in
``step_optim.py``, for every N; the default of ``method="dmn"`` in :func:`hso_jax.optimize`).
HSO's port (``StepOptim.get_ts_lambdas`` in ``stages_step_optim.py``, when no truncNum is
passed) uses 0 for N <= 5, 3 for N = 6, 7 and 0 for N >= 8 (:func:`hso_trunc_num`; the default
of this factory, ``trunc_num=None`` or ``"hso"``, and of ``method="hso-dmn"``). The two differ a
lot for N <= 5 and N >= 8: on DDPM's linear betas at N = 5 the official optimum is timesteps
[999, 658, 498, 309, 100, 0] (objective 51.18 at truncNum 3) where HSO's rule gives
[999, 815, 397, 157, 50, 0] (186 under truncNum 3).

Reference: Xue et al., "Accelerating Diffusion Sampling with Optimized Time Steps" (CVPR 2024),
Sec. 3-4 and ``step_optim.py``; HSO (AAAI 2026), DMN ablation.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import _validate
from ..noise import NoiseSchedule
from .mep import FRAMES, Objective, finite_grid, log_eps_tilde

__all__ = ["DMN_TRUNC_NUM", "dmn", "step_orders", "step_weights", "hso_trunc_num"]

Array = Any

DMN_TRUNC_NUM = 3  # DM-NonUniform's truncNum (official step_optim.py)


def hso_trunc_num(n_intervals: int) -> int:
    """HSO's truncNum rule: 0 for N <= 5, 3 for N = 6..7, 0 for N >= 8."""
    return 3 if 6 <= n_intervals <= 7 else 0


def step_orders(n_intervals: int) -> np.ndarray:
    """Quadrature order of each of the N steps (1 at both ends, 2 next to them, 3 inside)."""
    n = int(n_intervals)
    q = np.full(n, 3, dtype=np.int64)
    q[[1, n - 2] if n >= 3 else []] = 2
    q[[0, n - 1]] = 1
    return q


def _h_funcs(h):
    e = jnp.exp(h)
    h0 = jnp.expm1(h)
    h1 = h * e - h0
    h2 = h * h * e - 2.0 * h1
    return h0, h1, h2


def step_weights(lam: Array) -> tuple[Array, np.ndarray]:
    """Closed-form quadrature weights of every step.

    Args:
      lam: (N + 1,) increasing half log-SNR grid.

    Returns:
      ``(J, nodes)``: ``J`` is (N, 3), ``nodes`` a static (N, 3) integer array; step ``s`` uses
      ``J[s, k]`` on node ``nodes[s, k]`` for the first ``step_orders(N)[s]`` entries of ``k``
      (oldest node first, the current node ``s`` last); unused entries have ``J = 0`` and point
      at node ``s``.
    """
    lam = jnp.asarray(lam)
    n = lam.shape[0] - 1
    q = step_orders(n)
    s = np.arange(n)
    hv = lam[1:] - lam[:-1]
    # previous step sizes (clamped indices are only used where the order makes them relevant)
    a1 = hv[np.maximum(s - 1, 0)]  # h_{s-1}
    a2 = hv[np.maximum(s - 2, 0)]  # h_{s-2}
    h0, h1, h2 = _h_funcs(hv)
    e = jnp.exp(lam[:-1])
    one = jnp.ones_like(hv)
    q2, q3 = jnp.asarray(q == 2), jnp.asarray(q == 3)
    # safe denominators where the order does not use them (keeps gradients finite)
    a1s = jnp.where(q2 | q3, a1, one)
    a2s = jnp.where(q3, a2, one)
    j1 = jnp.stack([jnp.zeros_like(hv), jnp.zeros_like(hv), h0], axis=1)
    j2 = jnp.stack([jnp.zeros_like(hv), -h1 / a1s, (h1 + a1s * h0) / a1s], axis=1)
    a, b = a2s, a1s
    j3 = jnp.stack(
        [
            (h2 + b * h1) / (a * (a + b)),
            -(h2 + (a + b) * h1) / (a * b),
            (h2 + (a + 2.0 * b) * h1 + b * (a + b) * h0) / (b * (a + b)),
        ],
        axis=1,
    )
    J = jnp.where(q3[:, None], j3, jnp.where(q2[:, None], j2, j1)) * e[:, None]
    offs = np.array([-2, -1, 0])
    nodes = s[:, None] + offs[None, :]
    used = offs[None, :] > -q[:, None]
    nodes = np.where(used, nodes, s[:, None])
    return J, nodes


def dmn(
    noise: NoiseSchedule, *, trunc_num: int | str | None = None, p: float = 2.0, frame: str = "vp"
) -> Objective:
    """DM-NonUniform error bound of a schedule.

    Args:
      noise: the noise process.
      trunc_num: truncNum (see module docstring): a non-negative integer (the DM-NonUniform
        code's is :data:`DMN_TRUNC_NUM` = 3), or ``None`` / ``"hso"`` for HSO's rule applied to
        the number of intervals of the schedule the objective is called on.
      p: exponent of ``sigma`` in the node error weight (2 in both official codes).
      frame: ``"vp"`` (default) or ``"native"`` node weights, see :mod:`hso_jax.objectives.mep`.

    Returns:
      An :class:`Objective`. Its ``terms`` are the N per-step terms (order-1 steps and the
      L2-norm steps below truncNum; zero for steps that enter the signed sum) followed by the
      N + 1 per-node terms ``|c_j|`` of the signed sum. The signed sum puts the optimum on a
      kink (``c_j = 0``: errors cancel), where gradient methods stall; ``smoothed_of_lam(lam,
      mu)`` replaces ``|c_j|`` by ``sqrt(c_j^2 + mu^2) - mu`` (``-> |c_j|`` as ``mu -> 0``)
      for continuation (:func:`hso_jax.optimizers.refine.refine_continuation`).
    """
    if trunc_num == "hso":
        trunc_num = None
    elif trunc_num is not None and (
        isinstance(trunc_num, bool) or not isinstance(trunc_num, (int, np.integer)) or trunc_num < 0
    ):
        raise ValueError(
            "trunc_num must be a non-negative integer (DM-NonUniform: 3) or 'hso' / None "
            f"(HSO's rule), got {trunc_num!r}"
        )
    p = _validate.real("p", p, 0.0, open_lo=True)
    frame = _validate.choice("frame", frame, FRAMES)

    def terms_of_lam(lam, mu=0.0):
        lam, finite = finite_grid(lam)
        return jnp.where(finite, _terms(lam, mu), jnp.inf)

    def _terms(lam, mu):
        n = lam.shape[0] - 1
        tn = hso_trunc_num(n) if trunc_num is None else min(int(trunc_num), n)
        q = step_orders(n)
        J, nodes = step_weights(lam)
        w = jnp.exp(log_eps_tilde(noise, lam, p, frame))
        e = w[nodes] * J  # (N, 3) weighted contributions; unused entries are 0
        single = jnp.asarray(q == 1)
        normed = jnp.asarray((q > 1) & (np.arange(n) < tn))
        signed = jnp.asarray((q > 1) & (np.arange(n) >= tn))
        step_terms = jnp.where(single, jnp.abs(e[:, 2]), 0.0) + jnp.where(
            normed, _safe_norm(e), 0.0
        )
        c = (
            jnp.zeros(n + 1, e.dtype)
            .at[nodes.reshape(-1)]
            .add(jnp.where(signed[:, None], e, 0.0).reshape(-1))
        )
        # |c| or its smoothing sqrt(c^2 + mu^2) - mu (exactly |c| at mu = 0)
        abs_c = jnp.abs(c) if isinstance(mu, float) and mu == 0.0 else _soft_abs(c, mu)
        return jnp.concatenate([step_terms, abs_c])

    def of_lam(lam):
        return jnp.sum(terms_of_lam(lam))

    def smoothed_of_lam(lam, mu):
        return jnp.sum(terms_of_lam(lam, mu))

    return Objective("dmn", noise, of_lam, terms_of_lam, smoothed_of_lam)


def _soft_abs(x, mu):
    return jnp.sqrt(x * x + mu * mu) - mu


def _safe_norm(x):
    sq = jnp.sum(x * x, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
