"""Direct schedule optimisation: gradients == finite differences for every solver, the known
optimum of a linear (Gaussian) problem, held-out improvement over the baselines, warm starts
and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.optimizers.direct import direct_loss, optimize_direct
from hso_jax.optimizers.refine import logits_from_lam

DDPM = hj.noise.preset("ddpm")


def ring(n=8, radius=1.0, std=0.1):
    ang = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    means = radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    return hj.models.GaussianMixture(jnp.asarray(means), std)


@pytest.fixture(scope="module")
def gm():
    model = ring().denoiser(DDPM)
    x_T = DDPM.prior(jax.random.key(0), (64, 2), jnp.float64)
    x_te = DDPM.prior(jax.random.key(1), (128, 2), jnp.float64)
    kw = dict(rtol=1e-9, atol=1e-9)
    ref = hj.evaluation.reference_solve(model, x_T, DDPM.t_max, DDPM.t_min, **kw)
    ref_te = hj.evaluation.reference_solve(model, x_te, DDPM.t_max, DDPM.t_min, **kw)
    return model, x_T, ref, x_te, ref_te


def _ends(ts):
    lam = np.asarray(DDPM.lam(jnp.asarray(ts)))
    return lam, (lam[0], lam[-1], ts[0], ts[-1])


# Every solver the quality benchmark uses, plus the two EDM ones.
SOLVERS = {
    "ddim": hj.solvers.ddim(),
    "dpm-2m": hj.solvers.dpm_solver_pp(order=2),
    "dpm-3m": hj.solvers.dpm_solver_pp(order=3),
    "unipc": hj.solvers.unipc(),
    "ipndm": hj.solvers.ipndm(),
    "heun": hj.solvers.heun(),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_gradient_matches_central_differences(gm, name):
    """Reverse-mode gradient through the whole solver vs a central difference (float64)."""
    model, x_T, ref, _, _ = gm
    solver = SOLVERS[name]
    ts = np.asarray(hj.schedules.logsnr_uniform(DDPM, solver.num_points(4) - 1))
    lam, ends = _ends(ts)
    z = logits_from_lam(jnp.asarray(lam))
    xb, rb = x_T[:8], ref[:8]
    g = jax.grad(direct_loss)(z, model, solver, xb, rb, ends)
    v = jax.random.normal(jax.random.key(3), z.shape, jnp.float64)
    eps = 1e-6
    fd = (
        direct_loss(z + eps * v, model, solver, xb, rb, ends)
        - direct_loss(z - eps * v, model, solver, xb, rb, ends)
    ) / (2 * eps)
    assert np.isfinite(np.asarray(g)).all()
    assert float(jnp.dot(g, v)) == pytest.approx(float(fd), rel=1e-6, abs=1e-10)


def _gaussian_factor(t, s2):
    """Exact PF-ODE map of N(0, s2) data: x(t) = sqrt(a^2 s2 + s^2) x_T / sqrt(...)(t_max)."""
    a, s = np.asarray(DDPM.alpha(t)), np.asarray(DDPM.sigma(t))
    return np.sqrt(a * a * s2 + s * s)


def _ddim_factor(ts, s2):
    """DDIM on N(0, s2) data is linear: x_j = f_ij x_i, with D = c x, c = a s2 / (a^2 s2 + s^2):
    x_j = a_j c_i x_i + s_j (1 - a_i c_i) x_i / s_i (Song et al. 2021, Eq. 12)."""
    a, s = np.asarray(DDPM.alpha(ts)), np.asarray(DDPM.sigma(ts))
    c = a * s2 / (a * a * s2 + s * s)
    f = a[1:] * c[:-1] + s[1:] * (1.0 - a[:-1] * c[:-1]) / s[:-1]
    return np.prod(f)


def test_reaches_the_known_optimum_of_a_gaussian():
    """1-D Gaussian data, DDIM with one free interior point: the brute-force minimiser of the
    closed-form error |f(t_1) - f_exact| (a dense scan) is where the direct method lands."""
    s2 = 0.25
    model = hj.models.GaussianMixture(jnp.zeros((1, 1)), np.sqrt(s2)).denoiser(DDPM)
    x_T = DDPM.prior(jax.random.key(5), (16, 1), jnp.float64)
    target = float(_gaussian_factor(DDPM.t_min, s2) / _gaussian_factor(DDPM.t_max, s2))
    ref = x_T * target
    lam_lo, lam_hi = float(DDPM.lam(DDPM.t_max)), float(DDPM.lam(DDPM.t_min))
    scan = np.linspace(lam_lo, lam_hi, 200_001)[1:-1]
    t1 = np.asarray(DDPM.t_from_lam(jnp.asarray(scan)))
    errs = np.array(
        [abs(_ddim_factor(np.array([DDPM.t_max, t, DDPM.t_min]), s2) - target) for t in t1[::50]]
    )
    lam_star = scan[::50][np.argmin(errs)]
    res = optimize_direct(
        model,
        2,
        solver="ddim",
        x_T=x_T,
        reference=ref,
        val_fraction=0.5,
        init="logsnr",
        steps=300,
        learning_rate=0.05,
        patience=300,
    )
    assert res.t.shape == (3,) and res.t[0] == DDPM.t_max and res.t[-1] == DDPM.t_min
    assert float(DDPM.lam(res.t[1])) == pytest.approx(lam_star, abs=0.02)
    # 1-D RMSE = |error|: the held-out loss is the scanned minimum times mean |x_T| (val half)
    expected = float(np.min(errs) * np.mean(np.abs(np.asarray(x_T[8:]))))
    assert res.objective == pytest.approx(expected, rel=1e-3)
    assert res.objective < res.info["init_val_loss"]


@pytest.fixture(scope="module")
def unipc_result(gm):
    model, x_T, ref, _, _ = gm
    return optimize_direct(
        model, 4, solver="unipc", x_T=x_T, reference=ref, steps=60, learning_rate=0.1
    )


def test_held_out_error_beats_every_baseline(gm, unipc_result):
    model, _, _, x_te, ref_te = gm
    res = unipc_result
    solver = hj.solvers.unipc()

    def test_error(ts):
        x = hj.sample(model, x_te, jnp.asarray(ts), solver)
        return float(jnp.mean(hj.evaluation.rmse(x, ref_te)))

    base = {
        "time": test_error(hj.schedules.time_uniform(DDPM, 4)),
        "logsnr": test_error(hj.schedules.logsnr_uniform(DDPM, 4)),
        "karras": test_error(hj.schedules.karras(DDPM, 4)),
    }
    assert res.info["init"] in base
    assert test_error(res.t) < 0.7 * min(base.values())
    # training and held-out losses are both reported and both improved
    assert res.info["val_loss"] == res.objective < res.info["init_val_loss"]
    assert res.info["train_loss"] < res.info["init_train_loss"]
    assert res.info["train_batch"] == 32 and res.info["val_batch"] == 32
    assert len(res.info["val_history"]) == res.info["iterations"]
    assert np.all(np.diff(res.t) < 0) and res.solver == "unipc" and res.method == "direct"


def test_warm_start_from_an_optimize_result_keeps_its_end_points(gm):
    model, x_T, ref, _, _ = gm
    hso = hj.optimize(DDPM, 4, method="hso", solver="unipc")
    res = hj.optimize(
        model, 4, method="direct", solver="unipc", x_T=x_T, reference=ref, init=hso, steps=3
    )
    assert res.info["init"] == "user"
    assert res.t[0] == pytest.approx(hso.t[0], rel=1e-12)
    assert res.t[-1] == pytest.approx(hso.t[-1], rel=1e-12)
    cands = {"hso": hso, "logsnr": hj.schedules.logsnr_uniform(DDPM, 4)}
    res2 = optimize_direct(model, 4, x_T=x_T, reference=ref, init=cands, steps=2)
    losses = res2.info["init_candidates_train_loss"]
    assert set(losses) == {"hso", "logsnr"}
    assert res2.info["init"] == min(losses, key=losses.get)


def test_errors(gm):
    model, x_T, ref, _, _ = gm
    with pytest.raises(ValueError, match="x_T"):
        hj.optimize(model, 4, method="direct")
    with pytest.raises(TypeError, match="Denoiser"):
        hj.optimize(DDPM, 4, method="direct", x_T=x_T)
    with pytest.raises(ValueError, match="reference"):
        optimize_direct(model, 4, x_T=x_T, reference=ref[:3])
    with pytest.raises(ValueError, match=r"x_T has shape \(64, 3\)"):  # the ring is 2-D
        optimize_direct(model, 4, x_T=jnp.zeros((64, 3)))
    with pytest.raises(ValueError, match="val_fraction"):
        optimize_direct(model, 4, x_T=x_T, reference=ref, val_fraction=1.0)
    with pytest.raises(ValueError, match="init"):
        optimize_direct(model, 4, x_T=x_T, reference=ref, init="cosine")
    with pytest.raises(ValueError, match="points"):
        optimize_direct(model, 4, x_T=x_T, reference=ref, init=hj.schedules.karras(DDPM, 6))
    with pytest.raises(ValueError, match="steps"):
        optimize_direct(model, 4, x_T=x_T, reference=ref, steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        optimize_direct(model, 4, x_T=x_T, reference=ref, learning_rate=-1.0)
    with pytest.raises(ValueError, match="solver"):
        optimize_direct(model, 4, solver="rk4", x_T=x_T, reference=ref)
    with pytest.raises(ValueError, match="unknown option"):
        hj.optimize(model, 4, method="direct", x_T=x_T, reference=ref, lr=0.1)
    with pytest.raises(ValueError, match="x_T"):
        optimize_direct(model, 4, x_T=x_T[:, 0])
