"""Metrics against hand-computed values and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from hso_jax.evaluation import metrics as M
from hso_jax.models import GaussianMixture

# --- RMSE / PSNR -------------------------------------------------------------------------


def test_rmse_psnr_hand_values():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    ref = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    # sample 0: errors (0, 2) -> MSE 2; sample 1: errors (3, 4) -> MSE 12.5
    np.testing.assert_allclose(M.rmse(x, ref), [math.sqrt(2.0), math.sqrt(12.5)], rtol=1e-12)
    np.testing.assert_allclose(
        M.psnr(x, ref), [10 * math.log10(4 / 2.0), 10 * math.log10(4 / 12.5)], rtol=1e-12
    )
    np.testing.assert_allclose(M.psnr(x, ref, data_range=1.0), [-3.0103, -10.9691], atol=1e-4)
    np.testing.assert_allclose(M.mean_rmse(x, ref), (math.sqrt(2) + math.sqrt(12.5)) / 2)
    np.testing.assert_allclose(M.mean_psnr(x, ref), (3.0103 - 4.9485) / 2, atol=1e-4)


def test_rmse_reduces_all_non_batch_axes_and_jits():
    x = jnp.arange(24.0).reshape(3, 2, 4)
    ref = jnp.zeros_like(x)
    want = np.sqrt(np.mean(np.asarray(x).reshape(3, -1) ** 2, axis=1))
    np.testing.assert_allclose(M.rmse(x, ref), want, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(M.rmse)(x, ref), want, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(M.psnr)(x, ref), M.psnr(x, ref), rtol=1e-12)
    assert M.rmse(x.astype(jnp.float32), ref.astype(jnp.float32)).dtype == jnp.float32
    assert np.isinf(M.psnr(x, x)).all()


def test_rmse_psnr_errors():
    with pytest.raises(ValueError, match="same shape"):
        M.rmse(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="batch axis"):
        M.rmse(jnp.zeros(()), jnp.zeros(()))
    with pytest.raises(ValueError, match="x must be finite"):
        M.rmse(jnp.array([[jnp.nan]]), jnp.zeros((1, 1)))
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(jnp.zeros((1, 1)), jnp.ones((1, 1)), data_range=0.0)


# --- Fréchet distance --------------------------------------------------------------------


def test_frechet_1d_closed_form():
    # N(1, 2^2) vs N(-0.5, 0.5^2): (mu_a - mu_b)^2 + (s_a - s_b)^2 = 1.5^2 + 1.5^2
    fd = M.frechet_distance(
        jnp.array([1.0]), jnp.array([[4.0]]), jnp.array([-0.5]), jnp.array([[0.25]])
    )
    np.testing.assert_allclose(fd, 4.5, rtol=1e-12)


def test_frechet_diagonal_and_rotated():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    va, vb = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])  # vb singular
    want = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    fd = M.frechet_distance(mu_a, np.diag(va), mu_b, np.diag(vb))
    np.testing.assert_allclose(fd, want, rtol=1e-10)
    # invariant under a common rotation (non-diagonal covariances)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    fd_rot = M.frechet_distance(q @ mu_a, q @ np.diag(va) @ q.T, q @ mu_b, q @ np.diag(vb) @ q.T)
    np.testing.assert_allclose(fd_rot, want, rtol=1e-8)
    np.testing.assert_allclose(
        M.frechet_distance(mu_a, np.diag(va), mu_a, np.diag(va)), 0.0, atol=1e-12
    )


def test_frechet_general_matches_sqrtm_and_jit():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    ca, cb = a @ a.T + 0.1 * np.eye(4), b @ b.T
    ma, mb = rng.normal(size=4), rng.normal(size=4)
    want = (
        np.sum((ma - mb) ** 2)
        + np.trace(ca)
        + np.trace(cb)
        - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb)).real
    )
    np.testing.assert_allclose(M.frechet_distance(ma, ca, mb, cb), want, rtol=1e-8)
    np.testing.assert_allclose(jax.jit(M.frechet_distance)(ma, ca, mb, cb), want, rtol=1e-8)
    f32 = M.frechet_distance(*(np.asarray(v, np.float32) for v in (ma, ca, mb, cb)))
    assert f32.dtype == jnp.float32
    np.testing.assert_allclose(f32, want, rtol=1e-4)


def test_frechet_from_samples():
    rng = np.random.default_rng(2)
    fa, fb = rng.normal(size=(50, 3)), 2.0 + rng.normal(size=(40, 3))
    mu_a, cov_a = M.feature_statistics(fa)
    np.testing.assert_allclose(cov_a, np.cov(fa, rowvar=False), rtol=1e-12)
    want = M.frechet_distance(
        fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False)
    )
    np.testing.assert_allclose(M.frechet_distance_from_samples(fa, fb), want, rtol=1e-12)
    # per-sample shape (2, 2) is flattened to 4 features
    M.frechet_distance_from_samples(fa[:, :2, None].repeat(2, 2), fb[:, :2, None].repeat(2, 2))


def test_frechet_errors():
    with pytest.raises(ValueError, match="at least 2 sample"):
        M.frechet_distance_from_samples(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same per-sample shape"):
        M.frechet_distance_from_samples(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="feature axis"):
        M.frechet_distance_from_samples(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="cov_a must have shape"):
        M.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="symmetric"):
        M.frechet_distance(np.zeros(2), np.array([[1.0, 1.0], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="mu_b must be finite"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.inf]), np.eye(2))


# --- sliced Wasserstein ------------------------------------------------------------------


def test_sliced_wasserstein_self_and_shift():
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), (64, 3))
    assert float(M.sliced_wasserstein(x, x, key)) == 0.0
    # permuting the samples does not change the empirical measure
    assert float(M.sliced_wasserstein(x, x[::-1], key)) == pytest.approx(0.0, abs=1e-12)
    s = jnp.array([1.0, -2.0, 0.5])
    got = M.sliced_wasserstein(x, x + s, key, num_projections=64, squared=True)
    # exact for the drawn directions: mean_p (theta_p . s)^2
    theta = M._directions(key, 3, 64, x.dtype)
    np.testing.assert_allclose(got, jnp.mean((theta @ s) ** 2), rtol=1e-10)
    # and E[(theta . s)^2] = |s|^2 / D over uniform directions
    many = M.sliced_wasserstein(x, x + s, key, num_projections=20000, squared=True)
    np.testing.assert_allclose(many, float(s @ s) / 3, rtol=0.03)
    np.testing.assert_allclose(
        M.sliced_wasserstein(x, x + s, key, num_projections=64), jnp.sqrt(got), rtol=1e-12
    )


def test_sliced_wasserstein_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="same number of samples"):
        M.sliced_wasserstein(jnp.zeros((4, 2)), jnp.zeros((5, 2)), key)
    with pytest.raises(ValueError, match="per-sample shape"):
        M.sliced_wasserstein(jnp.zeros((4, 2)), jnp.zeros((4, 3)), key)
    with pytest.raises(ValueError, match="num_projections"):
        M.sliced_wasserstein(jnp.zeros((4, 2)), jnp.zeros((4, 2)), key, num_projections=0)


# --- GMM NLL -----------------------------------------------------------------------------


def test_gmm_nll_single_gaussian_and_mixture():
    mu, s = np.array([1.0, -1.0]), np.array([0.5, 2.0])
    gm = GaussianMixture(mu[None], s[None])
    x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, -3.0]])
    nll = 0.5 * np.sum(((x - mu) / s) ** 2 + np.log(2 * np.pi * s**2), axis=1)
    np.testing.assert_allclose(M.gmm_nll(gm, x), nll.mean(), rtol=1e-12)

    gm2 = GaussianMixture([[0.0], [3.0]], [1.0, 0.5], weights=[0.25, 0.75])
    y = np.array([[0.0], [2.5]])
    dens = 0.25 * scipy.stats.norm.pdf(y, 0, 1) + 0.75 * scipy.stats.norm.pdf(y, 3, 0.5)
    np.testing.assert_allclose(M.gmm_nll(gm2, y), -np.log(dens).mean(), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(M.gmm_nll)(gm2, y), -np.log(dens).mean(), rtol=1e-12)


def test_gmm_nll_errors():
    gm = GaussianMixture([[0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        M.gmm_nll(gm, np.zeros((3, 3)))
    with pytest.raises(TypeError, match="GaussianMixture"):
        M.gmm_nll("gm", np.zeros((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        M.gmm_nll(gm, np.array([[np.nan, 0.0]]))
