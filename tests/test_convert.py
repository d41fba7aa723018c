"""Flax UNet2DModel port and the diffusers converter.

The equivalence tests need the ``convert`` extra (torch, diffusers, safetensors) and skip
without it; the error and round-trip tests run everywhere.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hso_jax.cli import main
from hso_jax.denoiser import OutputShapeError
from hso_jax.models import convert as cv
from hso_jax.models import load
from hso_jax.models.unet import UNet2D, UNetConfig, init_params, unet_fn

# Two small configurations: one with attention in down/up blocks and the mid block, one with
# only mid-block attention and the less common options (scale_shift, freq_shift, unflipped
# embedding, downsample_padding 0, centred input, mid-block scale factor).
CONFIG_ATTN = {
    "_class_name": "UNet2DModel",
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "attention_head_dim": 16,
    "norm_num_groups": 8,
}
CONFIG_PLAIN = {
    "_class_name": "UNet2DModel",
    "sample_size": 16,
    "in_channels": 2,
    "out_channels": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "attention_head_dim": None,
    "norm_num_groups": 4,
    "norm_eps": 1e-6,
    "freq_shift": 1,
    "flip_sin_to_cos": False,
    "downsample_padding": 0,
    "center_input_sample": True,
    "resnet_time_scale_shift": "scale_shift",
    "mid_block_scale_factor": 1.4142135623730951,
    "act_fn": "silu",
}


def _torch_model(config, seed=0):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    kw = {k: v for k, v in config.items() if not k.startswith("_")}
    model = getattr(diffusers, config.get("_class_name", "UNet2DModel"))(**kw).eval()
    with torch.no_grad():  # perturb every weight (GroupNorm 1/0 init etc.) so all paths matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _torch_out(model, x, t):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()


@pytest.mark.parametrize("config", [CONFIG_ATTN, CONFIG_PLAIN], ids=["attn", "plain"])
def test_matches_diffusers(config):
    model = _torch_model(config)
    params = cv.state_dict_to_params(model.state_dict(), config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, config["in_channels"], 16, 16)).astype(np.float32)
    t = np.array([3.0, 731.0], np.float32)
    ref = _torch_out(model, x, t)
    out = np.asarray(unet_fn(config, "NCHW")(params, jnp.asarray(x), jnp.asarray(t)))
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.max(np.abs(out - ref)) < 1e-4, np.max(np.abs(out - ref))
    # NHWC interface gives the same numbers.
    out_nhwc = unet_fn(config, "NHWC")(params, jnp.asarray(x.transpose(0, 2, 3, 1)), t)
    np.testing.assert_allclose(np.asarray(out_nhwc).transpose(0, 3, 1, 2), out, atol=1e-5)


def test_mnist_architecture_matches_diffusers():
    from hso_jax.models.train import MNIST_CONFIG

    model = _torch_model(MNIST_CONFIG, seed=1)
    params = cv.state_dict_to_params(model.state_dict(), MNIST_CONFIG)
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    t = np.array([0.0, 999.0], np.float32)
    out = unet_fn(MNIST_CONFIG, "NCHW")(params, jnp.asarray(x), jnp.asarray(t))
    assert np.max(np.abs(np.asarray(out) - _torch_out(model, x, t))) < 1e-4


def test_convert_folder_and_load(tmp_path, capsys):
    pytest.importorskip("safetensors")
    diffusers = pytest.importorskip("diffusers")
    model = _torch_model(CONFIG_ATTN, seed=2)
    src = tmp_path / "src"
    model.save_pretrained(src)  # config.json + diffusion_pytorch_model.safetensors
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
    )
    sched.save_pretrained(src)
    out = tmp_path / "flax"
    assert main(["convert", "--diffusers", str(src), "--out", str(out)]) == 0  # the CLI
    err = capsys.readouterr().err.splitlines()  # progress on stderr, one line per phase
    assert err[0].startswith("hso-jax convert: reading ") and err[0].endswith(".safetensors")
    assert err[1].startswith("hso-jax convert: converting ") and len(err) == 2
    quiet = ["convert", "--diffusers", str(src), "--out", str(tmp_path / "q"), "--quiet"]
    assert main(quiet) == 0 and capsys.readouterr().err == ""
    den = load(out)
    assert den.prediction == "v"
    np.testing.assert_allclose(
        den.noise.alphas_cumprod, sched.alphas_cumprod.double().numpy(), rtol=1e-6
    )
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    k = 417
    t = den.noise.t_from_index(k)  # model time whose network input is step index k
    raw = np.asarray(den.raw(jnp.asarray(x), jnp.asarray(t, jnp.float32)))
    ref = _torch_out(model, x, np.array([k, k], np.float32))
    assert np.max(np.abs(raw - ref)) < 1e-4


# --- no torch needed ------------------------------------------------------------------


def test_cli_convert_bad_folder(tmp_path, capsys):
    assert main(["convert", "--diffusers", str(tmp_path / "none"), "--out", "x"]) == 2
    assert "is not a directory; expected a diffusers UNet2DModel folder" in capsys.readouterr().err
    assert main(["convert", "--diffusers", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "argument --diffusers: missing" in err and "config" in err


def test_unsupported_block_type_raises():
    bad = dict(CONFIG_ATTN, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"])
    with pytest.raises(ValueError, match="CrossAttnDownBlock2D.*DownBlock2D.*AttnDownBlock2D"):
        UNet2D.from_config(bad)
    bad_up = dict(CONFIG_ATTN, up_block_types=["ResnetUpsampleBlock2D", "UpBlock2D"])
    with pytest.raises(ValueError, match="ResnetUpsampleBlock2D.*UpBlock2D.*AttnUpBlock2D"):
        unet_fn(bad_up)
    with pytest.raises(ValueError, match="time_embedding_type"):
        UNetConfig.from_dict(dict(CONFIG_ATTN, time_embedding_type="fourier"))
    with pytest.raises(ValueError, match="unsupported UNet2DModel config keys"):
        UNetConfig.from_dict(dict(CONFIG_ATTN, cross_attention_dim=768))


def test_state_dict_mismatch_raises():
    params = init_params(CONFIG_ATTN, jax.random.key(0))
    sd = cv.params_to_state_dict(params)
    sd.pop("conv_in.weight")
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\].*conv_in"):
        cv.state_dict_to_params(sd, CONFIG_ATTN)


def test_round_trip_save_load(tmp_path):
    params = init_params(CONFIG_PLAIN, jax.random.key(3))
    sd = cv.params_to_state_dict(params)
    # Old attention names are accepted too.
    p2 = cv.state_dict_to_params(sd, CONFIG_PLAIN)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, p2)
    out = cv.convert_state_dict(sd, CONFIG_PLAIN, tmp_path / "m", data_format="NHWC")
    meta = json.loads((out / "hso_jax.json").read_text())
    assert meta["scheduler_config_defaulted"] is True
    den = load(out)
    assert den.prediction == "eps" and den.noise.name == "ddpm"
    x = jax.random.normal(jax.random.key(4), (2, 16, 16, 2), jnp.float32)
    t = jnp.float32(0.37)
    t_in = den.noise.num_steps * t - 1.0
    want = unet_fn(CONFIG_PLAIN)(params, x, t_in)
    np.testing.assert_array_equal(np.asarray(den.fn(den.params, x, t_in)), np.asarray(want))
    # out_channels 1 != in_channels 2: no prediction of x's shape, refused at the first call
    with pytest.raises(OutputShapeError, match=r"returned shape \(2, 16, 16, 1\)"):
        den.raw(x, t)


def test_deprecated_attention_names():
    params = init_params(CONFIG_ATTN, jax.random.key(5))
    sd = cv.params_to_state_dict(params)
    ren = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in sd.items():
        for a, b in ren.items():
            k = k.replace(f".{a}.", f".{b}.")
        old[k] = v
    assert any(".query." in k for k in old)
    p2 = cv.state_dict_to_params(old, CONFIG_ATTN)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, p2)


def test_bad_scheduler_config(tmp_path):
    params = init_params(CONFIG_PLAIN, jax.random.key(3))
    sd = cv.params_to_state_dict(params)
    with pytest.raises(ValueError, match="beta_schedule.*sigmoid"):
        cv.convert_state_dict(sd, CONFIG_PLAIN, tmp_path / "a", {"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="prediction_type"):
        cv.convert_state_dict(sd, CONFIG_PLAIN, tmp_path / "b", {"prediction_type": "flow"})
    assert not (tmp_path / "a").exists()
