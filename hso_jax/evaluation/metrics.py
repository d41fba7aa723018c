r"""Sample-quality metrics: error to a reference, Fréchet distance, sliced Wasserstein, GMM NLL.

All metrics are pure JAX functions (``jax.jit`` / ``jax.vmap`` work). Inputs are validated
eagerly when they are concrete (shapes, sample counts, finiteness) and raise ``ValueError`` /
``TypeError`` naming the argument; under a transformation (traced inputs) only the shape checks
run.

Per-sample errors to a reference ``ref`` (the exact ODE solution from the same ``x_T``), for a
batch ``x`` of shape ``(B, ...)``, reduced over every non-batch axis:

.. math::

    \mathrm{RMSE}_b = \sqrt{\tfrac{1}{d}\textstyle\sum_j (x_{bj} - r_{bj})^2},\qquad
    \mathrm{PSNR}_b = 10 \log_{10} \frac{R^2}{\mathrm{RMSE}_b^2},

with ``R`` the data range (2 for data in ``[-1, 1]``). :func:`mean_rmse` / :func:`mean_psnr`
average the per-sample values over the batch (the mean of per-sample PSNRs, as in the image
literature, not the PSNR of the pooled error).

Distribution distances:

* Fréchet distance between Gaussians (the "FID" formula without Inception features),

  .. math::

      d^2 = \lVert\mu_a - \mu_b\rVert^2 + \operatorname{tr} \Sigma_a + \operatorname{tr} \Sigma_b
            - 2 \operatorname{tr} \big(\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2}\big)^{1/2},

  evaluated through two symmetric eigendecompositions (``Sigma_a^{1/2}`` and the eigenvalues of
  the symmetric PSD matrix ``Sigma_a^{1/2} Sigma_b Sigma_a^{1/2}``) rather than a general
  matrix square root of ``Sigma_a Sigma_b``, which is not symmetric and whose ``sqrtm`` is
  unstable (complex round-off, Schur failures) for near-singular covariances
  (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule...", NeurIPS 2017; Dowson &
  Landau, J. Multivariate Anal. 1982).
* Sliced 2-Wasserstein distance (Rabin et al., "Wasserstein Barycenter and its Application to
  Texture Mixing", SSVM 2011; Bonneel et al., J. Math. Imaging Vis. 2015):

  .. math::

      \mathrm{SW}_2^2(X, Y) = \mathbb{E}_{\theta \sim U(S^{d-1})}
          W_2^2(\theta_\# X, \theta_\# Y),

  estimated with ``num_projections`` random directions; each 1-D ``W_2^2`` between two empirical
  measures with the same number of atoms is exact: the mean squared difference of the sorted
  projections.
* Negative log-likelihood of samples under a :class:`~hso_jax.models.GaussianMixture` (exact).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "rmse",
    "psnr",
    "mean_rmse",
    "mean_psnr",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_samples",
    "fd_mnist",
    "sliced_wasserstein",
    "gmm_nll",
]

Array = Any


# --------------------------------------------------------------------------------------
# Validation (eager; only shape checks for traced inputs)
# --------------------------------------------------------------------------------------


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _as_array(name: str, x) -> Array:
    if isinstance(x, (list, tuple, int, float)) and not isinstance(x, bool):
        x = np.asarray(x, dtype=float)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return x


def _check_finite(name: str, x) -> None:
    if _is_traced(x):
        return
    v = np.asarray(x)
    if not np.all(np.isfinite(v)):
        bad = int(v.size - np.count_nonzero(np.isfinite(v)))
        raise ValueError(f"{name} must be finite; it has {bad} NaN/inf entries of {v.size}")


def _float_dtype(*xs):
    return jnp.result_type(*[x.dtype for x in xs], float)


def _check_pair(x, ref, x_name: str = "x", ref_name: str = "ref"):
    x, ref = _as_array(x_name, x), _as_array(ref_name, ref)
    if x.ndim < 1:
        raise ValueError(f"{x_name} must have a leading batch axis, got a 0-d array")
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(
            f"{x_name} and {ref_name} must have the same shape, got {tuple(x.shape)} and "
            f"{tuple(ref.shape)}"
        )
    _check_finite(x_name, x)
    _check_finite(ref_name, ref)
    dtype = _float_dtype(x, ref)
    return jnp.asarray(x, dtype), jnp.asarray(ref, dtype)


def _check_samples(name: str, x, min_samples: int, what: str) -> Array:
    x = _as_array(name, x)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (num_samples, ...) with at least one feature axis, got "
            f"shape {tuple(x.shape)} (reshape 1-D data to (n, 1))"
        )
    if x.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} sample(s){what}, got {x.shape[0]}")
    _check_finite(name, x)
    return x


# --------------------------------------------------------------------------------------
# Error to a reference
# --------------------------------------------------------------------------------------


def _mse_per_sample(x, ref):
    d = x - ref
    return jnp.mean(d * d, axis=tuple(range(1, x.ndim)))


def rmse(x: Array, ref: Array) -> Array:
    r"""Root-mean-square error per sample, ``sqrt(mean_j (x_bj - ref_bj)^2)``.

    Args:
      x: samples, shape ``(B, ...)`` (axis 0 is the batch).
      ref: reference samples of the same shape (e.g. the exact ODE solution from the same noise).

    Returns:
      ``(B,)`` array: the RMSE of each sample over all its non-batch axes.

    Raises:
      ValueError: shapes differ, no batch axis, or (eager) NaN/inf entries.
    """
    x, ref = _check_pair(x, ref)
    return jnp.sqrt(_mse_per_sample(x, ref))


def psnr(x: Array, ref: Array, data_range: float = 2.0) -> Array:
    r"""Peak signal-to-noise ratio per sample, ``10 log10(data_range^2 / MSE_b)`` in dB.

    Args:
      x: samples, shape ``(B, ...)``.
      ref: reference samples of the same shape.
      data_range: ``max - min`` of the data (2 for ``[-1, 1]``, 1 for ``[0, 1]``, 255 for bytes).

    Returns:
      ``(B,)`` array of PSNRs in dB (``+inf`` where a sample equals its reference exactly).

    Raises:
      ValueError: shapes differ, no batch axis, non-positive ``data_range`` or (eager) NaN/inf.
    """
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float, np.floating)):
        raise TypeError(f"data_range must be a positive float, got {data_range!r}")
    if not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive finite float, got {data_range!r}")
    x, ref = _check_pair(x, ref)
    mse = _mse_per_sample(x, ref)
    return 20.0 * jnp.log10(jnp.asarray(data_range, x.dtype)) - 10.0 * jnp.log10(mse)


def mean_rmse(x: Array, ref: Array) -> Array:
    """Batch mean of :func:`rmse` (mean of the per-sample RMSEs), a scalar."""
    return jnp.mean(rmse(x, ref))


def mean_psnr(x: Array, ref: Array, data_range: float = 2.0) -> Array:
    """Batch mean of :func:`psnr` (mean of the per-sample PSNRs in dB), a scalar."""
    return jnp.mean(psnr(x, ref, data_range))


# --------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------


def _psd_sqrt(c):
    """Symmetric PSD square root through eigh; round-off negative eigenvalues count as 0."""
    w, v = jnp.linalg.eigh(c)
    return (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T


@jax.jit
def _frechet(mu_a, cov_a, mu_b, cov_b):
    cov_a = 0.5 * (cov_a + cov_a.T)
    cov_b = 0.5 * (cov_b + cov_b.T)
    sa = _psd_sqrt(cov_a)
    m = sa @ cov_b @ sa
    ev = jnp.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = jnp.sum(jnp.sqrt(jnp.clip(ev, 0.0)))
    diff = mu_a - mu_b
    d2 = diff @ diff + jnp.trace(cov_a) + jnp.trace(cov_b) - 2.0 * tr_sqrt
    # d^2 >= 0 exactly; only round-off (~eps * trace) can push it below.
    return jnp.maximum(d2, 0.0)


def _check_gaussian(mu_name, mu, cov_name, cov):
    mu, cov = _as_array(mu_name, mu), _as_array(cov_name, cov)
    if mu.ndim != 1:
        raise ValueError(f"{mu_name} must be a 1-D mean vector, got shape {tuple(mu.shape)}")
    d = mu.shape[0]
    if tuple(cov.shape) != (d, d):
        raise ValueError(
            f"{cov_name} must have shape ({d}, {d}) to match {mu_name}, got {tuple(cov.shape)}"
        )
    _check_finite(mu_name, mu)
    _check_finite(cov_name, cov)
    if not _is_traced(cov):
        c = np.asarray(cov, np.float64)
        scale = max(float(np.max(np.abs(c))), np.finfo(np.float64).tiny)
        asym = float(np.max(np.abs(c - c.T))) / scale
        if asym > 1e-5:
            raise ValueError(
                f"{cov_name} must be a symmetric covariance matrix; max |C - C^T| / max |C| = "
                f"{asym:.3g}"
            )
    return mu, cov


def frechet_distance(mu_a: Array, cov_a: Array, mu_b: Array, cov_b: Array) -> Array:
    r"""Squared Fréchet (2-Wasserstein) distance between two Gaussians.

    .. math::

        d^2 = \lVert\mu_a - \mu_b\rVert^2 + \operatorname{tr}\Sigma_a + \operatorname{tr}\Sigma_b
              - 2 \operatorname{tr}\big(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}\big)^{1/2}

    (Dowson & Landau 1982), the quantity FID reports. Computed stably: ``Sigma_a^{1/2}`` by a
    symmetric eigendecomposition, then the trace term as the sum of square roots of the
    eigenvalues of the symmetric PSD matrix ``Sigma_a^{1/2} Sigma_b Sigma_a^{1/2}`` (tiny
    negative round-off eigenvalues count as 0), so singular covariances are fine. Runs in the
    inputs' dtype; in float32 the absolute error is about ``1e-6 * (tr Sigma_a + tr Sigma_b)``.

    Args:
      mu_a, mu_b: ``(D,)`` means.
      cov_a, cov_b: ``(D, D)`` symmetric positive semi-definite covariances.

    Returns:
      Scalar ``d^2 >= 0`` (like FID, the squared distance).

    Raises:
      ValueError: mismatched shapes, non-symmetric covariance or (eager) NaN/inf entries.
    """
    mu_a, cov_a = _check_gaussian("mu_a", mu_a, "cov_a", cov_a)
    mu_b, cov_b = _check_gaussian("mu_b", mu_b, "cov_b", cov_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(
            f"mu_a and mu_b must have the same dimension, got {mu_a.shape[0]} and {mu_b.shape[0]}"
        )
    dtype = _float_dtype(mu_a, cov_a, mu_b, cov_b)
    return _frechet(*(jnp.asarray(v, dtype) for v in (mu_a, cov_a, mu_b, cov_b)))


@jax.jit
def _statistics(feats):
    mu = jnp.mean(feats, axis=0)
    c = feats - mu
    return mu, (c.T @ c) / (feats.shape[0] - 1)


def feature_statistics(feats: Array) -> tuple[Array, Array]:
    """Mean and unbiased covariance (``ddof = 1``) of features ``(N, ...)`` flattened to (N, D).

    Returns:
      ``(mu, cov)`` of shapes ``(D,)`` and ``(D, D)``; feed them to :func:`frechet_distance`
      (e.g. to cache the statistics of a reference set once).

    Raises:
      ValueError: fewer than 2 samples, no feature axis or (eager) NaN/inf entries.
    """
    feats = _check_samples("feats", feats, 2, " to estimate a covariance")
    feats = jnp.asarray(feats, _float_dtype(feats)).reshape(feats.shape[0], -1)
    return _statistics(feats)


def frechet_distance_from_samples(feats_a: Array, feats_b: Array) -> Array:
    """Squared Fréchet distance between Gaussians fitted to two feature sets.

    Args:
      feats_a: ``(N_a, ...)`` features (e.g. classifier embeddings of generated samples).
      feats_b: ``(N_b, ...)`` features with the same per-sample shape; ``N_a`` and ``N_b`` may
        differ. Both need at least 2 samples (covariances use ``ddof = 1``); with fewer samples
        than feature dimensions the covariances are singular, which is allowed but biased.

    Returns:
      Scalar ``d^2`` of :func:`frechet_distance` between the fitted Gaussians.

    Raises:
      ValueError: fewer than 2 samples, mismatched feature shapes or (eager) NaN/inf entries.
    """
    feats_a = _check_samples("feats_a", feats_a, 2, " to estimate a covariance")
    feats_b = _check_samples("feats_b", feats_b, 2, " to estimate a covariance")
    if tuple(feats_a.shape[1:]) != tuple(feats_b.shape[1:]):
        raise ValueError(
            f"feats_a and feats_b must have the same per-sample shape, got "
            f"{tuple(feats_a.shape[1:])} and {tuple(feats_b.shape[1:])}"
        )
    dtype = _float_dtype(feats_a, feats_b)
    mu_a, cov_a = _statistics(jnp.asarray(feats_a, dtype).reshape(feats_a.shape[0], -1))
    mu_b, cov_b = _statistics(jnp.asarray(feats_b, dtype).reshape(feats_b.shape[0], -1))
    return _frechet(mu_a, cov_a, mu_b, cov_b)


def fd_mnist(x_a: Array, x_b: Array, params: Any | None = None) -> float:
    """FD-MNIST: :func:`frechet_distance_from_samples` of two sets of MNIST images in the
    128-d features of the shipped classifier (:mod:`hso_jax.models.classifier`), in float64.

    Args:
      x_a, x_b: images (N, 28, 28, 1) / (N, 1, 28, 28) / (N, 784), pixels in [-1, 1]; N >= 2
        each (use hundreds: the 128-d covariance needs many samples, and FD is biased upwards
        for small N, so compare only values computed with the same N).
      params: classifier parameters; the shipped classifier when None.

    Returns:
      The squared Fréchet distance (a Python float, >= 0), FID's quantity in these features.
    """
    from ..models.classifier import load_classifier, mnist_features

    params = load_classifier() if params is None else params
    f_a = np.asarray(mnist_features(params, x_a), np.float64)
    f_b = np.asarray(mnist_features(params, x_b), np.float64)
    with jax.enable_x64(True):
        return float(frechet_distance_from_samples(f_a, f_b))


# --------------------------------------------------------------------------------------
# Sliced Wasserstein
# --------------------------------------------------------------------------------------


def _directions(key, dim: int, num: int, dtype) -> Array:
    """``num`` directions uniform on the unit sphere ``S^{dim-1}`` (normalised Gaussians)."""
    theta = jax.random.normal(key, (num, dim), dtype)
    return theta / jnp.linalg.norm(theta, axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("num_projections", "squared"))
def _sliced_w2(x, y, key, num_projections, squared):
    theta = _directions(key, x.shape[1], num_projections, x.dtype)
    px = jnp.sort(x @ theta.T, axis=0)  # (N, P): sorted 1-D projections
    py = jnp.sort(y @ theta.T, axis=0)
    sw2 = jnp.mean((px - py) ** 2)  # mean over atoms (exact 1-D W2^2) and over directions
    return sw2 if squared else jnp.sqrt(sw2)


def sliced_wasserstein(
    x: Array, y: Array, key: Array, num_projections: int = 128, *, squared: bool = False
) -> Array:
    r"""Monte-Carlo sliced 2-Wasserstein distance between two equal-size sample sets.

    .. math::

        \widehat{\mathrm{SW}}_2^2 = \frac{1}{P}\sum_{p=1}^{P} \frac{1}{N}\sum_{i=1}^{N}
            \big(\theta_p^\top x_{(i)} - \theta_p^\top y_{(i)}\big)^2,

    with ``theta_p`` uniform on the unit sphere and ``(i)`` the i-th smallest projection: for
    two empirical measures with ``N`` atoms each, sorting gives the exact 1-D optimal coupling.
    E.g. for ``y = x + s`` every projection contributes ``(theta^T s)^2``, so
    ``SW_2^2 = |s|^2 / D`` in expectation over the directions (Rabin et al. 2011).

    Args:
      x: ``(N, ...)`` samples, flattened to ``(N, D)``.
      y: ``(N, ...)`` samples with the same shape (the same number of samples is required: the
        sorted coupling is exact only for equal counts).
      key: PRNG key for the directions (use the same key to compare methods).
      num_projections: number of random directions ``P``.
      squared: return ``SW_2^2`` instead of the distance ``SW_2``.

    Returns:
      Scalar ``SW_2`` (default; same units as the data) or ``SW_2^2``.

    Raises:
      ValueError: different sample counts or shapes, ``num_projections < 1`` or (eager) NaN/inf.
    """
    if isinstance(num_projections, bool) or not isinstance(num_projections, (int, np.integer)):
        raise TypeError(f"num_projections must be a positive integer, got {num_projections!r}")
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    x = _check_samples("x", x, 1, "")
    y = _check_samples("y", y, 1, "")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples (exact 1-D Wasserstein by sorting), "
            f"got {x.shape[0]} and {y.shape[0]}; subsample the larger set"
        )
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(
            f"x and y must have the same per-sample shape, got {tuple(x.shape[1:])} and "
            f"{tuple(y.shape[1:])}"
        )
    dtype = _float_dtype(x, y)
    n = x.shape[0]
    x = jnp.asarray(x, dtype).reshape(n, -1)
    y = jnp.asarray(y, dtype).reshape(n, -1)
    return _sliced_w2(x, y, key, int(num_projections), bool(squared))


# --------------------------------------------------------------------------------------
# Gaussian-mixture likelihood
# --------------------------------------------------------------------------------------


def gmm_nll(gm, x: Array) -> Array:
    r"""Mean negative log-likelihood ``-(1/N) sum_i log p(x_i)`` under a Gaussian mixture.

    ``p`` is the exact data density of :class:`~hso_jax.models.GaussianMixture`,
    ``p(x) = sum_k w_k N(x; mu_k, diag(s_k^2))`` (in nats; divide by ``D log 2`` for bits per
    dimension). Per-sample values: ``-gm.log_prob(x)``.

    Args:
      gm: the :class:`~hso_jax.models.GaussianMixture` the samples should follow.
      x: ``(N, D)`` samples with ``D = gm.dim``.

    Returns:
      Scalar mean NLL.

    Raises:
      TypeError: ``gm`` is not a GaussianMixture. ValueError: wrong shape or (eager) NaN/inf.
    """
    from ..models.gaussian_mixture import GaussianMixture

    if not isinstance(gm, GaussianMixture):
        raise TypeError(f"gm must be a hso_jax.models.GaussianMixture, got {type(gm).__name__}")
    x = _check_samples("x", x, 1, "")
    if x.ndim != 2 or x.shape[1] != gm.dim:
        raise ValueError(
            f"x must have shape (N, {gm.dim}) for this {gm.dim}-D mixture, got {tuple(x.shape)}"
        )
    x = jnp.asarray(x, _float_dtype(x))
    return -jnp.mean(gm.log_prob(x))
