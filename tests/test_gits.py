"""GITS: DP == brute force, cost matrix == explicit DDIM steps, GM-teacher schedules, the
official code's schedules, errors.

Reference schedules: ``benchmarks/results/gits_official.json`` was produced by
``benchmarks/gits_official.py``, which runs the official GITS code (zju-pi/diff-sampler,
``gits-main``) on a 64-D Gaussian mixture with its default settings.
"""

import inspect
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.optimizers import OptimizeResult
from hso_jax.optimizers import gits as gits_mod
from hso_jax.optimizers.gits import gits_cost_matrix, gits_dp, optimize_gits
from hso_jax.reference.teacher import Teacher, teacher_trajectories
from hso_jax.schedules import check_schedule

DDPM = hj.noise.preset("ddpm")
EDM = hj.noise.preset("edm")
K, B = 25, 8  # teacher grid points (24 intervals: divisible by 4 and 6 steps), samples
OFFICIAL = Path(__file__).resolve().parents[1] / "benchmarks/results/gits_official.json"


def weighted(cost, path, coeff):
    return sum(coeff**m * cost[a, b] for m, (a, b) in enumerate(itertools.pairwise(path)))


# --- dynamic programming ---------------------------------------------------------------------


def brute_force(cost, n, coeff):
    k = cost.shape[0]
    best = None
    for inner in itertools.combinations(range(1, k - 1), n - 1):
        path = (0, *inner, k - 1)
        v = weighted(cost, path, coeff)
        if best is None or v < best[1]:
            best = (path, v)
    return best


@pytest.mark.parametrize("coeff", [1.0, 1.15])
def test_dp_equals_brute_force(coeff):
    rng = np.random.default_rng(0)
    k = 9
    for trial in range(4):
        cost = rng.uniform(0.1, 2.0, (k, k))
        if trial % 2:  # the official code leaves zeros below the diagonal: they must be ignored
            cost = np.triu(cost, 1)
        else:
            cost[np.tril_indices(k)] = np.inf
        for n in range(1, k):
            idx, val = gits_dp(cost, n, coeff)
            path, ref = brute_force(cost, n, coeff)
            assert idx.dtype.kind == "i" and tuple(idx) == path, (n, idx, path)
            assert val == pytest.approx(ref, rel=1e-12)


def test_dp_ties_take_the_smallest_index():
    idx, val = gits_dp(np.ones((7, 7)), 3, 1.0)
    assert idx.tolist() == [0, 1, 2, 6] and val == 3.0


def test_dp_validation():
    cost = np.triu(np.ones((5, 5)), 1)
    for n in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="num_steps"):
            gits_dp(cost, n)
    for c in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="coeff"):
            gits_dp(cost, 2, c)
    with pytest.raises(ValueError, match="square"):
        gits_dp(np.ones((4, 5)), 2)
    bad = cost.copy()
    bad[1, 3] = np.inf
    with pytest.raises(ValueError, match=r"cost\[1, 3\]"):
        gits_dp(bad, 2)


# --- a Gaussian-mixture teacher --------------------------------------------------------------


@pytest.fixture(scope="module")
def gm():
    means = np.array([[1.0, 0.5], [-1.0, -0.5], [0.3, -1.2]])
    model = hj.models.GaussianMixture(means, 0.15).denoiser(DDPM)
    x_T = DDPM.prior(jax.random.key(0), (B, 2))
    teacher = teacher_trajectories(model, x_T, num_points=K)
    return model, x_T, teacher, gits_cost_matrix(teacher, DDPM, "l2")


def test_cost_matrix_equals_explicit_ddim_steps(gm):
    model, _, te, cost = gm
    assert cost.shape == (K, K) and cost.dtype == np.float64
    upper = np.triu(np.ones((K, K), bool), 1)
    assert np.all(np.isinf(cost[~upper])) and np.all(np.isfinite(cost[upper]))
    assert np.all(cost[upper] > 0)
    t = np.asarray(te.t, np.float64)
    for i, j in [(0, 1), (0, K - 1), (3, 10), (10, 11), (12, 20), (K - 2, K - 1)]:
        x_j = hj.sample(model, te.x[i], jnp.asarray([t[i], t[j]]), hj.solvers.ddim())
        err = (x_j - te.x[j]) / DDPM.alpha(t[j])
        ref = float(jnp.mean(jnp.linalg.norm(err.reshape(B, -1), axis=1)))
        assert cost[i, j] == pytest.approx(ref, rel=1e-5), (i, j)


def test_cost_matrix_in_blocks(gm, monkeypatch):
    """Large teachers are scored in blocks of pairs; 300 pairs in blocks of 7 leave a remainder."""
    _, _, te, cost = gm
    monkeypatch.setattr(gits_mod, "_BLOCK_ELEMENTS", 7 * B * 2)
    np.testing.assert_allclose(gits_cost_matrix(te, DDPM, "l2"), cost, rtol=1e-10)


def test_cost_matrix_is_frame_independent(gm):
    """The same trajectories written in EDM's frame (alpha = 1, t = sigma_edm) cost the same."""
    _, _, te, cost = gm
    t = np.asarray(te.t, np.float64)
    alpha = np.asarray(DDPM.alpha(t)).reshape(-1, 1, 1)
    edm_teacher = Teacher(t=jnp.asarray(DDPM.sigma_edm(t)), lam=te.lam, x=te.x / alpha, x0=te.x0)
    np.testing.assert_allclose(gits_cost_matrix(edm_teacher, EDM, "l2"), cost, rtol=1e-9)
    for metric in ("dev", "l1"):
        np.testing.assert_allclose(
            gits_cost_matrix(edm_teacher, EDM, metric), gits_cost_matrix(te, DDPM, metric),
            rtol=1e-9, atol=1e-12,
        )  # fmt: skip


def test_dev_and_l1_costs_equal_their_formulas(gm):
    """``dev``: the step's distance from the line through the sample's end points minus the
    teacher's (EDM frame), batch mean; ``l1``: the batch mean of the L1 error."""
    model, _, te, _ = gm
    t = np.asarray(te.t, np.float64)
    y = np.asarray(te.x, np.float64) / np.asarray(DDPM.alpha(t)).reshape(-1, 1, 1)
    s = np.asarray(DDPM.sigma_edm(t))
    dev_cost, l1_cost = gits_cost_matrix(te, DDPM, "dev"), gits_cost_matrix(te, DDPM, "l1")
    assert np.all(np.isinf(dev_cost[np.tril_indices(K)]))

    def dist_to_line(z, b):  # 2-D: |cross product| / |direction|
        a, c = y[0, b], y[-1, b]
        d, w = c - a, c - z
        return abs(d[0] * w[1] - d[1] * w[0]) / np.hypot(*d)

    for i, j in [(0, 1), (0, K - 1), (3, 10), (12, 20), (K - 2, K - 1)]:
        y_hat = y[i] + (s[j] - s[i]) * (y[i] - np.asarray(te.x0[i])) / s[i]
        dev = [dist_to_line(y_hat[b], b) - dist_to_line(y[j, b], b) for b in range(B)]
        assert dev_cost[i, j] == pytest.approx(np.mean(dev), rel=1e-9, abs=1e-12), (i, j)
        l1 = np.mean(np.sum(np.abs(y_hat - y[j]), axis=1))
        assert l1_cost[i, j] == pytest.approx(l1, rel=1e-9), (i, j)


def test_cost_matrix_runs_in_float64_without_x64(gm):
    model, _, te, cost = gm
    with jax.enable_x64(False):
        te32 = Teacher(*(jnp.asarray(np.asarray(a, np.float32)) for a in te))
        cost32 = gits_cost_matrix(te32, DDPM, "l2")
        res32 = optimize_gits(model, 6, solver="ddim", teacher=te32, metric="l2")
    res64 = optimize_gits(model, 6, solver="ddim", teacher=te, metric="l2")
    # only the float32 rounding of the stored states differs (~1e-7 of |y| <= 160 at t = 1)
    np.testing.assert_allclose(cost32, cost, rtol=1e-3, atol=1e-4)
    assert res32.params["indices"] == res64.params["indices"]
    np.testing.assert_allclose(res32.t, res64.t, rtol=1e-6)


@pytest.mark.parametrize(
    ("solver", "nfe", "points"), [("ddim", 6, 7), ("unipc", 4, 5), ("heun", 8, 5)]
)
def test_schedule_from_gm_teacher(gm, solver, nfe, points):
    model, _, te, cost = gm
    t_grid = np.asarray(te.t, np.float64)
    for coeff in (1.0, 1.15):
        res = optimize_gits(model, nfe, solver=solver, coeff=coeff, teacher=te, metric="l2")
        assert isinstance(res, OptimizeResult) and res.method == "gits"
        assert res.solver == solver and res.nfe == nfe and res.t.shape == (points,)
        assert res.t.dtype == np.float64 and np.all(np.diff(res.t) < 0)
        check_schedule(res.t, DDPM)
        assert res.t[0] == t_grid[0] == DDPM.t_max and res.t[-1] == t_grid[-1] == DDPM.t_min
        idx = res.params["indices"]
        assert res.params["coeff"] == coeff and res.params["grid_points"] == K
        np.testing.assert_array_equal(res.t, t_grid[idx])
        assert res.objective == pytest.approx(weighted(cost, idx, coeff), rel=1e-12)
        even = np.linspace(0, K - 1, points).round().astype(int)
        assert res.objective <= weighted(cost, even, coeff)
        info = res.info
        assert info["teacher"] == "given" and info["teacher_points"] == K
        assert info["cost_min"] == pytest.approx(cost[np.isfinite(cost)].min())
        assert {"teacher_s", "cost_s", "dp_s", "total_s"} <= set(info["timings"])
        assert not any(isinstance(v, np.ndarray) and v.ndim == 2 for v in info.values())
        assert res.options["coeff"] == coeff and res.options["metric"] == "l2"
        assert info["metric"] == "l2" and info["variant"] == "official"
        res.to_dict()  # JSON-ready


def test_beats_logsnr_uniform_in_sampling_error(gm):
    """DDIM error to the teacher end point: GITS vs the logSNR-uniform schedule of the same NFE
    (on a 24-interval log-SNR grid it is every 4th grid point, i.e. a path through the grid)."""
    model, x_T, te, _ = gm
    uniform = np.asarray(te.t, np.float64)[::4]
    np.testing.assert_allclose(uniform, np.asarray(hj.schedules.logsnr_uniform(DDPM, 6)), 1e-9)
    res = optimize_gits(model, 6, solver="ddim", teacher=te, metric="l2")

    def err(ts):
        x = hj.sample(model, x_T, jnp.asarray(ts), hj.solvers.ddim())
        return float(jnp.mean(jnp.linalg.norm(x - te.x[-1], axis=1)))

    ours, base = err(res.t), err(uniform)
    assert ours < 0.8 * base, (ours, base)


def test_teacher_from_x_T_gives_the_same_schedule(gm):
    model, x_T, te, _ = gm
    res = optimize_gits(model, 4, solver="ddim", x_T=x_T, teacher_points=K, variant="exact")
    given = optimize_gits(model, 4, solver="ddim", teacher=te, variant="exact")
    assert res.info["teacher"] == "computed" and res.info["teacher_batch"] == B
    assert res.info["teacher_solver"] == "exact" and res.info["teacher_grid"] == "logsnr"
    assert res.info["metric"] == given.info["metric"] == "l2"
    assert res.params["indices"] == given.params["indices"]
    np.testing.assert_array_equal(res.t, given.t)
    assert res.options["teacher_points"] == K and "array" in res.options["x_T"]


def test_default_coeff_is_the_official_one():
    assert inspect.signature(optimize_gits).parameters["coeff"].default == 1.15


def test_ipndm_teacher_is_one_ipndm_run_through_the_grid(gm):
    """The official teacher: the states of a fixed-step iPNDM run stepping through every grid
    point, the predictions it made there, and one more at the last point."""
    model, x_T, _, _ = gm
    te = teacher_trajectories(model, x_T, num_points=K, grid="karras", solver="ipndm")
    ts = np.asarray(hj.schedules.karras(DDPM, K - 1), np.float64)
    np.testing.assert_allclose(te.t, ts, rtol=1e-12)
    traj = hj.sample_trajectory(model, x_T, jnp.asarray(ts), hj.solvers.ipndm(order=4))
    np.testing.assert_allclose(te.x, traj.x, rtol=1e-12, atol=1e-12)
    want_x0 = jax.vmap(model.x0)(traj.x, jnp.asarray(ts))
    np.testing.assert_allclose(te.x0, want_x0, rtol=1e-10, atol=1e-12)


def test_teacher_progress(gm):
    """Both teachers report the fraction solved from inside their runs, chunk after chunk;
    GITS passes its ``callback`` on and does not record it."""
    model, x_T, _, _ = gm
    for solver in ("ipndm", "exact"):
        seen = []
        teacher_trajectories(model, x_T, num_points=K, solver=solver, batch_size=4,
                             callback=seen.append)  # fmt: skip
        f = [d["teacher"] for d in seen]
        assert f[-1] == pytest.approx(1.0) and np.all(np.diff(f) >= -1e-12), solver
        if solver == "ipndm":  # every grid step of both chunks
            assert len(f) == 2 * (K - 1) and f[K - 2] == pytest.approx(0.5)
    seen = []
    res = optimize_gits(model, 4, x_T=x_T, teacher_points=K, callback=seen.append)
    assert seen and seen[-1]["teacher"] == pytest.approx(1.0)
    assert "callback" not in res.options
    res.to_dict()


def test_reproduces_the_official_code():
    """The official code's schedules for NFE 3..10 under both metrics, on the problem
    ``benchmarks/gits_official.py`` gave it (gm64d of benchmarks/common.py under EDM, 256
    warm-up noises): first by the default options alone, then from one teacher for all."""
    ref = json.loads(OFFICIAL.read_text())
    assert ref["all_equal"] and ref["problem"]["coeff"] == 1.15
    rng = np.random.default_rng(0)  # gm64d: benchmarks/common.py mixture_64d
    means, stds = 0.5 * rng.standard_normal((8, 64)), rng.uniform(0.1, 0.2, size=8)
    model = hj.models.GaussianMixture(means, stds).denoiser(EDM)
    x_T = EDM.prior(jax.random.key(7), (256, 64))
    assert ref["problem"]["x_T"] == "EDM.prior(jax.random.key(7), (256, 64))"
    res = optimize_gits(model, 8, solver="ipndm", x_T=x_T)  # the defaults are the official ones
    assert res.params["indices"] == ref["official_indices"]["dev/8"]
    assert res.info["teacher_solver"] == "ipndm" and res.info["teacher_points"] == 61
    assert res.info["teacher_grid"] == "karras" and res.info["metric"] == "dev"
    te = teacher_trajectories(model, x_T, num_points=61, grid="karras", solver="ipndm")
    for key, want in ref["official_indices"].items():
        metric, nfe = key.split("/")
        got = optimize_gits(model, int(nfe), solver="ipndm", teacher=te, metric=metric)
        assert got.params["indices"] == want, key


def test_errors(gm):
    model, x_T, te, _ = gm
    with pytest.raises(ValueError, match=r"(?s)\b26\b.*\b25\b"):  # 25 steps need 26 points
        optimize_gits(model, 25, solver="ddim", teacher=te)
    with pytest.raises(ValueError, match=r"(?s)\b7\b.*\b5\b"):  # checked before the solve
        optimize_gits(model, 6, solver="ddim", x_T=x_T, teacher_points=5)
    for c in (0.0, -1.0):
        with pytest.raises(ValueError, match="coeff"):
            optimize_gits(model, 4, coeff=c, teacher=te)
    with pytest.raises(ValueError, match="teacher_points") as e:
        optimize_gits(model, 4, teacher=te, data=x_T)
    assert "data" in str(e.value)
    with pytest.raises(ValueError, match="x_T"):
        optimize_gits(model, 4)
    with pytest.raises(TypeError, match="Teacher"):
        optimize_gits(model, 4, teacher=(te.t, te.x))
    with pytest.raises(TypeError, match="Denoiser"):
        optimize_gits(DDPM, 4, teacher=te)
    with pytest.raises(ValueError, match="nfe"):
        optimize_gits(model, 0, teacher=te)
    with pytest.raises(TypeError, match="Teacher"):
        gits_cost_matrix((te.t, te.x), DDPM)
    with pytest.raises(ValueError, match=r"metric.*'dev'.*'l2'.*'l1'.*'l3'"):
        gits_cost_matrix(te, DDPM, "l3")
    with pytest.raises(ValueError, match=r"variant.*'official'.*'exact'.*'fast'"):
        optimize_gits(model, 4, teacher=te, variant="fast")
    with pytest.raises(ValueError, match=r"metric.*'l3'"):
        optimize_gits(model, 4, teacher=te, metric="l3")
    with pytest.raises(ValueError, match=r"teacher_solver.*'exact'.*'ipndm'.*'rk4'"):
        optimize_gits(model, 4, x_T=x_T, teacher_solver="rk4", teacher_points=K)
