"""The solver interface: an immutable object with ``init`` and ``step``.

A solver advances the probability-flow ODE (or a reverse SDE) of a :class:`~hso_jax.Denoiser`
along a schedule ``ts`` (strictly decreasing model times). The driver
(:func:`hso_jax.solvers.driver.sample`) runs ``step`` inside one ``lax.scan``; everything a
multistep method remembers (previous data predictions, previous lam's, how many are valid)
lives in a fixed-shape ``state`` pytree, so lower-order warm-up is decided from the carried
history with ``jnp.where`` rather than Python branches on traced values.

Subclasses are frozen dataclasses (hashable, so they are static arguments of ``jax.jit``) and
implement:

* ``calls_per_step``: network evaluations per step (NFE of a schedule with n + 1 points is
  ``calls_per_step * n``);
* ``init(model, x, ts) -> state``;
* ``check_ends(noise, ts)``: optional eager check of a concrete schedule (e.g. a method
  that has no limit at sigma = 1 of a flow says so here);
* ``step(model, x, state, t_cur, t_next, i, n, key) -> (x_next, state, x0)`` where ``i`` is the
  (traced) step index, ``n`` the (static) number of steps and ``x0`` the data prediction at
  ``t_cur`` used by this step (recorded by :func:`sample_trajectory`).

Multistep methods of order p derive from :class:`MultistepSolver`: their state is (UniPC: holds)
a :class:`~hso_jax.solvers.history.History` of the previous p - 1 evaluations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .history import History

__all__ = ["Solver", "MultistepSolver"]

Array = Any


@dataclasses.dataclass(frozen=True)
class Solver:
    """Base class of all solvers (see module docstring)."""

    calls_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    order: int = 1

    @property
    def calls_into_data(self) -> int:
        """Network calls of a last step into the data end ``t = 0`` (Heun: 1, an Euler step)."""
        return self.calls_per_step

    def nfe(self, num_steps: int, to_data: bool = False) -> int:
        """Network evaluations for a schedule with ``num_steps`` intervals (``to_data``: the
        last one ends at the data, ``t = 0``)."""
        n = int(num_steps)
        if to_data and n >= 1:
            return self.calls_per_step * (n - 1) + self.calls_into_data
        return self.calls_per_step * n

    def num_points(self, nfe: int, to_data: bool = False) -> int:
        """Schedule length (time points) that spends exactly ``nfe`` network evaluations
        (``to_data``: a schedule whose last point is the data end ``t = 0``)."""
        k, saved = self.calls_per_step, (self.calls_per_step - self.calls_into_data) * bool(to_data)
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < k - saved:
            raise ValueError(
                f"nfe must be an integer >= {k - saved} for {type(self).__name__}, got {nfe!r}"
            )
        if (nfe + saved) % k:
            ends = f", minus {saved} for a schedule ending at t = 0" if saved else ""
            raise ValueError(
                f"nfe must be a multiple of {k} for {type(self).__name__} ({k} network calls "
                f"per step{ends}), got {nfe}"
            )
        return (nfe + saved) // k + 1

    def init(self, model, x: Array, ts: Array) -> Any:
        return None

    def check_ends(self, noise, ts) -> None:
        """Raise ``ValueError`` if this solver cannot run the concrete schedule ``ts`` under
        ``noise`` (called eagerly by the driver; by default every schedule is fine)."""

    def step(self, model, x, state, t_cur, t_next, i, n, key):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class MultistepSolver(Solver):
    """A solver of order p that extrapolates from its previous p - 1 evaluations.

    Its state is a :class:`~hso_jax.solvers.history.History` of ``order - 1`` entries
    (empty at the start, so the first steps warm up with lower orders); ``step`` returns
    ``state.push(value, node)``.
    """

    def init(self, model, x: Array, ts: Array) -> History:
        return History.empty(self.order - 1, x)
