r"""Monte-Carlo machinery of the KLUB: random-number slots, anchors, batched network calls.

An interval ``[lo, u]`` of the KLUB (:mod:`hso_jax.objectives.klub`) is estimated from ``J``
samples ``j``: a data row ``x0``, a noise level ``s_j`` drawn by importance sampling
(:func:`hso_jax.objectives.klub_importance.is_sample_sigmas`), the *anchor* ``x_u = x0 + u eps_2``
and ``x_s = x0 + (s_j^2 / u) eps_2 + (s_j r_j / u) eps_1`` with ``r_j = sqrt(u^2 - s_j^2)`` (the
Brownian bridge from ``x0`` to ``x_u``: the joint law of ``x_s = x0 + s_j eps`` and the forward
process continued upwards to ``u``), and the contribution
``y_j = Z_u ||D(x_s, s_j) - D(x_u, u)||^2 / (1/(s_j^2 + c^2) - 1/(u^2 + c^2))``; the term is
``mean_j y_j``. Drawing ``x_s`` given the anchor lets intervals with one slot and one upper end
(the candidates of a point, for the interval above it) share the anchor's network call.

Variance reduction: the quantiles are stratified (``q_j = (j + U_j) / J``), and all estimates
that share a *slot* (a PRNG key) use common random numbers: the same data subset, noises
``eps_1, eps_2`` and quantiles. The optimiser gives all candidates of one point the same slots,
so their differences are much less noisy than the estimates themselves.

Computation: any number of intervals (e.g. all 11 candidates of all even or odd points) is
scored by one batched evaluation (:func:`group_samples`): one jitted call draws the random
numbers and the sigma samples of every interval, then a jitted network kernel of fixed batch
shape runs over all samples. The kernel is compiled once per network and batch size,
whatever the number of points, candidates or subdivision level, which matters for real
networks, whose compilation takes seconds to minutes on CPU.

Data from the model itself (:func:`model_samples`): a tight probability-flow ODE solve, for
models without a data set at hand.

Reference: Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion
Models", ICML 2024 (arXiv 2404.14507), Sec. 3.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _progress
from ..batch import condition_batch, shard_batch, take_conditions, vmap_samples
from ..denoiser import Denoiser
from .klub_importance import is_sample_sigmas

__all__ = ["group_samples", "model_samples", "is_traced"]

Array = Any


def _edm_denoiser(model: Denoiser) -> Callable[[Array, Array], Array]:
    """D(x_hat, sigma) for one sample x_hat (shape ``sample_shape``) and a scalar sigma."""
    ns = model.noise

    def d(x_hat, sigma):
        t = ns.t_from_sigma_edm(sigma)
        a = ns.alpha(t)
        return model.x0((a * x_hat)[None], t)[0].astype(x_hat.dtype)

    return d


def _draw_slot(key, slot_id, num_data: int, num: int, shape: tuple[int, ...], dtype):
    """Data rows, stratified quantiles and the two noises of one slot (common random numbers).

    One uniform draw per slot (each PRNG call costs about a second of XLA compile time on CPU):
    a random window of ``num`` consecutive rows of the (shuffled) data, ``num`` quantile
    offsets, and ``2 num prod(shape)`` normals by the inverse error function.
    """
    size = math.prod(shape)
    v = jax.random.uniform(jax.random.fold_in(key, slot_id), (1 + num + 2 * num * size,), dtype)
    start = jnp.minimum(jnp.floor(v[0] * num_data).astype(jnp.int32), num_data - 1)
    idx = (start + jnp.arange(num)) % num_data
    q = (jnp.arange(num, dtype=dtype) + v[1 : 1 + num]) / num
    q = jnp.minimum(q, 1.0 - jnp.finfo(dtype).epsneg)
    lo = jnp.nextafter(jnp.asarray(-1.0, dtype), jnp.asarray(0.0, dtype))
    z = math.sqrt(2.0) * jax.scipy.special.erfinv(jnp.maximum(2.0 * v[1 + num :] - 1.0, lo))
    e1, e2 = z.reshape(2, num, *shape)
    return idx, q, e1, e2


@functools.partial(jax.jit, static_argnames=("num", "include_normaliser"))
def _prepare(data, key, slot_ids, slot_of_group, lo, u, c, *, num, include_normaliser):
    """Random numbers of every slot, and sigma samples and IS weights of every group."""
    dtype = data.dtype
    shape = data.shape[1:]
    idx, q, e1, e2 = jax.vmap(lambda i: _draw_slot(key, i, data.shape[0], num, shape, dtype))(
        slot_ids
    )
    c = jnp.asarray(c, dtype)
    s, r, inv_w, z = is_sample_sigmas(
        lo.astype(dtype)[:, None], u.astype(dtype)[:, None], q[slot_of_group], c
    )
    factor = inv_w * z if include_normaliser else inv_w
    return idx, e1, e2, s, r, factor


@functools.partial(jax.jit, static_argnames=("size",))
def _gather_anchors(data, idx, e2, u, slot_of_group, first, start, *, size):
    """Network inputs ``(x_u, u, rows)`` of the anchor samples ``start .. start + size - 1``
    (flat index a * J + j of anchor a, i.e. group ``first[a]``'s end ``u``): ``x_u = x0 + u
    eps_2``. Indices past the end repeat the last sample; their results are never read."""
    num = e2.shape[1]
    k = jnp.minimum(start + jnp.arange(size), first.shape[0] * num - 1)
    g, j = first[k // num], k % num
    sl = slot_of_group[g]
    expand = (slice(None),) + (None,) * (data.ndim - 1)
    rows = idx[sl, j]
    return data[rows] + u[g][expand] * e2[sl, j], u[g], rows


@functools.partial(jax.jit, static_argnames=("size",))
def _gather_points(data, idx, e1, e2, s, r, u, slot_of_group, groups, anchor, start, *, size):
    """Network inputs ``(x_s, s, rows)`` of samples ``start .. start + size - 1`` of the groups
    ``groups`` (flat index i * J + j of group ``groups[i]``), and the flat index of each one's
    anchor sample in the anchor buffer (``anchor[g] * J + j``).

    ``x_s`` is drawn given the anchor ``x_u = x0 + u eps_2`` (the Brownian bridge from ``x0``):
    ``x_s = x0 + (s^2 / u) eps_2 + (s r / u) eps_1`` with ``r = sqrt(u^2 - s^2)``, so that
    ``x_s ~ N(x0, s^2)`` and ``x_u - x_s ~ N(0, u^2 - s^2)`` independent of it, exactly as when
    the forward process is continued upwards from ``x_s``."""
    num = e1.shape[1]
    k = jnp.minimum(start + jnp.arange(size), groups.shape[0] * num - 1)
    g, j = groups[k // num], k % num
    sl = slot_of_group[g]
    s_k, r_k, u_k = s[g, j], r[g, j], u[g]
    expand = (slice(None),) + (None,) * (data.ndim - 1)
    rows = idx[sl, j]
    bridge = (s_k * s_k / u_k)[expand] * e2[sl, j] + (s_k * r_k / u_k)[expand] * e1[sl, j]
    x_s = data[rows] + bridge
    return x_s, s_k, rows, anchor[g] * num + j


@jax.jit
def _denoise(model, x, sigma, rows):
    """``D(x_i, sigma_i)`` of a batch, one network call; ``rows``: the data rows of the samples,
    whose per-sample conditions go with them."""
    model = take_conditions(model, rows)
    return vmap_samples(lambda m, x, sig: _edm_denoiser(m)(x, sig))(model, x, sigma)


@jax.jit
def _sq_dist(d, buffer, at):
    """``||d_i - buffer[at_i]||^2`` per sample."""
    return jnp.sum(jnp.square(d - buffer[at]).reshape(d.shape[0], -1), axis=-1)


def _bucket(n: int, minimum: int) -> int:
    """Padded size: the next power of two, at least ``minimum`` (few shapes, few compiles)."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def is_traced(*xs) -> bool:
    """Whether any leaf of ``xs`` is a JAX tracer (inside ``jit`` / ``grad`` / ``vmap``).

    Concrete inputs are assembled with NumPy on the host (no eager XLA compile per shape);
    traced ones must stay in ``jnp``.
    """
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


ANCHOR_BUFFER_FLOATS = 2**25
"""Most anchor outputs (floats) held at once; more anchors are evaluated chunk by chunk."""


def _anchors(anchor_of_group, slot_of_group, u) -> tuple[np.ndarray, np.ndarray]:
    """``(first, anchor)``: anchor ids made dense (``0 .. A - 1``) and each one's first group.
    Groups that share an anchor must share its slot and upper end (checked where concrete)."""
    n = slot_of_group.shape[0]
    if anchor_of_group is None:
        return np.arange(n), np.arange(n)
    ids = np.asarray(anchor_of_group)
    if ids.shape != (n,):
        raise ValueError(f"anchor_of_group must have shape ({n},), got {ids.shape}")
    _, first, anchor = np.unique(ids, return_index=True, return_inverse=True)
    shared = first[anchor]
    if not np.array_equal(slot_of_group[shared], slot_of_group) or (
        not is_traced(u) and not np.array_equal(np.asarray(u)[shared], np.asarray(u))
    ):
        raise ValueError("groups that share an anchor must share its slot and upper end u")
    return first, anchor.reshape(-1)


def _padded(a: np.ndarray, minimum: int = 1) -> np.ndarray:
    return np.pad(a, (0, _bucket(a.shape[0], minimum) - a.shape[0]), mode="edge")


def group_samples(
    model: Denoiser,
    data: Array,
    key: Array,
    slot_ids: np.ndarray,
    slot_of_group: np.ndarray,
    lo: Array,
    u: Array,
    c: float,
    *,
    num: int,
    batch_size: int,
    include_normaliser: bool,
    mesh: Any = None,
    anchor_of_group: np.ndarray | None = None,
) -> Array:
    r"""Per-sample KLUB contributions ``y[g, j]`` of many intervals (groups) in one evaluation.

    Group ``g`` is the interval ``[lo[g], u[g]]`` with the random numbers of slot
    ``slot_ids[slot_of_group[g]]`` (drawn from ``fold_in(key, slot_id)``), and

    .. math::

        y_{gj} = Z_u \, \frac{\| D(x_{s_j}, s_j) - D(x_u, u) \|^2}
            {1/(s_j^2 + c^2) - 1/(u^2 + c^2)},

    so the interval term of group ``g`` is ``mean_j y[g, j]``. The upper sample ``x_u = x0 + u
    eps_2`` is the *anchor* and ``x_s`` is drawn given it (the Brownian bridge from ``x0``, the
    same joint law as the forward process continued upwards from ``x_s``). Groups with one
    slot and one upper end ``u`` (all candidates of a point, for the interval above it) have the
    same anchor, whose network call ``D(x_u, u)`` is then made once for all of them:
    ``anchor_of_group`` names each group's anchor (default: one per group).

    All groups are prepared by one jitted call; the network then runs on fixed-shape batches of
    ``batch_size`` samples (anchors first, then the samples of their groups; a jitted kernel
    compiled once per network and batch size, whatever the number of points, candidates or
    levels; the last batch is padded), split over the devices of ``mesh`` (then
    ``batch_size`` is rounded up to a multiple of their number). At most
    :data:`ANCHOR_BUFFER_FLOATS` anchor outputs are held at once. Slots and groups are padded to
    a few bucket sizes, so the preparation compiles once per bucket, not once per pass shape.
    Concrete inputs are assembled with NumPy (no eager XLA compiles); traced ones with jnp.

    Args:
      model: the Denoiser (per-sample conditions follow their data rows).
      data: ``(N, *sample_shape)`` data samples ``x0`` in the working dtype.
      key: base PRNG key of the slots.
      slot_ids: ``(S,)`` ids of the slots used (common random numbers per id).
      slot_of_group: ``(G,)`` index into ``slot_ids`` of each group's slot.
      lo, u: ``(G,)`` interval ends (EDM sigmas, ``lo <= u``).
      c: importance-sampling constant.
      num: samples ``J`` per group.
      batch_size: network evaluations per call.
      include_normaliser: multiply by ``Z_u`` (always, except in tests that show it matters).
      mesh: ``None`` or a Mesh with a ``"batch"`` axis.
      anchor_of_group: ``(G,)`` anchor id of each group (equal ids: equal slot and ``u``).

    Returns:
      ``(G, J)`` contributions: a NumPy array for concrete inputs, a jnp array when traced.
    """
    traced = is_traced(lo, u, key)
    xp = jnp if traced else np
    dtype = data.dtype
    slot_ids = np.asarray(slot_ids)
    slot_of_group = np.asarray(slot_of_group)
    first, anchor = _anchors(anchor_of_group, slot_of_group, u)
    n_slots, n_groups = slot_ids.shape[0], slot_of_group.shape[0]
    pad_s, pad_g = _bucket(n_slots, 16) - n_slots, _bucket(n_groups, 128) - n_groups
    slot_ids = np.pad(slot_ids, (0, pad_s), mode="edge")
    slot_of_group = np.pad(slot_of_group, (0, pad_g))
    # padded groups are empty intervals [1, 1]: weight 0, never sent to the network
    lo = xp.pad(xp.asarray(lo, dtype), (0, pad_g), constant_values=1.0)
    u = xp.pad(xp.asarray(u, dtype), (0, pad_g), constant_values=1.0)
    idx, e1, e2, s, r, factor = _prepare(
        data, key, slot_ids, slot_of_group, lo, u, c, num=num, include_normaliser=include_normaliser
    )
    size = max(1, batch_size)
    if mesh is not None:
        size = -(-size // mesh.shape["batch"]) * mesh.shape["batch"]

    def net(x, sigma, rows):
        if mesh is not None:
            x, sigma, rows = (shard_batch(v, mesh) for v in (x, sigma, rows))
        return _denoise(model, x, sigma, rows)

    # anchors in chunks of at most ANCHOR_BUFFER_FLOATS outputs, each followed by its groups
    per_chunk = max(1, ANCHOR_BUFFER_FLOATS // (num * math.prod(data.shape[1:])))
    order = np.argsort(anchor, kind="stable")
    cuts = np.searchsorted(anchor[order], np.arange(0, first.shape[0], per_chunk))
    cuts = np.append(cuts, n_groups)
    chunks = [
        (a0, min(a0 + per_chunk, first.shape[0]), order[cuts[i] : cuts[i + 1]])
        for i, a0 in enumerate(range(0, first.shape[0], per_chunk))
    ]
    batches = sum(_ceil((a1 - a0) * num, size) + _ceil(len(g) * num, size) for a0, a1, g in chunks)
    done, report, out = 0, not traced and _progress.listened(), []

    def step(v):
        nonlocal done
        done += 1
        if report:  # the fraction of the network batches done (once this one is)
            jax.block_until_ready(v)
            _progress.solve_step(done / batches)
        return v

    for a0, a1, groups in chunks:
        heads = _padded(first[a0:a1])
        buffer = [
            step(net(*_gather_anchors(data, idx, e2, u, slot_of_group, heads, np.int32(k),
                                      size=size)))  # fmt: skip
            for k in range(0, (a1 - a0) * num, size)
        ]
        buffer = jnp.concatenate(buffer + [jnp.zeros_like(buffer[0])] * (
            _bucket(len(buffer), 1) - len(buffer)))  # fmt: skip
        local, padded_groups = np.pad(anchor - a0, (0, pad_g)), _padded(groups)
        for k in range(0, groups.shape[0] * num, size):
            x_s, s_k, rows, at = _gather_points(
                data, idx, e1, e2, s, r, u, slot_of_group, padded_groups, local, np.int32(k),
                size=size,
            )
            out.append(step(_sq_dist(net(x_s, s_k, rows), buffer, at)))
    back = np.argsort(order)  # rows were computed in the order of `order`
    sizes = [g.shape[0] * num for _, _, g in chunks]
    if traced:
        flat = jnp.concatenate(out)
        sq = jnp.concatenate(_chunk_rows(flat, sizes, size))
        return sq.reshape(n_groups, num)[back] * factor[:n_groups]
    flat = np.concatenate([np.asarray(o) for o in out])
    sq = np.concatenate(_chunk_rows(flat, sizes, size))
    return sq.reshape(n_groups, num)[back] * np.asarray(factor)[:n_groups]


def _ceil(n: int, size: int) -> int:
    return -(-n // size)


def _chunk_rows(flat, sizes, size):
    """The first ``sizes[i]`` values of each chunk's batches (the rest is padding)."""
    rows, at = [], 0
    for n in sizes:
        rows.append(flat[at : at + n])
        at += _ceil(n, size) * size
    return rows


def model_samples(
    model: Denoiser, shape: tuple[int, ...], num: int, key: Array, *, chunk: int = 256
) -> Array:
    """Samples of the model's own distribution by a high-accuracy probability-flow ODE solve.

    ``x_T = noise.prior(key, ...)`` at ``t_max`` is integrated to ``t_min`` by
    :func:`hso_jax.evaluation.reference_solve` (adaptive Tsit5, rtol = atol = 1e-9 in float64,
    ~2e-6 in float32), then denoised once, ``x0 = D(x, t_min)``. Solved in chunks of ``chunk``
    samples. Returns float32 samples of shape ``(num, *shape)``. With per-sample conditions
    (:mod:`hso_jax.batch`) ``num`` must equal the condition batch: sample ``i`` is drawn under
    condition row ``i``.
    """
    from ..reference import reference_solve

    ns = model.noise
    b = condition_batch(model)
    if b is not None and b != num:
        raise ValueError(
            f"the model has {b} per-sample condition rows, so it draws {b} samples (one per "
            f"condition), got num={num}"
        )
    out = []
    keys = jax.random.split(key, -(-num // chunk))
    for i, k in enumerate(keys):
        n = min(chunk, num - i * chunk)
        m = take_conditions(model, slice(i * chunk, i * chunk + n))
        x_T = ns.prior(k, (n, *shape), jnp.float32)
        x = reference_solve(m, x_T, ns.t_max, ns.t_min)
        x0 = m.x0(jnp.asarray(x, jnp.float32), jnp.asarray(ns.t_min, jnp.float32))
        out.append(np.asarray(x0, np.float32))
    return jnp.asarray(np.concatenate(out, axis=0))
