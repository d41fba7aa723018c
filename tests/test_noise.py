"""Noise processes: conversions t <-> lam <-> sigma_edm, presets, pytrees, validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hso_jax import noise

PRESET_NAMES = sorted(noise.PRESETS)
VP_PRESETS = [n for n in PRESET_NAMES if noise.preset(n).variance_preserving]
# one preset per kind of process (sd21 / sdxl are sd15 under another name)
KINDS = ["sd15", "cosine", "vp-linear", "vp-cosine", "edm", "flow"]


def _grid(ns, n=1000):
    return jnp.linspace(ns.t_min, ns.t_max, n, dtype=jnp.float64)


def _conversions(ns, ts):
    lam = ns.lam(ts)
    s = ns.sigma_edm(ts)
    return {
        "alpha": ns.alpha(ts),
        "sigma": ns.sigma(ts),
        "lam": lam,
        "t_from_lam": ns.t_from_lam(lam),
        "sigma_edm": s,
        "t_from_sigma_edm": ns.t_from_sigma_edm(s),
    }


@functools.cache
def _on_grid(name):
    """All conversions of preset ``name`` on its grid, computed once (eagerly)."""
    ns = noise.preset(name)
    return {k: np.asarray(v) for k, v in _conversions(ns, _grid(ns)).items()}


def test_vp_presets_are_the_expected_ones():
    assert set(VP_PRESETS) == {"sd15", "sd21", "sdxl", "ddpm", "cosine", "vp-linear", "vp-cosine"}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_t_lam_round_trip(name):
    ns = noise.preset(name)
    ts = _grid(ns)
    c = _on_grid(name)
    np.testing.assert_allclose(c["t_from_lam"], ts, rtol=1e-10, atol=1e-10)
    if ns.is_discrete:  # exactly at the training steps (the grid above) and in between
        np.testing.assert_allclose(ts, ns.t_from_index(np.arange(ns.num_steps)), rtol=1e-14)
        ts = ts[:-1] + 0.37 / ns.num_steps
        np.testing.assert_allclose(ns.t_from_lam(ns.lam(ts)), ts, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_sigma_edm_round_trip(name):
    ns = noise.preset(name)
    ts = _grid(ns)
    c = _on_grid(name)
    with np.errstate(divide="ignore"):  # flow models: alpha(1) = 0, sigma_edm(1) = inf
        np.testing.assert_allclose(c["sigma_edm"], c["sigma"] / c["alpha"], rtol=1e-12)
    np.testing.assert_allclose(c["sigma_edm"], np.exp(-np.asarray(c["lam"])), rtol=1e-12)
    np.testing.assert_allclose(c["t_from_sigma_edm"], ts, rtol=1e-10, atol=1e-10)


def test_sd15_timesteps_to_karras_sigmas():
    # Stable Diffusion's sigma for a few training steps (k-diffusion / diffusers convention).
    ns = noise.preset("sd15")
    steps = np.array([999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0])
    expected = [
        14.6146,
        6.4746,
        3.8637,
        2.6946,
        1.8842,
        1.3944,
        0.9643,
        0.6524,
        0.3977,
        0.1515,
        0.0292,
    ]
    sig = np.asarray(ns.sigma_edm(ns.t_from_index(steps)))
    np.testing.assert_allclose(np.round(sig, 4), expected, atol=1e-12)
    # independently: sigma_k = sqrt((1 - abar_k) / abar_k) from the betas
    abar = np.cumprod(1.0 - noise.scaled_linear_betas())
    np.testing.assert_allclose(sig, np.sqrt((1 - abar[steps]) / abar[steps]), rtol=1e-12)


def test_from_betas_equals_from_alphas_cumprod():
    betas = noise.linear_betas(1e-4, 0.02, 1000)
    a = noise.VPDiscrete.from_betas(betas)
    b = noise.VPDiscrete.from_alphas_cumprod(np.cumprod(1.0 - betas))
    np.testing.assert_allclose(a.log_alphas, b.log_alphas, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a.alphas_cumprod, np.cumprod(1.0 - betas), rtol=1e-12)
    ts = _grid(a)
    np.testing.assert_allclose(a.lam(ts), b.lam(ts), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", VP_PRESETS)
def test_variance_preserving(name):
    c = _on_grid(name)
    np.testing.assert_allclose(c["alpha"] ** 2 + c["sigma"] ** 2, 1.0, atol=1e-13)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_lam_strictly_decreasing(name):
    ns = noise.preset(name)
    lam = _on_grid(name)["lam"]
    # flow-model presets span t in [0, 1]: lam(0) = +inf, lam(1) = -inf
    inner = slice(1, -1) if (ns.t_min, ns.t_max) == (0.0, 1.0) else slice(None)
    assert np.all(np.isfinite(lam[inner]))
    assert np.all(np.diff(lam) < 0)
    assert ns.lam_min < ns.lam_max
    np.testing.assert_allclose(ns.lam_min, lam[-1], rtol=1e-12)
    np.testing.assert_allclose(ns.lam_max, lam[0], rtol=1e-12)


def test_vp_linear_log_alpha_is_half_integral_of_beta():
    ns = noise.preset("vp-linear")
    b0, b1 = 0.1, 20.0

    def beta(s):
        return b0 + s * (b1 - b0)

    # log alpha(t) = -1/2 int_0^t beta(s) ds, by Gauss-Legendre quadrature on [0, t]
    nodes, weights = np.polynomial.legendre.leggauss(8)
    for t in [1e-3, 0.1, 0.37, 0.8, 1.0]:
        s = 0.5 * t * (nodes + 1.0)
        integral = 0.5 * t * np.sum(weights * beta(s))
        np.testing.assert_allclose(float(ns.log_alpha(jnp.float64(t))), -0.5 * integral, rtol=1e-13)


def test_vp_cosine_matches_alpha_bar_formula():
    ns = noise.preset("vp-cosine")
    s = 0.008
    ts = np.linspace(ns.t_min, ns.t_max, 50)

    def f(t):
        return np.cos((t + s) / (1 + s) * np.pi / 2) ** 2

    np.testing.assert_allclose(
        np.asarray(ns.alpha(jnp.asarray(ts))) ** 2, f(ts) / f(0.0), rtol=1e-12
    )


@pytest.mark.parametrize("name", KINDS)
def test_gradients_are_finite(name):
    ns = noise.preset(name)
    # interior points (avoid the kinks of the piecewise-linear discrete processes)
    ts = jnp.linspace(ns.t_min, ns.t_max, 37)[1:-1] + 0.3 / 1000
    g, g_inv = jax.jit(
        lambda ns, t: (jax.vmap(jax.grad(ns.lam))(t), jax.vmap(jax.grad(ns.t_from_lam))(ns.lam(t)))
    )(ns, ts)
    assert np.all(np.isfinite(g)) and np.all(g < 0)
    assert np.all(np.isfinite(g_inv))
    np.testing.assert_allclose(g * g_inv, 1.0, rtol=1e-8)  # inverse function rule


@pytest.mark.parametrize("name", KINDS)
def test_jit_equals_eager_and_pytree_round_trip(name):
    ns = noise.preset(name)
    ts = _grid(ns)
    conversions = jax.jit(_conversions)
    jit_out = conversions(ns, ts)
    for k, v in _on_grid(name).items():  # eager
        np.testing.assert_allclose(jit_out[k], v, rtol=1e-13, atol=1e-15, err_msg=k)

    leaves, treedef = jax.tree_util.tree_flatten(ns)
    ns2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(ns2) is type(ns) and ns2.name == ns.name
    assert (ns2.t_min, ns2.t_max) == (ns.t_min, ns.t_max)
    np.testing.assert_array_equal(conversions(ns2, ts)["lam"], jit_out["lam"])
    # a process returned from jit (leaves become outputs) is still the same process
    ns3 = jax.jit(lambda n: n)(ns)
    np.testing.assert_array_equal(conversions(ns3, ts)["lam"], jit_out["lam"])


def test_preset_is_cached():
    assert noise.preset("sd15") is noise.preset("sd15")


@pytest.mark.parametrize("name", ["sd15", "ddpm", "cosine"])
def test_index_round_trip(name):
    ns = noise.preset(name)
    k = np.arange(ns.num_steps)
    np.testing.assert_array_equal(ns.index_from_t(ns.t_from_index(k)), k)
    assert ns.t_min == pytest.approx(1.0 / ns.num_steps) and ns.t_max == 1.0
    np.testing.assert_allclose(ns.t_from_index(k), (k + 1) / 1000, rtol=1e-15)


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("betas", [[0.1, 1.0, 0.2], [0.0, 0.1], [-0.1, 0.1], [0.1, np.nan]])
def test_bad_betas(betas):
    with pytest.raises(ValueError, match="betas"):
        noise.VPDiscrete.from_betas(betas)


def test_bad_betas_shape():
    with pytest.raises(ValueError, match="betas"):
        noise.VPDiscrete.from_betas(np.full((3, 3), 0.1))


@pytest.mark.parametrize("ac", [[0.9, 0.9, 0.5], [0.5, 0.7], [0.9, np.nan], [1.0, 0.5], [0.9, 0.0]])
def test_bad_alphas_cumprod(ac):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        noise.VPDiscrete.from_alphas_cumprod(ac)


def test_non_decreasing_alphas_cumprod_names_the_index():
    with pytest.raises(ValueError, match=r"strictly decreasing.*alphas_cumprod\[2\]"):
        noise.VPDiscrete.from_alphas_cumprod([0.9, 0.8, 0.85])


@pytest.mark.parametrize("name", ["sd4", "", None, 15])
def test_unknown_preset_lists_known_ones(name):
    with pytest.raises(ValueError, match="noise preset") as info:
        noise.preset(name)
    for known in PRESET_NAMES:
        assert known in str(info.value)
