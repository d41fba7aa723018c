"""Flow-matching presets (SD3, Flux, Wan), their default / Beta / Optimal-Steps schedules and
their exports, checked against diffusers' schedulers run here, the published tables and
ComfyUI's formulas."""

import ast
import importlib.util
import math
import pathlib

import jax
import numpy as np
import pytest

import hso_jax as hj
from hso_jax import noise, schedules

# diffusers computes its sigmas in float32.
F32 = {"rtol": 0, "atol": 2e-7}


def _x64(fn, *args, **kwargs):
    with jax.enable_x64(True):
        return np.asarray(fn(*args, **kwargs), np.float64)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


def test_model_presets_are_one_process_on_the_whole_range():
    for name, opts in [
        ("sd3", {}),
        ("flux-dev", {"resolution": 512}),
        ("flux-schnell", {}),
        ("wan", {"shift": 7.0}),
        ("flow", {"shift": 2.0}),
    ]:
        ns = noise.preset(name, **opts)
        assert type(ns) is noise.RectifiedFlow
        assert (ns.t_min, ns.t_max) == (0.0, 1.0)
        t = np.array([0.9, 0.5, 0.1])
        np.testing.assert_allclose(_x64(ns.alpha, t), 1 - t, rtol=1e-15)
        np.testing.assert_allclose(_x64(ns.sigma, t), t, rtol=1e-15)
        np.testing.assert_allclose(_x64(ns.timestep, t), 1000 * t, rtol=1e-15)
    # without options, "flow" stays the bare process with finite log-SNR at its ends
    bare = noise.preset("flow")
    assert (bare.t_min, bare.t_max) == (1e-3, 1 - 1e-3) and bare.shift == 1.0


def test_shift_parameters_of_each_preset():
    assert noise.preset("sd3").shift == 3.0 and noise.preset("sd3").mu is None
    assert noise.preset("wan").shift == 5.0 and noise.preset("wan", shift=8).shift == 8.0
    schnell = noise.preset("flux-schnell")
    assert schnell.shift == 1.0 and schnell.mu is None
    dev = noise.preset("flux-dev")  # FluxPipeline's default 1024 x 1024: 64 * 64 tokens
    assert dev.image_seq_len == 4096 and dev.mu == pytest.approx(1.15, abs=1e-15)
    assert noise.preset("flux-dev", resolution=(768, 1360)).image_seq_len == 48 * 85
    assert noise.preset("flux-dev", image_seq_len=1024).mu == noise.flux_mu(1024)
    assert noise.preset("sd3") is noise.preset("sd3")
    assert noise.preset("wan", shift=6.0) is noise.preset("wan", shift=6.0)


def _diffusers_calculate_shift():
    """diffusers' own ``calculate_shift`` (FluxPipeline), read from its source: importing the
    pipeline module needs transformers, which the test extra does not install."""
    spec = importlib.util.find_spec("diffusers")
    src = pathlib.Path(spec.origin).parent / "pipelines" / "flux" / "pipeline_flux.py"
    tree = ast.parse(src.read_text())
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "calculate_shift"]
    scope = {}
    exec(compile(ast.Module(fn, []), str(src), "exec"), scope)
    return scope["calculate_shift"]


@pytest.mark.parametrize("px", [256, 1024, 2048])
def test_flux_mu_equals_diffusers(px):
    pytest.importorskip("diffusers")
    calculate_shift = _diffusers_calculate_shift()
    seq = (px // 16) ** 2  # FluxPipeline: latents 2 * (px // 16) per side, packed 2 x 2
    want = calculate_shift(seq, 256, 4096, 0.5, 1.15)
    assert noise.preset("flux-dev", resolution=px).mu == want
    assert noise.preset("flux-dev", image_seq_len=seq).mu == want


def test_shift_sigma_formulas():
    s = np.linspace(0.0, 1.0, 11)
    sd3 = noise.preset("sd3")
    np.testing.assert_allclose(_x64(sd3.shift_sigma, s), 3 * s / (1 + 2 * s), rtol=1e-15)
    dev = noise.preset("flux-dev", resolution=2048)
    with np.errstate(divide="ignore"):
        want = math.exp(dev.mu) / (math.exp(dev.mu) + (1 / s - 1))  # diffusers' form
    np.testing.assert_allclose(_x64(dev.shift_sigma, s), want, rtol=1e-14)
    np.testing.assert_allclose(_x64(dev.unshift_sigma, _x64(dev.shift_sigma, s)), s, atol=1e-15)


@pytest.mark.parametrize(
    "name, options, error, match",
    [
        ("sd3", {"resolution": 1024}, TypeError, r"'sd3'.*resolution.*takes no options"),
        ("flux-schnell", {"resolution": 512}, TypeError, r"does not shift"),
        ("flux-dev", {"shift": 3.0}, TypeError, r"'flux-dev'.*shift.*resolution, image_seq_len"),
        ("flux-dev", {"resolution": 1000}, ValueError, r"multiple of 16.*1000"),
        ("flux-dev", {"resolution": 0}, ValueError, r"resolution.*positive.*0"),
        ("flux-dev", {"resolution": 1024.0}, TypeError, r"resolution.*integer.*1024.0"),
        ("flux-dev", {"resolution": (512, 512, 3)}, ValueError, r"\(height, width\)"),
        ("flux-dev", {"resolution": 512, "image_seq_len": 1024}, TypeError, r"not both"),
        ("flux-dev", {"image_seq_len": -4}, ValueError, r"image_seq_len.*-4"),
        ("wan", {"shift": 0.0}, ValueError, r"'wan'.*shift.*> 0.*0.0"),
        ("wan", {"shift": float("inf")}, ValueError, r"shift.*finite"),
        ("wan", {"shift": "5"}, TypeError, r"shift.*real number.*'5'"),
        ("flow", {"shift": -2}, ValueError, r"'flow'.*shift"),
        ("flux", {}, ValueError, r"noise preset must be one of .*flux-dev"),
    ],
)
def test_bad_preset_options(name, options, error, match):
    with pytest.raises(error, match=match):
        noise.preset(name, **options)


# --------------------------------------------------------------------------------------
# Default schedules = what the diffusers pipelines step through
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nfe", [1, 4, 28])
def test_sd3_and_flow_default_equal_flow_match_euler(nfe):
    diffusers = pytest.importorskip("diffusers")
    for ns, shift in [(noise.preset("sd3"), 3.0), (noise.preset("flow", shift=1.7), 1.7)]:
        sch = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
        sch.set_timesteps(nfe)  # what StableDiffusion3Pipeline does
        ts = _x64(schedules.flow_default, ns, nfe)
        np.testing.assert_allclose(ts, sch.sigmas.numpy(), **F32)
        np.testing.assert_allclose(1000 * ts[:-1], sch.timesteps.numpy(), rtol=2e-7)
        schedules.check_schedule(ts, ns)


FLUX_DEV_CONFIG = {  # black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def _flux_scheduler_sigmas(nfe, mu, **config):
    """What FluxPipeline passes to its scheduler: sigmas = linspace(1, 1/n, n) and mu."""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    sch.set_timesteps(sigmas=np.linspace(1.0, 1 / nfe, nfe), mu=mu)
    return sch.sigmas.numpy()


@pytest.mark.parametrize("px", [256, 1024, 2048])
def test_flux_dev_default_equals_dynamic_shift(px):
    pytest.importorskip("diffusers")
    mu = _diffusers_calculate_shift()((px // 16) ** 2, 256, 4096, 0.5, 1.15)
    ns = noise.preset("flux-dev", resolution=px)
    for nfe in (1, 8, 28):
        want = _flux_scheduler_sigmas(nfe, mu, **FLUX_DEV_CONFIG)
        np.testing.assert_allclose(_x64(schedules.flow_default, ns, nfe), want, **F32)


def test_flux_schnell_default_is_unshifted():
    config = {**FLUX_DEV_CONFIG, "shift": 1.0, "use_dynamic_shifting": False}  # schnell's
    want = _flux_scheduler_sigmas(4, 1.15, **config)
    got = _x64(schedules.flow_default, noise.preset("flux-schnell"), 4)
    np.testing.assert_allclose(got, want, **F32)
    np.testing.assert_allclose(got, [1.0, 0.75, 0.5, 0.25, 0.0], rtol=1e-15)


@pytest.mark.parametrize("shift", [3.0, 5.0, 8.0])
def test_wan_default_equals_unipc_flow_sigmas(shift):
    diffusers = pytest.importorskip("diffusers")
    for nfe in (2, 10, 50):
        sch = diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
        )
        sch.set_timesteps(nfe)  # what WanPipeline does
        got = _x64(schedules.flow_default, noise.preset("wan", shift=shift), nfe)
        np.testing.assert_allclose(got, sch.sigmas.numpy(), **F32)
        assert got[0] == 1.0 - 1e-6


def test_flow_default_needs_a_flow_model():
    with pytest.raises(TypeError, match="flow-matching model.*sd15"):
        schedules.flow_default(noise.preset("sd15"), 4)
    with pytest.raises(ValueError, match=r"covers only t in \[0.001, 0.999\].*shift=1.0"):
        schedules.flow_default(noise.preset("flow"), 4)
    with pytest.raises(ValueError, match="nfe"):
        schedules.flow_default(noise.preset("sd3"), 0)


def test_log_snr_baselines_name_the_infinite_end():
    sd3 = noise.preset("sd3")
    with pytest.raises(ValueError, match=r"karras.*infinite at t = 1.*t_start="):
        schedules.karras(sd3, 4)
    with pytest.raises(ValueError, match=r"logsnr_uniform.*infinite at t = 0"):
        schedules.logsnr_uniform(sd3, 4, t_start=0.9)
    ts = _x64(schedules.logsnr_uniform, sd3, 4, t_start=0.999, t_end=0.001)
    lam = np.log((1 - ts) / ts)
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)


# --------------------------------------------------------------------------------------
# Beta and Optimal-Steps
# --------------------------------------------------------------------------------------


def test_beta_diffusers_variant_equals_use_beta_sigmas():
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("scipy")
    for nfe in (2, 9):
        sch = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_beta_sigmas=True)
        sch.set_timesteps(nfe)
        got = _x64(schedules.beta, noise.preset("sd3"), nfe, variant="diffusers")
        np.testing.assert_allclose(got, sch.sigmas.numpy(), **F32)
        mu = noise.preset("flux-dev").mu
        want = _flux_scheduler_sigmas(nfe, mu, **FLUX_DEV_CONFIG, use_beta_sigmas=True)
        got = _x64(schedules.beta, noise.preset("flux-dev"), nfe, variant="diffusers")
        np.testing.assert_allclose(got, want, **F32)


def _comfyui_beta(table, steps, alpha=0.6, beta=0.6):
    """ComfyUI's beta_scheduler (comfy/samplers.py), restated over a sigma table (ascending)."""
    import scipy.stats

    total = len(table) - 1
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta)
                 * total)  # fmt: skip
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(float(table[int(t)]))
        last = t
    return np.array([*sigs, 0.0])


def test_beta_comfyui_variant_equals_comfyui_scheduler():
    pytest.importorskip("scipy")
    k = np.arange(1, 1001) / 1000  # ModelSamplingDiscreteFlow: time_snr_shift(shift, k / 1000)
    sd3_table = 3.0 * k / (1 + 2.0 * k)
    mu = noise.preset("flux-dev").mu
    k = np.arange(1, 10001) / 10000  # ModelSamplingFlux: flux_time_shift(mu, 1, k / 10000)
    flux_table = math.exp(mu) / (math.exp(mu) + (1 / k - 1))
    for nfe in (3, 10, 20):
        got = _x64(schedules.beta, noise.preset("sd3"), nfe)
        np.testing.assert_allclose(got, _comfyui_beta(sd3_table, nfe), rtol=1e-12, atol=1e-15)
        got = _x64(schedules.beta, noise.preset("flux-dev"), nfe, 0.5, 0.7)
        want = _comfyui_beta(flux_table, nfe, 0.5, 0.7)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_beta_bad_input():
    sd3 = noise.preset("sd3")
    with pytest.raises(ValueError, match=r"variant must be one of \['comfyui', 'diffusers'\]"):
        schedules.beta(sd3, 4, variant="a1111")
    with pytest.raises(ValueError, match=r"alpha must be > 0, got -1"):
        schedules.beta(sd3, 4, alpha=-1)
    with pytest.raises(ValueError, match=r"same entry.*silently drop"):
        schedules.beta(sd3, 400)


# Published Optimal-Steps schedules (Pei et al. 2025, github.com/bebebe666/OptimalSteps).
OSS_FLUX = [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001]
OSS_WAN = [1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968,
           0.96, 0.946, 0.927, 0.902, 0.864, 0.776, 0.539, 0.208, 0.001]  # fmt: skip


def _comfyui_loglinear(t_steps, num_steps):
    """ComfyUI's loglinear_interp (comfy_extras/nodes_optimalsteps.py), restated."""
    xs = np.linspace(0, 1, len(t_steps))
    ys = np.log(np.asarray(t_steps)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num_steps), xs, ys))[::-1]


def test_optimal_steps_equal_the_published_tables():
    got = _x64(schedules.optimal_steps, noise.preset("flux-dev"), 10)
    np.testing.assert_array_equal(got, [*OSS_FLUX[:-1], 0.0])
    got = _x64(schedules.optimal_steps, noise.preset("wan", shift=3.0), 20)
    np.testing.assert_array_equal(got, [*OSS_WAN[:-1], 0.0])
    for table, model, ns in [(OSS_FLUX, "flux", "sd3"), (OSS_WAN, "wan", "flux-schnell")]:
        for nfe in (4, 8, 15):
            want = _comfyui_loglinear(table, nfe + 1)
            want[-1] = 0.0
            got = _x64(schedules.optimal_steps, noise.preset(ns), nfe, model=model)
            np.testing.assert_allclose(got, want, rtol=1e-14)
    with pytest.raises(ValueError, match=r"model must be given for noise 'sd3'.*\['flux', 'wan'\]"):
        schedules.optimal_steps(noise.preset("sd3"), 8)
    with pytest.raises(ValueError, match=r"model must be one of \['flux', 'wan'\].*'chroma'"):
        schedules.optimal_steps(noise.preset("sd3"), 8, model="chroma")


def test_flow_baselines_are_valid_schedules_in_float32_and_float64():
    for fn in (schedules.flow_default, schedules.beta, schedules.optimal_steps):
        for ns in (noise.preset("flux-dev"), noise.preset("wan")):
            ts = fn(ns, 6)
            assert ts.dtype == jax.numpy.zeros(()).dtype and ts.shape == (7,)
            schedules.check_schedule(ts, ns)
            assert float(ts[-1]) == 0.0
            np.testing.assert_allclose(np.asarray(ts), _x64(fn, ns, 6), rtol=1e-6, atol=1e-7)
    assert hj.schedules.flow_default is schedules.flow_default
