"""AYS optimiser: Gaussian fixed point, the normaliser matters, GMM quality, pipeline, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.optimizers import OptimizeResult
from hso_jax.optimizers.ays import optimize_ays
from hso_jax.schedules import check_schedule

EDM = hj.noise.preset("edm")


def stationary_schedule(c, sigmas, iters=100_000):
    """Fixed point of t_i^2 = c^2 t_{i-1} t_{i+1} / (sqrt((t_{i-1}^2 + c^2)(t_{i+1}^2 + c^2))
    - t_{i-1} t_{i+1}) (the stationarity condition of the Gaussian KLUB), end points fixed."""
    s = np.sort(np.asarray(sigmas, np.float64))
    for _ in range(iters):
        a, b = s[:-2], s[2:]
        new = np.sqrt(c**2 * a * b / (np.sqrt((a**2 + c**2) * (b**2 + c**2)) - a * b))
        if np.max(np.abs(new / s[1:-1] - 1)) < 1e-13:
            break
        s[1:-1] = new
    return s[::-1]


# Gaussian data N(0, std^2 I) with std = 1 != c = 0.5, so the importance sampling is not exact
# in sigma; 64 dimensions x 512 samples per estimate.
STD, DIM, J, N_STEPS = 1.0, 64, 512, 6


@pytest.fixture(scope="module")
def gaussian():
    gm = hj.models.GaussianMixture(np.zeros((1, DIM)), STD)
    model = gm.denoiser(EDM)
    data = gm.sample(jax.random.key(1), J)
    init = np.asarray(hj.schedules.karras(EDM, N_STEPS), np.float64)
    return model, data, init


def _run_gaussian(gaussian, **kw):
    model, data, init = gaussian
    return optimize_ays(
        model, N_STEPS, key=jax.random.key(0), data=data, init=init, subdivide=False,
        rel_tol=None, min_radius=1e-3, progress=False, **kw,
    )


def test_recovers_gaussian_stationary_point(gaussian):
    res = _run_gaussian(gaussian, max_sweeps=100)
    assert res.info["stop_reason"] == "converged"
    ref = stationary_schedule(STD, res.sigmas)
    dev = np.abs(res.sigmas / ref - 1)
    assert dev.max() < 0.02, (res.sigmas, ref)
    # the search moved far from Karras (the optimum is about 30x lower at the top)
    init_sig = np.asarray(EDM.sigma_edm(jnp.asarray(gaussian[2])))
    assert np.abs(init_sig / ref - 1).max() > 1.0
    assert res.info["klub_history"][-1] < 0.2 * res.info["klub_history"][0]


def test_dropping_the_normaliser_breaks_it(gaussian):
    res = _run_gaussian(gaussian, max_sweeps=12, _include_normaliser=False)
    ref = stationary_schedule(STD, res.sigmas)
    assert np.abs(res.sigmas / ref - 1).max() > 0.02


# --- 2-D Gaussian-mixture ring ---------------------------------------------------------------

@pytest.fixture(scope="module")
def ring():
    ang = 2 * np.pi * np.arange(8) / 8
    gm = hj.models.GaussianMixture(np.c_[np.cos(ang), np.sin(ang)], 0.05)
    return gm, gm.denoiser(EDM), gm.sample(jax.random.key(1), 4096)


def test_ring_beats_baselines_at_10_steps(ring):
    gm, model, data = ring
    res = optimize_ays(model, 10, key=jax.random.key(0), data=data, num_samples=512,
                       subdivide=False, progress=False)
    # the search stops at the first sweep that lowers the KLUB by under rel_tol = 1 %
    h = np.asarray(res.info["klub_history"])
    drop = -np.diff(h) / h[:-1]
    assert np.all(drop[:-1] >= 0.01), drop
    if res.info["stop_reason"] == "rel_tol":
        assert drop[-1] < 0.01
    else:
        assert res.info["stop_reason"] == "max_sweeps" and len(drop) == 20 and drop[-1] >= 0.01
    x_T = EDM.prior(jax.random.key(5), (4096, 2), jnp.float32)
    solver = hj.solvers.dpm_solver_pp(order=2)

    def nll(ts):
        x = hj.sample(model, x_T, jnp.asarray(ts, jnp.float32), solver)
        return float(-jnp.mean(gm.log_prob(x)))

    ours = nll(res.t)
    for base in (hj.schedules.karras(EDM, 10), hj.schedules.logsnr_uniform(EDM, 10),
                 hj.schedules.time_uniform(EDM, 10)):
        assert ours < nll(base) - 0.2


def test_pipeline_subdivision_and_interpolation(ring):
    _, model, data = ring
    seen = []
    res = optimize_ays(model, 7, solver="ddim", key=jax.random.key(1), data=data,
                       num_samples=64, max_sweeps=2, refine_sweeps=2, progress=True,
                       callback=seen.append)
    assert isinstance(res, OptimizeResult) and res.method == "ays" and res.solver == "ddim"
    assert res.t.shape == (8,) and res.nfe == 7
    check_schedule(res.t, EDM)
    assert res.t[0] == EDM.t_max and res.t[-1] == EDM.t_min
    levels = res.info["levels"]
    assert [lv["steps"] for lv in levels] == [10, 20, 40]
    s10, s20, s40 = (lv["sigmas"] for lv in levels)
    # subdivision keeps the old points, so 10 and 20 steps are recovered from 40
    np.testing.assert_array_equal(s40[::2], s20)
    np.testing.assert_array_equal(s20[::2], s10)
    expect = hj.schedules.loglinear_interp(jnp.asarray(s40), 8)
    np.testing.assert_allclose(res.sigmas, np.asarray(expect), rtol=1e-6)
    # an NFE that divides 10 interpolates onto the 10-step level's own points, so the
    # subdivision levels change nothing there (why `hso-jax demo --full` skips them at NFE 5)
    for nfe in (2, 5, 10):
        on_40, on_10 = (hj.schedules.loglinear_interp(jnp.asarray(s), nfe + 1) for s in (s40, s10))
        np.testing.assert_allclose(np.asarray(on_40), np.asarray(on_10), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(on_10), s10[:: 10 // nfe], rtol=1e-12)
    assert res.info["network_evaluations"] > 0 and res.info["candidate_evaluations"] > 0
    sweeps = [d for d in seen if "klub" in d]
    assert {"level", "sweep", "klub", "elapsed", "t", "sigmas"} <= set(sweeps[0])
    assert [d["level"] for d in sweeps].count(10) == res.info["sweeps"]
    # within each sweep / pass: the fraction of its candidate scoring done, rising to 1
    scoring = [d for d in seen if "klub" not in d]
    assert scoring and set(scoring[0]) == {"level", "sweep", "scored", "elapsed"}
    for key in {(d["level"], d["sweep"]) for d in sweeps}:
        f = [d["scored"] for d in scoring if (d["level"], d["sweep"]) == key]
        assert f[-1] == pytest.approx(1.0) and np.all(np.diff(f) > 0), (key, f)
    assert np.isfinite(res.objective) and res.objective > 0
    assert res.params["init"] == "karras-rho7" and res.options["num_samples"] == 64


def test_validation_rule_keeps_best_iterate(ring):
    _, model, data = ring
    scores = iter([5.0, 3.0, 4.0, 4.5, 1.0, 0.0])
    seen = []

    def validation(t):
        seen.append(np.array(t))
        return next(scores)

    res = optimize_ays(model, 10, key=jax.random.key(2), data=data, num_samples=64,
                       validation=validation, patience=2, rel_tol=None, subdivide=False,
                       progress=False)
    assert res.info["stop_reason"] == "validation"
    assert res.info["sweeps"] == 3 and res.info["best_sweep"] == 1
    assert res.info["validation_history"] == [5.0, 3.0, 4.0, 4.5]
    np.testing.assert_allclose(res.t, seen[1], rtol=1e-12)


def test_held_out_klub_validation(ring):
    """``validation="klub"``: an independent estimate of the same bound (close to the search's
    own at the initialisation, not equal to it), and the kept iterate is its argmin."""
    _, model, data = ring
    res = optimize_ays(model, 10, key=jax.random.key(2), data=data, num_samples=64,
                       validation="klub", patience=2, rel_tol=None, max_sweeps=6,
                       subdivide=False, progress=False)
    v, k = res.info["validation_history"], res.info["klub_history"]
    assert res.options["validation"] == "klub" and len(v) == len(k) == res.info["sweeps"] + 1
    assert v[0] != k[0] and abs(v[0] - k[0]) < 0.25 * k[0]
    assert res.info["best_sweep"] == int(np.argmin(v))
    assert res.info["stop_reason"] in ("validation", "max_sweeps", "converged")


def test_reproducible_and_key_dependent(ring):
    _, model, data = ring
    kw = dict(data=data, num_samples=64, max_sweeps=2, subdivide=False, progress=False)
    a = optimize_ays(model, 10, key=jax.random.key(3), **kw)
    b = optimize_ays(model, 10, key=jax.random.key(3), **kw)
    c = optimize_ays(model, 10, key=jax.random.key(4), **kw)
    np.testing.assert_array_equal(a.t, b.t)
    assert a.info["klub_history"] == b.info["klub_history"]
    assert not np.array_equal(a.t, c.t)
    # the same answer without jax_enable_x64 (float32 everywhere in the user's program)
    with jax.enable_x64(False):
        d = optimize_ays(model, 10, key=jax.random.key(3), **kw)
    np.testing.assert_allclose(d.t, a.t, rtol=1e-6)
    np.testing.assert_allclose(d.info["klub_history"], a.info["klub_history"], rtol=1e-5)


def test_dispatch_through_hso_jax_optimize(ring):
    _, model, data = ring
    res = hj.optimize(model, 10, method="ays", data=data, key=jax.random.key(3),
                      num_samples=64, max_sweeps=2, subdivide=False, progress=False)
    direct = optimize_ays(model, 10, solver="unipc", key=jax.random.key(3), data=data,
                          num_samples=64, max_sweeps=2, subdivide=False, progress=False)
    assert res.method == "ays"
    np.testing.assert_array_equal(res.t, direct.t)


def test_discrete_time_model_starts_time_uniform(ring):
    gm, _, data = ring
    ns = hj.noise.preset("ddpm")
    res = optimize_ays(gm.denoiser(ns), 5, key=jax.random.key(0), data=data, num_samples=32,
                       max_sweeps=1, subdivide=False, progress=False)
    assert res.params["init"] == "time-uniform"
    check_schedule(res.t, ns)
    assert res.timesteps is not None and res.timesteps[0] == 999 and res.timesteps[-1] == 0


def test_bad_inputs_name_the_argument(ring):
    _, model, data = ring
    key = jax.random.key(0)

    def run(**kw):
        args = dict(key=key, data=data, num_samples=16, max_sweeps=1, subdivide=False,
                    progress=False)
        args.update(kw)
        return optimize_ays(model, 10, **args)

    with pytest.raises(ValueError, match="shape"):
        run(shape=(3,))
    with pytest.raises(ValueError, match="data of sample shape \\(3,\\)"):
        run(data=jnp.zeros((64, 3)))
    with pytest.raises(ValueError, match="at least 8 samples"):
        run(data=data[:5])
    with pytest.raises(ValueError, match="num_samples=9000 exceeds"):
        run(num_samples=9000)
    with pytest.raises(ValueError, match="init must lie in"):
        run(init=np.array([100.0, 1.0, 0.002]))
    with pytest.raises(ValueError, match="init must be strictly decreasing"):
        run(init=np.array([0.002, 1.0, 80.0]))
    with pytest.raises(ValueError, match="init must have at least 3 points"):
        run(init=np.array([80.0, 0.002]))
    for c in (0.0, -0.5):
        with pytest.raises(ValueError, match="c \\(importance-sampling constant\\)"):
            run(c=c)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        run(key=None)
    with pytest.raises(ValueError, match="solver must be"):
        run(solver="rk45")
    with pytest.raises(ValueError, match="nfe"):
        optimize_ays(model, 0, key=key, data=data)
    with pytest.raises(ValueError, match="candidates"):
        run(candidates=1)
    with pytest.raises(ValueError, match="rel_tol"):
        run(rel_tol=-1.0)
    with pytest.raises(TypeError, match="validation"):
        run(validation=3)
    with pytest.raises(TypeError, match="model must be"):
        optimize_ays(EDM, 10, key=key, data=data)
