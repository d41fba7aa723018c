"""Flax UNet2DModel port: shapes, layouts, time embedding, purity, Denoiser integration."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hso_jax as hj
from hso_jax.models.unet import (
    UNet2D,
    UNetConfig,
    count_params,
    init_params,
    timestep_embedding,
    unet_apply,
    unet_fn,
)

TINY = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "norm_num_groups": 4,
}


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(TINY, jax.random.key(0))


def test_init_params_reuses_one_compiled_initialiser(tiny_params):
    """Equal configs (object or dict) share the compiled initialiser; the key still matters."""
    from hso_jax.models.unet import _cached_init

    before = _cached_init.cache_info()
    again = init_params(UNetConfig.from_dict(TINY), jax.random.key(0))
    other = init_params(dict(TINY), jax.random.key(1))
    after = _cached_init.cache_info()
    assert after.hits == before.hits + 2 and after.misses == before.misses
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, tiny_params)
    same = jax.tree_util.tree_map(np.array_equal, other, tiny_params)
    assert not all(jax.tree_util.tree_leaves(same))


def test_shapes_and_layouts(tiny_params):
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1), jnp.float32)
    f = jax.jit(unet_fn(TINY))
    y = f(tiny_params, x, jnp.float32(10.0))
    assert y.shape == x.shape and y.dtype == jnp.float32
    y_nchw = jax.jit(unet_fn(TINY, "NCHW"))(tiny_params, x.transpose(0, 3, 1, 2), 10.0)
    np.testing.assert_allclose(np.asarray(y_nchw).transpose(0, 2, 3, 1), y, atol=1e-6)
    # A scalar time broadcasts like a per-sample vector.
    y_vec = f(tiny_params, x, jnp.full((3,), 10.0, jnp.float32))
    np.testing.assert_allclose(y_vec, y, atol=1e-6)
    # Per-sample times differ.
    y_mix = f(tiny_params, x, jnp.array([10.0, 500.0, 10.0], jnp.float32))
    np.testing.assert_allclose(y_mix[0], y[0], atol=1e-6)
    assert not np.allclose(y_mix[1], y[1])


def test_jit_equals_eager_and_vmap(tiny_params):
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1), jnp.float32)
    eager = unet_apply(TINY, tiny_params, x, 3.0)
    jitted = jax.jit(unet_fn(TINY))(tiny_params, x, 3.0)
    np.testing.assert_allclose(eager, jitted, atol=1e-5)
    ts = jnp.array([3.0, 700.0], jnp.float32)
    vm = jax.vmap(lambda t: unet_fn(TINY)(tiny_params, x, t))(ts)
    np.testing.assert_allclose(vm[1], unet_fn(TINY)(tiny_params, x, 700.0), atol=1e-5)


def test_timestep_embedding_formula():
    t = jnp.array([0.0, 1.0, 999.0], jnp.float32)
    dim, shift = 6, 1
    emb = np.asarray(timestep_embedding(t, dim, flip_sin_to_cos=True, freq_shift=shift))
    freqs = np.exp(-math.log(1e4) * np.arange(3) / (3 - shift))
    arg = np.asarray(t)[:, None] * freqs[None]
    np.testing.assert_allclose(emb, np.concatenate([np.cos(arg), np.sin(arg)], 1), atol=2e-4)
    emb2 = timestep_embedding(t, 7, flip_sin_to_cos=False, freq_shift=0)
    assert emb2.shape == (3, 7) and np.all(np.asarray(emb2[:, -1]) == 0)


def test_config_round_trip_and_mnist_size():
    cfg = UNetConfig.from_dict(TINY)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert unet_fn(TINY) is unet_fn(cfg.to_dict())  # shared jit cache per architecture
    from hso_jax.models.train import MNIST_CONFIG

    abstract = jax.eval_shape(
        lambda x, t: UNet2D.from_config(MNIST_CONFIG).init(jax.random.key(0), x, t),
        jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.float32),
    )["params"]
    assert count_params(abstract) == 686_769  # diffusers UNet2DModel(**MNIST_CONFIG) has 686,769


def test_bad_inputs(tiny_params):
    with pytest.raises(ValueError, match="data_format"):
        UNet2D.from_config(TINY, data_format="NWHC")
    with pytest.raises(ValueError, match="channels"):
        unet_fn(TINY)(tiny_params, jnp.zeros((1, 8, 8, 3)), 0.0)
    with pytest.raises(ValueError, match="4-D"):
        unet_fn(TINY)(tiny_params, jnp.zeros((8, 8, 1)), 0.0)
    with pytest.raises(ValueError, match="equal lengths"):
        UNetConfig.from_dict(dict(TINY, block_out_channels=[8, 16, 16]))
    with pytest.raises(ValueError, match="class-conditional"):
        UNetConfig.from_dict(dict(TINY, num_class_embeds=10))


def test_denoiser_sampling(tiny_params):
    model = hj.Denoiser(unet_fn(TINY), hj.noise.preset("ddpm"), "eps", params=tiny_params)
    ts = model.noise.t_from_index(jnp.array([999.0, 600.0, 300.0, 0.0])).astype(jnp.float32)
    x_T = model.noise.prior(jax.random.key(3), (2, 8, 8, 1), jnp.float32)
    x0 = jax.jit(lambda x: hj.sample(model, x, ts, hj.solvers.ddim()))(x_T)
    assert x0.shape == x_T.shape and bool(jnp.all(jnp.isfinite(x0)))
    # The network sees the continuous step index N t - 1.
    raw = model.raw(x_T, ts[1])
    np.testing.assert_allclose(raw, unet_fn(TINY)(tiny_params, x_T, 600.0), atol=1e-4)
