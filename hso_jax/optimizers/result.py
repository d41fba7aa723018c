"""The result every schedule optimiser returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..noise import NoiseSchedule

__all__ = ["OptimizeResult"]


@dataclasses.dataclass(frozen=True)
class OptimizeResult:
    """An optimised schedule and how it was obtained.

    Attributes:
      t: (n + 1,) model times, strictly decreasing (float64 NumPy array).
      timesteps: integer training-step indices ``round(N t) - 1`` for discrete-time processes,
        else ``None``.
      sigmas: EDM noise levels ``sigma / alpha`` at ``t``.
      lambdas: half log-SNR ``lam`` at ``t``.
      objective: final value of the optimised objective (method-specific, see ``method``).
      penalty: spacing penalty at the result (HSO's SPF term), ``None`` if not used.
      method, solver, nfe: what was optimised for.
      noise: name of the noise process.
      params: method parameters chosen by the search (e.g. ``rho``, ``t_eps``, ``t_max``).
      info: timings, iteration counts, convergence flags, objective history.
      warnings: human-readable warnings (penalty dominates, local level did not converge, ...).
      options: the options the method was called with.
    """

    t: np.ndarray
    timesteps: np.ndarray | None
    sigmas: np.ndarray
    lambdas: np.ndarray
    objective: float
    penalty: float | None
    method: str
    solver: str
    nfe: int
    noise: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_t(cls, t, noise: NoiseSchedule, **fields) -> OptimizeResult:
        """Build a result from times ``t``, deriving timesteps / sigmas / lambdas exactly."""
        import jax
        import jax.numpy as jnp

        t = np.asarray(t, dtype=np.float64)
        with jax.enable_x64(True):
            tj = jnp.asarray(t, jnp.float64)
            lambdas = np.asarray(noise.lam(tj), np.float64)
            sigmas = np.asarray(noise.sigma_edm(tj), np.float64)
        timesteps = noise.index_from_t(t) if noise.is_discrete else None
        return cls(
            t=t,
            timesteps=timesteps,
            sigmas=sigmas,
            lambdas=lambdas,
            noise=getattr(noise, "name", type(noise).__name__),
            **fields,
        )

    def with_t(self, t, noise: NoiseSchedule, **changes) -> OptimizeResult:
        """This result with the schedule ``t`` (its timesteps / sigmas / lambdas derived
        again) and the other fields replaced by ``changes``."""
        keep = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("t", "timesteps", "sigmas", "lambdas", "noise")
        }
        return OptimizeResult.from_t(t, noise, **{**keep, **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists and plain floats)."""

        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, (np.floating, np.integer)):
                return v.item()
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
