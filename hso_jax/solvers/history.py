r"""The history of a multistep solver: its last few evaluations, most recent first.

A multistep method of order p extrapolates from the current evaluation and up to p - 1
previous ones (DPM-Solver++ and UniPC: data predictions at their lam; iPNDM: noise predictions
at their sigma~ = exp(-lam)). Under ``lax.scan`` these live in fixed-shape arrays with a count
of the valid entries, and the order of a step is chosen from that count with ``jnp.where``.

Every accessor is safe where the history is missing: an invalid entry is replaced by a
finite, distinct stand-in, so the masked-out higher-order branches and their gradients stay
finite (``jnp.where`` multiplies the cotangent of the unselected branch by zero, and
``0 * inf`` would be NaN).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ._common import finite_or

__all__ = ["History"]

Array = Any


class History(NamedTuple):
    """Fixed-length history of evaluations and their nodes, most recent first.

    Entry ``k`` is valid iff ``k < count``.

    Attributes:
      values: (size, *x.shape) previous evaluations.
      nodes: (size,) the point of each evaluation (its lam, or its sigma~ for iPNDM).
      count: number of valid entries (int32 scalar), at most ``size``.
    """

    values: Array
    nodes: Array
    count: Array

    @classmethod
    def empty(cls, size: int, x: Array) -> History:
        """An empty history of ``size`` evaluations shaped like ``x``."""
        return cls(
            values=jnp.zeros((size,) + x.shape, x.dtype),
            nodes=jnp.zeros((size,), x.dtype),
            count=jnp.zeros((), jnp.int32),
        )

    @property
    def size(self) -> int:
        """The number of entries kept (static)."""
        return self.nodes.shape[0]

    def push(self, value: Array, node: Array) -> History:
        """Prepend the evaluation ``value`` at ``node``, dropping the oldest entry.

        A point at lam = -inf (sigma = 1 of a flow, sigma~ = inf) is pushed but not counted:
        its divided differences ``(m_k - m_0) / r_k`` vanish (``r_k = -inf``), so it adds
        nothing to a polynomial extrapolation and the next step warms up as from an empty
        history.
        """
        if self.size == 0:
            return self
        count = jnp.where(jnp.isfinite(node), jnp.minimum(self.count + 1, self.size), self.count)
        return History(
            values=_prepend(self.values, value),
            nodes=_prepend(self.nodes, node),
            count=count.astype(jnp.int32),
        )

    def gap(self, k: int, origin: Array, fallback: Array) -> Array:
        """The step ``h_k`` back to entry ``k``: ``nodes[k - 1] - nodes[k]`` (``origin - nodes[0]``
        for ``k = 0``), or ``fallback`` (a safe, finite value) where entry ``k`` is invalid.

        DPM-Solver++ writes its history as the ratios ``r_k = h_k / h`` of these steps.
        """
        newer = origin if k == 0 else self.nodes[k - 1]
        return jnp.where(self.count >= k + 1, newer - self.nodes[k], fallback)

    def relative_nodes(self, origin: Array, scale: Array) -> list[Array]:
        """Interpolation nodes ``(nodes[k] - origin) / scale``, distinct where invalid.

        An invalid node is replaced by the previous (safe) node minus one, starting from 0 (the
        node of ``origin``), so that all nodes stay distinct (valid nodes move away from
        ``origin`` in the direction of ``-scale``) and every Vandermonde system is well posed
        even where its result is masked out. ``scale`` must be finite and non-zero.
        """
        out, prev = [], 0.0
        for k in range(self.size):
            # non-finite nodes (a start at sigma = 1) only occur in invalid entries
            raw = (finite_or(self.nodes[k], origin - scale) - origin) / scale
            prev = jnp.where(k < self.count, raw, prev - 1.0)
            out.append(prev)
        return out


def _prepend(history: Array, value: Array) -> Array:
    return jnp.concatenate([jnp.asarray(value, history.dtype)[None], history[:-1]], axis=0)
