"""Differential evolution (best1bin, deferred updating) over a box, as one jit-able loop.

The algorithm (Storn & Price 1997) with the conventions of ``scipy.optimize.
differential_evolution`` (the optimiser of the official HSO code), written for a *vmappable*
fitness ``f(params_batch (M, d)) -> (M,)`` so that a whole generation is one call:

* parameters live in the unit cube ``u in [0, 1]^d``, ``x = lower + u (upper - lower)``;
* population ``M = max(5, popsize * d)``, initialised by Latin-hypercube sampling (one point
  per stratum ``[k/M, (k+1)/M)`` in every coordinate, strata permuted per coordinate);
* generation: one mutation scale ``F ~ U(mutation)`` (dithering), then for every member ``i``
  ``b_i = u_best + F (u_{r0} - u_{r1})`` with ``r0 != r1``, both ``!= i``; binomial crossover
  with probability ``CR`` and one forced coordinate; coordinates leaving ``[0, 1]`` are redrawn
  uniformly; all trials are scored in one call and replace their parents where not worse
  ("deferred" updating: the best point changes once per generation);
* stop after ``maxiter`` generations or when ``std(f) <= atol + tol |mean(f)|`` (checked after
  each generation, never before the first; a non-finite fitness means not converged);
* polish: a projected quasi-Newton method with finite-difference gradients ("implicit
  filtering", Kelley 2011) inside the box, alternating two batched calls. A central-difference
  stencil ``clip(u +- h e_j)`` gives the gradient ``g`` (and moves to a stencil point if one is
  strictly better); a line search from the best point then scores ``clip(u + a_i p)``,
  ``a_i = 2^{1-i}`` for ``i < M``, along ``p = -H g`` with ``H`` a BFGS inverse-Hessian
  estimate (components pushing out of the box at an active bound are zeroed: the L-BFGS-B
  projection). The best point is taken if strictly better, else ``H`` is reset. The stencil
  width ``h`` is divided by 10 when the line search fails or its step is shorter than ``h``;
  the polish stops when ``h < polish_xtol`` or after ``polish_maxiter`` line searches.
  Gradient-free compass search crawls in curved valleys; SciPy polishes with L-BFGS-B and
  forward differences of step 1e-8, which the inner iterative solve of HSO's fitness makes
  noisy -- the stencil here starts at ``h = 1e-3`` of the box and shrinks only as the steps
  do. The polish only ever moves to strictly better points.

Everything -- initial scoring, generations, polish -- runs in *one* ``lax.while_loop`` whose
body makes exactly one batched fitness call (the phase decides which batch): the fitness is
traced and compiled once, and there is no Python work per generation. Randomness comes from
the explicit ``key`` only (all of it drawn up front).

With ``has_aux=True`` the fitness returns ``(f, aux)`` (``aux`` a pytree batched over the
members); the result then carries the aux of the final population and of the best point, so
callers need not re-evaluate it.

References: Storn & Price, "Differential Evolution" (J. Global Optim. 1997); Kolda, Lewis &
Torczon, "Optimization by direct search" (SIAM Review 2003), compass search; SciPy's
``differential_evolution`` documentation (deferred updating, dithering, convergence test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["DEResult", "differential_evolution", "latin_hypercube"]

Array = Any

_INIT, _EVOLVE, _GRAD, _LINE, _DONE = 0, 1, 2, 3, 4


class DEResult(NamedTuple):
    """Outcome of :func:`differential_evolution`.

    Attributes:
      x, fun: best point (after polish) and its fitness.
      x_de, fun_de: best point and fitness of the evolution, before polish.
      population, energies: final population (in parameter space) and fitness.
      generations: generations run (scoring the initial population is not a generation).
      converged: the tolerance test held when the evolution stopped.
      nfev: fitness evaluations (batch entries scored, padding of the polish batch included).
      history: (maxiter + 1,) best fitness after initialisation and after each generation
        (NaN after the last generation run).
      spread: (maxiter + 1,) ``std(f) / |mean(f)|`` at the same moments (NaN padded).
      polish_iterations: line searches of the polish; polish_improved: whether polish helped.
      aux: aux of the best point (``None`` without ``has_aux``).
      population_aux: aux of the final population (``None`` without ``has_aux``).
    """

    x: Array
    fun: Array
    x_de: Array
    fun_de: Array
    population: Array
    energies: Array
    generations: Array
    converged: Array
    nfev: Array
    history: Array
    spread: Array
    polish_iterations: Array
    polish_improved: Array
    aux: Any = None
    population_aux: Any = None


def latin_hypercube(key: Array, m: int, d: int, dtype=jnp.float32) -> Array:
    """(m, d) Latin-hypercube sample of the unit cube (one point per stratum per coordinate)."""
    return _lhs_from_uniforms(jax.random.uniform(key, (m, 2 * d), dtype))


def _lhs_from_uniforms(v: Array) -> Array:
    # columns < d jitter the points inside their strata, columns >= d rank the strata (the
    # argsort of i.i.d. uniforms is a uniform random permutation)
    m, d = v.shape[0], v.shape[1] // 2
    u = (v[:, :d] + jnp.arange(m, dtype=v.dtype)[:, None]) / m
    return jnp.take_along_axis(u, jnp.argsort(v[:, d:], axis=0), axis=0)


def _two_others(v0: Array, v1: Array, i: Array, m: int) -> tuple[Array, Array]:
    """Two distinct indices in range(m), both different from ``i``, from uniforms ``v0, v1``."""
    r0 = (i + 1 + jnp.minimum(jnp.floor(v0 * (m - 1)).astype(i.dtype), m - 2)) % m
    # r1 uniform on range(m) minus {i, r0}: draw in range(m - 2), step over the exclusions
    lo, hi = jnp.minimum(i, r0), jnp.maximum(i, r0)
    r1 = jnp.minimum(jnp.floor(v1 * (m - 2)).astype(i.dtype), m - 3)
    r1 = r1 + (r1 >= lo)
    r1 = r1 + (r1 >= hi)
    return r0, r1


def _select(mask, a, b):
    """Per-member ``where`` over a pytree batched on axis 0."""

    def sel(x, y):
        return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y)

    return jax.tree.map(sel, a, b)


def _take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


class _State(NamedTuple):
    phase: Array
    pop: Array
    e: Array
    aux: Any
    gen: Array
    hist: Array
    spread: Array
    u_de: Array
    f_de: Array
    u_best: Array
    f_best: Array
    aux_best: Any
    u_stencil: Array
    g: Array
    g_prev: Array
    s_prev: Array
    H: Array
    fresh: Array
    pair: Array
    h_fd: Array
    pol_it: Array
    n_calls: Array


def differential_evolution(
    fitness: Callable[[Array], Any],
    lower: Array,
    upper: Array,
    key: Array,
    *,
    popsize: int = 20,
    maxiter: int = 60,
    tol: float = 0.01,
    atol: float = 0.0,
    mutation: tuple[float, float] = (0.5, 1.0),
    recombination: float = 0.7,
    polish: bool = True,
    polish_maxiter: int = 30,
    polish_step: float = 1e-3,
    polish_xtol: float = 1e-7,
    has_aux: bool = False,
) -> DEResult:
    """Minimise ``fitness`` over the box ``[lower, upper]`` by differential evolution.

    Args:
      fitness: vmappable ``(M, d) -> (M,)`` (or ``-> ((M,), aux)`` with ``has_aux``), called
        once per loop iteration with ``M`` points. NaN counts as +inf.
      lower, upper: (d,) box bounds (``lower < upper``).
      key: PRNG key, the only source of randomness.
      popsize: population per dimension (``M = max(5, popsize * d)``, at least ``2 d``).
      maxiter: maximum generations (>= 1).
      tol, atol: stop when ``std(f) <= atol + tol * |mean(f)|``.
      mutation: dithering interval ``[F_lo, F_hi)`` of the mutation scale.
      recombination: crossover probability ``CR``.
      polish: run the quasi-Newton polish from the best point.
      polish_maxiter, polish_step, polish_xtol: line searches of the polish, initial and final
        finite-difference step (unit-cube units).
      has_aux: ``fitness`` returns ``(f, aux)``.

    Returns:
      :class:`DEResult`. Pure; ``jit`` it with ``fitness`` closed over (options are static).
    """
    lower = jnp.asarray(lower)
    upper = jnp.asarray(upper)
    dtype = jnp.result_type(lower, upper, float)
    lower, upper = lower.astype(dtype), upper.astype(dtype)
    d = lower.shape[0]
    m = max(5, popsize * d)
    if m < 2 * d or maxiter < 1:
        raise ValueError(
            f"need a population of at least 2 d = {2 * d} (got {m}) and maxiter >= 1 "
            f"(got {maxiter})"
        )
    width = upper - lower
    eye = jnp.eye(d, dtype=dtype)
    stencil_dirs = jnp.concatenate([eye, -eye])
    alphas = 2.0 ** (1.0 - jnp.arange(m, dtype=dtype))
    tiny = jnp.finfo(dtype).tiny
    eps = jnp.finfo(dtype).eps

    def scale(u):
        return lower + u * width

    def score(u):
        out = fitness(scale(u))
        f, aux = out if has_aux else (out, None)
        f = jnp.asarray(f, dtype)
        return jnp.where(jnp.isnan(f), jnp.inf, f), aux

    score_once = jax.jit(score)

    def spread_of(e):
        return jnp.std(e) / jnp.abs(jnp.mean(e))

    def converged(e):
        return jnp.all(jnp.isfinite(e)) & (jnp.std(e) <= atol + tol * jnp.abs(jnp.mean(e)))

    # all randomness in one draw (one RNG kernel, no key splitting): slice 0 holds the
    # Latin-hypercube uniforms, slice g + 1 those of generation g, per member:
    # [F (member 0 only) | r0, r1 | crossover (d) | forced coordinate | redraw (d)]
    v_all = jax.random.uniform(key, (maxiter + 1, m, 2 * d + 4), dtype)
    pop0 = _lhs_from_uniforms(v_all[0, :, : 2 * d])
    idx = jnp.arange(m)

    def trials(s: _State):
        v = v_all[jnp.minimum(s.gen, maxiter - 1) + 1]
        f_scale = mutation[0] + (mutation[1] - mutation[0]) * v[0, 0]
        r0, r1 = _two_others(v[:, 1], v[:, 2], idx, m)
        best = s.pop[jnp.argmin(s.e)]
        bprime = best[None, :] + f_scale * (s.pop[r0] - s.pop[r1])
        fill = jnp.minimum(jnp.floor(v[:, 3 + d] * d), d - 1).astype(jnp.int32)
        cross = (v[:, 3 : 3 + d] < recombination) | (jnp.arange(d)[None, :] == fill[:, None])
        trial = jnp.where(cross, bprime, s.pop)
        return jnp.where((trial < 0) | (trial > 1), v[:, 4 + d :], trial)

    def stencil(s: _State):
        pts = jnp.clip(s.u_best[None, :] + s.h_fd * stencil_dirs, 0.0, 1.0)
        return jnp.concatenate([pts, jnp.broadcast_to(s.u_best, (m - 2 * d, d))])

    def direction(s: _State):
        p = -s.H @ s.g
        blocked = ((s.u_best >= 1.0) & (p > 0)) | ((s.u_best <= 0.0) & (p < 0))
        return jnp.where(blocked, 0.0, p)

    def line(s: _State):
        return jnp.clip(s.u_best[None, :] + alphas[:, None] * direction(s)[None, :], 0.0, 1.0)

    def candidates(s: _State):
        branches = [lambda s: s.pop, trials, stencil, line]
        return jax.lax.switch(jnp.minimum(s.phase, _LINE), branches, s)

    def end_evolution(s: _State) -> _State:
        i = jnp.argmin(s.e)
        nxt = jnp.asarray(_GRAD if polish else _DONE, jnp.int32)
        return s._replace(
            phase=nxt,
            u_de=s.pop[i],
            f_de=s.e[i],
            u_best=s.pop[i],
            f_best=s.e[i],
            aux_best=_take(s.aux, i),
        )

    def after_init(s: _State, cand, f, aux) -> _State:
        s = s._replace(
            pop=cand,
            e=f,
            aux=aux,
            hist=s.hist.at[0].set(jnp.min(f)),
            spread=s.spread.at[0].set(spread_of(f)),
            phase=jnp.asarray(_EVOLVE, jnp.int32),
        )
        return s

    def after_generation(s: _State, cand, f, aux) -> _State:
        accept = f <= s.e
        pop = jnp.where(accept[:, None], cand, s.pop)
        e = jnp.where(accept, f, s.e)
        gen = s.gen + 1
        s = s._replace(
            pop=pop,
            e=e,
            aux=_select(accept, aux, s.aux),
            gen=gen,
            hist=s.hist.at[gen].set(jnp.min(e)),
            spread=s.spread.at[gen].set(spread_of(e)),
        )
        stop = (gen >= maxiter) | converged(e)
        return jax.lax.cond(stop, end_evolution, lambda s: s, s)

    def move_to(s: _State, better, k, cand, f, aux) -> _State:
        return s._replace(
            u_best=jnp.where(better, cand[k], s.u_best),
            f_best=jnp.where(better, f[k], s.f_best),
            aux_best=jax.tree.map(lambda a, b: jnp.where(better, a, b), _take(aux, k), s.aux_best),
        )

    def improves(f_new, f_old):
        # strictly better beyond rounding, so noise cannot keep the polish moving forever
        return f_new < f_old - 4.0 * eps * jnp.abs(f_old)

    def scaled_identity(g):
        return eye * (0.1 / (jnp.max(jnp.abs(g)) + tiny))

    def after_stencil(s: _State, cand, f, aux) -> _State:
        s = s._replace(u_stencil=s.u_best)
        width_j = jnp.diagonal(cand[:d] - cand[d : 2 * d])
        g = (f[:d] - f[d : 2 * d]) / jnp.maximum(width_j, tiny)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        # BFGS update of the inverse Hessian with the last accepted step, if the curvature
        # condition holds; the initial scaled identity is first rescaled by s.y / y.y
        y, sv = g - s.g_prev, s.s_prev
        sy, yy = jnp.vdot(sv, y), jnp.vdot(y, y)
        ok = s.pair & (sy > 1e-12 * jnp.linalg.norm(sv) * jnp.sqrt(yy))
        H = jnp.where(s.pol_it == 0, scaled_identity(g), s.H)
        H = jnp.where(ok & s.fresh, eye * (sy / jnp.where(ok, yy, 1.0)), H)
        rho = 1.0 / jnp.where(ok, sy, 1.0)
        V = eye - rho * jnp.outer(sv, y)
        H = jnp.where(ok, V @ H @ V.T + rho * jnp.outer(sv, sv), H)
        k = jnp.argmin(f[: 2 * d])
        better = improves(f[k], s.f_best)
        # a better stencil point is taken at once; the line search then starts from it
        return move_to(s, better, k, cand, f, aux)._replace(
            g=g, H=H, fresh=s.fresh & ~ok, phase=jnp.asarray(_LINE, jnp.int32)
        )

    def after_line(s: _State, cand, f, aux) -> _State:
        k = jnp.argmin(f)
        better = improves(f[k], s.f_best)
        # shrink the stencil on failure, and when the step taken is shorter than the stencil
        # (the finite differences no longer resolve the scale the iterates move on)
        short = jnp.max(jnp.abs(cand[k] - s.u_best)) < s.h_fd
        h_fd = jnp.where(better & ~short, s.h_fd, s.h_fd / 10.0)
        pol_it = s.pol_it + 1
        stop = (h_fd < polish_xtol) | (pol_it >= polish_maxiter)
        return move_to(s, better, k, cand, f, aux)._replace(
            pair=better,
            g_prev=s.g,
            s_prev=jnp.where(better, cand[k] - s.u_stencil, s.s_prev),
            H=jnp.where(better, s.H, scaled_identity(s.g)),
            fresh=s.fresh | ~better,
            h_fd=h_fd,
            pol_it=pol_it,
            phase=jnp.where(stop, _DONE, _GRAD).astype(jnp.int32),
        )

    def body(s: _State) -> _State:
        cand = candidates(s)
        f, aux = score_once(cand)
        s = s._replace(n_calls=s.n_calls + 1)
        return jax.lax.switch(
            jnp.minimum(s.phase, _LINE),
            [after_init, after_generation, after_stencil, after_line],
            s,
            cand,
            f,
            aux,
        )

    # shapes of the aux pytree, to allocate the loop carry
    # (``score_once`` is jitted so that this shape query and the loop body share one trace of
    # the fitness: the nested jit is cached on its avals, and inlined by XLA)
    aux_shape = jax.eval_shape(score_once, pop0)[1]
    aux0 = jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype), aux_shape)
    nan_hist = jnp.full((maxiter + 1,), jnp.nan, dtype)
    zero_i = jnp.zeros((), jnp.int32)
    s0 = _State(
        phase=jnp.asarray(_INIT, jnp.int32),
        pop=pop0,
        e=jnp.full((m,), jnp.inf, dtype),
        aux=aux0,
        gen=zero_i,
        hist=nan_hist,
        spread=nan_hist,
        u_de=pop0[0],
        f_de=jnp.asarray(jnp.inf, dtype),
        u_best=pop0[0],
        f_best=jnp.asarray(jnp.inf, dtype),
        aux_best=_take(aux0, 0),
        u_stencil=pop0[0],
        g=jnp.zeros(d, dtype),
        g_prev=jnp.zeros(d, dtype),
        s_prev=jnp.zeros(d, dtype),
        H=eye,
        fresh=jnp.array(True),
        pair=jnp.array(False),
        h_fd=jnp.asarray(polish_step, dtype),
        pol_it=zero_i,
        n_calls=zero_i,
    )
    s = jax.lax.while_loop(lambda s: s.phase != _DONE, body, s0)
    return DEResult(
        x=scale(s.u_best),
        fun=s.f_best,
        x_de=scale(s.u_de),
        fun_de=s.f_de,
        population=scale(s.pop),
        energies=s.e,
        generations=s.gen,
        converged=converged(s.e),
        nfev=s.n_calls * m,
        history=s.hist,
        spread=s.spread,
        polish_iterations=s.pol_it,
        polish_improved=s.f_best < s.f_de,
        aux=s.aux_best if has_aux else None,
        population_aux=s.aux if has_aux else None,
    )
