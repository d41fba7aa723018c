"""Denoiser: prediction-type conversions, time inputs, guidance, pytree / jit behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hso_jax import Denoiser, noise
from hso_jax.models import GaussianMixture

GM = GaussianMixture([[1.0, -0.5], [-1.5, 0.8]], [[0.4, 0.4], [0.7, 0.3]], [0.3, 0.7])
X = jax.random.normal(jax.random.key(0), (6, 2), jnp.float64) * 1.5


def _alpha_sigma_and_derivatives(name, t):
    """alpha, sigma and their t-derivatives from the processes' textbook formulas."""
    if name == "flow":
        return 1.0 - t, t, -1.0, 1.0
    if name == "edm":
        return 1.0, t, 0.0, 1.0
    if name == "vp-linear":
        b0, b1 = 0.1, 20.0
        a = np.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)
        da = -a * (0.5 * t * (b1 - b0) + 0.5 * b0)  # alpha' = -beta(t) alpha / 2
        s = np.sqrt(1.0 - a * a)
        return a, s, da, -a * da / s  # sigma' from alpha^2 + sigma^2 = 1
    if name == "sd15":  # log alpha linear in t between t_k = (k + 1) / N
        abar = np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
        la = 0.5 * np.log(abar)
        k = int(np.floor(t * 1000)) - 1
        w = t * 1000 - (k + 1)
        a = np.exp(la[k] + w * (la[k + 1] - la[k]))
        da = a * (la[k + 1] - la[k]) * 1000
        s = np.sqrt(1.0 - a * a)
        return a, s, da, -a * da / s
    raise AssertionError(name)


def _network(kind, name):
    """A network of prediction type ``kind`` built by hand from the exact x0 (time input t)."""
    ns = noise.preset(name)

    def fn(x, t):
        x0 = GM.x0(x, ns, t)
        a, s, da, ds = _alpha_sigma_and_derivatives(name, float(t))
        eps = (x - a * x0) / s
        return {
            "x0": x0,
            "eps": eps,
            "v": a * eps - s * x0,
            "flow": da * x0 + ds * eps,
            "score": -eps / s,
        }[kind]

    return fn


CASES = [
    (kind, name)
    for name in ["sd15", "vp-linear", "edm", "flow"]
    for kind in ["x0", "eps", "v", "flow", "score"]
]


@pytest.mark.parametrize("kind,name", CASES)
def test_prediction_conversion_is_exact(kind, name):
    ns = noise.preset(name)
    model = Denoiser(_network(kind, name), noise=ns, prediction=kind, time_input="t")
    # interior times (sd15: inside a step, where alpha' is defined)
    for u in [0.02, 0.2, 0.5, 0.8, 0.97]:
        t = ns.t_min + u * (ns.t_max - ns.t_min) + 0.31e-3
        t = jnp.float64(min(t, ns.t_max))
        exact = GM.x0(X, ns, t)
        np.testing.assert_allclose(
            model.x0(X, t), exact, rtol=0, atol=1e-10, err_msg=f"{kind} {name} t={float(t)}"
        )
        eps = (X - ns.alpha(t) * exact) / ns.sigma(t)
        np.testing.assert_allclose(model.eps(X, t), eps, rtol=1e-8, atol=1e-8)


def test_flow_prediction_for_rectified_flow_is_eps_minus_x0():
    ns = noise.preset("flow")
    t = jnp.float64(0.3)
    x0 = GM.x0(X, ns, t)
    eps = (X - (1 - t) * x0) / t
    model = Denoiser(lambda x, t_in: eps - x0, noise=ns, prediction="flow")
    np.testing.assert_allclose(model.x0(X, t), x0, atol=1e-12)
    np.testing.assert_allclose(model.x0(X, t), X - t * (eps - x0), atol=1e-12)


# --- time input -------------------------------------------------------------------------


def _echo_time(x, t_in):
    return jnp.broadcast_to(t_in, x.shape)


@pytest.mark.parametrize(
    "name,time_input,t,expected",
    [
        ("sd15", "auto", 0.5, 499.0),  # N t - 1
        ("sd15", "index", 0.2505, 249.5),  # not rounded
        ("sd15", "index-rounded", 0.2506, 250.0),
        ("sd15", "scaled", 0.25, 250.0),
        ("vp-linear", "auto", 0.3, 0.3),  # t itself for continuous processes
        ("vp-linear", "t", 0.3, 0.3),
        ("edm", "auto", 2.5, 2.5),  # sigma for EDM
        ("flow", "auto", 0.25, 0.25),
    ],
)
def test_time_input(name, time_input, t, expected):
    model = Denoiser(_echo_time, noise=noise.preset(name), prediction="x0", time_input=time_input)
    out = model.raw(X, t)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_time_input_sigma_edm_and_callable():
    ns = noise.preset("vp-linear")
    t = jnp.float64(0.4)
    m = Denoiser(_echo_time, noise=ns, prediction="x0", time_input="sigma_edm")
    np.testing.assert_allclose(m.raw(X, t), ns.sigma(t) / ns.alpha(t), rtol=1e-12)
    m = Denoiser(_echo_time, noise=ns, prediction="x0", time_input=lambda t: 7.0 * t + 1.0)
    np.testing.assert_allclose(m.raw(X, t), 3.8, rtol=1e-12)


# --- params, conditioning, guidance -------------------------------------------------------


def test_params_are_passed_first():
    def fn(params, x, t_in):
        return params["a"] * x + params["b"]

    m = Denoiser(fn, noise=noise.preset("edm"), prediction="x0", params={"a": 2.0, "b": -1.0})
    np.testing.assert_allclose(m.x0(X, 1.0), 2.0 * X - 1.0)


def test_classifier_free_guidance():
    def fn(params, x, t_in, c):
        return params * c * x + t_in

    ns = noise.preset("edm")
    w = 3.5
    m = Denoiser(fn, noise=ns, prediction="x0", params=0.5, cond=2.0, uncond=-1.0, guidance_scale=w)
    t = 1.7
    p_c, p_u = 0.5 * 2.0 * X + t, 0.5 * -1.0 * X + t
    np.testing.assert_allclose(m.raw(X, t), p_u + w * (p_c - p_u), rtol=1e-12)
    # conditioning without guidance: one call with cond
    m = Denoiser(fn, noise=ns, prediction="x0", params=0.5, cond=2.0)
    np.testing.assert_allclose(m.raw(X, t), p_c, rtol=1e-12)
    # guidance scale 1 is the conditional prediction
    m = m.replace(uncond=-1.0, guidance_scale=1.0)
    np.testing.assert_allclose(m.raw(X, t), p_c, rtol=1e-12)


# --- pytree / jit -----------------------------------------------------------------------


def test_jit_compiles_once_per_network_function():
    traces = []

    def fn(params, x, t_in):
        traces.append(1)  # runs only while tracing
        return params * x

    ns = noise.preset("vp-linear")

    @jax.jit
    def denoise(model, x, t):
        return model.x0(x, t)

    m1 = Denoiser(fn, noise=ns, prediction="eps", params=jnp.float64(0.1))
    out1 = denoise(m1, X, 0.3)
    m2 = Denoiser(fn, noise=ns, prediction="eps", params=jnp.float64(0.2))
    out2 = denoise(m2, X, 0.5)
    assert len(traces) == 1  # same fn, new params and time: no retrace
    # another prediction type is another program
    denoise(Denoiser(fn, noise=ns, prediction="v", params=jnp.float64(0.1)), X, 0.3)
    assert len(traces) == 2
    np.testing.assert_allclose(out1, m1.x0(X, 0.3), rtol=1e-12)  # eager calls fn directly
    np.testing.assert_allclose(out2, m2.x0(X, 0.5), rtol=1e-12)


def test_pytree_round_trip():
    ns = noise.preset("sd15")
    m = Denoiser(
        lambda p, x, t, c: p * x + c,
        noise=ns,
        prediction="v",
        params=2.0,
        cond=1.0,
        uncond=0.0,
        guidance_scale=2.0,
    )
    leaves, treedef = jax.tree_util.tree_flatten(m)
    m2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert (m2.fn, m2.prediction, m2.guidance_scale) == (m.fn, m.prediction, m.guidance_scale)
    np.testing.assert_array_equal(m2.x0(X, 0.5), m.x0(X, 0.5))


# --- bad input --------------------------------------------------------------------------


def _f(x, t):
    return x


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(prediction="epsilon"), ValueError, "prediction"),
        (dict(fn=3.0), TypeError, "fn must be callable"),
        (dict(guidance_scale=2.0), ValueError, "guidance_scale"),
        (dict(guidance_scale=2.0, cond=1.0), ValueError, "uncond"),
        (dict(time_input="index"), ValueError, "time_input"),
        (dict(time_input="index-rounded"), ValueError, "time_input"),
        (dict(time_input="seconds"), ValueError, "time_input"),
        (dict(noise="vp-linear"), TypeError, "noise"),
        (dict(noise=None), TypeError, "noise"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(fn=_f, noise=noise.preset("vp-linear"), prediction="eps") | kwargs
    with pytest.raises(exc, match=match):
        Denoiser(**args)
