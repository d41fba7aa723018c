"""MEP, DM-NonUniform and spacing-penalty objectives against independent formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import hso_jax as hj
from hso_jax import objectives as ob

SD21 = hj.noise.preset("sd21")


def _np_lam_sd21(t):
    """lam(t) of SD 2.1 written out in NumPy (scaled-linear betas, log alpha linear in t)."""
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000) ** 2
    log_alpha = 0.5 * np.cumsum(np.log1p(-betas))
    la = np.interp(t, (np.arange(1000) + 1) / 1000, log_alpha)
    return la - 0.5 * np.log1p(-np.exp(2 * la))


def _vp_alpha_sigma(lam):
    alpha = 1.0 / math.sqrt(1.0 + math.exp(-2.0 * lam))
    return alpha, math.sqrt(1.0 - alpha * alpha)


# ---------------------------------------------------------------------------------------
# MEP
# ---------------------------------------------------------------------------------------


def test_mep_hand_computed_three_intervals():
    t = np.array([0.9, 0.6, 0.3, 0.05])
    lam = _np_lam_sd21(t)
    terms = []
    for i in range(3):
        mid = 0.5 * (lam[i] + lam[i + 1])
        alpha, sigma = _vp_alpha_sigma(mid)
        terms.append(sigma**2 / alpha * (math.exp(lam[i + 1]) - math.exp(lam[i])))
    mep = ob.mep(SD21)
    np.testing.assert_allclose(np.asarray(jax.jit(mep.terms)(t)), terms, rtol=1e-12)
    np.testing.assert_allclose(float(jax.jit(mep)(t)), sum(terms), rtol=1e-12)
    # for a VP process the native sigma^2/alpha at t(lam_mid) is the same number
    native = ob.mep(SD21, frame="native")
    np.testing.assert_allclose(float(jax.jit(native)(t)), sum(terms), rtol=1e-9)


def test_mep_exponent_p_and_frames_on_edm():
    edm = hj.noise.preset("edm")
    t = jnp.array([80.0, 5.0, 0.5, 0.01])
    lam = -np.log(np.asarray(t))
    mid = 0.5 * (lam[1:] + lam[:-1])
    de = np.diff(np.exp(lam))
    # native EDM frame: alpha = 1, sigma = t  ->  eps_tilde = sigma^p = e^{-p lam}
    for p in (1.0, 2.0, 3.0):
        want = np.sum(np.exp(-p * mid) * de)
        got = float(ob.mep(edm, p=p, frame="native")(t))
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # VP frame: the VP process with the same lam
    alpha = 1.0 / np.sqrt(1.0 + np.exp(-2.0 * mid))
    want = np.sum((np.exp(-mid) * alpha) ** 2 / alpha * de)
    np.testing.assert_allclose(float(ob.mep(edm)(t)), want, rtol=1e-12)


def test_objective_of_t_equals_of_lam_and_terms_sum():
    t = jnp.linspace(0.99, 0.02, 7)
    for obj in (ob.mep(SD21), ob.dmn(SD21), ob.spacing_penalty(SD21, 6)):

        @jax.jit
        def check(t, obj=obj):
            return obj(t), obj.of_lam(SD21.lam(t)), jnp.sum(obj.terms(t))

        v_t, v_lam, v_terms = check(t)
        np.testing.assert_allclose(float(v_t), float(v_lam), rtol=1e-12)
        np.testing.assert_allclose(float(v_terms), float(v_t), rtol=1e-12)


@pytest.mark.parametrize("name", ["mep", "dmn", "spacing"])
def test_jit_vmap_grad(name):
    obj = {
        "mep": lambda: ob.mep(SD21),
        "dmn": lambda: ob.dmn(SD21),
        "spacing": lambda: ob.spacing_penalty(SD21, 8),
    }[name]()
    ts = jnp.stack([jnp.linspace(0.99, 0.02, 8) ** q for q in (1.0, 1.3, 2.0)])
    single = jax.jit(obj)
    loop = np.array([float(single(t)) for t in ts])
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(obj))(ts)), loop, rtol=1e-12)
    if name == "mep":  # eager == jit (op-by-op dispatch is slow, so only the cheapest one)
        np.testing.assert_allclose(float(obj(ts[1])), loop[1], rtol=1e-12)
    g = jax.jit(jax.grad(obj.of_lam))(SD21.lam(ts[0]))
    assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------------------------------
# DM-NonUniform
# ---------------------------------------------------------------------------------------


def test_step_orders():
    assert ob.step_orders(2).tolist() == [1, 1]
    assert ob.step_orders(3).tolist() == [1, 2, 1]
    assert ob.step_orders(4).tolist() == [1, 2, 2, 1]
    assert ob.step_orders(7).tolist() == [1, 2, 3, 3, 3, 2, 1]
    assert [ob.hso_trunc_num(n) for n in (3, 5, 6, 7, 8, 12)] == [0, 0, 3, 3, 0, 0]


def test_dmn_weights_match_numerical_quadrature():
    rng = np.random.default_rng(0)
    lam = np.cumsum(np.r_[-2.5, rng.uniform(0.2, 1.2, 8)])
    J, nodes = ob.step_weights(jnp.asarray(lam))
    J = np.asarray(J)
    for s, q in enumerate(ob.step_orders(len(lam) - 1)):
        node_ids = list(range(s - q + 1, s + 1))
        xs = lam[node_ids]
        for k, j in enumerate(node_ids):

            def basis(x, k=k, xs=xs):
                others = [xs[i] for i in range(len(xs)) if i != k]
                return np.prod([(x - o) / (xs[k] - o) for o in others])

            want, _ = integrate.quad(
                lambda x, b=basis: np.exp(x) * b(x), lam[s], lam[s + 1], epsabs=0, epsrel=1e-13
            )
            col = 3 - q + k
            assert nodes[s, col] == j
            np.testing.assert_allclose(J[s, col], want, rtol=1e-9, atol=1e-12)
        assert np.all(J[s, : 3 - q] == 0)


def _dmn_loop(lam, trunc):
    """DM-NonUniform's bound written as a plain loop over steps (notes/hso.md)."""
    n = len(lam) - 1
    h = np.diff(lam)
    el = np.exp(lam)
    a = 1.0 / np.sqrt(1.0 + np.exp(-2.0 * lam))
    w = (1.0 - a * a) / a

    def H(hh):
        h0 = math.expm1(hh)
        h1 = hh * math.exp(hh) - h0
        return h0, h1, hh * hh * math.exp(hh) - 2 * h1

    res, c = 0.0, np.zeros(n + 1)
    for s in range(n):
        H0, H1, H2 = H(h[s])
        if s in (0, n - 1):
            res += abs(w[s] * el[s] * H0)
            continue
        if s in (1, n - 2):
            nodes = [s - 1, s]
            Js = [-el[s] * H1 / h[s - 1], el[s] * (H1 + h[s - 1] * H0) / h[s - 1]]
        else:
            A, B = h[s - 2], h[s - 1]
            nodes = [s - 2, s - 1, s]
            Js = [
                el[s] * (H2 + B * H1) / (A * (A + B)),
                -el[s] * (H2 + (A + B) * H1) / (A * B),
                el[s] * (H2 + (A + 2 * B) * H1 + B * (A + B) * H0) / (B * (A + B)),
            ]
        if s >= trunc:
            for j, Jv in zip(nodes, Js, strict=True):
                c[j] += w[j] * Jv
        else:
            res += math.sqrt(sum((w[j] * Jv) ** 2 for j, Jv in zip(nodes, Js, strict=True)))
    return res + np.sum(np.abs(c))


@pytest.mark.parametrize(
    "n, trunc", [(2, None), (3, None), (4, None), (5, None), (6, None), (6, 0), (9, 3), (9, None)]
)
def test_dmn_matches_loop_formula(n, trunc):
    rng = np.random.default_rng(n)
    lams = np.sort(rng.uniform(-2.7, 3.5, (2, n + 1)), axis=1)
    f = jax.jit(jax.vmap(ob.dmn(SD21, trunc_num=trunc).of_lam))
    got = np.asarray(f(jnp.asarray(lams)))
    for lam, g in zip(lams, got, strict=True):
        want = _dmn_loop(lam, ob.hso_trunc_num(n) if trunc is None else trunc)
        np.testing.assert_allclose(g, want, rtol=1e-11)


def test_dmn_smoothing_tends_to_exact():
    lam = jnp.asarray(np.sort(np.random.default_rng(3).uniform(-2.7, 3.5, 7)))
    d = ob.dmn(SD21)
    exact = float(jax.jit(d.of_lam)(lam))
    smooth = jax.jit(d.smoothed_of_lam)
    for mu in (1e-3, 1e-6, 1e-9):
        assert abs(float(smooth(lam, mu)) - exact) <= 8 * mu


# ---------------------------------------------------------------------------------------
# Spacing penalty
# ---------------------------------------------------------------------------------------


def test_d_min_rule():
    assert ob.d_min(2) == 0.15 and ob.d_min(4) == 0.15
    assert ob.d_min(20) == pytest.approx(0.01) and ob.d_min(40) == pytest.approx(0.01)
    assert ob.d_min(12) == pytest.approx(0.15 - 0.14 / 16 * 8)
    with pytest.raises(ValueError, match="nfe"):
        ob.d_min(0)


def test_spacing_penalty_hand_computed():
    t = jnp.array([1.0, 0.9, 0.5, 0.45, 0.02])
    pen = ob.spacing_penalty(SD21, 4)  # d_min = 0.15 in t (= 150 training steps)
    want = 1e9 * ((0.15 - 0.1) ** 2 + (0.15 - 0.05) ** 2)
    np.testing.assert_allclose(float(pen(t)), want, rtol=1e-7)
    assert float(ob.spacing_penalty(SD21, dmin=0.04)(t)) < 1e-3
    with pytest.raises(ValueError, match="exactly one"):
        ob.spacing_penalty(SD21, 4, dmin=0.1)


def test_normalised_time():
    edm, flow, vpl = (hj.noise.preset(k) for k in ("edm", "flow", "vp-linear"))
    np.testing.assert_allclose(
        np.asarray(ob.normalised_time(SD21, jnp.array([0.3, 1.0]))), [0.3, 1.0]
    )
    np.testing.assert_allclose(np.asarray(ob.normalised_time(flow, jnp.array([0.3]))), [0.3])
    np.testing.assert_allclose(np.asarray(ob.normalised_time(vpl, jnp.array([0.3]))), [0.3])
    u = ob.normalised_time(edm, jnp.array([edm.t_min, 1.0, edm.t_max]))
    np.testing.assert_allclose(
        np.asarray(u), [0.0, math.log(1 / 0.002) / math.log(80 / 0.002), 1.0], rtol=1e-12
    )
    for ns in (edm, flow, SD21):
        uu = jnp.array([0.02, 0.5, 0.97])
        back = ob.normalised_time(ns, ob.time_from_normalised(ns, uu))
        np.testing.assert_allclose(np.asarray(back), np.asarray(uu), rtol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="frame"):
        ob.mep(SD21, frame="ve")
    with pytest.raises(ValueError, match="p must"):
        ob.mep(SD21, p=0)
    with pytest.raises(ValueError, match="trunc_num"):
        ob.dmn(SD21, trunc_num=-1)
    with pytest.raises(ValueError, match="gamma"):
        ob.spacing_penalty(SD21, 4, gamma=-1.0)
