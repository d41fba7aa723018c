"""Differential evolution and the L-BFGS lower level reach known optima."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hso_jax.optimizers import (
    differential_evolution,
    lam_from_logits,
    latin_hypercube,
    logits_from_lam,
    refine,
)
from hso_jax.optimizers.refine import refine_continuation

# RBG keys: XLA's RngBitGenerator compiles in a fraction of the time threefry needs on CPU.
KEY = jax.random.key(0, impl="rbg")


def rosenbrock(x):
    return jnp.sum(100.0 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1.0 - x[..., :-1]) ** 2, -1)


SHIFT = jnp.array([0.3, -1.2, 0.7, 1.5])


def shifted_sphere(x):
    return jnp.sum((x - SHIFT) ** 2, -1)


@pytest.fixture(scope="module")
def de_rosen():
    run = jax.jit(
        lambda key: differential_evolution(rosenbrock, jnp.full(3, -2.0), jnp.full(3, 2.0), key)
    )
    return run


def test_de_rosenbrock_3d(de_rosen):
    r = de_rosen(KEY)
    np.testing.assert_allclose(np.asarray(r.x), np.ones(3), atol=2e-3)
    assert float(r.fun) < 1e-6
    assert float(r.fun) <= float(r.fun_de)  # polish never worsens
    # one batch of 60 per call: initial population, generations, then two per polish step
    assert int(r.nfev) == 60 * (int(r.generations) + 1 + 2 * int(r.polish_iterations))
    hist = np.asarray(r.history)[: int(r.generations) + 1]
    assert np.all(np.diff(hist) <= 0)  # deferred best1bin never loses its best point
    # same key -> same result (pure function of the key)
    r2 = de_rosen(KEY)
    np.testing.assert_array_equal(np.asarray(r.x), np.asarray(r2.x))


def test_de_shifted_sphere_4d_and_aux():
    def fit(x):
        return shifted_sphere(x), {"twice": 2.0 * shifted_sphere(x), "x": x}

    r = jax.jit(
        lambda key: differential_evolution(
            fit, jnp.full(4, -2.0), jnp.full(4, 2.0), key, maxiter=100, has_aux=True
        )
    )(KEY)
    np.testing.assert_allclose(np.asarray(r.x), np.asarray(SHIFT), atol=1e-4)
    assert float(r.fun) < 1e-8
    # aux belongs to the returned best point and to the final population
    np.testing.assert_allclose(float(r.aux["twice"]), 2.0 * float(r.fun), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(r.aux["x"]), np.asarray(r.x), rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(r.population_aux["twice"]), 2.0 * np.asarray(r.energies), rtol=1e-12
    )


def test_de_stops_on_tolerance():
    # a flat fitness converges at the first check: exactly one generation, no polish moves
    r = jax.jit(
        lambda key: differential_evolution(
            lambda x: jnp.ones(x.shape[0]), jnp.zeros(2), jnp.ones(2), key
        )
    )(KEY)
    assert int(r.generations) == 1 and bool(r.converged)
    assert not bool(r.polish_improved)


def test_latin_hypercube_strata():
    u = np.asarray(jax.jit(lambda k: latin_hypercube(k, 50, 3, jnp.float64))(KEY))
    for j in range(3):
        assert sorted(np.floor(u[:, j] * 50).astype(int).tolist()) == list(range(50))


def test_de_rejects_tiny_population():
    with pytest.raises(ValueError, match="population"):
        differential_evolution(rosenbrock, jnp.zeros(4), jnp.ones(4), KEY, popsize=1)


# ---------------------------------------------------------------------------------------
# Lower level
# ---------------------------------------------------------------------------------------

W = jnp.array([1.0, 4.0, 0.25, 9.0, 2.0])


def toy(lam):
    """sum_i w_i / h_i: convex in the increments; with sum h = S the optimum is
    h_i = S sqrt(w_i) / sum_j sqrt(w_j) (Lagrange / Cauchy-Schwarz)."""
    return jnp.sum(W / (lam[1:] - lam[:-1]))


def test_parameterisation_roundtrip():
    lam = jnp.array([-2.0, -1.5, 0.0, 0.1, 2.5])
    back = lam_from_logits(logits_from_lam(lam), lam[0], lam[-1])
    np.testing.assert_allclose(np.asarray(back), np.asarray(lam), rtol=1e-12, atol=1e-14)


def test_refine_reaches_known_optimum_vmapped():
    span = 5.0
    inits = jnp.stack([jnp.linspace(-2.0, 3.0, 6), -2.0 + span * jnp.linspace(0, 1, 6) ** 2])
    r = jax.jit(jax.vmap(lambda l: refine(toy, l)))(inits)
    sq = np.sqrt(np.asarray(W))
    h_opt = span * sq / sq.sum()
    for k in range(2):
        lam = np.asarray(r.lam[k])
        assert lam[0] == -2.0 and lam[-1] == 3.0  # end points exact
        assert np.all(np.diff(lam) > 0)  # monotone by construction
        np.testing.assert_allclose(np.diff(lam), h_opt, rtol=1e-5)
        np.testing.assert_allclose(float(r.value[k]), sq.sum() ** 2 / span, rtol=1e-10)
        assert bool(r.converged[k]) and int(r.iterations[k]) < 100
        assert float(r.value[k]) <= float(r.init_value[k])


def test_refine_continuation_on_a_kink():
    # |h_1 - 2 h_0| has its minimum on a kink; the smooth part pulls away from it
    def smoothed(lam, mu):
        h = lam[1:] - lam[:-1]
        kink = h[1] - 2.0 * h[0]
        return 3.0 * (jnp.sqrt(kink**2 + mu**2) - mu) + jnp.sum(
            (h - jnp.array([1.5, 1.0, 0.5])) ** 2
        )

    lam0 = jnp.array([0.0, 1.0, 2.0, 3.0])
    r = jax.jit(lambda l: refine_continuation(smoothed, lambda x: smoothed(x, 0.0), l))(lam0)
    h = np.diff(np.asarray(r.lam))
    assert abs(h[1] - 2 * h[0]) < 1e-6  # on the kink
    # exact optimum on the kink: h = (a, 2a, 3 - 3a) minimising the smooth part
    a = (1.5 + 2 * 1.0 + 3 * (3 - 0.5)) / 14.0
    np.testing.assert_allclose(h, [a, 2 * a, 3 - 3 * a], atol=1e-5)
    assert float(r.value) <= float(r.init_value)
