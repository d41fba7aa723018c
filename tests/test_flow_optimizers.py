"""Every optimiser on flow models, and the ends t = 1 / t = 0 of a flow's range.

Oracle: a Gaussian mixture under rectified flow wrapped as a flow-matching network (exact
velocity, ``prediction="flow"``). On the open range of ``preset("flow")`` (t in [1e-3, 0.999],
finite log-SNR) every method of :func:`hso_jax.optimize` runs; on a model preset spanning
[0, 1] (``sd3``) the methods built on lam or sigma_edm refuse the infinite ends with a clear
error, the bi-level ones (whose search box stays inside) and the reference solve handle them.
Options are tiny: these tests check plumbing and limits, not optimality.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj

OPEN = hj.noise.preset("flow")
CLOSED = hj.noise.preset("sd3")
GM = hj.models.GaussianMixture(np.array([[1.0, -0.5], [-1.0, 0.5]]), 0.3)
X_T = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64)
BILEVEL = dict(popsize=4, maxiter=1, local_maxiter=5)
TEACHER = dict(x_T=X_T, teacher_points=20)


def tiny_options(method):
    return {
        "hso": BILEVEL,
        "dmn": dict(local_maxiter=5),
        "ays": dict(
            data=GM.sample(jax.random.key(1), 64),
            key=jax.random.key(2),
            num_samples=32,
            max_sweeps=1,
            subdivide=False,
            candidates=3,
        ),
        "gits": TEACHER,
        "direct": dict(x_T=X_T, steps=2),
        "mep-model": dict(TEACHER, **BILEVEL),
    }[method]


@pytest.mark.parametrize("method", ["hso", "dmn", "ays", "gits", "direct", "mep-model"])
def test_every_method_runs_on_a_flow_model(method):
    """HSO runs on sd3 itself (t in [0, 1]): its search box reaches t = 1, where the MEP is
    +inf (not NaN), and the schedule stays strictly inside (0, 1). The others run on the open
    range with the same network."""
    model = GM.denoiser(OPEN, prediction="flow")
    target = {"hso": CLOSED, "dmn": OPEN}.get(method, model)
    solver = "euler" if method == "direct" else "unipc"
    res = hj.optimize(target, 4, method=method, solver=solver, **tiny_options(method))
    t = np.asarray(res.t)
    assert t.shape == (5,) and np.all(np.isfinite(t)) and np.all(np.diff(t) < 0)
    if target is CLOSED:  # a flow model's schedules end at the data, as its pipelines'
        assert t[-1] == 0.0 and t[-2] >= 0.01 and res.info["end"] == "zero"
    else:
        assert OPEN.t_min - 1e-9 <= t[-1]
    assert t[0] <= OPEN.t_max + 1e-9
    assert np.isfinite(res.objective)
    # the schedule samples the flow-parametrised model without NaN
    assert np.all(np.isfinite(hj.sample(model, X_T, res.t, hj.solvers.unipc())))


@pytest.mark.parametrize(
    "method, options, match",
    [
        ("dmn", {}, r"dmn needs finite log-SNR.*t_start = 1 \(lam = -inf\)"),
        ("mep-local", dict(t_start=0.99, end="free"), r"t_end = 0 \(lam = \+inf\)"),
        ("ays", dict(data=np.zeros((4, 2)), key=jax.random.key(0)), "AYS needs finite"),
        ("gits", TEACHER, "GITS needs finite"),
    ],
)
def test_methods_built_on_lam_refuse_infinite_ends(method, options, match):
    target = CLOSED if method in ("dmn", "mep-local") else GM.denoiser(CLOSED, prediction="flow")
    with pytest.raises(ValueError, match=match):
        hj.optimize(target, 4, method=method, **options)


def test_dmn_runs_on_a_closed_range_with_finite_ends():
    res = hj.optimize(CLOSED, 4, method="dmn", t_start=0.999, t_end=1e-3, local_maxiter=5)
    # the optimised points span [t_end, t_start]; the last step goes on to the data
    np.testing.assert_allclose(np.asarray(res.t)[[0, -2]], [0.999, 1e-3], rtol=1e-9)
    assert res.t[-1] == 0.0 and res.t.shape == (5,) and np.isfinite(res.objective)
    free = hj.optimize(CLOSED, 4, method="dmn", t_start=0.999, t_end=1e-3, end="free")
    np.testing.assert_allclose(np.asarray(free.t)[[0, -1]], [0.999, 1e-3], rtol=1e-9)


def test_direct_runs_on_a_flow_models_whole_range():
    """In t, not lam: the pipelines' own schedules (default, beta) are initial candidates,
    and the schedule runs from pure noise at t = 1 to the data at t = 0."""
    model = GM.denoiser(CLOSED, prediction="flow")
    res = hj.optimize(model, 4, method="direct", solver="euler", x_T=X_T, steps=2)
    assert res.t[0] == 1.0 and res.t[-1] == 0.0 and res.t.shape == (5,)
    assert set(res.info["init_candidates_train_loss"]) == {"time", "default", "beta"}
    assert np.isfinite(res.objective) and np.all(np.diff(res.t) < 0)


@pytest.mark.parametrize("make", [hj.objectives.mep, hj.objectives.dmn])
def test_objectives_score_infinite_ends_plus_inf_with_finite_gradients(make):
    obj = make(CLOSED)
    inner = jnp.asarray([0.8, 0.5, 0.2])
    for ends in ([1.0, 0.05], [0.95, 0.0], [1.0, 0.0]):
        ts = jnp.concatenate([jnp.asarray(ends[:1]), inner, jnp.asarray(ends[1:])])
        assert obj(ts) == np.inf
        g = jax.grad(
            lambda x, ends=ends: obj(
                jnp.concatenate([jnp.asarray(ends[:1]), x, jnp.asarray(ends[1:])])
            )
        )(inner)
        assert np.all(np.isfinite(g))
    assert np.isfinite(obj(jnp.asarray([0.95, 0.8, 0.5, 0.2, 0.05])))


def test_reference_solve_from_pure_noise_to_the_data():
    """From t = 1 to t = 0 (lam from -inf to +inf) the reference equals the closed-form flow
    of a single Gaussian (an independent formula: the OT map between Gaussian marginals)."""
    gm = hj.models.GaussianMixture(np.array([[0.7, -1.1]]), 0.4)
    model = gm.denoiser(CLOSED, prediction="flow")
    for t_end in (0.0, 0.3):
        ref = hj.evaluation.reference_solve(model, X_T[:4], 1.0, t_end, rtol=1e-10, atol=1e-10)
        exact = gm.pf_ode_solution(CLOSED, X_T[:4], 1.0, t_end)
        np.testing.assert_allclose(ref, exact, rtol=0, atol=1e-8)
