"""Flow-matching presets (SD3, Flux, Wan), their default / Beta / Optimal-Steps schedules and
their exports, checked against diffusers' schedulers run here, the published tables and
ComfyUI's formulas."""

import ast
import importlib.util
import json
import math
import pathlib
import re

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
        ("flux-dev", {"resolution": 0}, ValueError, r"resolution.*integer in \[1, 4096\].*got 0"),
        ("flux-dev", {"resolution": 1024.0}, TypeError, r"resolution.*integer.*1024.0"),
        ("flux-dev", {"resolution": (512, 512, 3)}, ValueError, r"\(height, width\)"),
        ("flux-dev", {"resolution": 512, "image_seq_len": 1024}, TypeError, r"not both"),
        ("flux-dev", {"image_seq_len": -4}, ValueError, r"image_seq_len.*-4"),
        ("wan", {"shift": 0.0}, ValueError, r"'wan'.*shift must lie in \[0.001, 1000\], got 0.0"),
        ("wan", {"shift": float("inf")}, ValueError, r"shift must lie in .*got inf"),
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


# --------------------------------------------------------------------------------------
# Exports: diffusers round trip, ComfyUI, schedule files
# --------------------------------------------------------------------------------------


def _euler_pipeline_loop(scheduler, x_T, x0):
    """A FluxPipeline-style denoising loop (scheduler.timesteps, transformer(timestep / 1000),
    scheduler.step) around a torch module: the exact velocity of data concentrated at x0,
    v(x, sigma) = (x - x0) / sigma, which Euler integrates exactly. Returns the sigmas the
    module received and the final sample."""
    import torch

    class Velocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x, timestep):
            sigma = timestep.to(torch.float64)
            self.seen.append(float(sigma[0]))
            return (x - x0) / sigma[:, None]

    transformer = Velocity()
    x = x_T
    for t in scheduler.timesteps:
        v = transformer(x, t.expand(x.shape[0]) / 1000)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return np.array(transformer.seen), x


def test_diffusers_export_round_trip_through_flux_scheduler():
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    ns = noise.preset("flux-dev", resolution=1024)
    ts = _x64(schedules.optimal_steps, ns, 8)  # any schedule of ours, ending at 0
    out = schedules.to_diffusers(ts, ns)
    assert (
        out["pipeline"] == "FluxPipeline" and "shift=1.0, use_dynamic_shifting=False" in out["note"]
    )
    assert out["nfe"] == 8
    np.testing.assert_array_equal(out["sigmas"], ts[:-1])  # the scheduler appends the 0
    np.testing.assert_allclose(out["timesteps"], 1000 * ts[:-1], rtol=1e-15)

    x0 = torch.tensor([[0.5, -1.0]], dtype=torch.float32)
    x_T = torch.tensor([[1.3, 0.2]], dtype=torch.float32)
    # The pipeline's scheduler, reconfigured as printed; FluxPipeline still passes its mu.
    sch = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        FLUX_DEV_CONFIG, **out["scheduler_config"]
    )
    sch.set_timesteps(sigmas=out["sigmas"], mu=ns.mu)
    np.testing.assert_allclose(sch.sigmas.numpy(), ts, **F32)
    seen, x = _euler_pipeline_loop(sch, x_T, x0)
    np.testing.assert_allclose(seen, ts[:-1], **F32)  # exactly our sigmas, in float32
    np.testing.assert_allclose(x.numpy(), x0.numpy(), atol=1e-5)

    # Left as configured, the scheduler shifts the given sigmas again with mu.
    sch = diffusers.FlowMatchEulerDiscreteScheduler.from_config(FLUX_DEV_CONFIG)
    sch.set_timesteps(sigmas=out["sigmas"], mu=ns.mu)
    shifted = math.exp(ns.mu) / (math.exp(ns.mu) + (1 / ts[:-1] - 1))
    np.testing.assert_allclose(sch.sigmas.numpy()[:-1], shifted, **F32)
    assert np.all(shifted[1:] > ts[1:-1])


def test_diffusers_export_round_trip_through_sd3_scheduler():
    diffusers = pytest.importorskip("diffusers")
    ns = noise.preset("sd3")
    ts = _x64(schedules.beta, ns, 6)
    out = schedules.to_diffusers(ts, ns)
    assert out["pipeline"] == "StableDiffusion3Pipeline"
    sch = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        {"num_train_timesteps": 1000, "shift": 3.0}, **out["scheduler_config"]
    )
    sch.set_timesteps(sigmas=out["sigmas"])  # as StableDiffusion3Pipeline passes them
    np.testing.assert_allclose(sch.sigmas.numpy(), ts, **F32)
    np.testing.assert_allclose(sch.timesteps.numpy(), out["timesteps"], rtol=2e-7)


def test_diffusers_export_of_a_schedule_that_stops_early():
    # the flow schedulers append 0: a schedule ending at t > 0 would cost one more call
    ns = noise.preset("sd3")
    with pytest.raises(ValueError, match="append a final 0: the pipeline would make 3"):
        schedules.to_diffusers(np.array([1.0, 0.5, 0.02]), ns)
    assert "diffusers_scheduler" in schedules.to_diffusers([1.0, 0.0], noise.preset("wan"))["note"]


def test_comfyui_export_of_flow_schedules():
    ns = noise.preset("flux-dev")
    ts = _x64(schedules.flow_default, ns, 4)
    assert schedules.to_comfyui(ts, ns) == ts.tolist()
    assert ts[-1] == 0.0


def test_schedule_file_of_a_flow_model_round_trips(tmp_path):
    ns = noise.preset("wan")
    with jax.enable_x64(True):
        ts = schedules.optimal_steps(ns, 5)
        ts = ts.at[0].set(1.0)  # from pure noise (t = 1) to the data (t = 0)
        rec = hj.io.schedule_record(ts, ns, method="oss")
    assert rec["sigmas"][0] == math.inf and rec["sigmas"][-1] == 0.0
    assert rec["lambdas"][0] == -math.inf and rec["lambdas"][-1] == math.inf
    path = hj.io.save_schedule(tmp_path / "wan.json", rec)
    assert "Infinity" in path.read_text()
    back = hj.io.load_schedule(path)
    assert back["t"] == rec["t"] and back["sigmas"] == rec["sigmas"]
    bad = dict(rec, sigmas=[1.0, *rec["sigmas"][1:]])
    with pytest.raises(hj.io.ScheduleFileError, match="contradict"):
        hj.io.validate_record(bad)
    bad = dict(rec, lambdas=[*rec["lambdas"][:2], math.inf, *rec["lambdas"][3:]])
    with pytest.raises(hj.io.ScheduleFileError, match="'lambdas' must be finite"):
        hj.io.validate_record(bad)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    from hso_jax.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_flux_default_is_the_pipeline_list(capsys):
    pytest.importorskip("diffusers")
    argv = ["schedules", "--noise", "flux-dev", "--resolution", "1024", "--nfe", "28"]
    want = _flux_scheduler_sigmas(28, 1.15, **FLUX_DEV_CONFIG)
    rc, out, err = _cli(capsys, *argv, "--kind", "default", "--format", "diffusers")
    assert rc == 0 and err == ""
    exported = json.loads(out)  # FluxPipeline's own scheduler, FlowMatchEuler, by default
    assert exported["target"] == "diffusers:FlowMatchEulerDiscreteScheduler"
    np.testing.assert_allclose(exported["sigmas"], want, **F32)  # its final 0 included
    assert exported["config"]["shift"] == 1.0 and not exported["config"]["use_dynamic_shifting"]
    assert exported["nfe"] == 28
    rc, out, _ = _cli(capsys, *argv, "--kind", "default")
    rec = hj.io.validate_record(json.loads(out))
    np.testing.assert_allclose(rec["t"], want, **F32)
    assert rec["noise"] == "flux-dev" and rec["method"] == "default"
    assert rec["options"]["resolution"] == 1024
    rc, out, _ = _cli(capsys, *argv, "--kind", "default", "--format", "comfyui")
    np.testing.assert_allclose(json.loads(out), want, **F32)


def test_cli_beta_oss_and_shift(capsys):
    rc, out, _ = _cli(
        capsys,
        "schedules",
        "--noise",
        "wan",
        "--shift",
        "8",
        "--nfe",
        "5",
        "--kind",
        "beta",
        "--variant",
        "diffusers",
        "--format",
        "comfyui",
    )
    want = _x64(schedules.beta, noise.preset("wan", shift=8.0), 5, variant="diffusers")
    assert rc == 0 and json.loads(out) == want.tolist()
    rc, out, _ = _cli(
        capsys,
        "schedules",
        "--noise",
        "sd3",
        "--nfe",
        "10",
        "--kind",
        "oss",
        "--oss-table",
        "flux",
        "--format",
        "comfyui",
    )
    assert rc == 0 and json.loads(out) == [*OSS_FLUX[:-1], 0.0]
    rc, out, _ = _cli(
        capsys,
        "schedules",
        "--noise",
        "flux-dev",
        "--image-seq-len",
        "256",
        "--nfe",
        "3",
        "--kind",
        "default",
        "--format",
        "comfyui",
    )
    want = _x64(schedules.flow_default, noise.preset("flux-dev", resolution=256), 3)
    assert rc == 0 and json.loads(out) == want.tolist()
    # a flow schedule that stops before 0: its last point becomes ComfyUI's final 0 (3 calls,
    # not 4), or stays where it is with --end free
    argv = ["schedules", "--noise", "sd3", "--nfe", "3", "--kind", "uniform", "--t-end", "0.1"]
    rc, out, _ = _cli(capsys, *argv, "--format", "comfyui")
    np.testing.assert_allclose(json.loads(out), [1.0, 0.7, 0.4, 0.0], rtol=1e-15)
    rc, out, _ = _cli(capsys, *argv, "--format", "comfyui", "--end", "free")
    np.testing.assert_allclose(json.loads(out), [1.0, 0.7, 0.4, 0.1], rtol=1e-15)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--noise", "sd3", "--resolution", "1024", "--kind", "default"],
         r"argument --resolution: only applies to --noise flux-dev, not --noise sd3"),
        (["--noise", "flux-dev", "--shift", "3", "--kind", "default"],
         r"argument --shift: only applies to --noise flow / wan, not --noise flux-dev"),
        (["--noise", "flux-dev", "--resolution", "1000", "--kind", "default"],
         r"argument --resolution: .*multiple of 16.*1000"),
        (["--noise", "flux-dev", "--resolution", "big", "--kind", "default"],
         r"argument --resolution: must be pixels"),
        (["--noise", "wan", "--shift", "-1", "--kind", "default"],
         r"argument --shift: must be a number in \[0.001, 1000\]"),
        (["--noise", "wan", "--kind", "default", "--t-start", "0.5"],
         r"argument --t-start: does not apply to --kind default"),
        (["--noise", "sd3", "--kind", "oss"],
         r"argument --oss-table: model must be given for noise 'sd3'"),
        (["--noise", "sd3", "--kind", "karras", "--variant", "diffusers"],
         r"argument --variant: only applies to --kind beta"),
        (["--noise", "sd3", "--kind", "karras"], r"karras spaces steps in log-SNR.*t = 1"),
        (["--noise", "flow", "--kind", "default"], r"covers only t in \[0.001, 0.999\]"),
        (["--noise", "sd15", "--kind", "beta"], r"beta needs a flow-matching model"),
    ],
)  # fmt: skip
def test_cli_bad_flow_arguments_exit_2(capsys, argv, match):
    rc, out, err = _cli(capsys, "schedules", "--nfe", "4", *argv)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert re.search(match, err), err


def test_cli_optimize_takes_the_preset_options(capsys):
    rc, out, err = _cli(capsys, "optimize", "--noise", "mnist", "--resolution", "512", "--nfe", "4")
    assert rc == 2 and "invalid choice" in err
    rc, out, err = _cli(
        capsys,
        "optimize",
        "--model",
        "mnist",
        "--method",
        "gits",
        "--resolution",
        "512",
        "--nfe",
        "4",
    )
    assert rc == 2 and "argument --resolution: only applies to --noise flux-dev" in err
    rc, out, err = _cli(capsys, "optimize", "--noise", "sd3", "--image-seq-len", "64", "--nfe", "4")
    assert rc == 2 and "argument --image-seq-len: only applies to --noise flux-dev" in err
