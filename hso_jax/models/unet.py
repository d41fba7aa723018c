"""Flax port of diffusers' ``UNet2DModel`` (the DDPM U-Net), built from its ``config.json``.

The network is the pixel-space U-Net of Ho et al. (2020) in the form that diffusers ships as
``UNet2DModel``: a sinusoidal timestep embedding followed by a two-layer MLP; ``conv_in``; a stack
of down blocks (``DownBlock2D`` = ResNet blocks, ``AttnDownBlock2D`` = ResNet blocks each followed
by a self-attention block), each but the last ending in a stride-2 convolution; a middle block
``resnet -> attention -> resnet``; up blocks with ``layers_per_block + 1`` ResNet blocks that
concatenate the skip connections, each but the last ending in nearest-neighbour upsampling and a
3x3 convolution; and ``GroupNorm -> SiLU -> conv_out``. The blocks live in :mod:`.layers`, shared
with the ``UNet2DConditionModel`` port (:mod:`.unet_cond`); the pure-function interface below
(:func:`unet_fn`, :func:`init_params`, :func:`abstract_params`) serves both, chosen by the
config's ``_class_name``. Parameter names mirror the PyTorch module
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from .layers import (
    ACTIVATIONS,
    AttentionBlock,
    DownBlock,
    GroupNorm,
    MidBlock,
    UpBlock,
    embed_time,
    from_nhwc,
    timestep_embedding,
    to_nhwc,
    unet_trunk,
)
from .unet_cond import UNetCondConfig

__all__ = [
    "UNet2D",
    "UNetConfig",
    "SUPPORTED_DOWN_BLOCKS",
    "SUPPORTED_UP_BLOCKS",
    "unet_fn",
    "unet_apply",
    "init_params",
    "abstract_params",
    "as_config",
    "count_params",
    # building blocks, re-exported from .layers
    "GroupNorm",
    "timestep_embedding",
]

Array = Any
AnyConfig = Any  # UNetConfig | UNetCondConfig

SUPPORTED_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
SUPPORTED_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
SUPPORTED_MID_BLOCKS = ("UNetMidBlock2D", None)
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

    def module(self, data_format: str = "NHWC") -> UNet2D:
        """The Flax module of this configuration."""
        return UNet2D(self, data_format)

    def example_inputs(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Zero inputs ``(x, t)`` of the right shapes (NHWC), e.g. to initialise."""
        size = self.sample_size or 32
        hgt, wid = (size, size) if isinstance(size, int) else tuple(size)
        return np.zeros((batch, hgt, wid, self.in_channels), np.float32), np.zeros(
            (batch,), np.float32
        )

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
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(
                f"act_fn = {self.act_fn!r} is not supported; supported: {sorted(ACTIVATIONS)}"
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
        dtype = x.dtype
        x = to_nhwc(x, self.data_format, cfg.in_channels)
        if cfg.center_input_sample:
            x = 2.0 * x - 1.0
        groups = cfg.norm_num_groups or min(cfg.block_out_channels[0] // 4, 32)
        eps = cfg.norm_eps
        act = cfg.act_fn
        ch = cfg.block_out_channels
        common = dict(groups=groups, eps=eps, act=act, time_scale_shift=cfg.resnet_time_scale_shift)

        def self_attention(head_dim, groups=groups, rescale=1.0):
            return lambda j, name: AttentionBlock(head_dim, groups, eps, rescale, name=name)

        # Time embedding: sinusoid of dim ch[0] -> Linear -> act -> Linear (dim 4 ch[0]).
        temb_dim = cfg.time_embedding_dim or ch[0] * 4
        temb = embed_time(t, x.shape[0], ch[0], temb_dim, cfg.flip_sin_to_cos, cfg.freq_shift, act)
        down = [
            DownBlock(
                out_channels=ch[i],
                num_layers=cfg.layers_per_block,
                add_downsample=i < len(ch) - 1,
                downsample_padding=cfg.downsample_padding,
                attn=self_attention(cfg.attention_head_dim or ch[i])
                if btype == "AttnDownBlock2D"
                else None,
                name=f"down_blocks_{i}",
                **common,
            )
            for i, btype in enumerate(cfg.down_block_types)
        ]
        mid = None
        if cfg.mid_block_type is not None:
            attn_groups = cfg.attn_norm_num_groups
            if attn_groups is None and cfg.resnet_time_scale_shift == "default":
                attn_groups = groups
            head_dim = cfg.attention_head_dim or ch[-1]
            mid = MidBlock(
                output_scale_factor=cfg.mid_block_scale_factor,
                attn=self_attention(head_dim, attn_groups, cfg.mid_block_scale_factor)
                if cfg.add_attention
                else None,
                name="mid_block",
                **common,
            )
        rev = tuple(reversed(ch))
        up = [
            UpBlock(
                out_channels=rev[i],
                num_layers=cfg.layers_per_block + 1,
                add_upsample=i < len(ch) - 1,
                attn=self_attention(cfg.attention_head_dim or rev[i])
                if btype == "AttnUpBlock2D"
                else None,
                name=f"up_blocks_{i}",
                **common,
            )
            for i, btype in enumerate(cfg.up_block_types)
        ]
        h = unet_trunk(
            x, temb, down, mid, up, out_channels=cfg.out_channels, groups=groups, eps=eps, act=act
        )
        return from_nhwc(h, self.data_format, dtype)


# --------------------------------------------------------------------------------------
# Pure-function interface
# --------------------------------------------------------------------------------------


def as_config(config: AnyConfig | Mapping[str, Any]) -> AnyConfig:
    """A validated :class:`UNetConfig` or, for ``_class_name = "UNet2DConditionModel"``, a
    :class:`~hso_jax.models.unet_cond.UNetCondConfig` (config objects are returned as they are).
    """
    if isinstance(config, (UNetConfig, UNetCondConfig)):
        return config
    if isinstance(config, Mapping) and config.get("_class_name") == "UNet2DConditionModel":
        return UNetCondConfig.from_dict(config)
    return UNetConfig.from_dict(config)


def _config_key(config: AnyConfig | Mapping[str, Any]) -> str:
    return json.dumps(as_config(config).to_dict(), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _cached_fn(key: str, data_format: str) -> Callable:
    cfg = as_config(json.loads(key))
    module = cfg.module(data_format)

    def fn(params, x, t, *cond):
        return module.apply({"params": params}, x, t, *cond)

    fn.__name__ = fn.__qualname__ = "unet_fn"
    if isinstance(cfg, UNetCondConfig):
        fn.__doc__ = (
            f"UNet2DConditionModel forward ({data_format}): fn(params, x, t, cond) -> prediction."
        )
    else:
        fn.__doc__ = f"UNet2DModel forward ({data_format}): fn(params, x, t) -> prediction."
    return fn


def unet_fn(config: AnyConfig | Mapping[str, Any], data_format: str = "NHWC") -> Callable:
    """The network as a pure function, usable as ``Denoiser(fn, ...)``.

    ``fn(params, x, t)`` for a ``UNet2DModel`` config, ``fn(params, x, t, cond)`` for a
    ``UNet2DConditionModel`` config (``cond`` as in :mod:`hso_jax.models.unet_cond`; the
    Denoiser passes its ``cond`` / ``uncond``). The same function object is returned for equal
    configs, so jit caches are shared between Denoisers built from the same architecture.
    """
    if data_format not in ("NHWC", "NCHW"):
        raise ValueError(f"data_format must be 'NHWC' or 'NCHW', got {data_format!r}")
    return _cached_fn(_config_key(config), data_format)


def unet_apply(
    config: AnyConfig | Mapping[str, Any],
    params: Any,
    x: Array,
    t: Array,
    *cond: Any,
    data_format: str = "NHWC",
) -> Array:
    """One forward pass: ``unet_fn(config, data_format)(params, x, t[, cond])``."""
    return unet_fn(config, data_format)(params, x, t, *cond)


def init_params(
    config: AnyConfig | Mapping[str, Any], key: Array, batch: int = 1
) -> dict[str, Any]:
    """Randomly initialised parameters (Flax default initialisers) for ``config``.

    The compiled initialiser is shared between calls with equal configs (compiling it takes
    tens of seconds on a CPU for a small U-Net).
    """
    return _cached_init(_config_key(config), batch)(key)


@functools.lru_cache(maxsize=16)
def _cached_init(key: str, batch: int) -> Callable:
    cfg = as_config(json.loads(key))
    # numpy inputs, not jnp: a first call under a trace (eval_shape) must not cache tracers.
    args = cfg.example_inputs(batch)
    module = cfg.module()
    return jax.jit(lambda k: module.init(k, *args)["params"])


def abstract_params(config: AnyConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The parameter tree of ``config`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    cfg = as_config(config)
    return jax.eval_shape(lambda: cfg.module().init(jax.random.key(0), *cfg.example_inputs()))[
        "params"
    ]


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def _downsampling_factor(cfg: AnyConfig) -> int:
    return 2 ** (len(cfg.block_out_channels) - 1)


def check_input_size(config: AnyConfig | Mapping[str, Any], shape: Sequence[int]) -> None:
    """Raise ``ValueError`` if H or W is not divisible by the U-Net's downsampling factor."""
    cfg = as_config(config)
    f = _downsampling_factor(cfg)
    for s in shape:
        if s % f:
            raise ValueError(
                f"spatial size {tuple(shape)} must be divisible by {f} "
                f"(2 ** (len(block_out_channels) - 1)) so skip connections line up"
            )
