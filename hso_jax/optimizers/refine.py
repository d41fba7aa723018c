"""Lower level: refine the interior points of a lam grid with fixed end points (Optax L-BFGS).

Parameterisation (monotone by construction, no sorting or clipping in the objective): with
``N`` free logits ``z`` and the fixed span ``Delta = lam_N - lam_0``,

    h = Delta softmax(z),       lam_k = lam_0 + sum_{i<k} h_i     (k = 0 .. N),

so every iterate is a strictly increasing grid with the exact end points (``lam_N`` is set to
the fixed value, not to the rounded cumulative sum). The map is invariant to ``z -> z + c``; the
gradient has no component along ``(1, .., 1)``, so the redundant direction is never moved along.
Initial logits are ``log(h_init)``, which reproduce the initial grid exactly.

The optimiser is ``optax.lbfgs`` (memory 10) with its zoom line search (strong Wolfe), run for at
most ``max_iter`` iterations inside ``lax.while_loop``; the function is pure, so it ``jit``-s and
``vmap``-s over a whole population of initial grids (under ``vmap`` the loop runs until every
member has stopped; stopped members are frozen). Stopping, per member:

* ``max|grad_z| <= gtol * (|f| + tiny)`` (relative gradient in logit space: a logit step
  ``dz`` changes ``f`` by ``grad_z . dz``); or
* stalled: the relative change of ``f`` over the last iteration is ``<= ftol``, i.e. progress
  has reached the rounding level of ``f`` (an f-based line search cannot resolve gradients much
  below ``sqrt(eps |f| H)``); or
* ``max_iter`` reached.

``gtol`` (default 1e-9) is deliberately tight: HSO's fitness adds a penalty with weight 1e9 on
the refined grid, so lower-level imprecision shows up amplified in the upper level. The member
is reported ``converged`` when, at exit, ``max|grad_z| <= converged_gtol * |f|`` (default 1e-6,
the gradient tolerance of the official trust-region lower level) -- a test that is attainable in
float64, unlike ``gtol`` on badly scaled problems, and that a stall far from stationarity fails.

Reference: Liu & Nocedal, "On the limited memory BFGS method" (1989); Nocedal & Wright,
"Numerical Optimization", Alg. 3.5-3.6 (zoom line search); HSO (AAAI 2026), lower level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["RefineResult", "refine", "refine_continuation", "lam_from_logits", "logits_from_lam"]

Array = Any


class RefineResult(NamedTuple):
    """Outcome of :func:`refine` (all fields batched under ``vmap``).

    Attributes:
      lam: (N + 1,) refined increasing grid (end points unchanged): the best iterate, so
        ``value <= init_value`` always.
      value: objective at ``lam``.
      init_value: objective at the initial grid.
      grad_norm: ``max|grad|`` w.r.t. the logits at exit.
      rel_change: relative change of the objective in the last iteration.
      iterations: L-BFGS iterations done.
      converged: the gradient test held at exit.
    """

    lam: Array
    value: Array
    init_value: Array
    grad_norm: Array
    rel_change: Array
    iterations: Array
    converged: Array


def lam_from_logits(z: Array, lam_start: Array, lam_end: Array) -> Array:
    """Increasing grid ``lam_0 = lam_start < ... < lam_N = lam_end`` from ``N`` logits."""
    h = (lam_end - lam_start) * jax.nn.softmax(z)
    n = h.shape[0]
    # cumulative sum as a product with a lower-triangular 0/1 matrix: one dot instead of a
    # reduce-window (cheaper to compile on CPU; N is small)
    tri = jnp.tri(n + 1, n, -1, dtype=h.dtype)
    lam = lam_start + tri @ h
    return lam.at[-1].set(lam_end)


def logits_from_lam(lam: Array) -> Array:
    """Logits reproducing the (strictly increasing) grid ``lam`` (inverse of the above)."""
    h = lam[1:] - lam[:-1]
    z = jnp.log(h)
    return z - jnp.mean(z)


def refine(
    objective_of_lam: Callable[[Array], Array],
    lam_init: Array,
    *,
    max_iter: int = 100,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    converged_gtol: float = 1e-6,
    memory_size: int = 10,
    max_linesearch_steps: int = 20,
) -> RefineResult:
    """Minimise ``objective_of_lam`` over the interior points of ``lam_init``.

    Args:
      objective_of_lam: ``lam -> scalar`` on the increasing (N + 1,) grid (e.g.
        ``hso_jax.objectives.mep(noise).of_lam``); must be differentiable.
      lam_init: (N + 1,) strictly increasing initial grid; its end points stay fixed.
      max_iter: maximum L-BFGS iterations (static).
      gtol: relative gradient tolerance at which the iteration stops (module docstring).
      ftol: relative change below which the iteration counts as stalled and stops.
      converged_gtol: relative gradient below which the result is reported converged.
      memory_size: L-BFGS memory.
      max_linesearch_steps: zoom line-search budget per iteration.

    Returns:
      :class:`RefineResult`. Pure: jit / vmap over ``lam_init`` (and over any data the
      objective closes over through arguments).
    """
    lam_init = jnp.asarray(lam_init)
    lam_start, lam_end = lam_init[0], lam_init[-1]
    if lam_init.shape[0] < 3:  # nothing to optimise: no interior point
        f0 = objective_of_lam(lam_init)
        z = jnp.zeros((), lam_init.dtype)
        return RefineResult(lam_init, f0, f0, z, z, jnp.zeros((), jnp.int32), jnp.array(True))

    def f(z):
        return objective_of_lam(lam_from_logits(z, lam_start, lam_end))

    opt = optax.lbfgs(
        memory_size=memory_size,
        # initial step 1 at every iteration (the L-BFGS direction is already scaled)
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=max_linesearch_steps, initial_guess_strategy="one"
        ),
    )
    value_and_grad = optax.value_and_grad_from_state(f)
    tiny = jnp.finfo(lam_init.dtype).tiny

    z0 = logits_from_lam(lam_init)
    f0, g0 = jax.value_and_grad(f)(z0)
    state0 = opt.init(z0)

    def small_grad(g, fv, tol=gtol):
        return jnp.max(jnp.abs(g)) <= tol * (jnp.abs(fv) + tiny)

    # carry: current (z, state, f, g), last relative change, iteration, best (z, f, g) so far --
    # the result is the best iterate, so it is never worse than the initial grid even if a line
    # search fails and a step goes uphill.
    def cond(c):
        z, state, fv, g, rel, it, zb, fb, gb = c
        done = small_grad(g, fv) | (rel <= ftol)
        return (it < max_iter) & ~done & jnp.isfinite(fv)

    def body(c):
        z, state, fv, g, rel, it, zb, fb, gb = c
        updates, state = opt.update(g, state, z, value=fv, grad=g, value_fn=f)
        z = optax.apply_updates(z, updates)
        # the zoom line search stores value and gradient at the accepted point: no re-evaluation
        f_new, g_new = value_and_grad(z, state=state)
        rel = jnp.abs(fv - f_new) / (jnp.abs(fv) + tiny)
        better = f_new <= fb
        zb = jnp.where(better, z, zb)
        gb = jnp.where(better, g_new, gb)
        fb = jnp.where(better, f_new, fb)
        return z, state, f_new, g_new, rel, it + 1, zb, fb, gb

    inf = jnp.asarray(jnp.inf, f0.dtype)
    carry = (z0, state0, f0, g0, inf, jnp.zeros((), jnp.int32), z0, f0, g0)
    _, _, _, _, rel, it, zb, fb, gb = jax.lax.while_loop(cond, body, carry)
    return RefineResult(
        lam=lam_from_logits(zb, lam_start, lam_end),
        value=fb,
        init_value=f0,
        grad_norm=jnp.max(jnp.abs(gb)),
        rel_change=rel,
        iterations=it,
        converged=small_grad(gb, fb, converged_gtol),
    )


def refine_continuation(
    smoothed_of_lam: Callable[[Array, Array], Array],
    objective_of_lam: Callable[[Array], Array],
    lam_init: Array,
    *,
    mus: tuple[float, ...] = (1e-3, 1e-5, 1e-7, 1e-9),
    **kwargs,
) -> RefineResult:
    """:func:`refine` for a non-smooth objective by continuation in a smoothing parameter.

    Stage ``k`` refines ``smoothed_of_lam(lam, mu_k)`` from the previous stage's grid, with
    ``mu_k = mus[k] * objective_of_lam(lam_init)`` (relative to the objective's scale), so the
    iterates follow the smooth minimisers towards the kink the exact optimum sits on (e.g.
    DM-NonUniform's ``|c_j|`` terms at ``c_j = 0``). The stages run in one ``lax.scan``.

    Returns:
      :class:`RefineResult` with ``value`` the *exact* objective (never above the initial
      one: the initial grid is returned if the stages did not improve it), ``iterations`` the
      total over the stages, ``grad_norm`` / ``rel_change`` those of the last (least smoothed)
      stage, relative to its smoothed objective. Near a kink the smoothed curvature grows like
      ``1 / mu``, so the gradient test cannot be met at machine precision; ``converged`` is
      therefore true when every stage stopped by the gradient test *or* by the stall test
      (relative change ``<= ftol``) before ``max_iter``.
    """
    lam_init = jnp.asarray(lam_init)
    ftol = kwargs.get("ftol", 1e-13)
    f_init = objective_of_lam(lam_init)
    scale = jnp.abs(f_init)

    def stage(lam, mu):
        r = refine(lambda l: smoothed_of_lam(l, mu * scale), lam, **kwargs)
        return r.lam, r

    lam, rs = jax.lax.scan(stage, lam_init, jnp.asarray(mus, lam_init.dtype))
    f_end = objective_of_lam(lam)
    better = f_end <= f_init
    return RefineResult(
        lam=jnp.where(better, lam, lam_init),
        value=jnp.where(better, f_end, f_init),
        init_value=f_init,
        grad_norm=rs.grad_norm[-1],
        rel_change=rs.rel_change[-1],
        iterations=jnp.sum(rs.iterations),
        converged=jnp.all(rs.converged | (rs.rel_change <= ftol)),
    )
