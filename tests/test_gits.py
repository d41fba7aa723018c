"""GITS: DP == brute force, cost matrix == explicit DDIM steps, GM-teacher schedules, errors."""

import inspect
import itertools

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
    return model, x_T, teacher, gits_cost_matrix(teacher, DDPM)


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
    np.testing.assert_allclose(gits_cost_matrix(te, DDPM), cost, rtol=1e-10)


def test_cost_matrix_is_frame_independent(gm):
    """The same trajectories written in EDM's frame (alpha = 1, t = sigma_edm) cost the same."""
    _, _, te, cost = gm
    t = np.asarray(te.t, np.float64)
    alpha = np.asarray(DDPM.alpha(t)).reshape(-1, 1, 1)
    edm_teacher = Teacher(t=jnp.asarray(DDPM.sigma_edm(t)), lam=te.lam, x=te.x / alpha, x0=te.x0)
    np.testing.assert_allclose(gits_cost_matrix(edm_teacher, EDM), cost, rtol=1e-9)


def test_cost_matrix_runs_in_float64_without_x64(gm):
    model, _, te, cost = gm
    with jax.enable_x64(False):
        te32 = Teacher(*(jnp.asarray(np.asarray(a, np.float32)) for a in te))
        cost32 = gits_cost_matrix(te32, DDPM)
        res32 = optimize_gits(model, 6, solver="ddim", teacher=te32)
    res64 = optimize_gits(model, 6, solver="ddim", teacher=te)
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
        res = optimize_gits(model, nfe, solver=solver, coeff=coeff, teacher=te)
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
        assert res.options["coeff"] == coeff
        res.to_dict()  # JSON-ready


def test_beats_logsnr_uniform_in_sampling_error(gm):
    """DDIM error to the teacher end point: GITS vs the logSNR-uniform schedule of the same NFE
    (on a 24-interval log-SNR grid it is every 4th grid point, i.e. a path through the grid)."""
    model, x_T, te, _ = gm
    uniform = np.asarray(te.t, np.float64)[::4]
    np.testing.assert_allclose(uniform, np.asarray(hj.schedules.logsnr_uniform(DDPM, 6)), 1e-9)
    res = optimize_gits(model, 6, solver="ddim", teacher=te)

    def err(ts):
        x = hj.sample(model, x_T, jnp.asarray(ts), hj.solvers.ddim())
        return float(jnp.mean(jnp.linalg.norm(x - te.x[-1], axis=1)))

    ours, base = err(res.t), err(uniform)
    assert ours < 0.8 * base, (ours, base)


def test_teacher_from_x_T_gives_the_same_schedule(gm):
    model, x_T, te, _ = gm
    res = optimize_gits(model, 4, solver="ddim", x_T=x_T, teacher_points=K)
    given = optimize_gits(model, 4, solver="ddim", teacher=te)
    assert res.info["teacher"] == "computed" and res.info["teacher_batch"] == B
    assert res.params["indices"] == given.params["indices"]
    np.testing.assert_array_equal(res.t, given.t)
    assert res.options["teacher_points"] == K and "array" in res.options["x_T"]


def test_default_coeff_is_the_official_one():
    assert inspect.signature(optimize_gits).parameters["coeff"].default == 1.15


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
