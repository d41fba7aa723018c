"""Exports run in the user's runtime exactly as optimised: one NFE, one trajectory.

Every target is checked in its own code -- diffusers 0.42.1's schedulers, k-diffusion 0.1.1's
samplers (the code ComfyUI vendors) -- on an analytic Gaussian mixture: the runtime must make
exactly the optimised number of network calls, at the optimised times, and end within 1e-4 of
:func:`hso_jax.sample` from the same noise (the oracle and our sampler in float64; diffusers
keeps its sigmas in float32). Then the same through real diffusers pipelines (tiny random
networks), counting the calls of the UNet / transformer itself.
"""

import dataclasses

import numpy as np
import pytest

import hso_jax as hj
from hso_jax import export as ex

pytest.importorskip("torch")
pytest.importorskip("diffusers")

SD15 = hj.noise.preset("sd15")
SD21 = hj.noise.preset("sd21")  # SD 2.1 at 768 px predicts v
FLUX = hj.noise.preset("flux-dev", resolution=1024)
SD3 = hj.noise.preset("sd3")
WAN = hj.noise.preset("wan", shift=3.0)
EDM = hj.noise.preset("edm")

# 5 network points on training steps, then the data end (or t_min)
STEPS_ZERO = np.array([1.0, 0.8, 0.55, 0.3, 0.1, 0.0])
STEPS_T_MIN = np.array([1.0, 0.8, 0.55, 0.3, 0.1, 0.001])
FLOW_ZERO = np.array([1.0, 0.9, 0.72, 0.5, 0.27, 0.08, 0.0])
FLOW_UNIPC = np.array([1.0 - 1e-6, 0.9, 0.72, 0.5, 0.27, 0.08, 0.0])  # diffusers' own start
EDM_ZERO = np.array([80.0, 10.0, 2.0, 0.4, 0.05, 0.0])

# (target, noise, schedule, options): every row of README's table
ROWS = [
    ("diffusers:DPMSolverMultistepScheduler", SD15, STEPS_ZERO, {}),
    ("diffusers:DPMSolverMultistepScheduler", SD15, STEPS_T_MIN, {}),
    ("diffusers:DPMSolverMultistepScheduler", SD21, STEPS_ZERO, {"prediction": "v_prediction"}),
    ("diffusers:UniPCMultistepScheduler", SD15, STEPS_ZERO, {}),
    ("diffusers:UniPCMultistepScheduler", SD15, STEPS_T_MIN, {}),
    ("diffusers:UniPCMultistepScheduler", SD15, STEPS_T_MIN, {"variant": "bh1"}),
    ("diffusers:UniPCMultistepScheduler", SD21, STEPS_ZERO, {"prediction": "v_prediction"}),
    ("diffusers:DDIMScheduler", SD15, STEPS_ZERO, {}),
    ("diffusers:DDIMScheduler", SD15, STEPS_T_MIN, {}),
    ("diffusers:EulerDiscreteScheduler", SD15, STEPS_ZERO, {}),
    ("diffusers:EulerDiscreteScheduler", SD15, STEPS_T_MIN, {}),
    ("diffusers:EulerDiscreteScheduler", SD21, STEPS_ZERO, {"prediction": "v_prediction"}),
    ("diffusers:DDIMScheduler", SD21, STEPS_T_MIN, {"prediction": "v_prediction"}),
    ("diffusers:FlowMatchEulerDiscreteScheduler", FLUX, FLOW_ZERO, {}),
    ("diffusers:FlowMatchEulerDiscreteScheduler", SD3, FLOW_ZERO, {}),
    ("diffusers:FlowMatchHeunDiscreteScheduler", FLUX, FLOW_ZERO, {}),
    ("diffusers:DPMSolverMultistepScheduler", FLUX, FLOW_ZERO, {}),
    ("diffusers:UniPCMultistepScheduler", WAN, FLOW_UNIPC, {}),
    ("k-diffusion:sample_euler", SD15, STEPS_ZERO, {}),
    ("k-diffusion:sample_heun", SD15, STEPS_ZERO, {}),
    ("k-diffusion:sample_heun", SD15, STEPS_T_MIN, {}),
    ("k-diffusion:sample_dpmpp_2m", SD15, STEPS_ZERO, {}),
    ("k-diffusion:sample_dpmpp_2m", SD15, STEPS_T_MIN, {}),
    ("k-diffusion:sample_dpmpp_2m", EDM, EDM_ZERO, {}),
    ("comfyui:euler", FLUX, FLOW_ZERO, {}),
    ("comfyui:heun", FLUX, FLOW_ZERO, {}),
    ("comfyui:dpmpp_2m", SD15, STEPS_ZERO, {}),
]


def _row_id(row):
    name, noise, t, opts = row
    extra = "-".join(str(v) for v in opts.values())
    return f"{name}-{noise.name}-{hj.schedules.end_of(t, noise)}{'-' + extra if extra else ''}"


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_target_runs_the_optimised_sampler(row):
    name, noise, t, opts = row
    if name.startswith(("k-diffusion", "comfyui")):
        pytest.importorskip("torchsde")
    prediction = opts.get("prediction", "epsilon")
    e = ex.export(t, name, noise, variant=opts.get("variant"))
    report = ex.check(e, prediction=prediction)
    solver = e.target.solver()
    expected_nfe = solver.nfe(len(t) - 1, to_data=t[-1] == 0.0)
    assert report.nfe == report.expected_nfe == expected_nfe, report.summary()
    assert report.times_match, report.summary()
    assert report.max_deviation <= 1e-4, report.summary()
    assert report.passed


def test_the_check_can_fail():
    e = ex.export(STEPS_ZERO, "diffusers:unipc", SD15)
    # hso_jax's sampler on another schedule than the one the runtime is given: the times and
    # the samples differ
    t = e.t.copy()
    t[2] += 0.02
    report = ex.check(dataclasses.replace(e, t=t))
    assert not report.times_match and report.max_deviation > 1e-3 and not report.passed
    assert "<- differ" in report.summary() and "FAILED" in report.summary()
    # the runtime given one step too few: it makes another number of calls
    short = dataclasses.replace(e, timesteps=e.timesteps[:-1], sigmas=e.sigmas[:-2] + [0.0])
    short = dataclasses.replace(short, t=np.delete(e.t, -2))
    report = ex.check(dataclasses.replace(short, nfe=5))
    assert report.nfe == 4 and not report.passed


# --------------------------------------------------------------------------- optimise for it


@pytest.mark.parametrize(
    "method, name",
    [
        ("hso", "diffusers:unipc"),
        ("hso", "diffusers:dpm-solver-pp"),
        ("dmn", "diffusers:DDIMScheduler"),
        ("hso", "comfyui:dpmpp_2m"),
    ],
)
def test_model_free_methods_optimise_for_the_target(method, name):
    res = hj.optimize(SD15, nfe=5, method=method, target=name)
    tgt = ex.target(name, SD15)
    assert res.info["target"] == tgt.name and res.info["end"] == "zero"
    assert res.t.shape[0] == 6 and res.t[-1] == 0.0
    # on training steps, re-scored there (the continuous optimum's value is kept)
    k = res.t[:-1] * 1000
    np.testing.assert_array_equal(k, np.rint(k))
    assert res.info["grid"]["grid"] == "steps" and res.info["grid"]["max_shift"] < 1e-3
    report = ex.check(ex.export(res, name))
    assert report.passed and report.nfe == 5, report.summary()


def test_hso_ends_and_flavours():
    free = hj.optimize(SD15, nfe=5)  # HSO's multistep flavour: the last point is t_eps
    assert free.info["end"] == "free" and free.t.shape[0] == 6 and free.t[-1] >= 0.01
    with pytest.raises(ValueError, match=r"end='free'.*ends its last step at the data"):
        ex.export(free, "diffusers:unipc")
    t_min = hj.optimize(SD15, nfe=5, target="diffusers:unipc", end="t_min")
    assert t_min.t[-1] == SD15.t_min and t_min.info["end"] == "t_min"
    zero = hj.optimize(SD15, nfe=5, target="diffusers:unipc")
    # the same optimised network points, then another final step
    np.testing.assert_array_equal(zero.t[:-1], t_min.t[:-1])
    e = ex.export(t_min, "diffusers:unipc")
    assert e.config["final_sigmas_type"] == "sigma_min" and ex.check(e).passed


def test_flow_models_run_nfe_calls():
    # HSO's box ends at t_eps >= 0.01; the flow schedulers append 0: the data end is the
    # target's, so 8 means 8 transformer calls
    for name in ("diffusers:FlowMatchEulerDiscreteScheduler", "diffusers:unipc"):
        res = hj.optimize(FLUX, nfe=8, target=name)
        assert res.t.shape[0] == 9 and res.t[-1] == 0.0
        report = ex.check(ex.export(res, name))
        assert report.passed and report.nfe == 8, report.summary()
    # UniPC starts where diffusers' own flow schedules do
    assert res.t[0] <= 1.0 - 1e-6
    assert any("same schedule for every flow model" in w for w in res.warnings)


def test_direct_optimises_the_target_sampler():
    """direct with a last step into the data: the loss is the target's sampler, and the
    reference is passed through the same last step."""
    gm = hj.models.GaussianMixture(np.array([[1.0, -0.5], [-1.0, 0.4]]), np.array([0.3, 0.2]))
    model = gm.denoiser(SD15)
    import jax

    x_T = SD15.prior(jax.random.key(0), (8, 2))
    res = hj.optimize(
        model, nfe=4, method="direct", target="diffusers:dpm-solver-pp", x_T=x_T, steps=3,
        learning_rate=0.05,
    )  # fmt: skip
    assert res.t[-1] == 0.0 and res.info["end"] == "zero" and res.t.shape[0] == 5
    k = res.t[:-1] * 1000
    np.testing.assert_array_equal(k, np.rint(k))
    assert np.isfinite(res.objective) and res.info["grid"]["grid"] == "steps"
    assert ex.check(ex.export(res, "diffusers:dpm-solver-pp")).passed


def test_gits_and_ays_for_a_target():
    """GITS: the teacher grid is made of training steps, so the DP's schedule lies on them;
    AYS: projected and its KLUB re-estimated there. Both end at the data for diffusers."""
    import jax

    gm = hj.models.GaussianMixture(np.array([[1.0, -0.5], [-1.0, 0.4]]), np.array([0.3, 0.2]))
    model = gm.denoiser(SD15)
    x_T = SD15.prior(jax.random.key(0), (8, 2))
    name = "diffusers:dpm-solver-pp"
    gits = hj.optimize(model, nfe=4, method="gits", target=name, x_T=x_T, teacher_points=20)
    ays = hj.optimize(
        model, nfe=4, method="ays", target=name, data=gm.sample(jax.random.key(1), 64),
        key=jax.random.key(2), num_samples=16, max_sweeps=1, subdivide=False, candidates=3,
        progress=False,
    )  # fmt: skip
    for res in (gits, ays):
        assert res.t[-1] == 0.0 and res.t.shape == (5,)
        k = res.t[:-1] * 1000
        np.testing.assert_array_equal(k, np.rint(k))
        assert any("t_min" in w and "data (t = 0)" in w for w in res.warnings), res.warnings
        assert ex.check(ex.export(res, name)).passed


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ex.export(np.array([1.0, 0.5, 0.0123]), "diffusers:unipc", SD15),
         r"end='free'.*hso_jax.optimize\(\.\.\., target="),
        (lambda: ex.export(np.array([1.0, 0.5002, 0.0]), "diffusers:unipc", SD15),
         r"t\[1\] = 0.5002 lies between steps.*step 499"),
        (lambda: ex.export(FLOW_ZERO, "diffusers:unipc", WAN),
         r"starts at most at t = 0.999999"),
        (lambda: ex.export(STEPS_ZERO, "diffusers:unipc", SD15, variant="bh1"),
         r"bh1.*NaN on a last step into sigma = 0"),
        (lambda: ex.export(FLOW_ZERO, "k-diffusion:dpmpp_2m", FLUX),
         r"cannot run a flow model.*-log\(sigma\).*nearest that works"),
        (lambda: ex.export(EDM_ZERO, "diffusers:unipc", EDM),
         r"cannot run a continuous model"),
        (lambda: ex.export(STEPS_ZERO, "diffusers:nope", SD15), r"unknown target"),
        (lambda: ex.export(STEPS_ZERO, "diffusers:unipc", SD15, end="free"),
         r"ends at zero or t_min, not end='free'"),
        (lambda: hj.optimize(SD15, nfe=5, target="k-diffusion:heun"),
         r"method='hso' has schedule flavours for UniPC, DPM-Solver\+\+.*got Heun"),
        (lambda: hj.optimize(SD15, nfe=5, solver="unipc", target="diffusers:unipc"),
         r"pass solver= or target=, not both"),
    ],
)
def test_refusals_say_what_works(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# --------------------------------------------------------------------------- snippets


class _Pipe:
    """A pipeline stand-in: a scheduler, and a call that records its arguments."""

    def __init__(self, scheduler):
        self.scheduler, self.kwargs = scheduler, None

    def __call__(self, prompt, **kwargs):
        self.kwargs = kwargs
        return type("Out", (), {"images": [None]})()


@pytest.mark.parametrize(
    "name, noise, t",
    [
        ("diffusers:dpm-solver-pp", SD15, STEPS_ZERO),  # timesteps=
        ("diffusers:DDIMScheduler", SD15, STEPS_T_MIN),  # redirected, timesteps=
        ("diffusers:unipc", SD15, STEPS_ZERO),  # the adapter, values in the snippet
        ("diffusers:FlowMatchEulerDiscreteScheduler", FLUX, FLOW_ZERO),  # sigmas=
        ("diffusers:heun", FLUX, FLOW_ZERO),  # the adapter
    ],
)
def test_snippets_run_and_install_the_schedule(name, noise, t):
    import diffusers

    e = ex.export(t, name, noise)
    if e.target.process == "discrete":  # Stable Diffusion's scheduler config
        base = diffusers.PNDMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
        )
    else:
        base = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = _Pipe(base)
    exec(e.snippet(), {"pipe": pipe, "prompt": "a lighthouse"})
    sched = pipe.scheduler
    assert type(sched).__name__ == e.target.runs_as
    sched.set_timesteps(
        num_inference_steps=pipe.kwargs.get("num_inference_steps"),
        **{k: pipe.kwargs[k] for k in ("timesteps", "sigmas") if k in pipe.kwargs},
    )
    got = sched.timesteps.numpy().astype(np.float64)
    want = np.asarray(ex.check(e).expected_times if "heun" in name else e.timesteps)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # diffusers computes its sigmas from float32 alphas_cumprod
    np.testing.assert_allclose(sched.sigmas.numpy()[-1], e.sigmas[-1], rtol=1e-4)


def test_list_snippets_are_python():
    for name in ("k-diffusion:sample_dpmpp_2m", "comfyui:euler"):
        e = ex.export(STEPS_ZERO, name, SD15)
        compile(e.snippet(), name, "exec")
        scope = {}
        if name.startswith("comfyui"):
            exec(e.snippet(), scope)
            assert scope["SIGMAS"] == e.sigmas


# --------------------------------------------------------------------------- the adapter


def test_adapter_refuses_another_process_and_another_length():
    from diffusers import UniPCMultistepScheduler

    e = ex.export(STEPS_ZERO, "diffusers:unipc", SD15)
    ddpm = UniPCMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    with pytest.raises(ValueError, match="not the one the schedule was optimised for"):
        ex.diffusers_scheduler(e, ddpm)
    sd = UniPCMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    s = ex.diffusers_scheduler(e, sd)
    assert type(s).__name__ == "UniPCMultistepScheduler"  # save_config names the real class
    with pytest.raises(ValueError, match="runs the hso_jax schedule of 5 steps.*length 6"):
        s.set_timesteps(6)
    s.set_timesteps(sigmas=[0.5] * 5)  # a pipeline's own default list of that length: replaced
    assert s.timesteps.tolist() == e.timesteps
    np.testing.assert_allclose(s.sigmas.numpy(), e.sigmas, rtol=1e-6)


# --------------------------------------------------------------------------- real pipelines


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip


def _calls(module, key):
    """The time input of every forward call of ``module``, in order."""
    seen = []

    def hook(m, args, kwargs):
        t = kwargs[key] if key in kwargs else args[1]
        seen.append(float(t.flatten()[0]) if hasattr(t, "flatten") else float(t))

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_stable_diffusion_pipeline_makes_nfe_unet_calls():
    """README: optimise for diffusers' UniPC, paste, and the pipeline makes exactly 5 UNet calls
    (guided: one batched call each) at the optimised timesteps; DPM-Solver++ the same through
    the pipeline's own timesteps= argument."""
    pytest.importorskip("transformers")
    import torch
    from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler

    unet = _tiny_unet()
    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=unet,
        scheduler=UniPCMultistepScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
        ),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    seen = _calls(unet, "timestep")
    cond = dict(
        prompt_embeds=torch.randn(1, 4, 8), negative_prompt_embeds=torch.zeros(1, 4, 8),
        guidance_scale=7.5, output_type="latent", height=64, width=64,
    )  # fmt: skip
    res = hj.optimize(SD15, nfe=5, target="diffusers:unipc")
    pipe.scheduler = ex.diffusers_scheduler(res, pipe.scheduler)
    pipe(num_inference_steps=5, **cond)
    assert seen == res.timesteps[:-1].tolist() and len(seen) == 5

    from diffusers import DPMSolverMultistepScheduler

    res = hj.optimize(SD15, nfe=5, target="diffusers:dpm-solver-pp")
    e = ex.export(res, "diffusers:dpm-solver-pp")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, **e.config)
    seen.clear()
    pipe(timesteps=e.timesteps, **cond)
    assert seen == e.timesteps and len(seen) == 5


def test_flux_pipeline_makes_nfe_transformer_calls():
    pytest.importorskip("transformers")
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=4,
        num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8,
        guidance_embeds=True, axes_dims_rope=(0, 2, 2),
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(4,), latent_channels=4, norm_num_groups=1, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    seen = _calls(transformer, "timestep")
    name = "diffusers:FlowMatchEulerDiscreteScheduler"
    res = hj.optimize(FLUX, nfe=8, target=name)
    e = ex.export(res, name)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **e.config)
    pipe(
        prompt_embeds=torch.randn(1, 3, 8), pooled_prompt_embeds=torch.randn(1, 8),
        sigmas=e.sigmas[:-1], height=32, width=32, output_type="latent", guidance_scale=3.5,
    )  # fmt: skip
    # FluxPipeline passes timestep / 1000, i.e. the flow time itself
    np.testing.assert_allclose(seen, res.t[:-1], rtol=1e-6)
    assert len(seen) == 8
