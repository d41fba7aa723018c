"""DDIM (deterministic and stochastic), i.e. first-order DPM-Solver++ in data-prediction form.

With h = lam(t_next) - lam(t_cur) and x0 = D(x, t_cur), one network call per step:

    x_next = alpha_next x0 + sqrt(sigma_next^2 - c^2) (x - alpha_cur x0) / sigma_cur + c z,
    c = eta sigma_next sqrt(1 - e^{-2h}),   z ~ N(0, I).

eta = 0 gives DDIM, x_next = (sigma_next / sigma_cur) x - alpha_next (e^{-h} - 1) x0; eta = 1
gives the first-order SDE-DPM-Solver++. For VP processes c equals DDIM's sigma_eta.

References: Song, Meng, Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), Eq. (12);
Lu et al., "DPM-Solver++" (2022), Eq. (9) and App. (SDE variant).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .base import Solver

__all__ = ["DDIM", "ddim"]


@dataclasses.dataclass(frozen=True)
class DDIM(Solver):
    eta: float = 0.0

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta != 0.0

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        ns = model.noise
        x0 = model.x0(x, t_cur)
        a_s, s_s = ns.alpha(t_cur), ns.sigma(t_cur)
        a_t, s_t = ns.alpha(t_next), ns.sigma(t_next)
        eps_hat = (x - a_s * x0) / s_s
        if self.eta == 0.0:
            h = ns.lam(t_next) - ns.lam(t_cur)
            # (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) x0: the exact exponential integrator
            return (s_t / s_s) * x - a_t * jnp.expm1(-h) * x0, state, x0
        h = ns.lam(t_next) - ns.lam(t_cur)
        # sqrt(sigma_t^2 - c^2) = sigma_t sqrt(1 - eta^2 (1 - e^{-2h})) and c = eta sigma_t
        # sqrt(1 - e^{-2h}), written so that no square root is taken of 0 (whose derivative is
        # infinite): at eta = 1 the first is sigma_t e^{-h}, which is 0 on a step from sigma = 1.
        one_m_e2h = -jnp.expm1(-2.0 * h)
        if self.eta == 1.0:
            keep = s_t * jnp.exp(-h)
        else:
            keep = s_t * jnp.sqrt(1.0 - self.eta**2 * one_m_e2h)
        z = jax.random.normal(key, x.shape, x.dtype)
        x_next = a_t * x0 + keep * eps_hat + (self.eta * s_t * jnp.sqrt(one_m_e2h)) * z
        return x_next, state, x0


def ddim(eta: float = 0.0) -> DDIM:
    """DDIM; ``eta > 0`` is stochastic DDIM (needs a PRNG key). One network call per step."""
    if not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be a float in [0, 1], got {eta!r}")
    return DDIM(order=1, eta=float(eta))
