"""KLUB estimator: importance-sampling density, Gaussian oracle, purity, precision, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import hso_jax as hj
from hso_jax.objectives import klub_montecarlo
from hso_jax.objectives.klub import (
    KLUB,
    gaussian_klub_terms,
    is_normaliser,
    is_sample_sigmas,
    klub,
    model_samples,
)

C = 0.5
INTERVALS = [(0.1, 0.3), (1.0, 2.0), (10.0, 80.0), (0.002, 0.0035), (5.0, 5.5), (0.35, 80.0)]


def _g(s, u, c=C):
    """The notes' antiderivative G_u(s), in float64 NumPy (cancels for s >> c)."""
    return (
        -1 / (2 * c**2 * s**2) + np.log1p(c**2 / s**2) / (2 * c**4) + 1 / (2 * s**2 * (u**2 + c**2))
    )


def _w(s, u, c=C):
    return s**-3 * (1 / (s**2 + c**2) - 1 / (u**2 + c**2))


def _quad(f, a, b):
    return integrate.quad(f, a, b, epsabs=0, epsrel=1e-12, limit=200)[0]


@pytest.mark.parametrize("lo,u", INTERVALS)
def test_normaliser_matches_antiderivative_and_quadrature(lo, u):
    z_quad = _quad(lambda s: _w(s, u), lo, u)
    z_g = _g(u, u) - _g(lo, u)
    z64 = float(is_normaliser(np.float64(lo), np.float64(u), C))
    np.testing.assert_allclose(z64, z_quad, rtol=1e-9)
    np.testing.assert_allclose(z64, z_g, rtol=1e-8)
    # the cancellation-free form keeps float32 accurate (inputs rounded to float32)
    lo32, u32 = np.float32(lo), np.float32(u)
    z_ref32 = _quad(lambda s: _w(s, float(u32)), float(lo32), float(u32))
    z32 = float(is_normaliser(jnp.float32(lo), jnp.float32(u), C))
    np.testing.assert_allclose(z32, z_ref32, rtol=2e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_inverse_cdf_and_weights(dtype):
    q = jnp.asarray([0.0, 0.1, 0.5, 0.9, 0.99999], dtype)
    for lo, u in INTERVALS:
        s, r, inv_w, z = is_sample_sigmas(jnp.asarray(lo, dtype), jnp.asarray(u, dtype), q, C)
        s64 = np.asarray(s, np.float64)
        assert s.dtype == dtype
        assert np.all((s64 >= lo * (1 - 1e-6)) & (s64 <= u * (1 + 1e-6)))
        assert s64[0] == pytest.approx(lo, rel=1e-6)
        zq = _quad(lambda x, u=u: _w(x, u), lo, u)
        cdf = np.array([_quad(lambda x, u=u: _w(x, u), lo, si) / zq for si in s64])
        tol = 1e-5 if dtype == jnp.float32 else 1e-9
        if dtype == jnp.float32 and (u - lo) / u < 0.2:
            tol = 2e-4  # a narrow interval: float32 rounding of lo and u themselves
        np.testing.assert_allclose(cdf, np.asarray(q, np.float64), atol=tol)
        np.testing.assert_allclose(np.asarray(r, np.float64) ** 2 + s64**2, u**2, rtol=1e-5)
        expect = 1 / (1 / (s64[1:] ** 2 + C**2) - 1 / (u**2 + C**2))
        np.testing.assert_allclose(np.asarray(inv_w, np.float64)[1:], expect, rtol=1e-3)


def _gaussian_model(std, dim, n, seed=1):
    ns = hj.noise.preset("edm")
    gm = hj.models.GaussianMixture(np.zeros((1, dim)), std)
    return gm.denoiser(ns), gm.sample(jax.random.key(seed), n)


TS = np.array([80.0, 20.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.02, 0.002])


@pytest.mark.parametrize("std", [0.5, 1.0])
def test_gaussian_klub_matches_exact_integral(std):
    """Monte-Carlo KLUB vs the Lemma-3.3 integrand integrated by scipy quad (independent)."""
    dim = 4
    model, x0 = _gaussian_model(std, dim, 2048)
    obj = klub(model, x0, key=jax.random.key(2), num_samples=2048)
    y = np.asarray(obj.samples(TS), np.float64)
    est = y.mean(-1)
    se = y.std(-1, ddof=1) / np.sqrt(y.shape[1])
    exact = np.array(
        [
            _quad(
                lambda s, u=u: s**-3 * std**4 * dim * (1 / (s**2 + std**2) - 1 / (u**2 + std**2)),
                lo,
                u,
            )
            for u, lo in zip(TS[:-1], TS[1:], strict=True)
        ]
    )
    np.testing.assert_allclose(gaussian_klub_terms(TS, std, dim), exact, rtol=1e-8)
    assert np.all(np.abs(est - exact) < 4 * se + 1e-6 * exact), (est, exact, se)
    tot_se = np.sqrt(np.sum(se**2))
    assert abs(est.sum() - exact.sum()) < 4 * tot_se
    # the estimate is informative: the standard error is a small fraction of the value
    assert tot_se < 0.05 * exact.sum()
    np.testing.assert_allclose(float(obj(TS)), est.sum(), rtol=1e-5)


def test_pure_jit_vmap_grad_and_reproducible():
    # same model, sample size and shapes as the Gaussian test above: compiled code is reused
    model, x0 = _gaussian_model(0.5, 4, 2048)
    obj = klub(model, x0, key=jax.random.key(3), num_samples=2048)
    ts = jnp.asarray(TS[::2])
    v = obj(ts)
    assert isinstance(obj, KLUB) and obj.sample_shape == (4,)
    np.testing.assert_allclose(obj.of_lam(hj.noise.preset("edm").lam(ts)), v, rtol=1e-4)
    obj2 = klub(model, x0, key=jax.random.key(3), num_samples=2048)
    assert float(obj2(ts)) == float(v)
    other = klub(model, x0, key=jax.random.key(4), num_samples=2048)
    assert float(other(ts)) != float(v)
    # jit(vmap) == eager loop
    batch = jnp.stack([ts, ts.at[2].set(1.5)])
    np.testing.assert_allclose(jax.jit(jax.vmap(obj))(batch), [v, obj(batch[1])], rtol=1e-5)
    g = np.asarray(jax.jit(jax.grad(obj))(ts))
    assert np.all(np.isfinite(g)) and np.any(g[1:-1] != 0)
    # common random numbers: two equal candidates of one point give bitwise equal terms
    lo, hi = np.float32([0.2]), np.float32([2.0])
    cand = np.float32([[0.6, 0.6, 0.9]])
    terms = np.asarray(obj.neighbourhood(lo, cand, hi, np.array([1]), jax.random.key(0)))
    assert terms.shape == (1, 3, 2)
    assert np.array_equal(terms[0, 0], terms[0, 1]) and not np.array_equal(terms[0, 0], terms[0, 2])


def test_candidates_share_the_anchor_above_them(monkeypatch):
    """The upper intervals ``[cand_k, hi]`` of a point share one anchor call ``D(x_hi, hi)``:
    the terms equal those of the same groups with an anchor each, for ``(3 K + 1) J`` network
    evaluations instead of ``4 K J`` (counted at the network kernel)."""
    model, x0 = _gaussian_model(0.5, 4, 2048)
    obj = klub(model, x0, key=jax.random.key(3), num_samples=64, batch_size=64)
    lo, hi = np.float32([0.2]), np.float32([2.0])
    cand = np.float32([[0.4, 0.9, 1.5]])
    key = jax.random.key(0)
    calls = []
    kernel = klub_montecarlo._denoise
    monkeypatch.setattr(klub_montecarlo, "_denoise",
                        lambda m, x, *a: calls.append(x.shape[0]) or kernel(m, x, *a))  # fmt: skip
    terms = np.asarray(obj.neighbourhood(lo, cand, hi, np.array([1]), key))
    assert sum(calls) == obj.neighbourhood_cost(1, 3) == (3 * 3 + 1) * 64
    monkeypatch.setattr(klub_montecarlo, "ANCHOR_BUFFER_FLOATS", 64 * 4)  # one anchor at a time
    chunked = np.asarray(obj.neighbourhood(lo, cand, hi, np.array([1]), key))
    np.testing.assert_allclose(chunked, terms, rtol=1e-6)
    calls.clear()
    g_lo = np.concatenate([np.repeat(lo, 3), cand[0]])
    g_u = np.concatenate([cand[0], np.repeat(hi, 3)])
    y = obj._run(key, np.array([2, 3]), np.array([0, 0, 0, 1, 1, 1]), g_lo, g_u)  # no sharing
    assert sum(calls) == 4 * 3 * 64
    np.testing.assert_allclose(terms[0], y.mean(-1).reshape(2, 3).T, rtol=1e-6)


def test_data_from_the_model_by_a_tight_ode_solve():
    """data=None: model samples = D(PF-ODE solution) at t_min; closed form for one Gaussian."""
    ns = hj.noise.preset("edm")
    gm = hj.models.GaussianMixture(np.array([[0.3, -0.2]]), 0.5)
    model = gm.denoiser(ns)
    key = jax.random.key(0)
    x = model_samples(model, (2,), 16, key)
    x_T = ns.prior(jax.random.split(key, 1)[0], (16, 2), jnp.float32)
    x_end = gm.pf_ode_solution(ns, x_T.astype(jnp.float64), ns.t_max, ns.t_min)
    expect = gm.x0(x_end, ns, ns.t_min)
    assert x.shape == (16, 2) and x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(x), np.asarray(expect), rtol=1e-4, atol=1e-5)
    k_obj, k_data = jax.random.split(key)
    obj = klub(model, None, key=key, shape=(2,), num_samples=16)
    rows = np.asarray(model_samples(model, (2,), 16, k_data))
    np.testing.assert_array_equal(np.sort(np.asarray(obj.data), 0), np.sort(rows, 0))


def test_bad_inputs_name_the_argument():
    model, x0 = _gaussian_model(0.5, 2, 64)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="shape"):
        klub(model, x0, key=key, shape=(3,))
    with pytest.raises(ValueError, match="data of sample shape \\(3,\\)"):
        klub(model, jnp.zeros((64, 3)), key=key)
    with pytest.raises(ValueError, match="data must have shape"):
        klub(model, jnp.zeros(64), key=key)
    with pytest.raises(ValueError, match="at least 8 samples"):
        klub(model, x0[:4], key=key)
    with pytest.raises(ValueError, match="num_samples=100 exceeds"):
        klub(model, x0, key=key, num_samples=100)
    with pytest.raises(ValueError, match="num_samples must be >="):
        klub(model, x0, key=key, num_samples=2)
    for c in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="c \\(importance-sampling constant\\)"):
            klub(model, x0, key=key, c=c)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        klub(model, x0, key=None)
    with pytest.raises(ValueError, match="shape="):
        klub(model, None, key=key)
    with pytest.raises(ValueError, match="finite"):
        klub(model, x0.at[0, 0].set(jnp.nan), key=key)
    obj = klub(model, x0, key=key, num_samples=16)
    with pytest.raises(ValueError, match="ts must be strictly decreasing"):
        obj(TS[::-1])
