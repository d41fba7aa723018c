r"""The coordinate search of Align Your Steps: candidates per point and one pass over points.

A pass moves each point ``sigma_i`` of a set of non-adjacent interior points of a decreasing
array of EDM noise levels to the KLUB argmin among ``num`` candidates in its neighbourhood
``(sigma_{i+1}, sigma_{i-1})``. Only the two KLUB terms next to ``sigma_i`` depend on it, so the
candidates of all the points are scored together in one batched evaluation
(:meth:`hso_jax.objectives.klub.KLUB.neighbourhood`), all candidates of one point with common
random numbers.

Candidates (:func:`candidate_grid`): the current value, and ``k`` values on each side spread
evenly in ``log sigma`` up to a fraction ``radius * k / (k + 1)`` of the log-distance to the
neighbour. With ``radius = 1`` this is the paper's grid over the whole neighbourhood. As in a
pattern search, a point's radius halves when the winner lies inside the grid (the optimum is
then bracketed within one spacing) and doubles, up to 1, when an outermost candidate wins; a
point has converged when its radius falls below ``min_radius``.

Reference: Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion
Models", ICML 2024 (arXiv 2404.14507), Sec. 3 (Algorithm 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..objectives.klub import KLUB

__all__ = ["CoordinateSearch", "candidate_grid"]

Array = Any


def candidate_grid(
    m: np.ndarray, lo: np.ndarray, hi: np.ndarray, radius: np.ndarray, num: int
) -> np.ndarray:
    r"""Candidates of each point: the current value first, the rest log-evenly on both sides.

    With ``k_b = (num - 1) // 2`` values below and ``k_a = num - 1 - k_b`` above ``m``,

    .. math::

        \log c_j = \log m + r \frac{j}{k + 1} (\log n - \log m), \qquad j = 1 \dots k,

    where ``n`` is the neighbour on that side (``lo`` below, ``hi`` above) and ``r`` the point's
    radius: the outermost candidate lies ``k / (k + 1)`` of the way to the neighbour at
    ``r = 1``, never on it.

    Args:
      m: ``(P,)`` current values (EDM sigmas).
      lo, hi: ``(P,)`` the fixed neighbours, ``lo < m < hi``.
      radius: ``(P,)`` fraction of each neighbourhood searched, in ``(0, 1]``.
      num: candidates per point (``>= 3``).

    Returns:
      ``(P, num)`` candidates: column 0 the current values, columns ``1 .. k_b`` below them
      (outwards), the rest above them (outwards).
    """
    below = (num - 1) // 2
    above = num - 1 - below
    lm, llo, lhi = np.log(m), np.log(lo), np.log(hi)
    fb = np.arange(1, below + 1) / (below + 1)
    fa = np.arange(1, above + 1) / (above + 1)
    cb = lm[:, None] + (llo - lm)[:, None] * radius[:, None] * fb[None, :]
    ca = lm[:, None] + (lhi - lm)[:, None] * radius[:, None] * fa[None, :]
    return np.exp(np.concatenate([lm[:, None], cb, ca], axis=1))


class CoordinateSearch:
    """The coordinate search on a decreasing array of sigmas (mutable, host side, float64).

    Attributes:
      obj: the KLUB objective.
      sig: the current schedule (EDM sigmas, decreasing), updated in place by :meth:`update`.
      key: PRNG key of the search's random numbers (fixed for the search: every candidate of
        point ``i`` in every pass uses the slots of point ``i``, so a pass never raises a
        point's own local estimate).
      num: candidates per point and pass.
      min_radius: a point whose radius is below this has converged.
      radius: per-point search radius (only interior entries are used), starting at 1.
      candidate_evals: candidates scored so far.
      network_evals: network evaluations spent so far.
    """

    def __init__(self, obj: KLUB, sig: np.ndarray, key: Array, num: int, min_radius: float):
        self.obj, self.sig, self.key, self.num, self.min_radius = obj, sig, key, num, min_radius
        self.radius = np.ones(sig.shape[0])  # per point; only interior entries are used
        self.candidate_evals = 0
        self.network_evals = 0

    def update(self, pts: np.ndarray) -> np.ndarray:
        """One pass over the (non-adjacent) points ``pts``; returns their best local KLUB.

        Raises:
          FloatingPointError: a candidate's KLUB estimate is NaN or inf (named by its point).
        """
        sig, r = self.sig, self.radius
        m, lo, hi = sig[pts], sig[pts + 1], sig[pts - 1]
        cand = candidate_grid(m, lo, hi, r[pts], self.num)
        # candidates are scored in float32: one that rounds onto a neighbour would be an empty
        # interval; it is replaced by the current value (a harmless duplicate)
        c32 = cand.astype(np.float32)
        inside = (c32 > lo.astype(np.float32)[:, None]) & (c32 < hi.astype(np.float32)[:, None])
        cand = np.where(inside, cand, m[:, None])
        terms = self.obj.neighbourhood(
            lo.astype(np.float32), cand.astype(np.float32), hi.astype(np.float32), pts, self.key
        )
        vals = np.asarray(terms, np.float64).sum(-1)
        if not np.all(np.isfinite(vals)):
            bad = int(pts[np.argmax(~np.all(np.isfinite(vals), axis=1))])
            raise FloatingPointError(
                f"the KLUB estimate is NaN/inf near sigma = {sig[bad]:.6g} (check the model "
                "there, e.g. its output at both ends of the noise range)"
            )
        best = np.argmin(vals, axis=1)  # ties -> column 0, the current value
        sig[pts] = cand[np.arange(len(pts)), best]
        below = (self.num - 1) // 2
        outer = (best == below) | (best == self.num - 1)
        # pattern search: a winner inside the grid brackets the optimum within one spacing,
        # so the grid is refined; a winner on the edge may lie beyond it, so it widens
        r[pts] = np.where(outer, np.minimum(1.0, 2.0 * r[pts]), 0.5 * r[pts])
        self.candidate_evals += cand.size
        self.network_evals += self.obj.neighbourhood_cost(*cand.shape)
        return vals[np.arange(len(pts)), best]

    def converged(self, pts: np.ndarray) -> bool:
        """Whether every point of ``pts`` has a radius below ``min_radius``."""
        return bool(np.all(self.radius[pts] < self.min_radius))
