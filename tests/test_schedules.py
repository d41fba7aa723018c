"""Baseline schedules, AYS tables, exports and check_schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax import schedules as S
from hso_jax.noise import EDM, PRESETS, VPDiscrete, preset

BASELINES = {
    "time_uniform": S.time_uniform,
    "time_quadratic": S.time_quadratic,
    "logsnr_uniform": S.logsnr_uniform,
    "karras": S.karras,
    "polyexponential": S.polyexponential,
    "kl_optimal": S.kl_optimal,
}
ALL = {**BASELINES, "ays": S.ays}

SD15_AYS_TIMESTEPS = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0]
SD15_AYS_SIGMAS = [
    14.6146, 6.4746, 3.8637, 2.6946, 1.8842, 1.3944, 0.9643, 0.6524, 0.3977, 0.1515, 0.0292,
]


def _np(x):
    return np.asarray(x, np.float64)


def _sigma(ns, t):
    """sigma_edm(t) in float64 (padded evaluation: shares compiled kernels across shapes)."""
    return S.eval_float64(ns, "sigma_edm", _np(t))


# --------------------------------------------------------------------------------------
# Shape, monotonicity, end points
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_name", sorted(PRESETS))
@pytest.mark.parametrize("kind", sorted(BASELINES))
def test_baseline_shape_monotone_endpoints(kind, noise_name):
    ns = preset(noise_name)
    ends = {}
    if (ns.t_min, ns.t_max) == (0.0, 1.0) and kind not in ("time_uniform", "time_quadratic"):
        # flow-model range: log-SNR / sigma_edm are infinite at both ends
        with pytest.raises(ValueError, match="infinite at t = 1"):
            BASELINES[kind](ns, 3)
        ends = {"t_start": 0.999, "t_end": 0.001}
    for nfe in (1, 3, 10):
        ts = BASELINES[kind](ns, nfe, **ends)
        t = _np(ts)
        assert t.shape == (nfe + 1,)
        assert np.all(np.diff(t) < 0)
        assert t[0] == ends.get("t_start", ns.t_max) and t[-1] == ends.get("t_end", ns.t_min)
        S.check_schedule(ts, ns)


@pytest.mark.parametrize("noise_name", sorted(PRESETS))
def test_ays_every_preset(noise_name):
    ns = preset(noise_name)
    table = _np(S.AYS_TABLES["sd15"])
    for nfe in (1, 4, 10, 17):
        t = _np(S.ays(ns, nfe))
        assert t.shape == (nfe + 1,) and np.all(np.diff(t) < 0)
        S.check_schedule(t, ns)
    if noise_name in ("sd15", "sd21", "sdxl"):  # table ends = the process's range (rounded)
        assert t[0] == ns.t_max and t[-1] == ns.t_min
    else:
        np.testing.assert_allclose(_sigma(ns, t[[0, -1]]), table[[0, -1]], rtol=1e-9)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_t_start_t_end_override(kind):
    ns = preset("sd15")
    t = _np(ALL[kind](ns, 6, t_start=0.9, t_end=0.02))
    assert t.shape == (7,) and t[0] == 0.9 and t[-1] == 0.02 and np.all(np.diff(t) < 0)
    # Only one end given: the other is the default.
    t = _np(ALL[kind](ns, 4, t_end=0.5))
    assert t[0] == ns.t_max and t[-1] == 0.5


def test_nfe_means_intervals_for_a_multistep_solver():
    ns = preset("sd15")
    ts = S.karras(ns, 5)
    assert ts.shape[0] - 1 == 5 == hj.solvers.ddim().nfe(ts.shape[0] - 1)


# --------------------------------------------------------------------------------------
# Formulas, written independently
# --------------------------------------------------------------------------------------


def test_karras_matches_formula():
    for name, rho in (("edm", 7.0), ("sd15", 7.0), ("vp-linear", 3.0), ("flow", 12.5)):
        ns = preset(name)
        n = 8
        smax = float(_sigma(ns, ns.t_max))
        smin = float(_sigma(ns, ns.t_min))
        want = [
            (smax ** (1 / rho) + i / n * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
            for i in range(n + 1)
        ]
        got = _sigma(ns, S.karras(ns, n, rho=rho))
        np.testing.assert_allclose(got, want, rtol=1e-9)
    # EDM: t is sigma itself.
    ns = preset("edm")
    want = [(80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(5)]
    np.testing.assert_allclose(_np(S.karras(ns, 4)), want, rtol=1e-12)


def test_time_uniform_quadratic_logsnr_formulas():
    ns = preset("vp-linear")
    np.testing.assert_allclose(_np(S.time_uniform(ns, 4)), np.linspace(1.0, 1e-3, 5), rtol=1e-12)
    q = np.linspace(1.0, math.sqrt(1e-3), 6) ** 2
    np.testing.assert_allclose(_np(S.time_quadratic(ns, 5)), q, rtol=1e-12)
    lam = _np(ns.lam(S.logsnr_uniform(ns, 7)))
    np.testing.assert_allclose(np.diff(lam), np.full(7, (lam[-1] - lam[0]) / 7), rtol=1e-9)


def test_polyexponential_formula_and_rho1_is_logsnr():
    ns = preset("sd15")
    smax, smin = float(_sigma(ns, 1.0)), float(_sigma(ns, 1e-3))
    n, rho = 6, 2.5
    want = [
        math.exp(math.log(smin) + (1 - i / n) ** rho * (math.log(smax) - math.log(smin)))
        for i in range(n + 1)
    ]
    np.testing.assert_allclose(_sigma(ns, S.polyexponential(ns, n, rho)), want, rtol=1e-9)
    np.testing.assert_allclose(
        _np(S.polyexponential(ns, 9)), _np(S.logsnr_uniform(ns, 9)), rtol=1e-10
    )


@pytest.mark.parametrize("c", [0.5, 1.0, 3.0])
def test_kl_optimal_closed_form(c):
    for name in ("edm", "sd15", "flow"):
        ns = preset(name)
        n = 7
        smax, smin = float(_sigma(ns, ns.t_max)), float(_sigma(ns, ns.t_min))
        want = [
            c * math.tan((1 - i / n) * math.atan(smax / c) + i / n * math.atan(smin / c))
            for i in range(n + 1)
        ]
        got = _sigma(ns, S.kl_optimal(ns, n, c=c))
        np.testing.assert_allclose(got, want, rtol=1e-9)


def _euler_gaussian_kl(t, c):
    """KL(Euler output || true data marginal at t_min) for data N(0, c^2), sigma(t) = t,
    x_T ~ N(0, t_max^2): x_0 = prod_i (t_{i+1} t_i + c^2) / (t_i^2 + c^2) x_T (decreasing t)."""
    t = _np(t)
    factor = np.prod((t[1:] * t[:-1] + c**2) / (t[:-1] ** 2 + c**2))
    v = factor**2 * t[0] ** 2
    w = c**2 + t[-1] ** 2
    return 0.5 * (v / w - 1.0 - math.log(v / w))


@pytest.mark.parametrize("c", [0.5, 1.0])
@pytest.mark.parametrize("nfe", [3, 6, 10])
def test_kl_optimal_beats_other_schedules_on_gaussian_data(c, nfe):
    ns = preset("edm")
    kl_opt = _euler_gaussian_kl(S.kl_optimal(ns, nfe, c=c), c)
    for other in (S.karras(ns, nfe), S.logsnr_uniform(ns, nfe), S.time_uniform(ns, nfe)):
        assert kl_opt < _euler_gaussian_kl(other, c)
    # And it is a minimum: random monotone perturbations of its theta grid do worse.
    th = np.arctan(_np(S.kl_optimal(ns, nfe, c=c)) / c)
    rng = np.random.default_rng(0)
    for _ in range(20):
        h = np.diff(th) * np.exp(0.2 * rng.standard_normal(nfe))
        h *= (th[-1] - th[0]) / h.sum()
        t = c * np.tan(np.concatenate([[th[0]], th[0] + np.cumsum(h)]))
        t[-1] = ns.t_min
        assert kl_opt < _euler_gaussian_kl(t, c)


def _all_sigma_helpers(sigma_max, sigma_min, p):
    return jnp.stack(
        [
            S.karras_sigmas(sigma_max, sigma_min, 5, p),
            S.polyexponential_sigmas(sigma_max, sigma_min, 5, p),
            S.kl_optimal_sigmas(sigma_max, sigma_min, 5, p),
        ]
    )


def test_sigma_helpers_jit_vmap_grad():
    eager = _np(_all_sigma_helpers(80.0, 0.002, 2.0))
    assert np.all(eager[:, 0] == 80.0) and np.all(eager[:, -1] == 0.002)
    assert np.all(np.diff(eager, axis=1) < 0)

    @jax.jit
    def traced(p):
        values = _all_sigma_helpers(80.0, 0.002, p)
        grads = jax.grad(lambda q: _all_sigma_helpers(80.0, 0.002, q)[:, 2].sum())(p)
        batched = jax.vmap(lambda r: _all_sigma_helpers(80.0, 0.002, r))(jnp.stack([p, 2 * p]))
        return values, grads, batched, _all_sigma_helpers(80.0, 0.002, 2 * p)

    values, grads, batched, second = traced(2.0)
    np.testing.assert_allclose(_np(values), eager, rtol=1e-12)
    assert np.isfinite(float(grads))
    np.testing.assert_allclose(_np(batched[0]), eager, rtol=1e-12)
    np.testing.assert_allclose(_np(batched[1]), _np(second), rtol=1e-12)


def test_public_functions_work_inside_a_users_jit():
    ns, edm = preset("sd15"), preset("edm")

    @jax.jit
    def f(x):
        ts = S.karras(ns, 3)
        return x * ts + S.ays(ns, 3) + jnp.asarray(S.to_comfyui(S.karras(edm, 3), edm))

    ts = _np(S.karras(ns, 3))
    want = 2.0 * ts + _np(S.ays(ns, 3)) + np.array(S.to_comfyui(S.karras(edm, 3), edm))
    np.testing.assert_allclose(_np(f(2.0)), want, rtol=1e-12)


def test_steps_finer_than_float32_raise():
    ns = preset("sd15")
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="not give strictly decreasing float32 times"):
            S.time_uniform(ns, 100, t_start=0.5, t_end=0.5 - 1e-6)
    assert S.time_uniform(ns, 100, t_start=0.5, t_end=0.5 - 1e-6).dtype == jnp.float64


def test_float32_mode_matches_float64():
    ns = preset("sd15")
    want = _np(S.karras(ns, 10))
    with jax.enable_x64(False):
        got = S.karras(ns, 10)
        assert got.dtype == jnp.float32
        S.check_schedule(got, ns)
    np.testing.assert_allclose(_np(got), want, rtol=2e-6)


# --------------------------------------------------------------------------------------
# AYS tables and log-linear interpolation
# --------------------------------------------------------------------------------------


def test_sd15_ays_timesteps_convert_to_published_sigmas():
    ns = preset("sd15")
    t = ns.t_from_index(jnp.asarray(SD15_AYS_TIMESTEPS))
    np.testing.assert_allclose(np.round(_sigma(ns, t), 4), SD15_AYS_SIGMAS, atol=1e-12)


def test_ays_ten_steps_is_the_table():
    ns = preset("sd15")
    sig = _sigma(ns, S.ays(ns, 10))
    table = _np(S.AYS_TABLES["sd15"])
    np.testing.assert_allclose(sig[1:-1], table[1:-1], rtol=1e-9)
    np.testing.assert_allclose(sig[[0, -1]], table[[0, -1]], atol=5e-4)  # snapped ends
    # The published sigmas lie between training steps; diffusers evaluates the nearest steps.
    with pytest.raises(ValueError, match="lies between steps"):
        S.to_diffusers(S.ays(ns, 10), ns)

    def steps(t, noise):
        return noise.index_from_t(S.on_training_steps(t, noise)).tolist()

    # The published sigma 0.399 sits at step 124.6 (step 124 has sigma 0.3977): step 125.
    got = steps(S.ays(ns, 10), ns)
    assert got[:8] == SD15_AYS_TIMESTEPS[:8] and got[9:] == SD15_AYS_TIMESTEPS[9:]
    assert got[8] == 125
    assert steps(S.ays(ns, 10, "sdxl"), ns) == [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0]
    cos = preset("cosine")
    assert steps(S.ays(cos, 10, "deepfloyd-if"), cos) == [
        995, 920, 811, 686, 555, 418, 315, 174, 109, 12, 0,
    ]


def test_ays_twenty_steps_are_geometric_midpoints():
    ns = preset("edm")
    table = _np(S.AYS_TABLES["sd15"])
    sig = _np(S.ays(ns, 20))
    np.testing.assert_allclose(sig[::2], table, rtol=1e-12)
    np.testing.assert_allclose(sig[1::2], np.sqrt(table[:-1] * table[1:]), rtol=1e-12)


def test_ays_out_of_range_table_raises_and_rescale_works():
    ns = preset("sd15")
    with pytest.raises(ValueError, match=r"model='svd'.*700.*not clipped.*t_start"):
        S.ays(ns, 10, "svd")
    with pytest.raises(ValueError, match=r"model='deepfloyd-if'"):
        S.ays(ns, 10, "deepfloyd-if")  # 160 > sigma_max 14.6
    # Covered by an EDM process with sigma_max = 700: the table as published.
    t = _np(S.ays(EDM(t_min=0.002, t_max=700.0), 10, "svd"))
    np.testing.assert_allclose(t, S.AYS_TABLES["svd"], rtol=1e-12)
    # Rescale mode: end points as requested, normalised log-sigma positions as the table.
    t = _np(S.ays(ns, 10, "svd", t_start=1.0))
    assert t[0] == 1.0 and t[-1] == ns.t_min
    ls = np.log(_sigma(ns, t))
    lt = np.log(_np(S.AYS_TABLES["svd"]))
    np.testing.assert_allclose(
        (ls - ls[-1]) / (ls[0] - ls[-1]), (lt - lt[-1]) / (lt[0] - lt[-1]), atol=1e-6
    )


def test_loglinear_interp():
    s = np.array([14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029])
    out = _np(S.loglinear_interp(s, 21))
    mid = np.empty(21)
    mid[::2] = s
    mid[1::2] = np.sqrt(s[:-1] * s[1:])
    np.testing.assert_allclose(out, mid, rtol=1e-12)
    np.testing.assert_allclose(_np(S.loglinear_interp(s, 11)), s, rtol=1e-14)
    assert _np(S.loglinear_interp(s, 2)).tolist() == [14.615, 0.029]
    inc = _np(S.loglinear_interp(s[::-1].copy(), 21))  # increasing input works too
    np.testing.assert_allclose(inc, mid[::-1], rtol=1e-12)
    jitted = jax.jit(S.loglinear_interp, static_argnums=1)(jnp.asarray(s), 21)
    np.testing.assert_allclose(_np(jitted), mid, rtol=1e-12)
    assert S.loglinear_interp(s.astype(np.float32), 5).dtype == jnp.float32


@pytest.mark.parametrize(
    "sigmas, num_points, exc, match",
    [
        ([3.0, 2.0, 1.0], 1, ValueError, "num_points must be an integer >= 2"),
        ([3.0, 2.0, 1.0], 2.0, TypeError, "num_points"),
        ([3.0], 5, ValueError, "at least 2"),
        ([[3.0, 2.0]], 5, ValueError, "1-D"),
        ([3.0, -1.0], 5, ValueError, "> 0"),
        ([3.0, float("nan")], 5, ValueError, "finite"),
        ([3.0, 1.0, 2.0], 5, ValueError, "monotone"),
        (np.array([3, 2, 1]), 5, TypeError, "floating"),
        ("abc", 5, TypeError, "sigmas must be a 1-D array"),
    ],
)
def test_loglinear_interp_rejects(sigmas, num_points, exc, match):
    with pytest.raises(exc, match=match):
        S.loglinear_interp(sigmas, num_points)


# --------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ALL))
def test_bad_common_arguments(kind):
    f = ALL[kind]
    ns = preset("sd15")
    for nfe, exc in ((0, ValueError), (-2, ValueError), (2.5, TypeError), (True, TypeError),
                     ("3", TypeError), (None, TypeError)):
        with pytest.raises(exc, match=r"nfe must be an integer in \[1, 1000\].*intervals"):
            f(ns, nfe)
    with pytest.raises(TypeError, match="noise must be a hso_jax.noise.NoiseSchedule"):
        f("sd15", 5)
    with pytest.raises(ValueError, match=r"t_start must lie in \[t_min, t_max\].*got 1.5"):
        f(ns, 5, t_start=1.5)
    with pytest.raises(ValueError, match=r"t_end must lie in .*got 0"):
        f(ns, 5, t_end=0.0)
    with pytest.raises(ValueError, match="t_start must be greater than t_end"):
        f(ns, 5, t_start=0.3, t_end=0.5)
    with pytest.raises(ValueError, match="t_start must be finite"):
        f(ns, 5, t_start=float("nan"))
    with pytest.raises(TypeError, match="t_end must be a concrete real number"):
        f(ns, 5, t_end="0.1")
    # Rounding-level overshoot of a bound is the bound itself.
    t = _np(f(ns, 3, t_start=1.0 + 1e-7))
    assert t[0] == 1.0


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda ns: S.karras(ns, 5, rho=0.0), ValueError, r"rho must lie in \[0.01, 100\], got 0"),
        (lambda ns: S.karras(ns, 5, rho=-7), ValueError, r"rho must lie in \[0.01, 100\], got -7"),
        (lambda ns: S.karras(ns, 5, rho=float("inf")), ValueError, "rho must be finite"),
        (lambda ns: S.karras(ns, 5, rho="7"), TypeError, "rho must be a concrete real"),
        (lambda ns: S.polyexponential(ns, 5, rho=-1.0), ValueError, r"rho must lie in \[0.01, 10"),
        (lambda ns: S.kl_optimal(ns, 5, c=0), ValueError, r"c must lie in \[0.001, 1000\], got 0"),
        (lambda ns: S.kl_optimal(ns, 5, c=[1.0]), TypeError, r"c must be a real number"),
        (lambda ns: S.ays(ns, 5, model="sd21"), ValueError, r"model must be one of \['deepfloyd"),
        (lambda ns: S.ays(ns, 5, model=None), ValueError, r"model must be one of"),
        (lambda ns: S.karras_sigmas(1.0, 2.0, 0), ValueError, "nfe must be an integer"),
        (lambda ns: S.karras_sigmas(80.0, 0.002, 4, rho=0.0), ValueError, "rho must be > 0"),
        (lambda ns: S.karras_sigmas(-1.0, 0.002, 4), ValueError, "sigma_max must be > 0"),
        (lambda ns: S.polyexponential_sigmas(80.0, 0.0, 4), ValueError, "sigma_min must be > 0"),
        (lambda ns: S.kl_optimal_sigmas(80.0, 0.1, 4, c=-1), ValueError, "c must be > 0"),
        (lambda ns: S.kl_optimal_sigmas(np.ones(2), 0.1, 4), ValueError, "sigma_max must be a"),
    ],
)
def test_bad_specific_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(preset("sd15"))


# --------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------


def test_to_diffusers():
    ns = preset("sd15")
    # 5 network points on training steps, then the data end
    ts = np.array([1.0, 0.8, 0.55, 0.3, 0.1, 0.0])
    out = S.to_diffusers(ts, ns)
    assert set(out) == {"timesteps", "sigmas", "final_sigmas_type", "nfe"}
    assert out["timesteps"] == [999, 799, 549, 299, 99] and out["nfe"] == 5
    assert all(type(k) is int for k in out["timesteps"])
    assert out["final_sigmas_type"] == "zero" and out["sigmas"][-1] == 0.0
    ac = ns.alphas_cumprod  # diffusers' sigma of step k: sqrt((1 - abar_k) / abar_k)
    want = np.sqrt((1 - ac[out["timesteps"]]) / ac[out["timesteps"]])
    np.testing.assert_allclose(out["sigmas"][:-1], want, rtol=1e-12)
    # ending at t_min: diffusers' final_sigmas_type="sigma_min", sigma of step 0
    t_min = S.to_diffusers(np.append(ts[:-1], ns.t_min), ns)
    assert t_min["final_sigmas_type"] == "sigma_min" and t_min["timesteps"] == out["timesteps"]
    np.testing.assert_allclose(t_min["sigmas"][-1], np.sqrt((1 - ac[0]) / ac[0]), rtol=1e-12)
    custom = VPDiscrete.from_betas(np.linspace(1e-4, 0.02, 50))
    assert S.to_diffusers(np.array([1.0, 0.5, 0.0]), custom)["timesteps"] == [49, 24]
    res = hj.optimize(ns, nfe=4, target="diffusers:dpm-solver-pp")  # a result: its schedule
    assert S.to_diffusers(res, ns)["timesteps"] == res.timesteps[:-1].tolist()
    assert S.to_comfyui(res, ns)[-1] == 0.0


def test_to_diffusers_rejects():
    ns = preset("sd15")
    with pytest.raises(ValueError, match="continuous"):
        S.to_diffusers(S.karras(preset("edm"), 5), preset("edm"))
    # off the training steps: diffusers would run at step 499, another trajectory
    with pytest.raises(ValueError, match=r"t\[1\] = 0.5002 lies between steps.*step 499"):
        S.to_diffusers(np.array([1.0, 0.5002, 0.0]), ns)
    # a free end (HSO's multistep flavour): diffusers ends at 0 or t_min only
    with pytest.raises(ValueError, match=r"ends at t = 0.0123.*final_sigmas_type='zero'"):
        S.to_diffusers(np.array([1.0, 0.5, 0.0123]), ns)
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.to_diffusers(np.array([0.001, 1.0]), ns)
    with pytest.raises(TypeError, match="noise must be"):
        S.to_diffusers(S.karras(ns, 3), None)
    with pytest.raises(TypeError, match="eager"):
        jax.jit(lambda t: S.to_diffusers(t, ns)["sigmas"])(jnp.array([1.0, 0.5, 0.0]))


def test_to_comfyui_is_the_schedule_as_it_is():
    ns = preset("sd15")
    ts = np.array([1.0, 0.6, 0.3, 0.1, 0.0])
    a = S.to_comfyui(ts, ns)
    np.testing.assert_allclose(a[:-1], _sigma(ns, ts[:-1]), rtol=1e-12)
    assert len(a) == 5 and a[-1] == 0.0 and all(type(x) is float for x in a)
    free = S.to_comfyui(np.array([1.0, 0.6, 0.3, 0.1, 0.0123]), ns)  # a free end is kept
    np.testing.assert_allclose(free[-1], _sigma(ns, np.array([0.0123]))[0], rtol=1e-12)
    edm = preset("edm")
    np.testing.assert_allclose(S.to_comfyui(S.karras(edm, 3), edm), _np(S.karras(edm, 3)))
    flow = preset("flow")  # ComfyUI's flow models read sigma as the flow time t
    np.testing.assert_allclose(S.to_comfyui(S.karras(flow, 3), flow), _np(S.karras(flow, 3)))


def test_to_comfyui_rejects():
    ns = preset("sd15")
    with pytest.raises(ValueError, match="ComfyUI evaluates a discrete-time model on training"):
        S.to_comfyui(S.karras(ns, 4), ns)
    with pytest.raises(ValueError, match="must lie in"):
        S.to_comfyui(np.array([2.0, 0.5]), ns)
    with pytest.raises(TypeError, match="integer dtype"):
        S.to_comfyui(np.array([999, 0]), ns)


def test_on_training_steps():
    ns = preset("sd15")
    t = S.on_training_steps(np.array([1.0, 0.6004, 0.6001, 0.3, 0.0123]), ns)
    # nearest steps, a collision pushed one step down, the free end kept
    np.testing.assert_array_equal(t, [1.0, 0.6, 0.599, 0.3, 0.0123])
    t = S.on_training_steps(np.array([1.0, 0.5, 0.0016, 0.0014, 0.0]), ns)
    np.testing.assert_array_equal(t, [1.0, 0.5, 0.002, 0.001, 0.0])
    with pytest.raises(ValueError, match="do not fit on distinct training steps"):
        S.on_training_steps(np.array([1.0, 0.5, 0.0025, 0.0021, 0.001]), ns)
    with pytest.raises(ValueError, match="needs a discrete-time process"):
        S.on_training_steps(np.array([1.0, 0.0]), preset("flux-dev"))
    assert S.end_of(t, ns) == "zero" and S.end_of(np.array([1.0, 0.001]), ns) == "t_min"
    assert S.end_of(np.array([1.0, 0.01]), ns) == "free"


# --------------------------------------------------------------------------------------
# check_schedule
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts, exc, match",
    [
        (np.array([0.5, 0.7, 0.1]), ValueError, r"strictly decreasing.*ts\[0\]"),
        (np.array([0.5, 0.5, 0.1]), ValueError, "strictly decreasing"),
        (np.array([0.5, np.nan, 0.1]), ValueError, r"finite; ts\[1\] = nan"),
        (np.array([1.5, 0.5, 0.1]), ValueError, r"must lie in \[t_min, t_max\]"),
        (np.array([0.5, 0.1, 1e-5]), ValueError, r"must lie in \[t_min, t_max\]"),
        (np.array([999, 500, 0]), TypeError, "integer dtype.*t_from_index"),
        (np.array([[0.5, 0.1]]), ValueError, "1-D"),
        (np.array([0.5]), ValueError, "at least 2 points"),
        (np.array([True, False]), TypeError, "floating-point"),
        ("0.5, 0.1", TypeError, "1-D array of times"),
    ],
)
def test_check_schedule_rejects(ts, exc, match):
    with pytest.raises(exc, match=match):
        S.check_schedule(ts, preset("sd15"))


def test_check_schedule_accepts():
    ns = preset("sd15")
    out = S.check_schedule([1.0, 0.5, 0.001], ns)
    assert isinstance(out, jax.Array)
    S.check_schedule(np.array([1.0 + 1e-7, 0.001]), ns)  # rounding-level overshoot
    S.check_schedule(np.array([5.0, -3.0]))  # no range check without a process
    assert jax.jit(lambda t: S.check_schedule(t, ns) * 2)(jnp.array([0.5, 0.1])).shape == (2,)


def test_baseline_name_table():
    """``baseline(name, ...)`` is the function of that name; ``"uniform"`` is ``"time"``; an
    unknown name lists the known ones."""
    ns = hj.noise.preset("sd15")
    np.testing.assert_array_equal(
        hj.schedules.baseline("karras", ns, 5, rho=3.0), hj.schedules.karras(ns, 5, rho=3.0)
    )
    np.testing.assert_array_equal(
        hj.schedules.baseline("uniform", ns, 4), hj.schedules.time_uniform(ns, 4)
    )
    with pytest.raises(ValueError, match=r"unknown baseline schedule 'kara'; known: \["):
        hj.schedules.baseline("kara", ns, 5)
    with pytest.raises(TypeError):
        hj.schedules.BASELINES["x"] = hj.schedules.karras  # read-only
