"""Gaussian-mixture oracle: exact denoiser, sampling, densities, single-Gaussian PF-ODE map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hso_jax import noise
from hso_jax.models import GaussianMixture

MEANS = np.array([[1.5, -0.5], [-1.0, 1.0], [0.0, -1.5]])
STDS = np.array([[0.5, 0.3], [0.4, 0.6], [0.35, 0.35]])
WEIGHTS = np.array([0.5, 0.3, 0.2])
GM = GaussianMixture(MEANS, STDS, WEIGHTS * 7.0)  # weights are normalised


def _gauss_density(x, mean, std):
    """Diagonal-Gaussian density, x of shape (..., D); std a scalar or (D,)."""
    std = np.broadcast_to(std, np.shape(x)[-1:])
    z = (x - mean) / std
    return np.exp(-0.5 * np.sum(z * z, axis=-1)) / np.prod(np.sqrt(2 * np.pi) * std)


def _mixture_density(x, means=MEANS, stds=STDS, weights=WEIGHTS):
    return sum(w * _gauss_density(x, m, s) for m, s, w in zip(means, stds, weights, strict=True))


@pytest.fixture(scope="module")
def prior_samples():
    return np.asarray(GM.sample(jax.random.key(1), 200_000))


def test_sample_moments(prior_samples):
    x = prior_samples
    n = x.shape[0]
    assert x.shape == (n, 2) and x.dtype == np.float64
    mean = WEIGHTS @ MEANS
    second = sum(
        w * (np.diag(s**2) + np.outer(m, m)) for m, s, w in zip(MEANS, STDS, WEIGHTS, strict=True)
    )
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * x.std(0) / np.sqrt(n))
    prods = x[:, :, None] * x[:, None, :]
    se = prods.std(0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(prods.mean(0) - second), 5 * se)


@pytest.mark.parametrize("name,t", [("edm", 0.3), ("edm", 0.8), ("edm", 2.0), ("sd15", 0.45)])
def test_denoiser_matches_monte_carlo_posterior_mean(prior_samples, name, t):
    ns = noise.preset(name)
    t = jnp.float64(t)
    a, s = float(ns.alpha(t)), float(ns.sigma(t))
    x_t = a * np.array([0.4, -0.2]) + s * np.array([0.5, 0.3])
    # E[x0 | x_t] = E_prior[x0 p(x_t | x0)] / E_prior[p(x_t | x0)]
    x0 = prior_samples
    logw = -0.5 * np.sum((x_t - a * x0) ** 2, axis=-1) / s**2
    w = np.exp(logw - logw.max())
    w /= w.sum()
    est = w @ x0
    # delta-method standard error of the self-normalised importance estimate
    se = np.sqrt(np.sum(w[:, None] ** 2 * (x0 - est) ** 2, axis=0))
    ess = 1.0 / np.sum(w**2)
    assert ess > 1000, ess  # enough prior samples near x_t
    exact = np.asarray(GM.x0(jnp.asarray(x_t), ns, t))
    np.testing.assert_array_less(np.abs(exact - est), 5 * se + 1e-12)
    # and the exact value is the same through the Denoiser wrapper (batched input)
    np.testing.assert_allclose(GM.denoiser(ns).x0(jnp.asarray(x_t)[None], t)[0], exact, rtol=1e-14)


def test_log_prob_matches_formula_and_integrates_to_one():
    h = 0.02
    g = np.arange(-6.0, 6.0 + h / 2, h)
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1)
    lp = np.asarray(GM.log_prob(jnp.asarray(xx)))
    np.testing.assert_allclose(np.exp(lp), _mixture_density(xx), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(np.exp(lp).sum() * h * h, 1.0, atol=1e-6)


@pytest.mark.parametrize("name,t", [("edm", 0.4), ("vp-linear", 0.3), ("flow", 0.35)])
def test_marginal_log_prob_is_the_convolution(name, t):
    ns = noise.preset(name)
    t = jnp.float64(t)
    a, s = float(ns.alpha(t)), float(ns.sigma(t))
    # p_t(x) = int p_0(x0) N(x; a x0, s^2 I) dx0, by quadrature on a grid over x0
    h = 0.01
    g = np.arange(-4.5, 4.5 + h / 2, h)
    x0 = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)
    p0 = _mixture_density(x0)
    xs = np.array([[0.3, -0.2], [1.2, 0.4], [-0.9, 1.1], [0.0, -1.6]]) * a
    conv = np.array([np.sum(p0 * _gauss_density(x, a * x0, s)) * h * h for x in xs])
    lp = np.asarray(GM.log_prob(jnp.asarray(xs), ns, t))
    np.testing.assert_allclose(np.exp(lp), conv, rtol=1e-6)


def test_marginal_log_prob_integrates_to_one():
    ns = noise.preset("vp-linear")
    t = jnp.float64(0.5)  # marginal std ~ 1
    h = 0.04
    g = np.arange(-8.0, 8.0 + h / 2, h)
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1)
    p = np.exp(np.asarray(GM.log_prob(jnp.asarray(xx), ns, t)))
    np.testing.assert_allclose(p.sum() * h * h, 1.0, atol=1e-6)


# --- single Gaussian: closed-form PF-ODE map --------------------------------------------

G1 = GaussianMixture([[0.7, -1.2]], [[0.5, 1.3]])


@pytest.mark.parametrize("name", ["sd15", "vp-linear", "edm", "flow"])
def test_pf_ode_solution_identity_and_composition(name):
    ns = noise.preset(name)
    x = jax.random.normal(jax.random.key(2), (5, 2), jnp.float64)
    ts = [ns.t_min + f * (ns.t_max - ns.t_min) for f in (0.9, 0.5, 0.05)]
    s, u, t = (jnp.float64(v) for v in ts)
    np.testing.assert_allclose(G1.pf_ode_solution(ns, x, s, s), x, rtol=1e-14, atol=1e-14)
    two = G1.pf_ode_solution(ns, G1.pf_ode_solution(ns, x, s, u), u, t)
    np.testing.assert_allclose(two, G1.pf_ode_solution(ns, x, s, t), rtol=1e-12, atol=1e-12)
    # and it runs backwards too (the map is invertible)
    back = G1.pf_ode_solution(ns, G1.pf_ode_solution(ns, x, s, t), t, s)
    np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sd15", "edm"])
def test_pf_ode_solution_pushes_marginals(name):
    ns = noise.preset(name)
    s_t, t_t = jnp.float64(0.8 * ns.t_max), jnp.float64(2 * ns.t_min)
    mu, sd = G1.means[0], G1.stds[0]
    a_s, sg_s = float(ns.alpha(s_t)), float(ns.sigma(s_t))
    a_t, sg_t = float(ns.alpha(t_t)), float(ns.sigma(t_t))
    n = 200_000
    x_s = a_s * mu + np.sqrt(a_s**2 * sd**2 + sg_s**2) * np.asarray(
        jax.random.normal(jax.random.key(3), (n, 2), jnp.float64)
    )
    x_t = np.asarray(G1.pf_ode_solution(ns, jnp.asarray(x_s), s_t, t_t))
    var_t = a_t**2 * sd**2 + sg_t**2
    np.testing.assert_array_less(np.abs(x_t.mean(0) - a_t * mu), 5 * np.sqrt(var_t / n))
    # sample variance: SE ~ var sqrt(2 / n)
    np.testing.assert_array_less(np.abs(x_t.var(0) - var_t), 5 * var_t * np.sqrt(2.0 / n))


# --- pytree ---------------------------------------------------------------------------


def test_mixture_is_a_pytree():
    ns = noise.preset("edm")
    x = jnp.asarray([[0.1, 0.2], [1.0, -1.0]])
    out = jax.jit(lambda gm, x: gm.x0(x, ns, 0.5))(GM, x)
    np.testing.assert_allclose(out, GM.x0(x, ns, 0.5), rtol=1e-13)
    leaves, treedef = jax.tree_util.tree_flatten(GM)
    gm2 = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_array_equal(gm2.log_prob(x), GM.log_prob(x))


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.zeros((2, 2, 2)), 1.0), "means"),
        ((np.zeros((0, 2)), 1.0), "means"),
        (([[0.0, np.nan]], 1.0), "means"),
        ((MEANS, np.ones((3, 3))), "stds"),
        ((MEANS, [1.0, 1.0]), "stds"),
        ((MEANS, -0.5), "stds"),
        ((MEANS, [[0.5, 0.3], [0.4, -0.6], [0.3, 0.3]]), "stds"),
        ((MEANS, [1.0, np.inf, 1.0]), "stds"),
        ((MEANS, 1.0, [0.5, 0.0, 0.5]), "weights"),
        ((MEANS, 1.0, [0.5, -0.1, 0.6]), "weights"),
        ((MEANS, 1.0, [0.5, 0.5]), "weights"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_pf_ode_solution_needs_a_single_gaussian():
    with pytest.raises(ValueError, match="single Gaussian"):
        GM.pf_ode_solution(noise.preset("edm"), jnp.zeros((1, 2)), 1.0, 0.5)


def test_denoiser_needs_a_noise_schedule():
    with pytest.raises(TypeError, match="noise"):
        GM.denoiser("edm")
