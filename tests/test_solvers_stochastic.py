"""Stochastic solvers: reproducibility with a key, and the exact marginal of Gaussian data.

For data N(mu, diag(s^2)) the marginal at time t is N(alpha_t mu, alpha_t^2 s^2 + sigma_t^2).
Starting from 20 000 exact samples of the marginal at t_start, a reverse-SDE sampler must end
with the marginal at t_end: empirical mean and variance are compared with the exact ones within
5 Monte-Carlo standard errors plus a discretisation allowance of 1.5 % of the variance: the
first-order samplers' variance has an O(h) weak error (measured with 4e5 samples: -5 % at 60
steps, -1.5 % at 200 steps over lam in [-2, 2]; SDE-DPM-Solver++(2M): +0.3 % at 60 steps), so
400 steps (h = 0.01) are used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax import solvers as S

NS = hj.noise.preset("vp-linear")
MU = np.array([-1.0])  # 1-D data: the moments per dimension are independent anyway
STD = np.array([0.6])
GAUSS = hj.models.GaussianMixture(MU[None], STD[None])
MODEL = GAUSS.denoiser(NS)
NUM_SAMPLES = 20_000
N_STEPS = 400
TS = NS.t_from_lam(jnp.linspace(-2.0, 2.0, N_STEPS + 1))

STOCHASTIC = {
    "ddim_eta1": S.ddim(eta=1.0),
    "sde_dpm_1": S.sde_dpm_solver_pp(1),
    "sde_dpm_2m": S.sde_dpm_solver_pp(2),
}


def _marginal(t):
    a, s = NS.alpha(t), NS.sigma(t)
    return a * MU, a**2 * STD**2 + s**2


@pytest.fixture(scope="module")
def x_start():
    mean, var = _marginal(TS[0])
    z = jax.random.normal(jax.random.key(0), (NUM_SAMPLES, 1), jnp.float64)
    return mean + jnp.sqrt(var) * z


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_same_key_same_sample(x_start, name):
    solver = STOCHASTIC[name]
    x = x_start[:8]
    a = hj.sample(MODEL, x, TS, solver, jax.random.key(5))
    b = hj.sample(MODEL, x, TS, solver, jax.random.key(5))
    c = hj.sample(MODEL, x, TS, solver, jax.random.key(6))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.min(jnp.abs(a - c))) > 0.0


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_marginal_of_gaussian_data(x_start, name):
    out = np.asarray(hj.sample(MODEL, x_start, TS, STOCHASTIC[name], jax.random.key(7)))
    mean, var = (np.asarray(v) for v in _marginal(TS[-1]))
    n = NUM_SAMPLES
    mean_tol = 5 * np.sqrt(var / n) + 0.01 * np.sqrt(var)
    var_tol = 5 * var * np.sqrt(2.0 / (n - 1)) + 0.015 * var
    np.testing.assert_array_less(np.abs(out.mean(0) - mean), mean_tol)
    np.testing.assert_array_less(np.abs(out.var(0, ddof=1) - var), var_tol)


def test_sde_dpm_solver_pp_1_is_stochastic_ddim(x_start):
    """SDE-DPM-Solver++(1) and DDIM(eta = 1) are the same update with the same noise."""
    x = x_start[:8]
    a = hj.sample(MODEL, x, TS, S.sde_dpm_solver_pp(1), jax.random.key(3))
    b = hj.sample(MODEL, x, TS, S.ddim(eta=1.0), jax.random.key(3))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_deterministic_limit_is_not_the_sde():
    """Sanity check that the noise really enters: the ODE sample differs from the SDE one."""
    x = jnp.ones((8, 1))
    a = hj.sample(MODEL, x, TS, S.ddim())
    b = hj.sample(MODEL, x, TS, S.ddim(eta=1.0), jax.random.key(0))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2
