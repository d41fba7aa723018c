r"""KL upper bound (KLUB) of the stochastic-DDIM discretisation, estimated by Monte Carlo.

Setting (EDM form). Any model ``x = alpha x0 + sigma_t eps`` is rewritten with
``x_hat = x / alpha`` and the EDM noise level ``sigma = sigma_t / alpha_t`` (``sigma_edm``), so
that ``x_hat = x0 + sigma n``; the denoiser in this form is

.. math::

    D(\hat x, \sigma) = \mathrm{model.x0}\big(\alpha(t)\, \hat x,\; t\big),
    \qquad t = t(\sigma) \; (\texttt{noise.t\_from\_sigma\_edm}).

KLUB. For a schedule ``sigma_0 < sigma_1 < ... < sigma_n``, Girsanov's theorem bounds the KL
divergence between the true reverse SDE and its stochastic-DDIM discretisation (denoiser frozen
at the start ``sigma_i`` of each reverse step) by, up to a constant factor that does not move
the optimum,

.. math::

    \mathrm{KLUB} = \sum_{i=1}^{n} \int_{\sigma_{i-1}}^{\sigma_i} \sigma^{-3}\,
        \mathbb{E}\,\big\| D(x_\sigma, \sigma) - D(x_{\sigma_i}, \sigma_i) \big\|^2 \, d\sigma,

with ``x_sigma = x0 + sigma eps_1`` and ``x_{sigma_i} = x_sigma + sqrt(sigma_i^2 - sigma^2) eps_2``
(the forward process continued upwards), ``x0`` from the data, and the squared norm summed over
all dimensions. For Gaussian data ``N(0, c^2 I)`` in ``d`` dimensions and the exact denoiser,
``E||.||^2 = c^4 d (1 / (sigma^2 + c^2) - 1 / (sigma_i^2 + c^2))`` (Lemma 3.3).

Importance sampling. In an interval ``[lo, u]`` (``u`` the upper end, where the step starts)
``sigma`` is drawn from

.. math::

    \pi(\sigma) \propto w_u(\sigma) = \sigma^{-3}\Big(\frac{1}{\sigma^2 + c^2}
        - \frac{1}{u^2 + c^2}\Big), \qquad c = 0.5,

and the interval's term is estimated by ``Z_u * mean_j ||D(x_{s_j}) - D(x_u)||^2 /
(1/(s_j^2 + c^2) - 1/(u^2 + c^2))`` (the ``sigma^-3`` cancels). The normaliser
``Z_u = G_u(u) - G_u(lo)`` with the antiderivative

.. math::

    G_u(s) = -\frac{1}{2 c^2 s^2} + \frac{\ln(1 + c^2 / s^2)}{2 c^4}
             + \frac{1}{2 s^2 (u^2 + c^2)}

depends on ``u`` and therefore on the schedule: it must be kept, otherwise the argmin is wrong.
The first two terms of ``G_u`` cancel for ``s >> c``. We use the exact, cancellation-free
rewrite obtained with ``y = 1 / s^2``: with

.. math::

    \delta(s) = \frac{c^2 (u^2 - s^2)}{s^2 (u^2 + c^2)}, \qquad
    \varphi(\delta) = \delta - \ln(1 + \delta),

the mass of ``w_u`` on ``[s, u]`` is ``phi(delta(s)) / (2 c^4)``, so
``Z_u = phi(delta(lo)) / (2 c^4)``, the inverse CDF is ``phi(delta(s)) = (1 - q) phi(delta(lo))``
(solved for ``delta`` by Newton's method, then ``s = c u / sqrt(delta (u^2 + c^2) + c^2)``), and
``1 / (1/(s^2+c^2) - 1/(u^2+c^2)) = c^2 (s^2 + c^2) / (delta s^2)``. ``phi`` is evaluated by its
Taylor series for small ``delta``. Every quantity is then accurate to a few float32 ulps, so
the estimator gives the same answer with or without ``jax_enable_x64`` (tested against the
float64 closed form of ``G_u``).

Variance reduction: the quantiles are stratified (``q_j = (j + U_j) / J``), and all estimates
that share a *slot* (a PRNG key) use common random numbers: the same data subset, noises
``eps_1, eps_2`` and quantiles. The optimiser gives all candidates of one point the same slots,
so their differences are much less noisy than the estimates themselves.

Computation: any number of intervals (e.g. all 11 candidates of all even or odd points) is
scored by one batched evaluation: one jitted call draws the random numbers and the sigma
samples of every interval, then a jitted network kernel of fixed batch shape runs over all
sample pairs. The kernel is compiled once per network and batch size, whatever the number of
points, candidates or subdivision level, which matters for real networks, whose compilation
takes seconds to minutes on CPU.

Reference: Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion
Models", ICML 2024 (arXiv 2404.14507), Sec. 3 (KLUB, Lemma 3.3, importance sampling).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validate
from ..batch import (
    check_conditions,
    condition_batch,
    replicate,
    resolve_mesh,
    shard_batch,
    take_conditions,
    vmap_samples,
)
from ..denoiser import Denoiser
from ..schedules import check_schedule

__all__ = [
    "KLUB",
    "klub",
    "model_samples",
    "is_normaliser",
    "is_sample_sigmas",
    "gaussian_klub_terms",
    "MIN_SAMPLES",
]

Array = Any

MIN_SAMPLES = 8
"""Smallest Monte-Carlo sample (data rows per estimate) accepted."""

# Series of phi(d) = d - log1p(d) = sum_{k>=2} (-1)^k d^k / k, used below _PHI_SERIES_MAX, where
# the direct formula loses digits to cancellation; the number of terms reaches round-off at
# d = 0.5 (float32: 20, float64: 52).
_PHI_SERIES_MAX = 0.5
_NEWTON_ITERS = 6


# --------------------------------------------------------------------------------------
# Importance-sampling density: normaliser, inverse CDF, weights (all cancellation-free)
# --------------------------------------------------------------------------------------


@jax.custom_jvp
def _phi(d: Array) -> Array:
    """phi(d) = d - log(1 + d) for d >= 0, accurate to a few ulps (series for small d)."""
    small = d < _PHI_SERIES_MAX
    ds = jnp.where(small, d, 0.0)
    # Horner on sum_{k=2}^{K} (-1)^k d^k / k = d^2 (1/2 - d/3 + d^2/4 - ...)
    terms = 20 if jnp.finfo(ds.dtype).bits <= 32 else 52
    k = np.arange(terms, 1, -1)
    coef = jnp.asarray(np.where(k % 2 == 0, 1.0, -1.0) / k, ds.dtype)
    acc = jax.lax.fori_loop(0, terms - 1, lambda i, a: coef[i] + ds * a, jnp.zeros_like(ds))
    series = ds * ds * acc
    dl = jnp.where(small, 1.0, d)
    return jnp.where(small, series, dl - jnp.log1p(dl))


@_phi.defjvp
def _phi_jvp(primals, tangents):
    # phi'(d) = d / (1 + d): exact, and no differentiation through the series loop
    (d,), (dd,) = primals, tangents
    return _phi(d), dd * d / (1.0 + d)


@jax.custom_jvp
def _phi_inv(p: Array) -> Array:
    """delta >= 0 with phi(delta) = p >= 0, by Newton's method (phi is convex and increasing)."""
    pos = p > 0
    p1 = jnp.where(pos, p, 1.0)
    # Start: series inversion sqrt(2p) + 2p/3 for small p, p + log1p(p) for large p; Newton on a
    # convex increasing function converges monotonically after the first step.
    d = jnp.maximum(jnp.sqrt(2.0 * p1) + p1 * (2.0 / 3.0), p1 + jnp.log1p(p1))

    def newton(_, d):
        return jnp.maximum(d - (_phi(d) - p1) * (1.0 + d) / d, 0.5 * d)

    d = jax.lax.fori_loop(0, _NEWTON_ITERS, newton, d)
    return jnp.where(pos, d, 0.0)


@_phi_inv.defjvp
def _phi_inv_jvp(primals, tangents):
    # implicit function theorem: d delta / d p = 1 / phi'(delta) = (1 + delta) / delta
    (p,), (dp,) = primals, tangents
    d = _phi_inv(p)
    return d, dp * (1.0 + d) / jnp.where(d > 0, d, 1.0)


def _delta(s: Array, u: Array, c: Array) -> Array:
    """delta(s) = c^2 (u^2 - s^2) / (s^2 (u^2 + c^2)) for s <= u."""
    return c * c * (u - s) * (u + s) / (s * s * (u * u + c * c))


def is_normaliser(lo: Array, u: Array, c: float = 0.5) -> Array:
    r"""Normaliser Z_u = int_lo^u sigma^-3 (1/(sigma^2+c^2) - 1/(u^2+c^2)) d sigma.

    Equals ``G_u(u) - G_u(lo)`` of the module docstring, computed without cancellation as
    ``phi(delta(lo)) / (2 c^4)``. Broadcasts over ``lo`` and ``u`` (``0 < lo <= u``).
    """
    lo, u = jnp.asarray(lo), jnp.asarray(u)
    return _phi(_delta(lo, u, c)) / (2.0 * c**4)


def is_sample_sigmas(lo: Array, u: Array, q: Array, c: float = 0.5):
    r"""Inverse-CDF draws of the importance density pi on [lo, u], and their weights.

    Args:
      lo, u: interval ends (``0 < lo < u``), broadcastable against ``q``.
      q: uniform quantiles in [0, 1); ``q = 0`` gives ``lo``, ``q -> 1`` gives ``u``.
      c: the importance-sampling constant.

    Returns:
      ``(s, r, inv_w, z)``: the noise levels ``s``; ``r = sqrt(u^2 - s^2)`` (the noise that
      continues ``x_s`` to level ``u``); ``inv_w = 1 / (1/(s^2+c^2) - 1/(u^2+c^2))``; and the
      normaliser ``z = Z_u``. An interval term is ``z * mean(||dD||^2 * inv_w)``.
    """
    lo, u, q = jnp.asarray(lo), jnp.asarray(u), jnp.asarray(q)
    c2 = c * c
    uc = u * u + c2
    phi_lo = _phi(_delta(lo, u, c))
    d = _phi_inv((1.0 - q) * phi_lo)
    s = c * u / jnp.sqrt(d * uc + c2)
    s = jnp.clip(s, lo, u)
    r = s * jnp.sqrt(d * uc) / c
    # inv_w = (s^2 + c^2) (u^2 + c^2) / (u^2 - s^2) is large near s = u, where ||dD||^2 -> 0
    # at the same rate. d = 0 only for an empty interval (lo = u; q < 1 otherwise), whose
    # term is 0: the weight is set to 0 there instead of 0 * inf.
    pos = d > 0
    inv_w = jnp.where(pos, c2 * (s * s + c2) / (jnp.where(pos, d, 1.0) * s * s), 0.0)
    return s, r, inv_w, phi_lo / (2.0 * c2 * c2)


def gaussian_klub_terms(sigmas, std: float, dim: int, c: float | None = None) -> np.ndarray:
    r"""Exact KLUB terms for Gaussian data ``N(0, std^2 I_dim)`` and its exact denoiser.

    ``term_i = std^4 dim int sigma^-3 (1/(sigma^2 + std^2) - 1/(u^2 + std^2)) d sigma
    = std^4 dim Z_u`` with ``Z`` taken at ``c = std`` (float64, NumPy). ``sigmas`` may be in
    either order; terms follow the intervals of ``sorted(sigmas)[::-1]`` (reverse steps).
    """
    s = np.sort(np.asarray(sigmas, np.float64))[::-1]
    std = float(std)
    lo, u = s[1:], s[:-1]
    d = std**2 * (u - lo) * (u + lo) / (lo**2 * (u**2 + std**2))
    phi = np.where(d < 1e-3, d**2 / 2 - d**3 / 3 + d**4 / 4 - d**5 / 5, d - np.log1p(d))
    return std**4 * dim * phi / (2 * std**4)


# --------------------------------------------------------------------------------------
# Monte-Carlo core: one jitted call for many (interval, slot) groups
# --------------------------------------------------------------------------------------


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


def _traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def _group_samples(
    model,
    data,
    key,
    slot_ids,
    slot_of_group,
    lo,
    u,
    c,
    *,
    num,
    batch_size,
    include_normaliser,
    mesh=None,
):
    """Per-sample contributions y[g, j] of groups g: interval [lo[g], u[g]] with the random
    numbers of slot ``slot_ids[slot_of_group[g]]`` (drawn from ``fold_in(key, slot_id)``).

    The interval term of group g is ``mean_j y[g, j]``. All groups are prepared by one jitted
    call; the network then runs on fixed-shape batches of ``batch_size // 2`` sample pairs
    (a jitted kernel compiled once per network and batch size, whatever the number of points,
    candidates or levels; the last batch is padded), split over the devices of ``mesh`` (then
    ``batch_size // 2`` is rounded up to a multiple of their number). Slots and groups are
    padded to a few bucket sizes, so the preparation compiles once per bucket, not once per
    pass shape. Concrete inputs are assembled with NumPy (no eager XLA compiles); traced ones
    with jnp.
    """
    traced = _traced(lo, u, key)
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
    out = []
    for start in range(0, total, size):
        pairs = _gather(data, idx, e1, e2, s, r, u, slot_of_group, np.int32(start), size=size)
        if mesh is not None:
            pairs = [shard_batch(v, mesh) for v in pairs]
        out.append(_pair_sq_diff(model, *pairs))
    if traced:
        sq = jnp.concatenate(out)[:total].reshape(n_groups, num)
        return sq * factor[:n_groups]
    sq = np.concatenate([np.asarray(o) for o in out])[:total].reshape(n_groups, num)
    return sq * np.asarray(factor)[:n_groups]


# --------------------------------------------------------------------------------------
# Data from the model itself
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------


def _default_batch_size(shape: tuple[int, ...]) -> int:
    # ~2^17 floats per network call: large batches for toy data, 128 for MNIST-sized images.
    size = max(1, math.prod(shape))
    return int(min(16384, max(32, 2**17 // size)))


@dataclasses.dataclass(frozen=True, eq=False)
class KLUB:
    """Monte-Carlo KLUB of a Denoiser with fixed data and common random numbers.

    Build with :func:`klub`. Calling it on a schedule of model times (strictly decreasing)
    returns the scalar KLUB; :meth:`terms` returns one term per reverse step, and
    :meth:`samples` the per-sample contributions (for standard errors). Interval ``i`` of a
    schedule is ``[ts[i + 1], ts[i]]`` and always uses the random numbers of slot ``i``
    (``fold_in(key, i)``), so different schedules of one length are compared with common random
    numbers. All methods are pure functions of the schedule (``jit`` / ``vmap`` / ``grad``
    compose; the sampling sigmas are smooth in the schedule).

    Attributes:
      model: the Denoiser.
      data: ``(N, *sample_shape)`` data samples ``x0`` (in the working dtype).
      key: base PRNG key of the random numbers.
      num_samples: samples ``J`` per interval estimate (``J <= N`` rows drawn without
        replacement per slot).
      c: importance-sampling constant (paper: 0.5).
      batch_size: network evaluations per call (``batch_size // 2`` sample pairs).
      include_normaliser: keep the importance-sampling normaliser (always, except in tests).
      mesh: ``None`` or a Mesh with a ``"batch"`` axis over which every network call's sample
        pairs (and their condition rows) are split.
    """

    model: Denoiser
    data: Array
    key: Array
    num_samples: int
    c: float = 0.5
    batch_size: int = 256
    include_normaliser: bool = True
    mesh: Any = None

    name = "klub"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def noise(self):
        """The model's noise process (as in :class:`hso_jax.objectives.Objective`)."""
        return self.model.noise

    def of_lam(self, lam: Array) -> Array:
        """KLUB on an increasing half log-SNR grid (``lam_0`` at the start time)."""
        return jnp.sum(self.terms_of_lam(lam))

    def terms_of_lam(self, lam: Array) -> Array:
        """Per-step terms on an increasing half log-SNR grid; ``sigma_edm = exp(-lam)``."""
        return self.terms_from_sigmas(jnp.exp(-jnp.asarray(lam, self.data.dtype)))

    def _run(self, key, slot_ids, slot_of_group, lo, u):
        return _group_samples(
            self.model,
            self.data,
            key,
            slot_ids,
            slot_of_group,
            lo,
            u,
            self.c,
            num=self.num_samples,
            batch_size=self.batch_size,
            include_normaliser=self.include_normaliser,
            mesh=self.mesh,
        )

    # --- sigma-level interface (used by the optimiser) ---------------------------------
    def samples_from_sigmas(self, sigmas: Array) -> Array:
        """Per-sample contributions ``(n, J)`` for EDM levels ``sigmas`` (decreasing)."""
        xp = jnp if _traced(sigmas) else np
        sigmas = xp.asarray(sigmas, self.data.dtype)
        n = sigmas.shape[0] - 1
        y = self._run(self.key, np.arange(n), np.arange(n), sigmas[1:], sigmas[:-1])
        return jnp.asarray(y)

    def terms_from_sigmas(self, sigmas: Array) -> Array:
        """Per-interval KLUB terms ``(n,)`` for EDM levels ``sigmas`` (decreasing)."""
        y = self.samples_from_sigmas(sigmas)
        if _traced(y):
            return jnp.mean(y, axis=-1)
        return jnp.asarray(np.mean(np.asarray(y), axis=-1))

    def neighbourhood(self, lo: Array, cand: Array, hi: Array, point_ids, key: Array) -> Array:
        """KLUB terms of both intervals next to each candidate of each point, in one call.

        Point ``p`` with fixed neighbours ``lo[p] < hi[p]`` (EDM sigmas) and candidates
        ``cand[p, k]`` in ``(lo[p], hi[p])`` has the two terms that depend on it: the interval
        ``[lo, cand]`` (the step starting at the candidate) and ``[cand, hi]`` (the step
        starting at ``hi``). All candidates of a point share its two slots, with ids
        ``2 point_ids[p]`` and ``2 point_ids[p] + 1`` under ``key`` (common random numbers).

        Returns:
          ``(P, K, 2)`` terms: ``[..., 0]`` the lower interval, ``[..., 1]`` the upper one.
        """
        xp = jnp if _traced(lo, cand, hi) else np
        lo, hi, cand = xp.asarray(lo), xp.asarray(hi), xp.asarray(cand)
        p, k = cand.shape
        ids = np.asarray(point_ids)
        slot_ids = np.stack([2 * ids, 2 * ids + 1], axis=1).reshape(-1)  # slot 2p + side
        pts = np.repeat(np.arange(p), k)
        slots = np.concatenate([2 * pts, 2 * pts + 1])
        flat = cand.reshape(-1)
        g_lo = xp.concatenate([xp.repeat(lo, k), flat])
        g_u = xp.concatenate([flat, xp.repeat(hi, k)])
        y = self._run(key, slot_ids, slots, g_lo, g_u)
        terms = xp.mean(y, axis=-1).reshape(2, p, k)
        return jnp.asarray(xp.moveaxis(terms, 0, -1))

    # --- schedule (model time) interface -----------------------------------------------
    def _sigmas(self, ts: Array) -> Array:
        ts = check_schedule(ts, self.model.noise, name="ts")
        return self.model.noise.sigma_edm(jnp.asarray(ts, self.data.dtype))

    def samples(self, ts: Array) -> Array:
        """Per-sample contributions ``(n, J)``: ``terms = samples.mean(-1)``."""
        return self.samples_from_sigmas(self._sigmas(ts))

    def terms(self, ts: Array) -> Array:
        """KLUB term of each reverse step ``[ts[i + 1], ts[i]]``, shape ``(n,)``."""
        return self.terms_from_sigmas(self._sigmas(ts))

    def __call__(self, ts: Array) -> Array:
        """KLUB of the schedule ``ts`` (model times, strictly decreasing)."""
        return jnp.sum(self.terms(ts))


def _check_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in shape)
    except TypeError as e:
        raise TypeError(f"shape must be a tuple of ints (one sample's shape), got {shape!r}") from e
    if any(v < 1 for v in shape):
        raise ValueError(f"shape must have positive entries, got {shape}")
    return shape


def klub(
    model: Denoiser,
    data: Array | None = None,
    *,
    key: Array,
    num_samples: int | None = None,
    c: float = 0.5,
    shape: tuple[int, ...] | None = None,
    batch_size: int | None = None,
    dtype: Any = jnp.float32,
    mesh: Any = None,
    _include_normaliser: bool = True,
) -> KLUB:
    r"""Monte-Carlo KLUB objective of ``model`` (see the module docstring for the maths).

    Args:
      model: the :class:`~hso_jax.Denoiser` (any noise process; evaluated in EDM form).
      data: ``(N, *sample_shape)`` data samples ``x0``. If ``None``, ``num_samples`` samples are
        drawn from the model itself by :func:`model_samples` (a tight adaptive PF-ODE solve
        with :func:`hso_jax.evaluation.reference_solve`, then one denoising step); this needs
        ``shape``.
      key: PRNG key of all random numbers (data subsets, noises, quantiles, model samples).
      num_samples: Monte-Carlo samples per interval estimate; default ``min(N, 1024)`` (1024
        when sampling from the model). At least ``MIN_SAMPLES`` and at most ``N``.
      c: importance-sampling constant ``c > 0`` (paper: 0.5).
      shape: one sample's shape; checked against ``data.shape[1:]`` when both are given.
      batch_size: network evaluations per call (default: about 2^17 input floats per call).
      dtype: working dtype of the network evaluations (float32 by default whatever the x64
        flag, so results do not depend on it).
      mesh: ``None`` (one device), ``"auto"`` (all devices) or a Mesh with a ``"batch"`` axis:
        the sample pairs of every network call are split over its devices; the result is the
        same up to round-off.

    Conditions: a model with per-sample conditions (:mod:`hso_jax.batch`) needs one condition
    row per data row (``data[i]`` is a sample given condition ``i``); each Monte-Carlo sample
    is denoised under the condition of its data row, so the KLUB is that of the conditional
    model averaged over the batch of conditions. With ``data=None`` one sample is drawn per
    condition row.

    Returns:
      A :class:`KLUB`: ``obj(ts)`` (scalar), ``obj.terms(ts)`` (per step), ``obj.samples(ts)``.

    Raises:
      ValueError / TypeError naming the argument: bad ``data`` shape or too few rows, bad
      ``num_samples``, ``c <= 0``, missing ``key`` or ``shape``.
    """
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a hso_jax.Denoiser, got {type(model).__name__}")
    key = _validate.prng_key("key", key)
    try:
        c = float(c)
    except (TypeError, ValueError) as e:
        raise TypeError(f"c must be a positive float, got {c!r}") from e
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"c (importance-sampling constant) must be finite and > 0, got {c!r}")
    if shape is not None:
        shape = _check_shape(shape)
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
            raise TypeError(f"num_samples must be an int, got {num_samples!r}")
        if num_samples < MIN_SAMPLES:
            raise ValueError(f"num_samples must be >= {MIN_SAMPLES}, got {num_samples}")
        num_samples = int(num_samples)
    if data is None:
        if shape is None:
            raise ValueError(
                "data is None: pass data (an (N, *sample_shape) array of x0 samples) or shape= "
                "(one sample's shape) to draw samples from the model"
            )
        b = condition_batch(model)
        num_samples = (1024 if b is None else min(b, 1024)) if num_samples is None else num_samples
        key, k_data = jax.random.split(key)
        data = model_samples(model, shape, num_samples if b is None else b, k_data)
    data = _check_data(data, shape, num_samples)
    check_conditions(model, int(data.shape[0]), "data")
    if num_samples is None:
        num_samples = min(int(data.shape[0]), 1024)
    # Shuffle once: every slot then uses a random window of consecutive rows (distinct rows,
    # and no bias when the data are stored sorted, e.g. by class).
    key, k_perm = jax.random.split(key)
    seed = np.asarray(jax.random.bits(k_perm, (2,), jnp.uint32))
    perm = np.random.default_rng(seed).permutation(int(data.shape[0]))
    data = jnp.asarray(np.asarray(data)[perm], dtype)
    model = take_conditions(model, perm)  # per-sample conditions stay with their rows
    sample_shape = tuple(data.shape[1:])
    if batch_size is None:
        batch_size = _default_batch_size(sample_shape)
    elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    _probe_model(take_conditions(model, slice(0, 1)), data)
    mesh = resolve_mesh(mesh)
    return KLUB(
        model=replicate(model, mesh),
        data=replicate(data, mesh),
        key=key,
        num_samples=num_samples,
        c=c,
        batch_size=int(batch_size),
        include_normaliser=bool(_include_normaliser),
        mesh=mesh,
    )


def _check_data(data, shape, num_samples) -> Array:
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        try:
            data = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"data must be an array of shape (N, *sample_shape), got {data!r}"
            ) from e
    if not jnp.issubdtype(data.dtype, jnp.floating):
        raise TypeError(f"data must be a floating-point array, got dtype {data.dtype}")
    if len(data.shape) < 2:
        raise ValueError(
            f"data must have shape (N, *sample_shape) with a leading sample axis, got shape "
            f"{tuple(data.shape)}"
        )
    if shape is not None and tuple(data.shape[1:]) != tuple(shape):
        raise ValueError(
            f"data has sample shape {tuple(data.shape[1:])} (data.shape = {tuple(data.shape)}), "
            f"but shape={tuple(shape)} was given"
        )
    n = int(data.shape[0])
    if n < MIN_SAMPLES:
        raise ValueError(f"data must have at least {MIN_SAMPLES} samples (rows), got {n}")
    if num_samples is not None and num_samples > n:
        raise ValueError(
            f"num_samples={num_samples} exceeds the {n} samples in data; pass more data or "
            f"num_samples <= {n}"
        )
    if not bool(np.all(np.isfinite(np.asarray(data)))):
        raise ValueError("data must be finite; it contains NaN or inf")
    return data


def _probe_model(model: Denoiser, data: Array) -> None:
    """Evaluate the model once on one data row at both ends of its range (eager)."""
    ns = model.noise
    x = data[:1]
    for t in (ns.t_max, ns.t_min):
        tt = jnp.asarray(t, data.dtype)
        try:
            out = model.x0(ns.alpha(tt) * x, tt)
        except Exception as e:  # noqa: BLE001 - re-raised with the argument named
            raise ValueError(
                f"the model cannot be evaluated on data of sample shape {tuple(data.shape[1:])} "
                f"(data.shape = {tuple(data.shape)}): {type(e).__name__}: {e}"
            ) from e
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(
                f"data has sample shape {tuple(data.shape[1:])}, but the model maps a batch of "
                f"shape {tuple(x.shape)} to shape {tuple(out.shape)}; data must hold samples of "
                "the model's data space"
            )
        if not bool(jnp.all(jnp.isfinite(out))):
            raise ValueError(f"the model returns NaN/inf at t = {t:g} on the first data sample")
