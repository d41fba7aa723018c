"""Teacher trajectories and the model-aware MEP: exact states and predictions, the Gram-table
interpolation against explicit interpolation, the closed form for Gaussian data, and the
bi-level search on it (``method="mep-model"``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.objectives import mep_model, mep_table
from hso_jax.reference.teacher import Teacher, teacher_trajectories

DDPM = hj.noise.preset("ddpm")
S2 = 0.25  # variance of the Gaussian data


@pytest.fixture(scope="module")
def gauss():
    """1-D Gaussian data N(0, S2): exact denoiser, closed-form trajectories."""
    model = hj.models.GaussianMixture(jnp.zeros((1, 1)), np.sqrt(S2)).denoiser(DDPM)
    x_T = DDPM.prior(jax.random.key(0), (6, 1), jnp.float64)
    teacher = teacher_trajectories(model, x_T, num_points=41, rtol=1e-10, atol=1e-10)
    return model, x_T, teacher


def _g(t):
    """Along the exact trajectory of N(0, S2) data, x(t) = r(t) x_T / r(t_max) with
    r = sqrt(a^2 S2 + s^2), and D(x, t) = a S2 x / r^2, so D = g(t) x_T / r(t_max) with
    g = a S2 / r."""
    a, s = np.asarray(DDPM.alpha(t)), np.asarray(DDPM.sigma(t))
    return a * S2 / np.sqrt(a * a * S2 + s * s)


def _r(t):
    a, s = np.asarray(DDPM.alpha(t)), np.asarray(DDPM.sigma(t))
    return np.sqrt(a * a * S2 + s * s)


def test_teacher_states_and_predictions_are_exact(gauss):
    model, x_T, teacher = gauss
    t = teacher.t
    assert isinstance(teacher, Teacher) and t.dtype == np.float64 and t.shape == (41,)
    assert t[0] == DDPM.t_max and t[-1] == DDPM.t_min and np.all(np.diff(t) < 0)
    # uniform in lam (the default grid)
    np.testing.assert_allclose(np.diff(teacher.lam), np.diff(teacher.lam)[0], rtol=1e-9)
    x_exact = (_r(t) / _r(DDPM.t_max))[:, None, None] * np.asarray(x_T)[None]
    np.testing.assert_allclose(np.asarray(teacher.x), x_exact, rtol=1e-7, atol=1e-9)
    x0_exact = (_g(t) / _r(DDPM.t_max))[:, None, None] * np.asarray(x_T)[None]
    np.testing.assert_allclose(np.asarray(teacher.x0), x0_exact, rtol=1e-7, atol=1e-9)


def test_table_terms_equal_the_closed_form_for_gaussian_data(gauss):
    """Node-aligned intervals: terms_i = |g(mid) - g(lo)| rms(x_T) / r(t_max) (e^{l1} - e^{l0})
    exactly; off-node intervals agree up to the linear-interpolation error."""
    _, x_T, teacher = gauss
    obj = mep_model(DDPM, mep_table(teacher))
    rms = float(np.sqrt(np.mean(np.asarray(x_T) ** 2))) / float(_r(DDPM.t_max))

    def closed(lam):
        mid = 0.5 * (lam[1:] + lam[:-1])
        g_mid = _g(np.asarray(DDPM.t_from_lam(jnp.asarray(mid))))
        g_lo = _g(np.asarray(DDPM.t_from_lam(jnp.asarray(lam[:-1]))))
        return np.abs(g_mid - g_lo) * rms * (np.exp(lam[1:]) - np.exp(lam[:-1]))

    nodes = teacher.lam[::8]  # lam_mid of consecutive nodes 8 apart is a node too
    np.testing.assert_allclose(
        np.asarray(obj.terms_of_lam(jnp.asarray(nodes))), closed(nodes), rtol=1e-6
    )
    lam = np.sort(np.random.default_rng(0).uniform(teacher.lam[0], teacher.lam[-1], 6))
    lam = np.concatenate([[teacher.lam[0]], lam, [teacher.lam[-1]]])
    # linear interpolation on a 41-point grid (h = 0.24): a few per cent per short interval
    np.testing.assert_allclose(
        np.asarray(obj.terms_of_lam(jnp.asarray(lam))), closed(lam), rtol=0.1
    )
    assert float(obj(jnp.asarray(np.asarray(DDPM.t_from_lam(jnp.asarray(lam)))))) == (
        pytest.approx(closed(lam).sum(), rel=2e-2)
    )


def test_gram_table_equals_explicit_interpolation():
    """Mixture data in 3-D: the Gram form equals interpolating every predicted pixel."""
    means = jnp.asarray([[1.0, 0.0, 0.5], [-1.0, 0.5, 0.0], [0.0, -1.0, -0.5]])
    model = hj.models.GaussianMixture(means, 0.2).denoiser(DDPM)
    x_T = DDPM.prior(jax.random.key(1), (5, 3), jnp.float64)
    teacher = teacher_trajectories(model, x_T, num_points=21, grid="karras", rtol=1e-8, atol=1e-8)
    obj = mep_model(DDPM, mep_table(teacher))
    lam = np.sort(np.random.default_rng(2).uniform(teacher.lam[0], teacher.lam[-1], 5))
    lam = np.concatenate([[teacher.lam[0]], lam, [teacher.lam[-1]]])
    x0 = np.asarray(teacher.x0).reshape(21, -1)

    def interp(at):
        return np.stack([np.interp(at, teacher.lam, x0[:, j]) for j in range(x0.shape[1])], -1)

    mid = 0.5 * (lam[1:] + lam[:-1])
    diff = interp(mid) - interp(lam[:-1])
    want = np.sqrt(np.mean(diff**2, axis=1)) * (np.exp(lam[1:]) - np.exp(lam[:-1]))
    np.testing.assert_allclose(np.asarray(obj.terms_of_lam(jnp.asarray(lam))), want, rtol=1e-9)
    g = jax.grad(obj.of_lam)(jnp.asarray(lam))
    assert np.isfinite(np.asarray(g)).all()


@pytest.fixture(scope="module")
def ring_teacher():
    ang = np.linspace(0.0, 2.0 * np.pi, 8, endpoint=False)
    gm = hj.models.GaussianMixture(jnp.asarray(np.stack([np.cos(ang), np.sin(ang)], 1)), 0.1)
    model = gm.denoiser(DDPM)
    x_T = DDPM.prior(jax.random.key(3), (16, 2), jnp.float64)
    return model, x_T, teacher_trajectories(model, x_T, num_points=60)


def test_mep_model_bilevel_search(ring_teacher):
    model, x_T, teacher = ring_teacher
    opts = dict(popsize=6, maxiter=8)
    res = hj.optimize(model, 5, method="mep-model", solver="unipc", teacher=teacher, **opts)
    assert res.method == "mep-model" and res.t.shape == (6,) and np.all(np.diff(res.t) < 0)
    assert res.info["objective_name"] == "mep-model" and res.info["teacher"] == "given"
    # the lower level improves on its initialisation, and the objective is the table MEP
    assert res.objective <= res.info["init_objective"]
    obj = mep_model(DDPM, mep_table(teacher))
    assert float(obj(jnp.asarray(res.t))) == pytest.approx(res.objective, rel=1e-6)
    # ddim flavour: NFE optimised points plus the fixed final point t_min
    res_d = hj.optimize(model, 5, method="mep-model", solver="ddim", teacher=teacher, **opts)
    assert res_d.t.shape == (6,) and res_d.t[-1] == DDPM.t_min


def test_mep_model_from_x_T_equals_given_teacher(ring_teacher):
    model, x_T, teacher = ring_teacher
    opts = dict(popsize=4, maxiter=3)
    a = hj.optimize(model, 4, method="mep-model", teacher=teacher, **opts)
    b = hj.optimize(model, 4, method="mep-model", x_T=x_T, teacher_points=60, **opts)
    np.testing.assert_allclose(a.t, b.t, rtol=1e-6)
    assert b.info["teacher"] == "computed" and b.info["teacher_batch"] == 16


def test_errors(ring_teacher):
    model, x_T, teacher = ring_teacher
    with pytest.raises(ValueError, match="x_T"):
        hj.optimize(model, 4, method="mep-model")
    with pytest.raises(TypeError, match="Denoiser"):
        hj.optimize(DDPM, 4, method="mep-model", x_T=x_T)
    with pytest.raises(ValueError, match="unknown option"):
        hj.optimize(model, 4, method="mep-model", teacher=teacher, p=2.0)
    with pytest.raises(ValueError, match="solver"):
        hj.optimize(model, 4, method="mep-model", teacher=teacher, solver="heun")
    with pytest.raises(TypeError, match="Teacher"):
        hj.optimize(model, 4, method="mep-model", teacher=np.zeros(3))
    with pytest.raises(ValueError, match="grid"):
        teacher_trajectories(model, x_T, grid="cosine")
    with pytest.raises(ValueError, match="num_points"):
        teacher_trajectories(model, x_T, num_points=2)
    with pytest.raises(ValueError, match="chunk"):
        teacher_trajectories(model, x_T, chunk=0)
    with pytest.raises(TypeError, match="Denoiser"):
        teacher_trajectories(DDPM, x_T)
