"""Flax UNet2DConditionModel port (Stable Diffusion 1.x / 2.x / XL) against diffusers.

Tiny random configurations built on the fly (:func:`hso_jax.models.tiny_config`): the forward
pass with and without classifier-free guidance, the converter (model folder and pipeline
folder), and a DPM-Solver++ sample against diffusers' pipeline loop. The diffusers tests need
the ``convert`` extra (torch, diffusers) and skip without it; the error tests run everywhere.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_convert import _torch_model  # diffusers model with perturbed random weights

import hso_jax as hj
from hso_jax.cli import main
from hso_jax.models import convert as cv
from hso_jax.models import denoiser_from_config, load, tiny_config
from hso_jax.models.unet import abstract_params, unet_fn
from hso_jax.models.unet_cond import UNetCondConfig

KINDS = ("sd15", "sd21", "sdxl")
TOL = 1e-4
L_TOKENS = 5  # prompt length of the test embeddings (any length works)
# SD 2.x: v-prediction, as the 768 px checkpoints.
PREDICTION = {"sd15": "epsilon", "sd21": "v_prediction", "sdxl": "epsilon"}


def _cond(kind, batch, seed):
    """A random condition as NumPy: the prompt embedding, or for SDXL the dict of three."""
    rng = np.random.default_rng(seed)
    ctx = rng.standard_normal((batch, L_TOKENS, 12)).astype(np.float32)
    if kind != "sdxl":
        return ctx
    return {
        "encoder_hidden_states": ctx,
        "text_embeds": rng.standard_normal((batch, 10)).astype(np.float32),
        # original size, crop offset, target size, as SDXL pipelines pass them
        "time_ids": np.tile(np.array([64.0, 64.0, 0.0, 0.0, 64.0, 64.0], np.float32), (batch, 1)),
    }


def _torch_call(model, x_nchw, t, cond):
    import torch

    def tt(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    kw = {}
    if isinstance(cond, dict):
        kw["added_cond_kwargs"] = {
            "text_embeds": tt(cond["text_embeds"]),
            "time_ids": tt(cond["time_ids"]),
        }
        ctx = cond["encoder_hidden_states"]
    else:
        ctx = cond
    with torch.no_grad():
        return model(tt(x_nchw), tt(np.asarray(t, np.float32)), tt(ctx), **kw).sample.numpy()


def _cat(a, b):
    return jax.tree_util.tree_map(lambda u, c: np.concatenate([u, c]), a, b)


@pytest.fixture(scope="module")
def nets():
    """kind -> (config, torch model, Flax params, NHWC fn); built once per module.

    The tiny networks run eagerly: a few calls per config cost less than compiling them."""
    cache = {}

    def get(kind):
        if kind not in cache:
            config = tiny_config(kind)
            model = _torch_model(config, seed=KINDS.index(kind))
            params = cv.state_dict_to_params(model.state_dict(), config)
            cache[kind] = (config, model, params, unet_fn(config))
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_diffusers(nets, kind):
    config, model, params, fn = nets(kind)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([3.0, 731.0], np.float32)
    cond = _cond(kind, 2, seed=2)
    ref = _torch_call(model, x, t, cond)
    out = np.asarray(fn(params, x.transpose(0, 2, 3, 1), t, cond)).transpose(0, 3, 1, 2)
    err = np.max(np.abs(out - ref))
    assert out.shape == ref.shape and out.dtype == np.float32
    assert err < TOL, (kind, err)
    assert np.max(np.abs(ref)) > 0.1  # not a trivially small output


@pytest.mark.parametrize("kind", KINDS)
def test_guided_denoiser_matches_diffusers(nets, kind):
    """Denoiser(cond, uncond, guidance 7.5).raw == the pipelines' CFG on the torch model."""
    config, model, params, _ = nets(kind)
    sched = dict(cv.SD_SCHEDULER, prediction_type=PREDICTION[kind])
    cond, uncond = _cond(kind, 1, seed=3), _cond(kind, 1, seed=4)
    den = denoiser_from_config(config, params, sched).replace(
        cond=cond, uncond=uncond, guidance_scale=7.5
    )
    assert den.prediction == {"epsilon": "eps", "v_prediction": "v"}[PREDICTION[kind]]
    assert den.noise.name == kind
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 4)).astype(np.float32)
    k = 617
    raw = np.asarray(den.raw(jnp.asarray(x), den.noise.t_from_index(k)))
    # diffusers pipelines: one batch [uncond, cond], then u + w (c - u)
    both = _cat(
        jax.tree_util.tree_map(lambda a: np.repeat(a, 2, 0), uncond),
        jax.tree_util.tree_map(lambda a: np.repeat(a, 2, 0), cond),
    )
    x2 = np.concatenate([x, x]).transpose(0, 3, 1, 2)
    p_u, p_c = np.split(_torch_call(model, x2, np.full(4, k, np.float32), both), 2)
    ref = (p_u + 7.5 * (p_c - p_u)).transpose(0, 2, 3, 1)
    err = np.max(np.abs(raw - ref))
    assert err < TOL, (kind, err)
    # guidance changes the prediction (the condition reaches the output)
    assert np.max(np.abs(p_c - p_u)) > 1e-3


def test_cond_batch_one_broadcasts(nets):
    config, _, params, fn = nets("sdxl")
    x = np.random.default_rng(6).standard_normal((2, 8, 8, 4)).astype(np.float32)
    cond = _cond("sdxl", 1, seed=7)
    tiled = jax.tree_util.tree_map(lambda a: np.repeat(a, 2, 0), cond)
    np.testing.assert_allclose(
        np.asarray(fn(params, x, 500.0, cond)), np.asarray(fn(params, x, 500.0, tiled)), atol=1e-6
    )


def test_convert_pipeline_folder_and_load(nets, tmp_path):
    """A pipeline-style folder (unet/ + scheduler/, SD 2.x v-prediction) through the CLI."""
    pytest.importorskip("safetensors")
    diffusers = pytest.importorskip("diffusers")
    config, model, _, _ = nets("sd21")
    src = tmp_path / "pipe"
    model.save_pretrained(src / "unet")
    sched = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
    )
    sched.save_pretrained(src / "scheduler")
    out = tmp_path / "flax"
    # NCHW: diffusers' layout (the default for a conditional UNet is NHWC, tested below)
    argv = ["convert", "--diffusers", str(src), "--out", str(out), "--data-format", "NCHW"]
    assert main(argv) == 0
    meta = json.loads((out / "hso_jax.json").read_text())
    assert meta["data_format"] == "NCHW" and not meta["scheduler_config_defaulted"]
    assert (out / "params" / "MANIFEST.sha256").is_file()
    den = load(out)
    assert den.prediction == "v" and den.noise.name == "sd21"
    np.testing.assert_allclose(
        den.noise.alphas_cumprod, sched.alphas_cumprod.double().numpy(), rtol=1e-6
    )
    cond = _cond("sd21", 2, seed=8)
    den = den.replace(cond=cond)
    x = np.random.default_rng(9).standard_normal((2, 4, 8, 8)).astype(np.float32)
    raw = np.asarray(den.raw(jnp.asarray(x), den.noise.t_from_index(250)))
    ref = _torch_call(model, x, np.full(2, 250.0, np.float32), cond)
    assert np.max(np.abs(raw - ref)) < TOL


def test_convert_unet_folder_bin_defaults(nets, tmp_path):
    """A bare UNet folder (.bin weights, no scheduler): SD's scaled-linear epsilon defaults."""
    config, model, params, _ = nets("sdxl")
    src = tmp_path / "unet"
    model.save_pretrained(src, safe_serialization=False)
    assert (src / "diffusion_pytorch_model.bin").is_file()
    out = cv.convert(src, tmp_path / "flax")
    meta = json.loads((out / "hso_jax.json").read_text())
    assert meta["scheduler_config_defaulted"] and meta["data_format"] == "NHWC"
    den = load(out)
    assert den.prediction == "eps" and den.noise.name == "sdxl"
    assert hj.noise.preset("sdxl").alphas_cumprod.tolist() == den.noise.alphas_cumprod.tolist()
    jax.tree_util.tree_map(np.testing.assert_array_equal, den.params, params)
    # the round trip back to a state dict gives diffusers' names and values
    sd = cv.params_to_state_dict(den.params)
    ref = {k: v.numpy() for k, v in model.state_dict().items()}
    assert sorted(sd) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(sd[k], ref[k])


def test_read_sharded_safetensors(nets, tmp_path):
    """Large U-Nets ship sharded (``...safetensors.index.json`` + shards): all shards are read."""
    pytest.importorskip("safetensors")
    config, model, params, _ = nets("sd15")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    cfg, state_dict, sched = cv.load_diffusers_folder(tmp_path)
    assert sched is None and cfg["_class_name"] == "UNet2DConditionModel"
    got = cv.state_dict_to_params(state_dict, cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, params)


def test_dpm_solver_pp_matches_diffusers_pipeline_loop(nets):
    """hj.sample_trajectory with DPM-Solver++(2M) and CFG == diffusers' denoising loop
    (scale_model_input, unet, CFG, DPMSolverMultistepScheduler.step), state by state."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    config, model, params, _ = nets("sd15")
    n, w = 5, 7.5
    sched = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="sigma_min",  # end at training step 0 (t = 1/N), not at sigma = 0
    )
    sched.set_timesteps(n)
    cond, uncond = _cond("sd15", 1, seed=10), _cond("sd15", 1, seed=11)
    x_T = np.random.default_rng(12).standard_normal((2, 4, 8, 8)).astype(np.float32)

    latents = torch.from_numpy(x_T) * sched.init_noise_sigma
    ctx = torch.from_numpy(np.concatenate([np.repeat(uncond, 2, 0), np.repeat(cond, 2, 0)]))
    states = [latents.numpy()]
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([latents] * 2), t)
            pred = model(inp, t, encoder_hidden_states=ctx).sample
            p_u, p_c = pred.chunk(2)
            latents = sched.step(p_u + w * (p_c - p_u), t, latents).prev_sample
            states.append(latents.numpy())

    den = denoiser_from_config(config, params).replace(cond=cond, uncond=uncond, guidance_scale=w)
    steps = sched.timesteps.numpy().astype(np.float64)
    ts = np.concatenate([(steps + 1) / 1000, [1 / 1000]])  # t_k = (k + 1) / N; last: step 0
    traj = hj.sample_trajectory(
        den,
        jnp.asarray(x_T.transpose(0, 2, 3, 1)),
        jnp.asarray(ts, jnp.float32),
        hj.solvers.dpm_solver_pp(order=2),
    )
    ours = np.asarray(traj.x).transpose(0, 1, 4, 2, 3)
    assert ours.shape == (n + 1, *x_T.shape)
    # The random network with w = 7.5 drives the latents to |x| ~ 45, where float32 rounding
    # alone is ~5e-6: compare relative to each state's size (measured: 1.9e-6 at every step).
    errs = [
        float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(ours, states, strict=True)
    ]
    assert max(errs) < 1e-5, errs
    assert np.max(np.abs(states[-1] - states[0])) > 0.1  # the sampler moved


# --- no torch needed ------------------------------------------------------------------


def test_parameter_tree():
    """Parameter names and shapes follow diffusers' (checked against the state dicts above)."""
    params = abstract_params(tiny_config("sdxl"))
    assert params["add_embedding"]["linear_1"]["kernel"].shape == (34, 32)
    blocks = params["down_blocks_1"]["attentions_0"]
    assert sorted(k for k in blocks if k.startswith("transformer_blocks")) == [
        "transformer_blocks_0",
        "transformer_blocks_1",
    ]
    assert blocks["proj_in"]["kernel"].ndim == 2  # use_linear_projection
    ff = blocks["transformer_blocks_0"]["ff"]
    assert ff["net_0"]["proj"]["kernel"].shape == (16, 2 * 64)  # GEGLU, width 4 x 16
    assert "bias" not in blocks["transformer_blocks_0"]["attn2"]["to_k"]
    assert blocks["transformer_blocks_0"]["attn2"]["to_k"]["kernel"].shape == (12, 16)
    sd15 = abstract_params(tiny_config("sd15"))
    assert sd15["down_blocks_0"]["attentions_0"]["proj_in"]["kernel"].ndim == 4  # 1x1 conv


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]}, "CrossAttnDown"),
        ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D"]}, "CrossAttnUpBlock2D"),
        ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "UNetMidBlock2DCrossAttn"),
        ({"addition_embed_type": "text"}, "text_time"),
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"attention_head_dim": [2, 4, 8]}, "one per down block"),
        ({"addition_embed_type": "text_time"}, "addition_time_embed_dim"),
        ({"only_cross_attention": True}, "only_cross_attention"),
        ({"some_new_key": 1}, "unsupported UNet2DConditionModel config keys"),
    ],
)
def test_unsupported_configs_raise(change, match):
    with pytest.raises(ValueError, match=match):
        UNetCondConfig.from_dict(tiny_config("sd15", **change))


def test_bad_conditions_raise():
    cfg = tiny_config("sdxl")
    params = abstract_params(cfg)
    fn = unet_fn(cfg)
    x = jnp.zeros((2, 8, 8, 4))
    cond = _cond("sdxl", 2, seed=0)

    def shape_of(c):
        return jax.eval_shape(fn, params, x, 1.0, c)

    assert shape_of(cond).shape == x.shape
    with pytest.raises(TypeError, match="needs a condition"):
        jax.eval_shape(fn, params, x, 1.0)
    with pytest.raises(TypeError, match="must be a dict"):
        shape_of(cond["encoder_hidden_states"])
    with pytest.raises(ValueError, match="needs"):
        shape_of({"encoder_hidden_states": cond["encoder_hidden_states"]})
    with pytest.raises(ValueError, match="cross_attention_dim"):
        shape_of({**cond, "encoder_hidden_states": np.zeros((2, 5, 7), np.float32)})
    with pytest.raises(ValueError, match="batch size 1 or 2"):
        shape_of({**cond, "text_embeds": np.zeros((3, 10), np.float32)})
    with pytest.raises(ValueError, match="projection_class_embeddings_input_dim"):
        shape_of({**cond, "time_ids": np.zeros((2, 5), np.float32)})
    with pytest.raises(ValueError, match="known"):
        tiny_config("sd3")


def test_blockwise_attention_equals_torch_and_the_plain_form():
    """The online-softmax attention of long sequences equals torch's scaled_dot_product_attention
    and the plain form (lengths that are not multiples of the block: padded queries, masked
    keys), in value and in gradient."""
    torch = pytest.importorskip("torch")
    from hso_jax.models.layers import multi_head_attention

    rng = np.random.default_rng(0)
    heads, d = 4, 8
    q, k, v = (rng.standard_normal((2, n, heads * d)).astype(np.float32) for n in (70, 45, 45))
    block = multi_head_attention(q, k, v, heads, block=16)

    def th(x):  # (B, L, heads * d) -> (B, heads, L, d)
        return torch.from_numpy(x).reshape(2, -1, heads, d).transpose(1, 2)

    ref = torch.nn.functional.scaled_dot_product_attention(th(q), th(k), th(v))
    ref = ref.transpose(1, 2).reshape(2, 70, heads * d).numpy()
    np.testing.assert_allclose(block, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(block, multi_head_attention(q, k, v, heads), rtol=1e-5, atol=1e-6)
    w = rng.standard_normal(block.shape).astype(np.float32)

    def loss(blk):
        return lambda q, k, v: jnp.sum(w * multi_head_attention(q, k, v, heads, block=blk))

    g_block = jax.grad(loss(16), argnums=(0, 1, 2))(q, k, v)
    g_plain = jax.grad(loss(None), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_block, g_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
