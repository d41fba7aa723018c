r"""Heun's method (2nd order) on the probability-flow ODE: EDM's sampler, or in model time.

Two network calls per step (NFE = 2 n for n + 1 schedule points). With a slope ``f`` in a
time variable ``s``:

.. math::

    x' = x_i + (s_{i+1} - s_i)\, f(x_i, s_i), \qquad
    x_{i+1} = x_i + (s_{i+1} - s_i)\, \tfrac{1}{2} \big(f(x_i, s_i) + f(x', s_{i+1})\big).

Two choices of variables (``space``):

* ``"edm"``: EDM's ``x~ = x / alpha``, ``sigma~ = sigma / alpha = exp(-lam)``, slope
  ``dx~/dsigma~ = (x~ - D(x, t)) / sigma~`` (Karras et al. 2022, Alg. 1); ``x_{i+1} =
  alpha_{i+1} x~_{i+1}``. A step from ``alpha = 0`` (sigma~ = inf, the start of a flow) is
  infinitely long there, so this space refuses schedules starting at sigma = 1.
* ``"t"``: the process's own state and model time, slope ``dx/dt = alpha'(t) D +
  sigma'(t) eps_hat`` (``eps_hat = (x - alpha D) / sigma``); for rectified flow this is the
  velocity ``v = eps_hat - D = (x - D) / t`` that flow-matching networks predict, and Heun in
  ``t = sigma`` is diffusers' ``FlowMatchHeunDiscreteScheduler`` (tested step by step).

``space="auto"`` (default) takes ``"t"`` for :class:`~hso_jax.noise.RectifiedFlow` and ``"edm"``
for every other process. (Euler is the same method in both spaces; Heun is not.)

**Last step into sigma = 0.** The slope at sigma = 0 is ``0 / 0`` in terms of the data
prediction, so a step that ends at sigma = 0 is an Euler step, as in EDM's Alg. 1 (line 6) and
diffusers' FlowMatchHeun (whose last step is first order: 2 n - 1 calls for n steps). Here the
correction is skipped with ``lax.cond``, so that network call is not made (under ``vmap`` over
schedules both branches run and the call is made and discarded). Deterministic sampler
(S_churn = 0).

Reference: Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based
Generative Models" (NeurIPS 2022), Alg. 1; diffusers ``FlowMatchHeunDiscreteScheduler.step``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validate
from ..noise import RectifiedFlow
from ._common import lam_ends
from ._edm import edm_slope, edm_vars
from .base import Solver

__all__ = ["Heun", "heun", "SPACES"]

SPACES = ("auto", "edm", "t")


def _velocity(model, x, t):
    """(dx/dt = alpha'(t) D + sigma'(t) eps_hat, D) at the state ``x`` and model time ``t``."""
    ns = model.noise
    x0 = model.x0(x, t)
    eps = (x - ns.alpha(t) * x0) / ns.sigma(t)
    return jax.grad(ns.alpha)(t) * x0 + jax.grad(ns.sigma)(t) * eps, x0


@dataclasses.dataclass(frozen=True)
class Heun(Solver):
    """Heun's method: two network calls per step, order 2.

    Attributes:
      space: ``"auto"``, ``"edm"`` or ``"t"`` (see module docstring).
    """

    calls_per_step = 2
    order: int = 2
    space: str = "auto"

    @property
    def calls_into_data(self) -> int:  # type: ignore[override]
        return 1  # the last step into sigma = 0 is an Euler step

    def resolved_space(self, noise) -> str:
        """The variables used under ``noise``: ``"t"`` or ``"edm"``."""
        if self.space == "auto":
            return "t" if isinstance(noise, RectifiedFlow) else "edm"
        return self.space

    def check_ends(self, noise, ts) -> None:
        if self.resolved_space(noise) == "edm" and np.isneginf(lam_ends(noise, ts)[0]):
            raise ValueError(
                "heun(space='edm') cannot start at alpha = 0 (lam(ts[0]) = -inf, sigma~ = inf): "
                "the first step is infinitely long in EDM's variables. Use space='t' (Heun in "
                "model time, as flow pipelines do) or a schedule starting at t < 1"
            )

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        ns = model.noise
        final = ns.sigma(t_next) == 0.0
        # The correction is evaluated at a safe time on a step into sigma = 0, where it is
        # skipped: its slope is 0 / 0 there and NaN would poison gradients under vmap.
        t_c = jnp.where(final, t_cur, t_next)
        if self.resolved_space(ns) == "t":
            dt = t_next - t_cur
            d, x0 = _velocity(model, x, t_cur)
            x_euler = x + dt * d

            def correct():
                d_next, _ = _velocity(model, x_euler, t_c)
                return x + dt * 0.5 * (d + d_next)

        else:
            a_s, sg_s = edm_vars(ns, t_cur)
            a_t, sg_t = edm_vars(ns, t_next)
            a_c, sg_c = edm_vars(ns, t_c)
            dsg = sg_t - sg_s
            xs = x / a_s
            d, x0 = edm_slope(model, x, t_cur, a_s, sg_s)
            x_euler = a_t * (xs + dsg * d)

            def correct():
                d_next, _ = edm_slope(model, a_c * (xs + dsg * d), t_c, a_c, sg_c)
                return a_t * (xs + dsg * 0.5 * (d + d_next))

        x_next = jax.lax.cond(final, lambda: x_euler, correct)
        return x_next, state, x0


def heun(space: str = "auto") -> Heun:
    """Heun's second-order method on the probability-flow ODE.

    Two network calls per step (NFE = 2 n for n + 1 schedule points; a last step into the data
    end t = 0 is an Euler step and makes one call: NFE = 2 n - 1, ``nfe(n, to_data=True)``).

    Args:
      space: ``"auto"`` (default: model time ``t`` for rectified flow, as diffusers'
        FlowMatchHeunDiscreteScheduler; EDM's variables otherwise, Karras et al. 2022, Alg. 1),
        ``"edm"`` or ``"t"``.

    Raises:
      ValueError: unknown ``space``.
    """
    return Heun(space=_validate.choice("space", space, SPACES))
