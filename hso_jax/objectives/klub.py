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

The estimator is split by job:

* :mod:`hso_jax.objectives.klub_importance` -- the importance density of ``sigma`` in each
  interval, its normaliser ``Z_u`` (which must be kept: it moves the argmin), inverse-CDF
  draws and weights, all cancellation-free in float32; the Gaussian closed form;
* :mod:`hso_jax.objectives.klub_montecarlo` -- common random numbers per slot, and the batched
  evaluation of many intervals with one compiled network kernel; samples from the model;
* this module -- the :class:`KLUB` objective and its validated factory :func:`klub`.

Reference: Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion
Models", ICML 2024 (arXiv 2404.14507), Sec. 3 (KLUB, Lemma 3.3, importance sampling).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validate
from ..batch import check_conditions, condition_batch, replicate, resolve_mesh, take_conditions
from ..denoiser import Denoiser, check_denoiser
from ..schedules import check_schedule
from .klub_importance import gaussian_klub_terms, is_normaliser, is_sample_sigmas
from .klub_montecarlo import group_samples, is_traced, model_samples

# model_samples and the importance-sampling functions are re-exported: they were defined here
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
      batch_size: network evaluations per call.
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

    def _run(self, key, slot_ids, slot_of_group, lo, u, anchor_of_group=None):
        return group_samples(
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
            anchor_of_group=anchor_of_group,
        )

    # --- sigma-level interface (used by the optimiser) ---------------------------------
    def samples_from_sigmas(self, sigmas: Array) -> Array:
        """Per-sample contributions ``(n, J)`` for EDM levels ``sigmas`` (decreasing)."""
        xp = jnp if is_traced(sigmas) else np
        sigmas = xp.asarray(sigmas, self.data.dtype)
        n = sigmas.shape[0] - 1
        y = self._run(self.key, np.arange(n), np.arange(n), sigmas[1:], sigmas[:-1])
        return jnp.asarray(y)

    def terms_from_sigmas(self, sigmas: Array) -> Array:
        """Per-interval KLUB terms ``(n,)`` for EDM levels ``sigmas`` (decreasing)."""
        y = self.samples_from_sigmas(sigmas)
        if is_traced(y):
            return jnp.mean(y, axis=-1)
        return jnp.asarray(np.mean(np.asarray(y), axis=-1))

    def neighbourhood(self, lo: Array, cand: Array, hi: Array, point_ids, key: Array) -> Array:
        """KLUB terms of both intervals next to each candidate of each point, in one call.

        Point ``p`` with fixed neighbours ``lo[p] < hi[p]`` (EDM sigmas) and candidates
        ``cand[p, k]`` in ``(lo[p], hi[p])`` has the two terms that depend on it: the interval
        ``[lo, cand]`` (the step starting at the candidate) and ``[cand, hi]`` (the step
        starting at ``hi``). All candidates of a point share its two slots, with ids
        ``2 point_ids[p]`` and ``2 point_ids[p] + 1`` under ``key`` (common random numbers),
        and the upper intervals of one point share their anchor ``D(x_hi, hi)``: ``K`` candidates
        cost ``(3 K + 1) J`` network evaluations instead of ``4 K J``.

        Returns:
          ``(P, K, 2)`` terms: ``[..., 0]`` the lower interval, ``[..., 1]`` the upper one.
        """
        xp = jnp if is_traced(lo, cand, hi) else np
        lo, hi, cand = xp.asarray(lo), xp.asarray(hi), xp.asarray(cand)
        p, k = cand.shape
        ids = np.asarray(point_ids)
        slot_ids = np.stack([2 * ids, 2 * ids + 1], axis=1).reshape(-1)  # slot 2p + side
        pts = np.repeat(np.arange(p), k)
        slots = np.concatenate([2 * pts, 2 * pts + 1])
        flat = cand.reshape(-1)
        g_lo = xp.concatenate([xp.repeat(lo, k), flat])
        g_u = xp.concatenate([flat, xp.repeat(hi, k)])
        anchors = np.concatenate([np.arange(p * k), p * k + pts])  # [cand, hi]: one per point
        y = self._run(key, slot_ids, slots, g_lo, g_u, anchors)
        terms = xp.mean(y, axis=-1).reshape(2, p, k)
        return jnp.asarray(xp.moveaxis(terms, 0, -1))

    def neighbourhood_cost(self, points: int, candidates: int) -> int:
        """Network evaluations of one :meth:`neighbourhood` call: ``(3 K + 1) P J``."""
        return (3 * candidates + 1) * points * self.num_samples

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
        the samples of every network call are split over its devices; the result is the
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
    check_denoiser(model)
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
