"""Flax port of diffusers' ``UNet2DModel`` (the DDPM U-Net), built from its ``config.json``.

The network is the pixel-space U-Net of Ho et al. (2020) in the form that diffusers ships as
``UNet2DModel``: a sinusoidal timestep embedding followed by a two-layer MLP; ``conv_in``; a stack
of down blocks (``DownBlock2D`` = ResNet blocks, ``AttnDownBlock2D`` = ResNet blocks each followed
by a self-attention block), each but the last ending in a stride-2 convolution; a middle block
``resnet -> attention -> resnet``; up blocks with ``layers_per_block + 1`` ResNet blocks that
concatenate the skip connections, each but the last ending in nearest-neighbour upsampling and a
3x3 convolution; and ``GroupNorm -> SiLU -> conv_out``. Parameter names mirror the PyTorch module
names (``down_blocks.0.resnets.1.conv1.weight`` becomes
``params["down_blocks_0"]["resnets_1"]["conv1"]["kernel"]``), so that
:mod:`hso_jax.models.convert` can map a diffusers state dict one-to-one.

Why Flax Linen and not NNX: Linen keeps the parameters a plain nested dict, separate from the
module, so the network is a pure function ``fn(params, x, t)``. That is exactly the calling
convention of :class:`hso_jax.Denoiser`, whose ``params`` are a pytree leaf: solvers can
``jit`` / ``vmap`` / differentiate through the model without any module state, Orbax saves the
dict as it is, and the converter produces it directly from a state dict. NNX would need
``split``/``merge`` at every one of those boundaries for no gain at inference.

Layout: internally NHWC (the layout XLA's convolutions prefer). ``UNet2D.data_format`` chooses the
interface: ``"NHWC"`` (default; what the shipped MNIST model is trained with) or ``"NCHW"``
(diffusers' layout, transposed on entry and exit). Dropout is ignored: this is an inference port
(training in :mod:`hso_jax.models.train` uses ``dropout = 0``).

Supported config keys (others, e.g. ``class_embed_type``, raise ``ValueError`` when set):
``sample_size, in_channels, out_channels, center_input_sample, time_embedding_type
("positional"), time_embedding_dim, freq_shift, flip_sin_to_cos, down_block_types
(DownBlock2D / AttnDownBlock2D), mid_block_type (UNetMidBlock2D or None), up_block_types
(UpBlock2D / AttnUpBlock2D), block_out_channels, layers_per_block, mid_block_scale_factor,
downsample_padding, downsample_type ("conv"), upsample_type ("conv"), act_fn, attention_head_dim,
norm_num_groups, attn_norm_num_groups, norm_eps, resnet_time_scale_shift ("default" /
"scale_shift"), add_attention``.

References:
  Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (architecture).
  diffusers ``UNet2DModel`` (src/diffusers/models/unets/unet_2d.py, unet_2d_blocks.py,
  resnet.py, embeddings.py, attention_processor.py), whose configuration and parameter names
  this port follows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "UNet2D",
    "UNetConfig",
    "SUPPORTED_DOWN_BLOCKS",
    "SUPPORTED_UP_BLOCKS",
    "unet_fn",
    "unet_apply",
    "init_params",
    "count_params",
]

Array = Any

SUPPORTED_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
SUPPORTED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
SUPPORTED_MID_BLOCKS = ("UNetMidBlock2D", None)
_ACTIVATIONS: dict[str, Callable] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
}
# Config keys that are accepted and have no effect at inference (or are bookkeeping).
_IGNORED_KEYS = {
    "dropout",
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "num_train_timesteps",
}


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The subset of diffusers' ``UNet2DModel`` config this port implements (defaults as there)."""

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: int = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple[str, ...] = (
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    )
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple[str, ...] = (
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    )
    block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int | None = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> UNetConfig:
        """Validate a diffusers ``config.json`` dict and build the config.

        Raises:
          ValueError: unknown keys, unsupported block / embedding / activation types, or
            inconsistent lengths; the message names the key and lists what is supported.
        """
        if not isinstance(config, Mapping):
            raise TypeError(
                f"config must be a dict (diffusers config.json), got {type(config).__name__}"
            )
        if "_class_name" in config and config["_class_name"] != "UNet2DModel":
            raise ValueError(
                f"config describes a {config['_class_name']!r}; only 'UNet2DModel' is supported"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in config if k not in fields and k not in _IGNORED_KEYS)
        if unknown:
            raise ValueError(
                f"unsupported UNet2DModel config keys {unknown}; supported keys: {sorted(fields)}"
            )
        kw = {k: v for k, v in config.items() if k in fields}
        for k in ("down_block_types", "up_block_types", "block_out_channels"):
            if k in kw:
                kw[k] = tuple(kw[k])
        if isinstance(kw.get("sample_size"), list):
            kw["sample_size"] = tuple(kw["sample_size"])
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict in diffusers' format (``_class_name`` = ``UNet2DModel``)."""
        d = {"_class_name": "UNet2DModel"}
        for k, v in dataclasses.asdict(self).items():
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    def validate(self) -> None:
        for i, b in enumerate(self.down_block_types):
            if b not in SUPPORTED_DOWN_BLOCKS:
                raise ValueError(
                    f"down_block_types[{i}] = {b!r} is not supported; supported down blocks: "
                    f"{list(SUPPORTED_DOWN_BLOCKS)}"
                )
        for i, b in enumerate(self.up_block_types):
            if b not in SUPPORTED_UP_BLOCKS:
                raise ValueError(
                    f"up_block_types[{i}] = {b!r} is not supported; supported up blocks: "
                    f"{list(SUPPORTED_UP_BLOCKS)}"
                )
        if self.mid_block_type not in SUPPORTED_MID_BLOCKS:
            raise ValueError(
                f"mid_block_type = {self.mid_block_type!r} is not supported; supported: "
                f"{list(SUPPORTED_MID_BLOCKS)}"
            )
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                "down_block_types, up_block_types and block_out_channels must have equal lengths; "
                f"got {len(self.down_block_types)}, {len(self.up_block_types)}, {n}"
            )
        if self.time_embedding_type != "positional":
            raise ValueError(
                f"time_embedding_type = {self.time_embedding_type!r} is not supported; "
                "supported: ['positional']"
            )
        if self.act_fn not in _ACTIVATIONS:
            raise ValueError(
                f"act_fn = {self.act_fn!r} is not supported; supported: {sorted(_ACTIVATIONS)}"
            )
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(
                f"resnet_time_scale_shift = {self.resnet_time_scale_shift!r} is not supported; "
                "supported: ['default', 'scale_shift']"
            )
        if self.downsample_type != "conv":
            raise ValueError(
                f"downsample_type = {self.downsample_type!r} is not supported; supported: ['conv']"
            )
        if self.upsample_type != "conv":
            raise ValueError(
                f"upsample_type = {self.upsample_type!r} is not supported; supported: ['conv']"
            )
        if self.class_embed_type is not None or self.num_class_embeds is not None:
            raise ValueError(
                "class-conditional UNet2DModel (class_embed_type, num_class_embeds) is unsupported"
            )
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")


def _as_config(config: UNetConfig | Mapping[str, Any]) -> UNetConfig:
    return config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config)


# --------------------------------------------------------------------------------------
# Building blocks (names follow diffusers' modules)
# --------------------------------------------------------------------------------------


def timestep_embedding(
    timesteps: Array, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 1e4
) -> Array:
    """Sinusoidal embedding (Vaswani et al. 2017; diffusers ``get_timestep_embedding``).

    freq_j = exp(-log(max_period) j / (dim/2 - freq_shift)), emb = [sin(t freq), cos(t freq)],
    or ``[cos, sin]`` when ``flip_sin_to_cos``; zero-padded when ``dim`` is odd.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) over NHWC inputs, parameters ``scale`` and ``bias``.

    ``y = (x - mu_g) / sqrt(var_g + eps) * scale + bias`` with the mean and the (two-pass, as
    torch computes it) variance of each sample over H, W and the ``C / groups`` channels of
    group g. The statistics are reduced over H * W per channel first and then summed within
    each group: the same numbers as a reduction over a (B, H, W, G, C/G) view (flax's
    ``nn.GroupNorm``), but XLA's CPU backend runs it 3-4x faster.
    """

    num_groups: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, c = x.shape[0], x.shape[-1]
        g = self.num_groups
        if c % g:
            raise ValueError(f"{c} channels are not divisible by num_groups = {g}")
        n = math.prod(x.shape[1:-1]) * (c // g)
        axes = tuple(range(1, x.ndim - 1))

        def per_group(s):  # (B, C) per-channel sums -> (B, 1.., C) group means per channel
            m = s.reshape(b, g, c // g).sum(-1) / n
            return jnp.repeat(m, c // g, axis=-1).reshape(b, *([1] * len(axes)), c)

        mean = per_group(jnp.sum(x, axis=axes))
        var = per_group(jnp.sum(jnp.square(x - mean), axis=axes))
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias


def _group_norm(groups: int, eps: float, name: str) -> GroupNorm:
    return GroupNorm(num_groups=groups, epsilon=eps, name=name)


def _conv(features: int, kernel: int, name: str, stride: int = 1, padding: Any = 1) -> nn.Conv:
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, name=name)


class ResnetBlock2D(nn.Module):
    """GroupNorm -> act -> conv -> (+ time projection) -> GroupNorm -> act -> conv, + shortcut."""

    out_channels: int
    groups: int
    eps: float
    act: str = "silu"
    time_scale_shift: str = "default"
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x: Array, temb: Array) -> Array:
        act = _ACTIVATIONS[self.act]
        h = act(_group_norm(self.groups, self.eps, "norm1")(x))
        h = _conv(self.out_channels, 3, "conv1")(h)
        t_out = self.out_channels * (2 if self.time_scale_shift == "scale_shift" else 1)
        t = nn.Dense(t_out, name="time_emb_proj")(act(temb))[:, None, None, :]
        if self.time_scale_shift == "scale_shift":
            scale, shift = jnp.split(t, 2, axis=-1)
            h = _group_norm(self.groups, self.eps, "norm2")(h) * (1.0 + scale) + shift
        else:
            h = _group_norm(self.groups, self.eps, "norm2")(h + t)
        h = _conv(self.out_channels, 3, "conv2")(act(h))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "conv_shortcut", padding=0)(x)
        return (x + h) / self.output_scale_factor


class AttentionBlock(nn.Module):
    """Spatial self-attention with residual (diffusers ``Attention`` from a deprecated attn block).

    ``heads = channels // head_dim``; softmax in float32 (``upcast_softmax``); output
    ``(attn + x) / rescale_output_factor``.
    """

    head_dim: int
    groups: int | None
    eps: float
    rescale_output_factor: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        heads = c // self.head_dim
        inner = heads * self.head_dim
        h = x if self.groups is None else _group_norm(self.groups, self.eps, "group_norm")(x)
        h = h.reshape(b, hgt * wid, c)
        q = nn.Dense(inner, name="to_q")(h).reshape(b, -1, heads, self.head_dim)
        k = nn.Dense(inner, name="to_k")(h).reshape(b, -1, heads, self.head_dim)
        v = nn.Dense(inner, name="to_v")(h).reshape(b, -1, heads, self.head_dim)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hgt * wid, inner)
        out = nn.Dense(c, name="to_out_0")(out).reshape(b, hgt, wid, c)
        return (out + x) / self.rescale_output_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution; with ``padding = 0`` the input is first padded right/bottom."""

    channels: int
    padding: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(self.channels, 3, "conv", stride=2, padding=self.padding)(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    channels: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(self.channels, 3, "conv")(x)


# --------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------


class UNet2D(nn.Module):
    """diffusers ``UNet2DModel`` in Flax Linen (see the module docstring).

    Attributes:
      config: a :class:`UNetConfig` (build with :meth:`from_config` from a config.json dict).
      data_format: ``"NHWC"`` (default) or ``"NCHW"`` (diffusers' layout) for input and output.

    Call: ``UNet2D(...).apply({"params": params}, x, t)`` with ``x`` of shape (B, H, W, C) (or
    (B, C, H, W)) and ``t`` the training step index (a scalar or shape (B,), any float), returns
    the prediction with the shape of ``x``.
    """

    config: UNetConfig
    data_format: str = "NHWC"

    @classmethod
    def from_config(
        cls, config: UNetConfig | Mapping[str, Any], data_format: str = "NHWC"
    ) -> UNet2D:
        """Build from a diffusers ``config.json`` dict (or a :class:`UNetConfig`)."""
        if data_format not in ("NHWC", "NCHW"):
            raise ValueError(f"data_format must be 'NHWC' or 'NCHW', got {data_format!r}")
        return cls(config=_as_config(config), data_format=data_format)

    @nn.compact
    def __call__(self, x: Array, t: Array) -> Array:
        cfg = self.config
        if x.ndim != 4:
            raise ValueError(f"x must be 4-D ({self.data_format}), got shape {x.shape}")
        if self.data_format == "NCHW":
            x = jnp.transpose(x, (0, 2, 3, 1))
        if x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"x has {x.shape[-1]} channels, the config expects in_channels={cfg.in_channels} "
                f"(data_format={self.data_format!r})"
            )
        dtype = x.dtype
        x = x.astype(jnp.float32) if dtype != jnp.float32 else x
        if cfg.center_input_sample:
            x = 2.0 * x - 1.0
        groups = cfg.norm_num_groups or min(cfg.block_out_channels[0] // 4, 32)
        eps = cfg.norm_eps
        act = cfg.act_fn
        ch = cfg.block_out_channels

        # Time embedding: sinusoid of dim ch[0] -> Linear -> act -> Linear (dim 4 ch[0]).
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (x.shape[0],))
        temb_dim = cfg.time_embedding_dim or ch[0] * 4
        temb = timestep_embedding(t, ch[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = _TimestepEmbedding(temb_dim, act, name="time_embedding")(temb)

        h = _conv(ch[0], 3, "conv_in")(x)
        skips = [h]
        out_c = ch[0]
        for i, btype in enumerate(cfg.down_block_types):
            out_c = ch[i]
            final = i == len(ch) - 1
            h, res = _DownBlock(
                out_channels=out_c,
                num_layers=cfg.layers_per_block,
                attention=btype == "AttnDownBlock2D",
                add_downsample=not final,
                groups=groups,
                eps=eps,
                act=act,
                time_scale_shift=cfg.resnet_time_scale_shift,
                head_dim=cfg.attention_head_dim or out_c,
                downsample_padding=cfg.downsample_padding,
                name=f"down_blocks_{i}",
            )(h, temb)
            skips.extend(res)

        if cfg.mid_block_type is not None:
            attn_groups = cfg.attn_norm_num_groups
            if attn_groups is None and cfg.resnet_time_scale_shift == "default":
                attn_groups = groups
            h = _MidBlock(
                groups=groups,
                attn_groups=attn_groups,
                eps=eps,
                act=act,
                time_scale_shift=cfg.resnet_time_scale_shift,
                head_dim=cfg.attention_head_dim or ch[-1],
                add_attention=cfg.add_attention,
                output_scale_factor=cfg.mid_block_scale_factor,
                name="mid_block",
            )(h, temb)

        rev = tuple(reversed(ch))
        for i, btype in enumerate(cfg.up_block_types):
            out_c = rev[i]
            final = i == len(ch) - 1
            n = cfg.layers_per_block + 1
            res, skips = skips[-n:], skips[:-n]
            h = _UpBlock(
                out_channels=out_c,
                num_layers=n,
                attention=btype == "AttnUpBlock2D",
                add_upsample=not final,
                groups=groups,
                eps=eps,
                act=act,
                time_scale_shift=cfg.resnet_time_scale_shift,
                head_dim=cfg.attention_head_dim or out_c,
                name=f"up_blocks_{i}",
            )(h, tuple(res), temb)

        h = _ACTIVATIONS[act](_group_norm(groups, eps, "conv_norm_out")(h))
        h = _conv(cfg.out_channels, 3, "conv_out")(h)
        h = h.astype(dtype)
        if self.data_format == "NCHW":
            h = jnp.transpose(h, (0, 3, 1, 2))
        return h


class _TimestepEmbedding(nn.Module):
    dim: int
    act: str

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.dim, name="linear_1")(x)
        return nn.Dense(self.dim, name="linear_2")(_ACTIVATIONS[self.act](x))


class _DownBlock(nn.Module):
    out_channels: int
    num_layers: int
    attention: bool
    add_downsample: bool
    groups: int
    eps: float
    act: str
    time_scale_shift: str
    head_dim: int
    downsample_padding: int

    @nn.compact
    def __call__(self, h, temb):
        outs = []
        for j in range(self.num_layers):
            h = ResnetBlock2D(
                self.out_channels,
                self.groups,
                self.eps,
                self.act,
                self.time_scale_shift,
                name=f"resnets_{j}",
            )(h, temb)
            if self.attention:
                h = AttentionBlock(self.head_dim, self.groups, self.eps, name=f"attentions_{j}")(h)
            outs.append(h)
        if self.add_downsample:
            h = Downsample2D(self.out_channels, self.downsample_padding, name="downsamplers_0")(h)
            outs.append(h)
        return h, outs


class _UpBlock(nn.Module):
    out_channels: int
    num_layers: int
    attention: bool
    add_upsample: bool
    groups: int
    eps: float
    act: str
    time_scale_shift: str
    head_dim: int

    @nn.compact
    def __call__(self, h, res, temb):
        res = list(res)
        for j in range(self.num_layers):
            h = jnp.concatenate([h, res.pop()], axis=-1)
            h = ResnetBlock2D(
                self.out_channels,
                self.groups,
                self.eps,
                self.act,
                self.time_scale_shift,
                name=f"resnets_{j}",
            )(h, temb)
            if self.attention:
                h = AttentionBlock(self.head_dim, self.groups, self.eps, name=f"attentions_{j}")(h)
        if self.add_upsample:
            h = Upsample2D(self.out_channels, name="upsamplers_0")(h)
        return h


class _MidBlock(nn.Module):
    groups: int
    attn_groups: int | None
    eps: float
    act: str
    time_scale_shift: str
    head_dim: int
    add_attention: bool
    output_scale_factor: float

    @nn.compact
    def __call__(self, h, temb):
        c = h.shape[-1]
        res_kw = dict(
            groups=self.groups,
            eps=self.eps,
            act=self.act,
            time_scale_shift=self.time_scale_shift,
            output_scale_factor=self.output_scale_factor,
        )
        h = ResnetBlock2D(c, name="resnets_0", **res_kw)(h, temb)
        if self.add_attention:
            h = AttentionBlock(
                self.head_dim,
                self.attn_groups,
                self.eps,
                self.output_scale_factor,
                name="attentions_0",
            )(h)
        return ResnetBlock2D(c, name="resnets_1", **res_kw)(h, temb)


# --------------------------------------------------------------------------------------
# Pure-function interface
# --------------------------------------------------------------------------------------


def _config_key(config: UNetConfig | Mapping[str, Any]) -> str:
    return json.dumps(_as_config(config).to_dict(), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _cached_fn(key: str, data_format: str) -> Callable:
    module = UNet2D.from_config(json.loads(key), data_format=data_format)

    def fn(params, x, t):
        return module.apply({"params": params}, x, t)

    fn.__name__ = fn.__qualname__ = "unet_fn"
    fn.__doc__ = f"UNet2DModel forward ({data_format}): fn(params, x, t) -> prediction."
    return fn


def unet_fn(config: UNetConfig | Mapping[str, Any], data_format: str = "NHWC") -> Callable:
    """The network as a pure function ``fn(params, x, t)``, usable as ``Denoiser(fn, ...)``.

    The same function object is returned for equal configs, so jit caches are shared between
    Denoisers built from the same architecture.
    """
    if data_format not in ("NHWC", "NCHW"):
        raise ValueError(f"data_format must be 'NHWC' or 'NCHW', got {data_format!r}")
    return _cached_fn(_config_key(config), data_format)


def unet_apply(
    config: UNetConfig | Mapping[str, Any],
    params: Any,
    x: Array,
    t: Array,
    data_format: str = "NHWC",
) -> Array:
    """One forward pass: ``unet_fn(config, data_format)(params, x, t)``."""
    return unet_fn(config, data_format)(params, x, t)


def init_params(
    config: UNetConfig | Mapping[str, Any], key: Array, batch: int = 1
) -> dict[str, Any]:
    """Randomly initialised parameters (Flax default initialisers) for ``config``.

    The compiled initialiser is shared between calls with equal configs (compiling it takes
    tens of seconds on a CPU for a small U-Net).
    """
    return _cached_init(_config_key(config), batch)(key)


@functools.lru_cache(maxsize=16)
def _cached_init(key: str, batch: int) -> Callable:
    cfg = UNetConfig.from_dict(json.loads(key))
    size = cfg.sample_size or 32
    hgt, wid = (size, size) if isinstance(size, int) else tuple(size)
    # numpy, not jnp: a first call under a trace (eval_shape) must not cache tracers.
    x = np.zeros((batch, hgt, wid, cfg.in_channels), np.float32)
    t = np.zeros((batch,), np.float32)
    return jax.jit(lambda k: UNet2D(cfg).init(k, x, t)["params"])


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def _downsampling_factor(cfg: UNetConfig) -> int:
    return 2 ** (len(cfg.block_out_channels) - 1)


def check_input_size(config: UNetConfig | Mapping[str, Any], shape: Sequence[int]) -> None:
    """Raise ``ValueError`` if H or W is not divisible by the U-Net's downsampling factor."""
    cfg = _as_config(config)
    f = _downsampling_factor(cfg)
    for s in shape:
        if s % f:
            raise ValueError(
                f"spatial size {tuple(shape)} must be divisible by {f} "
                f"(2 ** (len(block_out_channels) - 1)) so skip connections line up"
            )
