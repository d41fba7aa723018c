"""Grid evaluation (grouping, equality with hso_jax.sample, NFE) and the reference cache."""

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import hso_jax as hj
from hso_jax.evaluation import cache as C
from hso_jax.evaluation import grid as G
from hso_jax.evaluation.metrics import psnr, rmse
from hso_jax.solvers import Solver

NS = hj.noise.VPLinear()
GM = hj.models.GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.5])
MODEL = GM.denoiser(NS)
B = 4


def _logsnr_uniform(n_points, t_end=NS.t_min):
    lam = jnp.linspace(NS.lam(NS.t_max), NS.lam(jnp.asarray(t_end)), n_points)
    return NS.t_from_lam(lam).at[0].set(NS.t_max).at[-1].set(t_end)


@dataclasses.dataclass(frozen=True)
class _TwoCall(Solver):
    """Test solver with two network calls per step (trapezoidal x0 in the DDIM update)."""

    calls_per_step = 2

    def step(self, model, x, state, t_cur, t_next, i, n, key):
        ns = model.noise
        h = ns.lam(t_next) - ns.lam(t_cur)
        ratio, a_t = ns.sigma(t_next) / ns.sigma(t_cur), ns.alpha(t_next)
        x0 = model.x0(x, t_cur)
        x_pred = ratio * x - a_t * jnp.expm1(-h) * x0
        x0_avg = 0.5 * (x0 + model.x0(x_pred, t_next))
        return ratio * x - a_t * jnp.expm1(-h) * x0_avg, state, x0


@pytest.fixture(scope="module")
def setup():
    x_T = NS.prior(jax.random.key(0), (B, 2), jnp.float64)
    ref = jax.random.normal(jax.random.key(1), (B, 2))  # any target works for equality checks
    schedules = {"a4": _logsnr_uniform(4), "b6": _logsnr_uniform(6), "c4": _logsnr_uniform(4, 0.01)}
    solvers = {"ddim": hj.solvers.ddim(), "two": _TwoCall()}
    return x_T, ref, schedules, solvers


# --- grid ----------------------------------------------------------------------------------


def test_grid_mixed_lengths_equal_per_schedule_sampling(setup):
    x_T, ref, schedules, solvers = setup
    traces = []

    def counted_rmse(x, r):
        traces.append(x.shape)  # runs once per compilation (trace), not per schedule
        return rmse(x, r)

    recs = G.evaluate_grid(
        MODEL, x_T, ref, schedules, solvers, metrics={"rmse": counted_rmse, "psnr": psnr}
    )
    # one compiled call per (solver, length): 2 solvers x {4, 6}
    assert len(traces) == 4
    assert [(r.schedule, r.solver) for r in recs] == [(s, v) for s in schedules for v in solvers]
    for r in recs:
        ts, solver = schedules[r.schedule], solvers[r.solver]
        x = hj.sample(MODEL, x_T, ts, solver)
        np.testing.assert_allclose(r.per_sample["rmse"], rmse(x, ref), rtol=1e-10)
        np.testing.assert_allclose(r.per_sample["psnr"], psnr(x, ref), rtol=1e-10)
        assert r.metrics["rmse"] == pytest.approx(float(np.mean(rmse(x, ref))), rel=1e-10)
        assert r.num_points == len(ts)
        assert r.nfe == solver.calls_per_step * (len(ts) - 1)
        assert r.num_nonfinite == 0 and r.samples is None
    assert {r.nfe for r in recs if r.schedule == "b6"} == {5, 10}
    # the outputs themselves, on request (same compiled shapes plus one output)
    kept = G.evaluate_grid(MODEL, x_T, ref, schedules, solvers, return_samples=True)
    for r in kept:
        x = hj.sample(MODEL, x_T, schedules[r.schedule], solvers[r.solver])
        np.testing.assert_allclose(r.samples, x, rtol=1e-12, atol=1e-12)


def test_grid_denoise_final(setup):
    x_T, ref, schedules, solvers = setup
    ts = schedules["a4"]
    (r,) = G.evaluate_grid(MODEL, x_T, ref, {"a4": ts}, {"two": solvers["two"]}, denoise_final=True)
    target = MODEL.x0(ref, NS.t_min)  # the reference gets the same final step
    x = hj.sample(MODEL, x_T, ts, solvers["two"], denoise_final=True)
    np.testing.assert_allclose(r.per_sample["rmse"], rmse(x, target), rtol=1e-10)
    assert r.nfe == 2 * 3 + 1


def test_grid_stochastic_auto_mesh_and_table(setup):
    x_T, ref, schedules, _ = setup
    key = jax.random.key(3)
    solvers = {"sddim": hj.solvers.ddim(eta=1.0)}
    with pytest.raises(ValueError, match="stochastic"):
        G.evaluate_grid(MODEL, x_T, ref, schedules, solvers)
    schedules = {"a4": schedules["a4"]}
    plain = G.evaluate_grid(MODEL, x_T, ref, schedules, solvers, key=key, metrics=["rmse"])
    auto = G.evaluate_grid(
        MODEL, x_T, ref, schedules, solvers, key=key, metrics=["rmse"], mesh="auto"
    )  # one device here: trivially sharded
    for p, a in zip(plain, auto, strict=True):
        x = hj.sample(MODEL, x_T, schedules[p.schedule], solvers["sddim"], key)
        np.testing.assert_allclose(p.per_sample["rmse"], rmse(x, ref), rtol=1e-10)
        np.testing.assert_array_equal(p.per_sample["rmse"], a.per_sample["rmse"])
    table = G.format_table(plain)
    assert table.splitlines()[0] == "| schedule | solver | NFE | rmse |"
    assert len(table.splitlines()) == 2 + len(plain)
    json.dumps([r.to_dict(per_sample=True) for r in plain])


def test_grid_reports_nonfinite(setup):
    x_T, ref, schedules, solvers = setup
    bad = hj.Denoiser(lambda x, t: x * jnp.nan, noise=NS, prediction="x0", time_input="t")
    with pytest.warns(RuntimeWarning, match="NaN/inf"):
        recs = G.evaluate_grid(bad, x_T, ref, {"a4": schedules["a4"]}, {"ddim": solvers["ddim"]})
    assert recs[0].num_nonfinite == B


def test_grid_errors(setup):
    x_T, ref, schedules, solvers = setup
    ev = G.evaluate_grid
    with pytest.raises(ValueError, match="reference must have the shape"):
        ev(MODEL, x_T, ref[:2], schedules, solvers)
    with pytest.raises(TypeError, match="schedules must be a non-empty dict"):
        ev(MODEL, x_T, ref, {}, solvers)
    with pytest.raises(ValueError, match=r"schedules\['bad'\] must be strictly decreasing"):
        ev(MODEL, x_T, ref, {"bad": jnp.array([0.5, 0.9])}, solvers)
    with pytest.raises(TypeError, match=r"solvers\['x'\] must be a hso_jax solver"):
        ev(MODEL, x_T, ref, schedules, {"x": "ddim"})
    with pytest.raises(ValueError, match="metric names must be among"):
        ev(MODEL, x_T, ref, schedules, solvers, metrics=("fid",))
    with pytest.raises(ValueError, match="'auto'"):
        ev(MODEL, x_T, ref, schedules, solvers, mesh="all")
    with pytest.raises(ValueError, match="axis named 'batch'"):
        ev(MODEL, x_T, ref, schedules, solvers, mesh=Mesh(np.array(jax.devices()), ("data",)))
    with pytest.raises(ValueError, match="x_T must be finite"):
        ev(MODEL, x_T.at[0, 0].set(jnp.nan), ref, schedules, solvers)
    with pytest.raises(ValueError, match="one value per sample"):
        ev(MODEL, x_T, ref, schedules, solvers, metrics={"m": lambda x, r: jnp.sum(x)})


# --- reference cache -----------------------------------------------------------------------


class _CountingSolve:
    def __init__(self):
        self.calls = 0

    def __call__(self, model, x_T, t_start, t_end, *, rtol, atol):
        self.calls += 1
        return jnp.asarray(x_T) * 0.5 + t_end


def _cached(x_T, solve, tmp_path, **kw):
    args = dict(key_id="gm2d-v1", cache_dir=tmp_path, rtol=1e-8, atol=1e-8, solve=solve)
    args.update(kw)
    t_end = args.pop("t_end", 0.001)
    return C.cached_reference(MODEL, x_T, 1.0, t_end, **args)


def test_cache_hit_and_miss(tmp_path):
    x_T = jnp.arange(6.0).reshape(3, 2)
    solve = _CountingSolve()
    first = _cached(x_T, solve, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = _cached(x_T, solve, tmp_path)  # hit: no warning, no solve
    assert solve.calls == 1
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, np.arange(6.0).reshape(3, 2) * 0.5 + 0.001)
    # every part of the key matters
    _cached(x_T + 1, solve, tmp_path)
    _cached(x_T, solve, tmp_path, t_end=0.002)
    _cached(x_T, solve, tmp_path, rtol=1e-7)
    _cached(x_T, solve, tmp_path, key_id="other-model")
    _cached(x_T.astype(jnp.float32), solve, tmp_path)
    assert solve.calls == 6
    assert len(list(tmp_path.glob("*.npz"))) == 6
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("damage", ["garbage", "flip", "tamper"])
def test_cache_corruption_detected_and_recomputed(tmp_path, damage):
    x_T = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
    solve = _CountingSolve()
    good = _cached(x_T, solve, tmp_path)
    path = C.reference_cache_path(
        x_T, 1.0, 0.001, key_id="gm2d-v1", rtol=1e-8, atol=1e-8, cache_dir=tmp_path
    )
    assert path.exists()
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "flip":
        raw = bytearray(path.read_bytes())
        for i in range(len(raw) // 3, len(raw) // 3 + 8):
            raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:  # a well-formed npz with altered data and the old checksum
        with np.load(path) as f:
            entries = {k: f[k] for k in f.files}
        entries["x_ref"] = entries["x_ref"] + 1.0
        with open(path, "wb") as fh:
            np.savez(fh, **entries)
    with pytest.warns(UserWarning, match="ignoring cached reference"):
        again = _cached(x_T, solve, tmp_path)
    assert solve.calls == 2
    np.testing.assert_array_equal(again, good)
    _cached(x_T, solve, tmp_path)  # rewritten: a clean hit now
    assert solve.calls == 2


def test_cache_mismatching_key_detected(tmp_path):
    x_a, x_b = jnp.zeros((2, 2)), jnp.ones((2, 2))
    solve = _CountingSolve()
    _cached(x_a, solve, tmp_path)
    kw = dict(key_id="gm2d-v1", rtol=1e-8, atol=1e-8, cache_dir=tmp_path)
    path_a = C.reference_cache_path(x_a, 1.0, 0.001, **kw)
    path_b = C.reference_cache_path(x_b, 1.0, 0.001, **kw)
    assert path_a != path_b
    path_b.write_bytes(path_a.read_bytes())  # a valid file for another problem
    with pytest.warns(UserWarning, match="different problem"):
        got = _cached(x_b, solve, tmp_path)
    np.testing.assert_array_equal(got, np.full((2, 2), 0.501))
    assert solve.calls == 2


def test_cache_default_dir_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HSO_JAX_CACHE", str(tmp_path / "root"))
    x_T = jnp.ones((2, 2))
    solve = _CountingSolve()
    C.cached_reference(MODEL, x_T, 1.0, 0.001, key_id="k", rtol=1e-8, atol=1e-8, solve=solve)
    assert len(list((tmp_path / "root" / "references").glob("k-*.npz"))) == 1
    with pytest.raises(TypeError, match="key_id"):
        _cached(x_T, solve, tmp_path, key_id="")
    with pytest.raises(ValueError, match="NaN/inf"):
        _cached(x_T, lambda m, x, a, b, **k: x * jnp.nan, tmp_path)
    with pytest.raises(ValueError, match="shape"):
        _cached(x_T, lambda m, x, a, b, **k: x[0], tmp_path)
    assert not list(tmp_path.glob("*.npz"))  # failures are never cached


def test_cache_default_solve_is_reference_solve(tmp_path):
    reference = pytest.importorskip("hso_jax.reference.solve")
    x_T = NS.prior(jax.random.key(5), (2, 2))
    got = C.cached_reference(
        MODEL, x_T, NS.t_max, NS.t_min, key_id="gm2d", cache_dir=tmp_path, rtol=1e-6, atol=1e-6
    )
    want = reference.reference_solve(MODEL, x_T, NS.t_max, NS.t_min, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got, want)
