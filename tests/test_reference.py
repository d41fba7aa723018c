"""Reference PF-ODE solve: closed form for one Gaussian, DDIM convergence, trajectory, errors."""

import functools
import warnings

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

import hso_jax
from hso_jax import Denoiser, noise
from hso_jax.evaluation import reference_solve, reference_trajectory
from hso_jax.models import GaussianMixture

G1 = GaussianMixture([[0.7, -1.2]], [[0.5, 1.3]])
MIX = GaussianMixture(
    [[1.5, -0.5], [-1.0, 1.0], [0.0, -1.5]], [[0.3, 0.2], [0.25, 0.4], [0.2, 0.2]], [0.5, 0.3, 0.2]
)


CALLS = []


def _count_call():
    CALLS.append(1)
    return np.zeros((), np.float64)


@functools.cache
def _model(name):
    """G1's exact Denoiser under preset ``name``, counting its evaluations on the host.

    One model object per preset, so every test on that preset reuses one compiled solve.
    """
    ns = noise.preset(name)
    base = G1.denoiser(ns)

    def counted(params, x, t):
        # an effect the compiler cannot remove: the host sees every evaluation
        z = io_callback(_count_call, jax.ShapeDtypeStruct((), jnp.float64))
        return base.fn(params, x, t) + 0.0 * z.astype(x.dtype)

    return Denoiser(counted, noise=ns, prediction="x0", params=base.params, time_input="t")


def _x_T(ns, key=0):
    return ns.prior(jax.random.key(key), (4, 2), jnp.float64)  # one shape: one compile


def _rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


# --- closed form --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,solver,stages",
    [
        ("ddpm", "tsit5", 7),
        ("sd15", "tsit5", 7),
        ("vp-linear", "tsit5", 7),
        ("edm", "tsit5", 7),
        ("flow", "dopri8", 14),
    ],
)
def test_matches_single_gaussian_closed_form(name, solver, stages):
    ns = noise.preset(name)
    model = _model(name)
    x_T = _x_T(ns)
    CALLS.clear()
    x, stats = reference_solve(model, x_T, ns.t_max, ns.t_min, solver=solver, return_stats=True)
    exact = G1.pf_ode_solution(ns, x_T, ns.t_max, ns.t_min)
    assert x.shape == x_T.shape and x.dtype == jnp.float64
    assert _rel(x, exact) < 5e-9, _rel(x, exact)
    assert bool(stats["successful"])
    assert int(stats["num_steps"]) == int(stats["num_accepted"]) + int(stats["num_rejected"])
    assert 10 < int(stats["num_accepted"]) < 1000
    # network evaluations: counted exactly (FSAL: first stage once, then stages - 1 per step)
    assert len(CALLS) == int(stats["model_evals"]) == 1 + (stages - 1) * int(stats["num_steps"])
    # a partial interval (the times are traced: no recompilation)
    t_s = ns.t_min + 0.6 * (ns.t_max - ns.t_min)
    t_e = ns.t_min + 0.1 * (ns.t_max - ns.t_min)
    x = reference_solve(model, x_T, t_s, t_e, solver=solver)
    assert _rel(x, G1.pf_ode_solution(ns, x_T, t_s, t_e)) < 5e-9


# --- mixture: consistency with a refined DDIM -------------------------------------------


def test_mixture_agrees_with_refined_ddim():
    ns = noise.preset("vp-linear")
    model = MIX.denoiser(ns)
    x_T = _x_T(ns, key=1)
    t_s, t_e = ns.t_max, 0.02
    ref = reference_solve(model, x_T, t_s, t_e)
    lam = jnp.linspace(ns.lam(t_s), ns.lam(t_e), 4097)
    outs = {}
    for n in (2048, 4096):
        ts = ns.t_from_lam(lam[:: 4096 // n]).at[0].set(t_s).at[-1].set(t_e)
        outs[n] = np.asarray(hso_jax.sample(model, x_T, ts, hso_jax.solvers.ddim()))
    e2048, e4096 = _rel(outs[2048], ref), _rel(outs[4096], ref)
    # first order: the error halves when the steps double ...
    assert 1.8 < e2048 / e4096 < 2.2, (e2048, e4096)
    assert e4096 < 1e-3
    # ... towards the reference: Richardson extrapolation is far closer than DDIM itself
    extrapolated = 2 * outs[4096] - outs[2048]
    assert _rel(extrapolated, ref) < e4096 / 50, (_rel(extrapolated, ref), e4096)


# --- trajectory --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_setup():
    ns = noise.preset("sd15")
    return ns, _model("sd15"), _x_T(ns, key=2)


def test_trajectory_matches_closed_form_at_every_time(sd15_setup):
    ns, model, x_T = sd15_setup
    ts = jnp.asarray([1.0, 0.8, 0.55, 0.3, 0.12, 0.05, 0.001])
    xs, stats = reference_trajectory(model, x_T, ts, return_stats=True)
    assert xs.shape == (7, 4, 2)
    np.testing.assert_array_equal(xs[0], x_T)
    for k in range(1, 7):  # (steps land on every time of ts: no interpolation error)
        exact = G1.pf_ode_solution(ns, x_T, ts[0], ts[k])
        assert _rel(xs[k], exact) < 5e-9, (k, _rel(xs[k], exact))
    assert int(stats["num_accepted"]) >= 6


def test_trajectory_endpoints_equal_reference_solve(sd15_setup):
    ns, model, x_T = sd15_setup
    x = reference_solve(model, x_T, 0.9, 0.01)
    xs = reference_trajectory(model, x_T, jnp.asarray([0.9, 0.01]))
    np.testing.assert_array_equal(xs[-1], x)  # the same solve
    # a solver instance is the same as its name
    np.testing.assert_array_equal(reference_solve(model, x_T, 0.9, 0.01, solver=diffrax.Tsit5()), x)
    np.testing.assert_array_equal(xs[0], x_T)
    xs = reference_trajectory(model, x_T, jnp.asarray([0.9, 0.6, 0.3, 0.2, 0.1, 0.05, 0.01]))
    np.testing.assert_allclose(xs[-1], x, rtol=1e-8, atol=1e-9)


def test_progress_callback_reports_from_inside_the_solve(sd15_setup):
    """callback: the fraction of the solve done, increasing to 1, while it runs; over chunks
    of samples the fraction of all of them; the result is the same with or without."""
    ns, model, x_T = sd15_setup
    x = reference_solve(model, x_T, 0.9, 0.01)
    seen = []
    np.testing.assert_array_equal(reference_solve(model, x_T, 0.9, 0.01, callback=seen.append), x)
    f = [d["solved"] for d in seen]
    assert len(f) >= 10 and f[-1] == 1.0 and np.all(np.diff(f) >= 0)
    assert all(d["elapsed"] >= 0 for d in seen)
    seen.clear()
    reference_trajectory(model, x_T, jnp.asarray([0.9, 0.3, 0.01]), batch_size=2,
                         callback=seen.append)  # fmt: skip
    f = [d["solved"] for d in seen]
    assert f[-1] == 1.0 and np.all(np.diff(f) >= 0)
    assert 0.45 <= max(v for v in f if v <= 0.5) <= 0.5  # the first of two chunks ends at 1/2
    reference_solve(model, x_T, 0.9, 0.01)  # nobody listens any more: nothing is called
    assert seen[-1]["solved"] == 1.0 and len(seen) == len(f)
    with pytest.raises(TypeError, match="callback must be callable"):
        reference_solve(model, x_T, 0.9, 0.01, callback=1)


# --- jit / vmap / precision ----------------------------------------------------------------


def test_jit_and_vmap():
    ns = noise.preset("edm")
    model, x_T = _model("edm"), _x_T(ns, key=3)
    t_ends = jnp.asarray([0.002, 0.1, 1.0, 20.0])

    # vmap over samples (each with its own steps) and over end times, all under jit
    @jax.jit
    def per_sample(model, x_T, t_ends):
        return jax.vmap(lambda x, t1: reference_solve(model, x[None], 80.0, t1)[0])(x_T, t_ends)

    out = per_sample(model, x_T, t_ends)
    for i in range(4):
        exact = G1.pf_ode_solution(ns, x_T[i], 80.0, t_ends[i])
        assert _rel(out[i], exact) < 5e-9


def test_float32_without_x64():
    ns = noise.preset("vp-linear")
    x_T = np.asarray(_x_T(ns))
    exact = np.asarray(G1.pf_ode_solution(ns, jnp.asarray(x_T), ns.t_max, ns.t_min))
    with jax.enable_x64(False):
        model = G1.denoiser(ns)
        x32 = jnp.asarray(x_T, jnp.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the float32 defaults need no warning
            x, stats = reference_solve(model, x32, ns.t_max, ns.t_min, return_stats=True)
        assert x.dtype == jnp.float32
        assert stats["rtol"] == stats["atol"] == pytest.approx(16 * np.finfo(np.float32).eps)
        with pytest.warns(UserWarning, match="float32, which cannot meet rtol=1e-09"):
            x2 = reference_solve(model, x32, ns.t_max, ns.t_min, rtol=1e-9)
        np.testing.assert_array_equal(x2, x)  # raised to the same floor
    assert _rel(np.asarray(x, np.float64), exact) < 1e-4


def test_max_steps_exceeded_raises():
    ns = noise.preset("edm")
    with pytest.raises(RuntimeError, match="max_steps=3"):
        reference_solve(_model("edm"), _x_T(ns), 80.0, 0.002, max_steps=3)


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(t_start=0.5, t_end=0.5), ValueError, "t_start must be greater than t_end"),
        (dict(t_start=0.2, t_end=0.5), ValueError, "t_start must be greater"),
        (dict(t_start=1.01), ValueError, r"t_start must lie in \[t_min, t_max\]"),
        (dict(t_end=0.0), ValueError, "t_end must lie in"),
        (dict(t_end=float("nan")), ValueError, "t_end"),
        (dict(t_start=np.array([1.0, 0.9])), ValueError, "t_start must be a scalar"),
        (dict(model=G1), TypeError, "model must be a hso_jax.Denoiser"),
        (dict(x_T=np.array([[1.0, np.nan]])), ValueError, "x_T must be finite"),
        (dict(x_T=np.array([[1.0, np.inf]])), ValueError, "x_T must be finite"),
        (dict(x_T=np.array([[1, 2]])), TypeError, "x_T must be a floating-point"),
        (dict(x_T=[[1.0, 2.0]]), TypeError, "x_T"),
        (dict(rtol=0.0), ValueError, "rtol"),
        (dict(atol=-1e-9), ValueError, "atol"),
        (dict(rtol="tight"), TypeError, "rtol"),
        (dict(solver="rk4"), ValueError, "tsit5"),
        (dict(solver=3), TypeError, "solver"),
        (dict(solver=diffrax.Euler()), TypeError, "solver"),
        (dict(max_steps=0), ValueError, "max_steps"),
    ],
)
def test_bad_input(sd15_setup, kwargs, exc, match):
    ns, model, x_T = sd15_setup
    args = dict(model=model, x_T=x_T, t_start=1.0, t_end=0.01) | kwargs
    model, x_T, t0, t1 = (args.pop(k) for k in ("model", "x_T", "t_start", "t_end"))
    with pytest.raises(exc, match=match):
        reference_solve(model, x_T, t0, t1, **args)


def test_range_tolerance_matches_check_schedule(sd15_setup):
    ns, model, x_T = sd15_setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = reference_solve(model, x_T, 1.0 + 5e-6, 0.001 - 5e-9)  # float rounding: accepted
    assert bool(jnp.all(jnp.isfinite(x)))
    with pytest.raises(ValueError, match="t_start"):
        reference_solve(model, x_T, 1.0 + 2e-5, 0.01)


@pytest.mark.parametrize(
    "ts,match",
    [
        ([0.5, 0.6], "strictly decreasing"),
        ([1.5, 0.5], r"\[t_min, t_max\]"),
        ([0.5], "at least 2"),
        (np.array([999, 0]), "integer"),
    ],
)
def test_trajectory_bad_ts(sd15_setup, ts, match):
    ns, model, x_T = sd15_setup
    with pytest.raises((ValueError, TypeError), match=match):
        reference_trajectory(model, x_T, ts)
