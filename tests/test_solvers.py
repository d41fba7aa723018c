"""Solver conformance: jit == eager, vmap == loop, no retracing, exact NFE, gradients w.r.t. the
schedule, exactness for point-mass data, equivalences between solvers, input validation and NaN
reporting. (Convergence orders: ``test_solvers_order.py``; stochastic solvers:
``test_solvers_stochastic.py``.)

Compilation dominates the runtime, so every test uses the same model *structure*, the same x_T
shape and the same schedule length: the jit cache then serves every test after the first one for
a given solver. The model is a cheap smooth data predictor ``x0 = mu + c tanh(x + t)`` (solver
conformance does not need a realistic one; the convergence tests use the exact Gaussian-mixture
denoiser); with ``c = 0`` it is the point-mass model of the exactness test, with the same pytree
structure, so no extra compilation.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax import solvers as S

NS = hj.noise.preset("vp-linear")  # continuous and smooth in t: finite differences are clean
N_STEPS = 6  # < 15: lower_order_final is active, every warm-up / final branch is exercised
LAM_START, LAM_END = -3.0, 2.0
CALLS = {"n": 0}  # model-function calls (eager) or traces (under jit)


def _counting_fn(params, x, t):
    CALLS["n"] += 1
    mu, c = params
    return mu + c * jnp.tanh(x + t)


def _model(mu, c) -> hj.Denoiser:
    params = (jnp.asarray(mu, jnp.float64), jnp.asarray(c, jnp.float64))
    return hj.Denoiser(_counting_fn, noise=NS, prediction="x0", params=params, time_input="t")


MU = np.array([0.7, -0.4])
MODEL = _model(MU, 0.8)
POINT_MASS = _model(MU, 0.0)  # x0(x, t) = mu for every x, t

X_T = jax.random.normal(jax.random.key(0), (4, 2), jnp.float64) * 3.0
KEY = jax.random.key(1)


def _schedule(jitter: float = 0.0, seed: int = 0) -> jax.Array:
    lam = np.linspace(LAM_START, LAM_END, N_STEPS + 1)
    if jitter:
        rng = np.random.default_rng(seed)
        lam[1:-1] += jitter * rng.uniform(-1, 1, N_STEPS - 1) * (lam[1] - lam[0])
    return NS.t_from_lam(jnp.asarray(lam))


TS = _schedule()
TS_BATCH = jnp.stack([_schedule(0.4, s) for s in range(3)])

SOLVERS = {
    "ddim": S.ddim(),
    "ddim_eta1": S.ddim(eta=1.0),
    "dpm_2m": S.dpm_solver_pp(2),
    "dpm_3m": S.dpm_solver_pp(3),
    "dpm_2s": S.dpm_solver_pp(2, "singlestep"),
    "dpm_3s": S.dpm_solver_pp(3, "singlestep"),
    "sde_dpm_2m": S.sde_dpm_solver_pp(2),
    "unipc3_bh2": S.unipc(3, "bh2"),
    "unipc2_bh1": S.unipc(2, "bh1"),
    "unip2_nocorr": S.unipc(2, corrector=False),
    "ipndm": S.ipndm(),
    "ipndm_v": S.ipndm(variable_step=True),
    "euler": S.euler(),
    "heun": S.heun(),
}
DETERMINISTIC = [k for k, s in SOLVERS.items() if not s.stochastic]


def _key(solver):
    return KEY if solver.stochastic else None


def _sample(model, ts, solver, x_T=X_T):
    return hj.sample(model, x_T, ts, solver, _key(solver))


# --------------------------------------------------------------------------------------------
# Conformance suite
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SOLVERS))
def test_jit_equals_eager_and_exact_nfe(name):
    solver = SOLVERS[name]
    jitted = _sample(MODEL, TS, solver)
    # Under disable_jit the scan runs as a Python loop and the model function runs once per
    # network evaluation, so the counter is exact. (Counting traces under jit would count call
    # *sites* of the scan body -- traced once for all steps -- not evaluations.)
    with jax.disable_jit():
        before = CALLS["n"]
        eager = _sample(MODEL, TS, solver)
        calls = CALLS["n"] - before
    assert calls == solver.nfe(N_STEPS) == solver.calls_per_step * N_STEPS
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-10, atol=1e-12)
    assert jitted.shape == X_T.shape and jitted.dtype == X_T.dtype


def test_denoise_final_costs_one_more_call():
    solver = SOLVERS["dpm_2m"]
    with jax.disable_jit():
        before = CALLS["n"]
        out = hj.sample(MODEL, X_T, TS, solver, denoise_final=True, nfe=N_STEPS + 1)
        assert CALLS["n"] - before == N_STEPS + 1
    x = hj.sample(MODEL, X_T, TS, solver)
    np.testing.assert_allclose(out, MODEL.x0(x, TS[-1]), rtol=1e-10, atol=1e-12)


def test_callback_reports_every_step_and_changes_nothing():
    """``callback`` hears the fraction of steps done after every step, from inside the
    compiled run, for ``sample`` and ``sample_trajectory``; the result is the same."""
    solver = SOLVERS["dpm_2m"]
    seen = []
    out = hj.sample(MODEL, X_T, TS, solver, callback=seen.append)
    np.testing.assert_array_equal(out, _sample(MODEL, TS, solver))
    assert [d["solved"] for d in seen] == pytest.approx(np.arange(1, N_STEPS + 1) / N_STEPS)
    assert all(d["elapsed"] >= 0 for d in seen)
    seen.clear()
    traj = hj.sample_trajectory(MODEL, X_T, TS, solver, callback=seen.append)
    np.testing.assert_array_equal(traj.final, out)
    assert len(seen) == N_STEPS and seen[-1]["solved"] == 1.0
    with pytest.raises(TypeError, match="callback must be callable or None, got 1"):
        hj.sample(MODEL, X_T, TS, solver, callback=1)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_no_retrace_on_second_call(name):
    solver = SOLVERS[name]
    _sample(MODEL, TS, solver).block_until_ready()
    traced = CALLS["n"]
    # New values, same shapes and dtypes: the compiled sampler must be reused.
    _sample(MODEL, TS_BATCH[0], solver, x_T=X_T + 1.0).block_until_ready()
    assert CALLS["n"] == traced


@pytest.mark.parametrize("name", list(SOLVERS))
def test_vmap_over_schedules_equals_loop(name):
    solver = SOLVERS[name]
    batched = jax.vmap(lambda ts: _sample(MODEL, ts, solver))(TS_BATCH)
    looped = jnp.stack([_sample(MODEL, ts, solver) for ts in TS_BATCH])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_gradient_wrt_schedule_matches_finite_differences(name):
    solver = SOLVERS[name]
    w = jax.random.normal(jax.random.key(2), X_T.shape, jnp.float64)
    ts = TS_BATCH[1]

    def loss(ts):
        return jnp.sum(w * _sample(MODEL, ts, solver))

    g = np.asarray(jax.grad(loss)(ts))
    assert np.all(np.isfinite(g)), g
    eps = 1e-6
    fd = np.array(
        [
            (float(loss(ts.at[k].add(eps))) - float(loss(ts.at[k].add(-eps)))) / (2 * eps)
            for k in range(ts.shape[0])
        ]
    )
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-5 * np.max(np.abs(fd)))


def test_unrolled_scan_gives_the_same_samples_and_gradients():
    """``unroll`` changes only how the step loop is compiled, not what it computes."""
    solver = SOLVERS["dpm_2m"]
    ts = TS_BATCH[1]

    def loss(ts, unroll):
        return jnp.sum(jnp.sin(hj.sample(MODEL, X_T, ts, solver, unroll=unroll)))

    np.testing.assert_allclose(
        np.asarray(hj.sample(MODEL, X_T, ts, solver, unroll=True)),
        np.asarray(hj.sample(MODEL, X_T, ts, solver)),
        rtol=1e-12,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        np.asarray(jax.grad(loss)(ts, True)),
        np.asarray(jax.grad(loss)(ts, 1)),
        rtol=1e-10,
        atol=1e-12,
    )
    for bad in (0, -1, 1.5, "yes"):
        with pytest.raises(ValueError, match=r"unroll must be None, a bool or an integer >= 1"):
            hj.sample(MODEL, X_T, ts, solver, unroll=bad)


def test_the_plain_call_is_rolled_when_evaluated_and_unrolled_when_differentiated(monkeypatch):
    """``unroll=None`` (the default): the evaluated call keeps the step loop, every derivative
    (reverse, forward, second order, under vmap) goes through the unrolled one and equals the
    rolled scan's to round-off; beyond AUTO_UNROLL_MAX steps the loop stays."""
    from hso_jax.solvers import driver

    solver = SOLVERS["dpm_2m"]
    ts = TS_BATCH[1]

    def loss(ts, unroll=None, x=X_T):
        return jnp.sum(jnp.sin(hj.sample(MODEL, x, ts, solver, unroll=unroll)))

    def loops(f, *args):  # scans of the program that stay loops (unroll=1), of how many
        found = re.findall(r"unroll=(\d+)", str(jax.make_jaxpr(f)(*args)))
        return sum(u == "1" for u in found), len(found)

    assert loops(loss, ts) == (1, 1) and loops(jax.grad(loss), ts) == (0, 2)
    assert loops(jax.grad(lambda t: loss(t, 1)), ts) == (2, 2)
    ref = jax.grad(loss)(ts, 1)
    np.testing.assert_allclose(jax.grad(loss)(ts), ref, rtol=1e-10, atol=1e-12)
    tangent = jnp.linspace(-1.0, 1.0, ts.shape[0]) * 1e-3
    _, fwd = jax.jvp(loss, (ts,), (tangent,))
    _, fwd_ref = jax.jvp(lambda t: loss(t, 1), (ts,), (tangent,))
    assert float(fwd) == pytest.approx(float(fwd_ref), rel=1e-10)
    assert float(fwd) == pytest.approx(float(ref @ tangent), rel=1e-10)
    hess = jax.hessian(loss)(ts)
    np.testing.assert_allclose(hess, jax.hessian(lambda t: loss(t, 1))(ts), rtol=1e-8, atol=1e-10)
    per_x = jax.vmap(jax.grad(loss, argnums=2), in_axes=(None, None, 0))(ts, None, X_T[:, None])
    assert per_x.shape == (X_T.shape[0], 1, *X_T.shape[1:])
    traj = jax.grad(lambda t: jnp.sum(hj.sample_trajectory(MODEL, X_T, t, solver).x ** 2))
    assert loops(traj, ts) == (0, 2) and np.all(np.isfinite(traj(ts)))
    monkeypatch.setattr(driver, "AUTO_UNROLL_MAX", ts.shape[0] - 2)  # one step too many
    assert loops(jax.grad(loss), ts) == (2, 2)


# --------------------------------------------------------------------------------------------
# Exactness and equivalences
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_exact_for_point_mass_data(name):
    """With a constant data prediction mu the PF-ODE solution is
    x_t = alpha_t mu + sigma_t / sigma_s (x_s - alpha_s mu); exponential integrators (DDIM,
    DPM-Solver++, UniPC) reproduce it on any schedule, and so do Euler / Heun / iPNDM in EDM
    variables (the slope (x~ - mu) / sigma~ is constant along the solution)."""
    solver = SOLVERS[name]
    rng = np.random.default_rng(3)
    lam = np.sort(rng.uniform(NS.lam_min + 0.01, NS.lam_max - 0.01, (3, N_STEPS + 1)), axis=1)
    ts_batch = NS.t_from_lam(jnp.asarray(lam))
    out = jax.vmap(lambda ts: _sample(POINT_MASS, ts, solver))(ts_batch)
    for ts, x in zip(ts_batch, out, strict=True):
        a_s, s_s = NS.alpha(ts[0]), NS.sigma(ts[0])
        a_t, s_t = NS.alpha(ts[-1]), NS.sigma(ts[-1])
        expected = a_t * MU + s_t / s_s * (X_T - a_s * MU)
        np.testing.assert_allclose(np.asarray(x), np.asarray(expected), rtol=1e-11, atol=1e-12)


def test_first_order_solvers_are_ddim():
    ref = _sample(MODEL, TS, S.ddim())
    for solver in (
        S.dpm_solver_pp(1),
        S.dpm_solver_pp(1, "singlestep"),
        S.unipc(1, corrector=False),
    ):
        # Same formula, same operations: equal to the last bit.
        np.testing.assert_array_equal(np.asarray(_sample(MODEL, TS, solver)), np.asarray(ref))
    # Euler in (sigma_edm, x / alpha) is DDIM up to rounding.
    np.testing.assert_allclose(_sample(MODEL, TS, S.euler()), ref, rtol=1e-12, atol=1e-12)


def test_unipc_predictor_equals_dpm_solver_pp_multistep():
    """UniP-p (bh2, a_1 = 1/2 for p = 2; order conditions for p = 3) integrates the same
    interpolating polynomial as DPM-Solver++(pM): an independent check of the 3M coefficient
    (the Taylor-consistent one, not the reference code's half-size D2). (With bh1 the order-3
    steps agree too, but its UniP-2 warm-up step, a_1 = 1/2 with B(h) = h, is not 2M.)"""
    for order in (2, 3):
        a = _sample(MODEL, TS_BATCH[2], S.unipc(order, "bh2", corrector=False))
        b = _sample(MODEL, TS_BATCH[2], S.dpm_solver_pp(order))
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    legacy = _sample(MODEL, TS_BATCH[2], S.dpm_solver_pp(3, legacy_3m=True))
    assert float(jnp.max(jnp.abs(legacy - b))) > 1e-6


def test_ipndm_variable_step_equals_fixed_on_uniform_sigma_grid():
    sig = np.linspace(8.0, 0.5, N_STEPS + 1)  # uniform in sigma_edm
    ts = NS.t_from_sigma_edm(jnp.asarray(sig))
    a = _sample(MODEL, ts, S.ipndm())
    b = _sample(MODEL, ts, S.ipndm(variable_step=True))
    np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_lower_order_final_changes_only_short_schedules():
    a = _sample(MODEL, TS, S.dpm_solver_pp(3, lower_order_final=True))
    b = _sample(MODEL, TS, S.dpm_solver_pp(3, lower_order_final=False))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-8  # n = 6 < 15: last steps lowered
    traj = hj.sample_trajectory(MODEL, X_T, TS, S.dpm_solver_pp(3))
    np.testing.assert_allclose(traj.final, a, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_wrong_schedule_length_for_nfe():
    with pytest.raises(ValueError, match=r"ts has 7 points.*nfe=5.*needs 6 points"):
        hj.sample(MODEL, X_T, TS, S.dpm_solver_pp(2), nfe=5)
    with pytest.raises(ValueError, match="multiple of 2"):
        hj.sample(MODEL, X_T, TS, S.heun(), nfe=7)
    with pytest.raises(ValueError, match="needs 5 points"):
        hj.sample(MODEL, X_T, TS, S.dpm_solver_pp(3, "singlestep"), nfe=12)
    assert S.dpm_solver_pp(3, "singlestep").num_points(12) == 5
    assert S.heun().nfe(N_STEPS) == 2 * N_STEPS


def test_non_decreasing_schedule():
    with pytest.raises(ValueError, match="strictly decreasing"):
        hj.sample(MODEL, X_T, TS[::-1], S.unipc())
    with pytest.raises(ValueError, match="strictly decreasing"):
        hj.sample(MODEL, X_T, TS.at[3].set(TS[2]), S.ipndm())


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: S.dpm_solver_pp(order=4), ValueError, r"order must be one of \(1, 2, 3\), got 4"),
        (lambda: S.dpm_solver_pp(order=0), ValueError, "order must be one of"),
        (lambda: S.dpm_solver_pp(order=2.0), TypeError, "order must be one of"),
        (lambda: S.dpm_solver_pp(order=True), TypeError, "order must be one of"),
        (lambda: S.dpm_solver_pp(method="adaptive"), ValueError, r"method must be .*'adaptive'"),
        (lambda: S.dpm_solver_pp(lower_order_final=1), TypeError, "lower_order_final must be"),
        (lambda: S.sde_dpm_solver_pp(order=3), ValueError, r"order must be one of \(1, 2\), got 3"),
        (lambda: S.unipc(order=4), ValueError, r"order must be one of \(1, 2, 3\), got 4"),
        (lambda: S.unipc(variant="bh3"), ValueError, r"variant must be one of \('bh2', 'bh1'\)"),
        (lambda: S.unipc(corrector="yes"), TypeError, "corrector must be True or False"),
        (lambda: S.ipndm(order=5), ValueError, r"order must be one of \(1, 2, 3, 4\), got 5"),
        (lambda: S.ipndm(variable_step=None), TypeError, "variable_step must be True or False"),
        (lambda: S.ddim(eta=1.5), ValueError, r"eta must be a float in \[0, 1\]"),
    ],
)
def test_factories_validate_eagerly(make, error, match):
    """Wrong types raise TypeError, wrong values ValueError (hso_jax._validate's rule)."""
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("name", ["ddim_eta1", "sde_dpm_2m"])
def test_stochastic_solver_needs_key(name):
    with pytest.raises(ValueError, match="stochastic: pass key="):
        hj.sample(MODEL, X_T, TS, SOLVERS[name])


def test_solvers_are_hashable_static_arguments():
    assert S.unipc(3) == S.unipc(3) and hash(S.unipc(3)) == hash(S.unipc(3))
    assert S.unipc(3) != S.unipc(3, "bh1")
    assert S.dpm_solver_pp(2, "singlestep").calls_per_step == 2
    assert S.sde_dpm_solver_pp().stochastic and not S.dpm_solver_pp().stochastic


# --------------------------------------------------------------------------------------------
# NaN reporting
# --------------------------------------------------------------------------------------------


def _nan_after(t_bad):
    """x0-model that returns NaN for t < t_bad (i.e. from some step on)."""

    def fn(x, t):
        return jnp.where(t < t_bad, jnp.nan, 0.5) * x

    return hj.Denoiser(fn, noise=NS, prediction="x0", time_input="t")


def test_nan_model_is_reported_with_the_first_bad_step():
    model = _nan_after(float(TS[3]) + 1e-9)  # finite at steps 0-2, NaN from step 3 on
    out = hj.sample(model, X_T, TS, S.dpm_solver_pp(2), check_finite=False)  # as it is
    assert not np.all(np.isfinite(np.asarray(out)))
    with pytest.raises(FloatingPointError, match=r"model returned NaN/inf at step 3"):
        hj.sample(model, X_T, TS, S.dpm_solver_pp(2))  # checked by default (eager)
    # under jit the check is skipped: the caller gets the array
    jitted = jax.jit(lambda x: hj.sample(model, x, TS, S.dpm_solver_pp(2)))(X_T)
    assert not np.all(np.isfinite(np.asarray(jitted)))
    with pytest.raises(FloatingPointError, match=r"sample_trajectory .*step 3"):
        hj.sample_trajectory(model, X_T, TS, S.dpm_solver_pp(2), check_finite=True)
    with pytest.raises(FloatingPointError, match="x_T itself"):
        hj.sample(model, X_T.at[0, 0].set(jnp.nan), TS, S.dpm_solver_pp(2), check_finite=True)
    finite = hj.sample(_nan_after(0.0), X_T, TS, S.dpm_solver_pp(2), check_finite=True)
    assert np.all(np.isfinite(np.asarray(finite)))


# --------------------------------------------------------------------------------------------
# float32
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dpm_3m", "dpm_3s", "unipc3_bh2", "ipndm_v"])
def test_float32_inputs_stay_float32_and_agree_with_float64(name):
    """Library code must not depend on jax_enable_x64 (on in the tests): float32 inputs give a
    float32 result within float32 rounding of the float64 one (the phi functions and Lagrange
    weights are evaluated stably)."""
    solver = SOLVERS[name]
    out32 = _sample(MODEL, TS_BATCH[0].astype(jnp.float32), solver, x_T=X_T.astype(jnp.float32))
    out64 = _sample(MODEL, TS_BATCH[0], solver)
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32), np.asarray(out64), rtol=2e-5, atol=2e-5)


def test_wrongly_shaped_x_T_is_named():
    """A batch of the wrong sample shape gets one ValueError naming x_T and both shapes."""
    gm = hj.models.GaussianMixture(jnp.zeros((2, 3)), jnp.ones(2), jnp.ones(2) / 2)
    model = gm.denoiser(NS)
    ts = TS
    bad = jnp.zeros((4, 5))  # the mixture lives in 3-D
    with pytest.raises(ValueError, match=r"x_T has shape \(4, 5\)"):
        hj.sample(model, bad, ts, S.dpm_solver_pp(2))
    with pytest.raises(ValueError, match=r"x_T has shape \(4, 5\)"):
        hj.sample_trajectory(model, bad, ts, S.ddim())
    from hso_jax.solvers.driver import check_model_input

    check_model_input(model, jnp.zeros((4, 3)), ts[0])  # the right shape passes
