"""The public entry points with a plain JAX network: ``optimize(model_fn, nfe, noise=...)`` and
``sample(model_fn, ..., noise=...)``; solver objects for every HSO-family method; the method
tables on the ``hso_jax.optimize`` function.

Independent numbers: Stable Diffusion's scaled-linear betas (linspace(sqrt(0.00085),
sqrt(0.012), 1000)^2) and the closed form of a DDIM step when the prediction is zero.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.optimizers.hso import solver_flavour

SD21 = hj.noise.preset("sd21")
SD_BETAS = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000) ** 2
ABAR = np.cumprod(1.0 - SD_BETAS)  # alpha_bar of steps 0 .. 999 (t = 0.001 .. 1)


def never_called(x, t):
    raise AssertionError("the network was called by a model-free method")


def test_the_one_line_promise():
    """``hso_jax.optimize(model_fn, nfe=5, noise="sd21")``: HSO's schedule for the noise
    process, the network untouched, and a warning that says so and names the methods that use
    it."""
    r = hj.optimize(never_called, nfe=5, noise="sd21")
    ref = hj.optimize(SD21, 5)
    np.testing.assert_array_equal(r.t, ref.t)
    assert (r.method, r.solver, r.nfe, r.noise) == ("hso", "unipc", 5, "sd21")
    notes = [w for w in r.warnings if "network was not called" in w]
    assert len(notes) == 1 and all(m in notes[0] for m in ("'ays'", "'direct'", "'gits'"))
    assert not any("network was not called" in w for w in ref.warnings)
    # documented: UniPC and DPM-Solver++ flavours give the same HSO schedule (warm: no compile)
    pp = hj.optimize(SD21, 5, solver=hj.solvers.dpm_solver_pp(order=2))
    assert pp.solver == "dpm-solver-pp"
    np.testing.assert_array_equal(pp.t, ref.t)


def test_a_callable_without_noise_says_what_to_add():
    with pytest.raises(ValueError, match=r"add noise=.*optimize\(model_fn, nfe=5, noise='sd21'\)"):
        hj.optimize(never_called, nfe=5)
    with pytest.raises(ValueError, match=r"add noise=.*'sd15'.*prediction= .*default 'eps'"):
        hj.optimize(never_called, 5, method="dmn")
    x, ts = jnp.zeros((2, 3)), jnp.array([1.0, 0.5, 0.001])
    with pytest.raises(ValueError, match=r"add noise=.*hso_jax.sample\(model_fn"):
        hj.sample(never_called, x, ts, hj.solvers.ddim())


def test_callable_keywords_build_the_denoiser(monkeypatch):
    import hso_jax.optimizers.ays as ays

    seen = []

    def fake(model, nfe, *, solver, key, data, **options):
        seen.append(model)
        t = np.array([model.noise.t_max, 0.5 * model.noise.t_max, model.noise.t_min])
        return hj.optimizers.OptimizeResult.from_t(
            t, model.noise, objective=0.0, penalty=None, method="fake", solver=solver, nfe=nfe
        )

    monkeypatch.setattr(ays, "optimize_ays", fake)
    data = np.zeros((4, 2))
    assert hj.optimize(never_called, 6, method="ays", noise="sd21", data=data).method == "fake"
    edm = hj.noise.preset("edm")
    hj.optimize(
        never_called, 6, method="ays", noise=edm, prediction="x0", time_input="t", data=data
    )
    a, b = seen
    assert isinstance(a, hj.Denoiser) and a.fn is never_called and a.noise is SD21
    assert (a.prediction, a.time_input, a.params, a.guidance_scale) == ("eps", "auto", None, None)
    assert b.noise is edm and (b.prediction, b.time_input) == ("x0", "t")


def test_bad_model_keywords():
    model = hj.Denoiser(never_called, noise=SD21)
    with pytest.raises(ValueError, match="noise preset must be one of .*'sd21'"):
        hj.optimize(never_called, 5, noise="sd2.1")
    with pytest.raises(TypeError, match="noise must be a preset name .* got int"):
        hj.optimize(never_called, 5, noise=21)
    with pytest.raises(ValueError, match=r"prediction must be one of .*'eps'.*got 'velocity'"):
        hj.optimize(never_called, 5, noise="sd21", prediction="velocity")
    with pytest.raises(ValueError, match="time_input must be one of"):
        hj.optimize(never_called, 5, noise="sd21", time_input="seconds")
    with pytest.raises(ValueError, match=r"noise= only apply .*Denoiser.*model\.replace"):
        hj.optimize(model, 5, noise="sd21")
    with pytest.raises(ValueError, match=r"prediction= only apply .* NoiseSchedule"):
        hj.optimize(SD21, 5, prediction="v")
    with pytest.raises(TypeError, match=r"model must be .*callable fn\(x, t\).*got str"):
        hj.optimize("sd21", 5)
    with pytest.raises(ValueError, match=r"time_input= only apply"):
        hj.sample(
            model, jnp.zeros((1, 2)), jnp.array([1.0, 0.001]), hj.solvers.ddim(), time_input="t"
        )


def test_solver_objects_pick_the_flavour():
    by_name = {s: hj.optimize(SD21, 4, method="mep-local", solver=s) for s in ("unipc", "ddim")}
    for obj, flavour in (
        (hj.solvers.unipc(order=3), "unipc"),
        (hj.solvers.dpm_solver_pp(order=3), "dpm-solver-pp"),
        (hj.solvers.ddim(), "ddim"),
    ):
        r = hj.optimize(SD21, 4, method="mep-local", solver=obj)
        assert r.solver == flavour
        np.testing.assert_array_equal(r.t, by_name["ddim" if flavour == "ddim" else "unipc"].t)
    # NFE + 1 points each; DDIM: NFE optimised points (single-level end 0.02), then the fixed
    # final step to the first training step t = 1 / 1000
    ddim, unipc = by_name["ddim"].t, by_name["unipc"].t
    assert ddim.shape == unipc.shape == (5,) and ddim[-1] == unipc[-1] == 0.001
    np.testing.assert_allclose(ddim[-2], 0.02, rtol=1e-12)
    for bad in (hj.solvers.heun(), hj.solvers.dpm_solver_pp(3, "singlestep")):
        with pytest.raises(ValueError, match=r"flavours for UniPC, DPM-Solver\+\+ .* and DDIM"):
            hj.optimize(SD21, 4, method="dmn", solver=bad)
    with pytest.raises(ValueError, match=r"solver must be one of .*'unipc'.* got 'heun'"):
        solver_flavour("heun", "mep-model")
    with pytest.raises(TypeError, match="solver must be one of .* got int"):
        hj.optimize(SD21, 4, solver=2)


def test_method_tables_live_on_the_function():
    module = importlib.import_module("hso_jax.optimization")
    from hso_jax.optimization import METHODS, MODEL_BASED, MODEL_FREE, SOLVERS

    assert callable(hj.optimize) and module.optimize is hj.optimize
    for name, table in (
        ("METHODS", METHODS),
        ("MODEL_FREE", MODEL_FREE),
        ("MODEL_BASED", MODEL_BASED),
        ("SOLVERS", SOLVERS),
    ):
        assert getattr(hj.optimize, name) is table is getattr(module, name)
    assert set(MODEL_FREE) == {"hso", "hso-dmn", "mep-local", "dmn"}
    assert set(MODEL_BASED) == {"ays", "direct", "gits", "mep-model"}
    assert METHODS == MODEL_FREE + MODEL_BASED and SOLVERS == ("unipc", "dpm-solver-pp", "ddim")


def test_one_unknown_option_check_for_every_method():
    """The same mistake, the same error, for every method (checked before any work)."""
    gm = hj.models.GaussianMixture(jnp.zeros((1, 2)), 1.0)
    model = gm.denoiser(SD21)
    for method in hj.optimize.METHODS:
        match = rf"unknown option\(s\) \['bogus'\] for method='{method}'"
        with pytest.raises(ValueError, match=match):
            hj.optimize(model, 5, method=method, bogus=1)


@pytest.fixture(scope="module")
def sampling():
    x_T = jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
    ts = jnp.array([1.0, 0.6, 0.2, 0.001], jnp.float64)
    return x_T, ts


def test_sample_with_a_callable_closed_form(sampling):
    """Zero predictions make DDIM a scaling of x_T with SD's alpha / sigma: the default
    prediction "eps" gives x = alpha(t_end) / alpha(1) x_T, prediction="x0" gives
    x = sigma(t_end) / sigma(1) x_T."""
    x_T, ts = sampling

    def zero(x, t):
        return jnp.zeros_like(x)

    ddim = hj.solvers.ddim()
    eps0 = hj.sample(zero, x_T, ts, ddim, noise="sd21")
    np.testing.assert_allclose(eps0, x_T * np.sqrt(ABAR[0] / ABAR[-1]), rtol=1e-10)
    x00 = hj.sample(zero, x_T, ts, ddim, noise=SD21, prediction="x0")
    np.testing.assert_allclose(x00, x_T * np.sqrt((1 - ABAR[0]) / (1 - ABAR[-1])), rtol=1e-10)


def test_sample_with_a_callable_is_the_denoiser(sampling):
    x_T, ts = sampling

    def net(x, t_in):
        return jnp.sin(x) * t_in

    solver = hj.solvers.unipc()
    want = hj.sample(hj.Denoiser(net, SD21, prediction="v", time_input="t"), x_T, ts, solver)
    got = hj.sample(net, x_T, ts, solver, noise="sd21", prediction="v", time_input="t")
    np.testing.assert_array_equal(got, want)
    other = hj.sample(net, x_T, ts, solver, noise="sd21", prediction="v")  # index time input
    assert not np.allclose(other, want)
    traj = hj.sample_trajectory(net, x_T, ts, solver, noise="sd21", prediction="v", time_input="t")
    np.testing.assert_allclose(traj.final, want, rtol=1e-12)
