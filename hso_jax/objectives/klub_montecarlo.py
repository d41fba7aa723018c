r"""Monte-Carlo machinery of the KLUB: random-number slots, sample pairs, batched network calls.

An interval ``[lo, u]`` of the KLUB (:mod:`hso_jax.objectives.klub`) is estimated from ``J``
samples ``j``: a data row ``x0``, a noise level ``s_j`` drawn by importance sampling
(:func:`hso_jax.objectives.klub_importance.is_sample_sigmas`), ``x_s = x0 + s_j eps_1`` and
``x_u = x_s + sqrt(u^2 - s_j^2) eps_2`` (the forward process continued upwards), and the
contribution ``y_j = Z_u ||D(x_s, s_j) - D(x_u, u)||^2 / (1/(s_j^2 + c^2) - 1/(u^2 + c^2))``;
the term is ``mean_j y_j``.

Variance reduction: the quantiles are stratified (``q_j = (j + U_j) / J``), and all estimates
that share a *slot* (a PRNG key) use common random numbers: the same data subset, noises
``eps_1, eps_2`` and quantiles. The optimiser gives all candidates of one point the same slots,
so their differences are much less noisy than the estimates themselves.

Computation: any number of intervals (e.g. all 11 candidates of all even or odd points) is
scored by one batched evaluation (:func:`group_samples`): one jitted call draws the random
numbers and the sigma samples of every interval, then a jitted network kernel of fixed batch
shape runs over all sample pairs. The kernel is compiled once per network and batch size,
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
def _gather(data, idx, e1, e2, s, r, u, slot_of_group, start, *, size):
    """Network inputs of samples ``start .. start + size - 1`` (flat index g * J + j); indices
    past the end fall on padded groups and their results are dropped."""
    num_groups, num = s.shape
    k = jnp.minimum(start + jnp.arange(size), num_groups * num - 1)
    g, j = k // num, k % num
    sl = slot_of_group[g]
    s_k = s[g, j]
    expand = (slice(None),) + (None,) * (data.ndim - 1)
    rows = idx[sl, j]
    x_s = data[rows] + s_k[expand] * e1[sl, j]
    x_u = x_s + r[g, j][expand] * e2[sl, j]
    return x_s, s_k, x_u, u[g], rows


@jax.jit
def _pair_sq_diff(model, x_s, s, x_u, u, rows):
    """||D(x_s, s) - D(x_u, u)||^2 per sample: one network call on the stacked batch. ``rows``:
    the data rows of the samples, whose per-sample conditions go with them."""
    model = take_conditions(model, jnp.concatenate([rows, rows]))
    den = vmap_samples(lambda m, x, sig: _edm_denoiser(m)(x, sig))
    d = den(model, jnp.concatenate([x_s, x_u]), jnp.concatenate([s, u]))
    n = x_s.shape[0]
    return jnp.sum(jnp.square(d[:n] - d[n:]).reshape(n, -1), axis=-1)


def _bucket(n: int, minimum: int) -> int:
    """Padded size: the next power of two, at least ``minimum`` (few shapes, few compiles)."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def is_traced(*xs) -> bool:
    """Whether any leaf of ``xs`` is a JAX tracer (inside ``jit`` / ``grad`` / ``vmap``).

    Concrete inputs are assembled with NumPy on the host (no eager XLA compile per shape);
    traced ones must stay in ``jnp``.
    """
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


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
) -> Array:
    r"""Per-sample KLUB contributions ``y[g, j]`` of many intervals (groups) in one evaluation.

    Group ``g`` is the interval ``[lo[g], u[g]]`` with the random numbers of slot
    ``slot_ids[slot_of_group[g]]`` (drawn from ``fold_in(key, slot_id)``), and

    .. math::

        y_{gj} = Z_u \, \frac{\| D(x_{s_j}, s_j) - D(x_u, u) \|^2}
            {1/(s_j^2 + c^2) - 1/(u^2 + c^2)},

    so the interval term of group ``g`` is ``mean_j y[g, j]``. All groups are prepared by one
    jitted call; the network then runs on fixed-shape batches of ``batch_size // 2`` sample
    pairs (a jitted kernel compiled once per network and batch size, whatever the number of
    points, candidates or levels; the last batch is padded), split over the devices of ``mesh``
    (then ``batch_size // 2`` is rounded up to a multiple of their number). Slots and groups are
    padded to a few bucket sizes, so the preparation compiles once per bucket, not once per
    pass shape. Concrete inputs are assembled with NumPy (no eager XLA compiles); traced ones
    with jnp.

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

    Returns:
      ``(G, J)`` contributions: a NumPy array for concrete inputs, a jnp array when traced.
    """
    traced = is_traced(lo, u, key)
    xp = jnp if traced else np
    dtype = data.dtype
    slot_ids = np.asarray(slot_ids)
    slot_of_group = np.asarray(slot_of_group)
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
    total = n_groups * num
    size = max(1, batch_size // 2)
    if mesh is not None:
        size = -(-size // mesh.shape["batch"]) * mesh.shape["batch"]
    out, report = [], not traced and _progress.listened()
    for start in range(0, total, size):
        pairs = _gather(data, idx, e1, e2, s, r, u, slot_of_group, np.int32(start), size=size)
        if mesh is not None:
            pairs = [shard_batch(v, mesh) for v in pairs]
        out.append(_pair_sq_diff(model, *pairs))
        if report:  # the fraction of the network batches done (once this one is)
            jax.block_until_ready(out[-1])
            _progress.solve_step(min(total, start + size) / total)
    if traced:
        sq = jnp.concatenate(out)[:total].reshape(n_groups, num)
        return sq * factor[:n_groups]
    sq = np.concatenate([np.asarray(o) for o in out])[:total].reshape(n_groups, num)
    return sq * np.asarray(factor)[:n_groups]


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
