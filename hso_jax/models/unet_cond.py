"""Flax port of diffusers' ``UNet2DConditionModel`` (the Stable Diffusion 1.x / 2.x / XL U-Net).

The latent-space U-Net of Rombach et al. (2022) in the form diffusers ships: the time embedding
of :mod:`.unet` (sinusoid -> MLP), plus for SDXL (``addition_embed_type = "text_time"``) the
pooled text embedding and the sinusoidal embeddings of the micro-conditioning ``time_ids``
through a second MLP (``add_embedding``), added to it; ``conv_in``; down blocks
(``DownBlock2D`` = ResNet blocks, ``CrossAttnDownBlock2D`` = ResNet blocks each followed by a
:class:`Transformer2D`), each but the last ending in a stride-2 convolution; the middle block
``UNetMidBlock2DCrossAttn`` (ResNet -> transformer -> ResNet); up blocks (``UpBlock2D`` /
``CrossAttnUpBlock2D``) with ``layers_per_block + 1`` ResNet blocks that concatenate the skip
connections; ``GroupNorm -> SiLU -> conv_out``. The ResNet, sampling and time-embedding
blocks and the block stacks are those of the ``UNet2DModel`` port (:mod:`.layers`).

:class:`Transformer2D` (diffusers ``Transformer2DModel`` with continuous input):
``GroupNorm(eps 1e-6) -> proj_in`` (1x1 convolution, or a linear layer after flattening when
``use_linear_projection``) ``-> transformer_layers_per_block`` x :class:`BasicTransformerBlock`
``-> proj_out``, plus the input. :class:`BasicTransformerBlock`: ``x += attn1(norm1(x))``
(self-attention), ``x += attn2(norm2(x), context)`` (cross-attention to the prompt embedding),
``x += ff(norm3(x))`` (GEGLU feed-forward, width 4 dim), LayerNorms with eps 1e-5; attention
projections without bias, output projection with bias.

**Heads.** As in diffusers, the config key ``attention_head_dim`` is the *number of heads* of
each block (an int, as in SD 1.x, or one per down block, as in SD 2.x / XL); the head width is
``channels // heads``.

**Conditioning** (``cond``, a pytree, so solvers carry it as they carry any array):

* SD 1.x / 2.x: the prompt embedding ``encoder_hidden_states``, an array (B, L, D) with
  D = ``cross_attention_dim`` (or a dict with that single key);
* SDXL (``addition_embed_type = "text_time"``): a dict ``{"encoder_hidden_states": (B, L, D),
  "text_embeds": (B, P), "time_ids": (B, K)}``, the ``added_cond_kwargs`` of diffusers
  (pooled text embedding and e.g. K = 6 micro-conditioning ids), with
  ``P + K * addition_time_embed_dim = projection_class_embeddings_input_dim``.

A leaf with batch size 1 is broadcast to the batch of ``x``, so one prompt serves a whole batch
of latents.

Layout: NHWC latents by default (``data_format = "NCHW"`` takes diffusers' layout). All
computation is float32 (so ``upcast_attention`` has nothing to change). Deliberate deviations
from diffusers: spatial sizes must be divisible by ``2 ** (len(block_out_channels) - 1)``
(diffusers' odd-size ``upsample_size`` path is not ported); attention masks, ControlNet
residuals, LoRA scales and the other optional inputs of diffusers' ``forward`` are not ported;
config options outside SD 1.x / 2.x / XL (class embeddings, ``encoder_hid_proj``, dual or
cross-only attention, other ``addition_embed_type`` values, ...) raise ``ValueError`` naming
the key, the value and what is supported.

References:
  Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022;
  Podell et al., "SDXL: Improving Latent Diffusion Models for High-Resolution Image
  Synthesis", ICLR 2024 (micro-conditioning);
  diffusers ``UNet2DConditionModel`` (src/diffusers/models/unets/unet_2d_condition.py,
  unet_2d_blocks.py, transformers/transformer_2d.py, attention.py, embeddings.py), whose
  configuration and parameter names this port follows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .layers import (
    ACTIVATIONS,
    DownBlock,
    GroupNorm,
    MidBlock,
    TimestepEmbedding,
    UpBlock,
    conv,
    embed_time,
    from_nhwc,
    multi_head_attention,
    timestep_embedding,
    to_nhwc,
    unet_trunk,
)

__all__ = [
    "UNet2DConditionModel",
    "UNetCondConfig",
    "Transformer2D",
    "BasicTransformerBlock",
    "SUPPORTED_COND_DOWN_BLOCKS",
    "SUPPORTED_COND_UP_BLOCKS",
    "COND_KEYS",
    "tiny_config",
]

Array = Any

CLASS_NAME = "UNet2DConditionModel"
SUPPORTED_COND_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
SUPPORTED_COND_UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
SUPPORTED_COND_MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)
COND_KEYS = ("encoder_hidden_states", "text_embeds", "time_ids")
# Number of micro-conditioning ids used to build example inputs (SDXL base: original size,
# crop offset, target size). Only the total input width of add_embedding matters for shapes.
_EXAMPLE_TIME_IDS = 6
# Options of diffusers' config whose other values select architectures this port does not
# implement: key -> the values it accepts.
_RESTRICTED: dict[str, tuple] = {
    "addition_embed_type": (None, "text_time"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "time_embedding_type": ("positional",),
    "num_attention_heads": (None,),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "attention_type": ("default",),
    "cross_attention_norm": (None,),
}
_IGNORED_KEYS = {"dropout", "_class_name", "_diffusers_version", "_name_or_path"}
_PER_BLOCK = (
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "attention_head_dim",
)


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


@dataclasses.dataclass(frozen=True)
class UNetCondConfig:
    """diffusers' ``UNet2DConditionModel`` config (keys and defaults as there).

    ``layers_per_block``, ``cross_attention_dim``, ``transformer_layers_per_block`` and
    ``attention_head_dim`` (the number of heads, see the module docstring) are an int or one
    value per down block; :meth:`per_block` expands them.
    """

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8
    use_linear_projection: bool = False
    upcast_attention: bool = False
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    addition_embed_type_num_heads: int = 64
    resnet_time_scale_shift: str = "default"
    # Accepted only with the values in _RESTRICTED (diffusers' defaults).
    time_embedding_type: str = "positional"
    num_attention_heads: Any = None
    only_cross_attention: Any = False
    mid_block_only_cross_attention: Any = None
    dual_cross_attention: bool = False
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    class_embeddings_concat: bool = False
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    reverse_transformer_layers_per_block: Any = None
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    attention_type: str = "default"
    cross_attention_norm: str | None = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> UNetCondConfig:
        """Validate a diffusers ``config.json`` dict and build the config.

        Raises:
          TypeError: ``config`` is not a dict.
          ValueError: unknown keys, unsupported block types / options, or inconsistent lengths;
            the message names the key and lists what is supported.
        """
        if not isinstance(config, Mapping):
            raise TypeError(
                f"config must be a dict (diffusers config.json), got {type(config).__name__}"
            )
        if config.get("_class_name", CLASS_NAME) != CLASS_NAME:
            raise ValueError(
                f"config describes a {config['_class_name']!r}; expected {CLASS_NAME!r}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in config if k not in fields and k not in _IGNORED_KEYS)
        if unknown:
            raise ValueError(
                f"unsupported {CLASS_NAME} config keys {unknown}; supported keys: {sorted(fields)}"
            )
        kw = {k: _tuple(v) for k, v in config.items() if k in fields}
        if isinstance(kw.get("only_cross_attention"), tuple) and not any(
            kw["only_cross_attention"]
        ):
            kw["only_cross_attention"] = False  # [False, False, ...] is the default
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict in diffusers' format (``_class_name`` = ``UNet2DConditionModel``)."""
        d = {"_class_name": CLASS_NAME}
        for k, v in dataclasses.asdict(self).items():
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    def validate(self) -> None:
        """Raise ``ValueError`` for configurations this port does not implement."""
        n = len(self.block_out_channels)
        for key, blocks, allowed in (
            ("down_block_types", self.down_block_types, SUPPORTED_COND_DOWN_BLOCKS),
            ("up_block_types", self.up_block_types, SUPPORTED_COND_UP_BLOCKS),
        ):
            if len(blocks) != n:
                raise ValueError(
                    f"{key} has {len(blocks)} entries, block_out_channels has {n}; they must match"
                )
            for i, b in enumerate(blocks):
                if b not in allowed:
                    raise ValueError(
                        f"{key}[{i}] = {b!r} is not supported; supported: {list(allowed)}"
                    )
        if self.mid_block_type not in SUPPORTED_COND_MID_BLOCKS:
            raise ValueError(
                f"mid_block_type = {self.mid_block_type!r} is not supported; supported: "
                f"{list(SUPPORTED_COND_MID_BLOCKS)}"
            )
        for key, allowed in _RESTRICTED.items():
            value = getattr(self, key)
            # None / bools by identity (False == 0 must not pass), numbers and strings by value.
            if not any(
                value is a if a is None or isinstance(a, bool) else value == a for a in allowed
            ):
                raise ValueError(
                    f"{key} = {value!r} is not supported by the {CLASS_NAME} port; supported: "
                    f"{list(allowed)}"
                )
        for key in _PER_BLOCK:
            value = getattr(self, key)
            if isinstance(value, tuple):
                if len(value) != n or not all(isinstance(v, int) for v in value):
                    raise ValueError(
                        f"{key} = {list(value)} must be an int or {n} ints (one per down block)"
                    )
            elif not isinstance(value, int):
                raise ValueError(f"{key} = {value!r} must be an int or a list of {n} ints")
        if min(self.per_block("layers_per_block")) < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(
                f"act_fn = {self.act_fn!r} is not supported; supported: {sorted(ACTIVATIONS)}"
            )
        if not isinstance(self.norm_num_groups, int):
            raise ValueError(
                f"norm_num_groups = {self.norm_num_groups!r} is not supported; it must be an int"
            )
        for key in ("conv_in_kernel", "conv_out_kernel"):
            k = getattr(self, key)
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"{key} = {k!r} must be an odd positive int")
        if self.addition_embed_type == "text_time":
            a, p = self.addition_time_embed_dim, self.projection_class_embeddings_input_dim
            if not isinstance(a, int) or not isinstance(p, int) or not 0 < a < p:
                raise ValueError(
                    "addition_embed_type = 'text_time' needs addition_time_embed_dim and "
                    "projection_class_embeddings_input_dim, ints with 0 < the first < the second; "
                    f"got {a!r} and {p!r}"
                )

    def per_block(self, key: str) -> tuple[int, ...]:
        """One value of a per-block option (see the class docstring) per down block."""
        value = getattr(self, key)
        return value if isinstance(value, tuple) else (value,) * len(self.block_out_channels)

    def module(self, data_format: str = "NHWC") -> UNet2DConditionModel:
        """The Flax module of this configuration."""
        return UNet2DConditionModel(self, data_format)

    def example_inputs(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray, Any]:
        """Zero inputs ``(x, t, cond)`` of the right shapes (NHWC), e.g. to initialise."""
        size = self.sample_size or 8 * 2 ** (len(self.block_out_channels) - 1)
        hgt, wid = (size, size) if isinstance(size, int) else tuple(size)
        x = np.zeros((batch, hgt, wid, self.in_channels), np.float32)
        t = np.zeros((batch,), np.float32)
        ctx = np.zeros((batch, 1, self.per_block("cross_attention_dim")[0]), np.float32)
        if self.addition_embed_type != "text_time":
            return x, t, ctx
        a, p = self.addition_time_embed_dim, self.projection_class_embeddings_input_dim
        k = _EXAMPLE_TIME_IDS if p > _EXAMPLE_TIME_IDS * a else 1
        cond = {
            "encoder_hidden_states": ctx,
            "text_embeds": np.zeros((batch, p - k * a), np.float32),
            "time_ids": np.zeros((batch, k), np.float32),
        }
        return x, t, cond


# --------------------------------------------------------------------------------------
# Transformer blocks (names follow diffusers' modules)
# --------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention of ``query`` on ``context`` (itself when None); q/k/v projections
    without bias, ``to_out.0`` with bias (diffusers ``Attention`` with its defaults)."""

    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        inner = self.heads * self.head_dim
        context = x if context is None else context
        q = nn.Dense(inner, use_bias=False, name="to_q")(x)
        k = nn.Dense(inner, use_bias=False, name="to_k")(context)
        v = nn.Dense(inner, use_bias=False, name="to_v")(context)
        return nn.Dense(x.shape[-1], name="to_out_0")(multi_head_attention(q, k, v, self.heads))


class GEGLU(nn.Module):
    """``h, gate = proj(x).chunk(2)``; ``h * gelu(gate)`` (exact gelu; Shazeer 2020)."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, gate = jnp.split(nn.Dense(2 * self.features, name="proj")(x), 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """``net.0`` = GEGLU to width ``mult * dim``, ``net.2`` = linear back to ``dim``."""

    mult: int = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        return nn.Dense(dim, name="net_2")(GEGLU(self.mult * dim, name="net_0")(x))


def _layer_norm(name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it.
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to ``context``, GEGLU feed-forward; pre-LayerNorm and a
    residual around each (diffusers ``BasicTransformerBlock``, ``norm_type="layer_norm"``)."""

    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        x = x + Attention(self.heads, self.head_dim, name="attn1")(_layer_norm("norm1")(x))
        x = x + Attention(self.heads, self.head_dim, name="attn2")(_layer_norm("norm2")(x), context)
        return x + FeedForward(name="ff")(_layer_norm("norm3")(x))


class Transformer2D(nn.Module):
    """diffusers ``Transformer2DModel`` on continuous NHWC input (see the module docstring)."""

    heads: int
    head_dim: int
    num_layers: int
    groups: int
    use_linear_projection: bool

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        b, hgt, wid, c = x.shape
        inner = self.heads * self.head_dim
        h = GroupNorm(self.groups, 1e-6, name="norm")(x)
        if self.use_linear_projection:
            h = nn.Dense(inner, name="proj_in")(h.reshape(b, hgt * wid, c))
        else:
            h = conv(inner, 1, "proj_in")(h).reshape(b, hgt * wid, inner)
        for j in range(self.num_layers):
            h = BasicTransformerBlock(self.heads, self.head_dim, name=f"transformer_blocks_{j}")(
                h, context
            )
        if self.use_linear_projection:
            h = nn.Dense(c, name="proj_out")(h).reshape(b, hgt, wid, c)
        else:
            h = conv(c, 1, "proj_out")(h.reshape(b, hgt, wid, inner))
        return h + x


# --------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------


def _broadcast_batch(name: str, a: Array, batch: int, ndim: int) -> Array:
    a = jnp.asarray(a, jnp.float32)
    if a.ndim == ndim - 1:
        a = a[None]
    if a.ndim != ndim or a.shape[0] not in (1, batch):
        raise ValueError(
            f"cond[{name!r}] has shape {a.shape}; expected {ndim} dims with batch size 1 or "
            f"{batch} (the batch of x)"
        )
    return jnp.broadcast_to(a, (batch, *a.shape[1:]))


def split_cond(config: UNetCondConfig, cond: Any, batch: int) -> tuple[Array, Array, Array]:
    """Validate ``cond`` (see the module docstring) and return ``(context, text_embeds,
    time_ids)`` broadcast to ``batch`` (the last two None without ``text_time``)."""
    text_time = config.addition_embed_type == "text_time"
    if cond is None:
        raise TypeError(
            f"this {CLASS_NAME} needs a condition: call fn(params, x, t, cond), or set it on the "
            "Denoiser with model.replace(cond=prompt_embeds) (SDXL: a dict with keys "
            f"{list(COND_KEYS)})"
        )
    if not isinstance(cond, Mapping):
        if text_time:
            raise TypeError(
                "addition_embed_type = 'text_time' (SDXL): cond must be a dict with keys "
                f"{list(COND_KEYS)}, got {type(cond).__name__}"
            )
        cond = {"encoder_hidden_states": cond}
    want = set(COND_KEYS) if text_time else {"encoder_hidden_states"}
    if set(cond) != want:
        raise ValueError(f"cond has keys {sorted(cond)}; this {CLASS_NAME} needs {sorted(want)}")
    ctx = _broadcast_batch("encoder_hidden_states", cond["encoder_hidden_states"], batch, 3)
    xdims = config.per_block("cross_attention_dim")
    dims = {d for d, b in zip(xdims, config.down_block_types, strict=True) if "CrossAttn" in b}
    if config.mid_block_type is not None:
        dims.add(xdims[-1])
    if dims and ctx.shape[-1] not in dims:
        raise ValueError(
            f"cond['encoder_hidden_states'] has width {ctx.shape[-1]}; the config's "
            f"cross_attention_dim is {config.cross_attention_dim}"
        )
    if not text_time:
        return ctx, None, None
    text = _broadcast_batch("text_embeds", cond["text_embeds"], batch, 2)
    ids = _broadcast_batch("time_ids", cond["time_ids"], batch, 2)
    width = text.shape[-1] + ids.shape[-1] * config.addition_time_embed_dim
    if width != config.projection_class_embeddings_input_dim:
        raise ValueError(
            f"text_embeds width {text.shape[-1]} + {ids.shape[-1]} time_ids x "
            f"addition_time_embed_dim {config.addition_time_embed_dim} = {width}, but the "
            f"config's projection_class_embeddings_input_dim is "
            f"{config.projection_class_embeddings_input_dim}"
        )
    return ctx, text, ids


class UNet2DConditionModel(nn.Module):
    """diffusers ``UNet2DConditionModel`` in Flax Linen (see the module docstring).

    Attributes:
      config: a :class:`UNetCondConfig` (``UNetCondConfig.from_dict(config_json)``).
      data_format: ``"NHWC"`` (default) or ``"NCHW"`` for input and output.

    Call: ``module.apply({"params": params}, x, t, cond)`` with latents ``x`` (B, H, W, C), ``t``
    the training step index (a scalar or shape (B,), any float) and ``cond`` the prompt
    embedding (B, L, D) or SDXL's dict; returns the prediction with the shape of ``x``.
    """

    config: UNetCondConfig
    data_format: str = "NHWC"

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        cfg = self.config
        dtype = x.dtype
        x = to_nhwc(x, self.data_format, cfg.in_channels)
        batch = x.shape[0]
        context, text_embeds, time_ids = split_cond(cfg, cond, batch)
        if cfg.center_input_sample:
            x = 2.0 * x - 1.0
        ch = cfg.block_out_channels
        act, groups, eps = cfg.act_fn, cfg.norm_num_groups, cfg.norm_eps
        common = dict(groups=groups, eps=eps, act=act, time_scale_shift=cfg.resnet_time_scale_shift)

        temb_dim = cfg.time_embedding_dim or ch[0] * 4
        temb = embed_time(t, batch, ch[0], temb_dim, cfg.flip_sin_to_cos, cfg.freq_shift, act)
        if text_embeds is not None:  # SDXL: pooled text + micro-conditioning (text_time)
            a = cfg.addition_time_embed_dim
            ids = timestep_embedding(time_ids.reshape(-1), a, cfg.flip_sin_to_cos, cfg.freq_shift)
            add = jnp.concatenate([text_embeds, ids.reshape(batch, -1)], axis=-1)
            temb = temb + TimestepEmbedding(temb_dim, name="add_embedding")(add)

        def transformer(heads, channels, layers):
            return lambda j, name: Transformer2D(
                heads, channels // heads, layers, groups, cfg.use_linear_projection, name=name
            )

        heads = cfg.per_block("attention_head_dim")
        layers = cfg.per_block("layers_per_block")
        tlayers = cfg.per_block("transformer_layers_per_block")
        down = [
            DownBlock(
                out_channels=ch[i],
                num_layers=layers[i],
                add_downsample=i < len(ch) - 1,
                downsample_padding=cfg.downsample_padding,
                attn=transformer(heads[i], ch[i], tlayers[i])
                if btype == "CrossAttnDownBlock2D"
                else None,
                name=f"down_blocks_{i}",
                **common,
            )
            for i, btype in enumerate(cfg.down_block_types)
        ]
        mid = None
        if cfg.mid_block_type is not None:
            mid = MidBlock(
                output_scale_factor=cfg.mid_block_scale_factor,
                attn=transformer(heads[-1], ch[-1], tlayers[-1]),
                name="mid_block",
                **common,
            )
        rev = len(ch) - 1  # up block i mirrors down block rev - i
        up = [
            UpBlock(
                out_channels=ch[rev - i],
                num_layers=layers[rev - i] + 1,
                add_upsample=i < rev,
                attn=transformer(heads[rev - i], ch[rev - i], tlayers[rev - i])
                if btype == "CrossAttnUpBlock2D"
                else None,
                name=f"up_blocks_{i}",
                **common,
            )
            for i, btype in enumerate(cfg.up_block_types)
        ]
        h = unet_trunk(
            x,
            temb,
            down,
            mid,
            up,
            (context,),
            out_channels=cfg.out_channels,
            groups=groups,
            eps=eps,
            act=act,
            conv_in_kernel=cfg.conv_in_kernel,
            conv_out_kernel=cfg.conv_out_kernel,
        )
        return from_nhwc(h, self.data_format, dtype)


# --------------------------------------------------------------------------------------
# Tiny configurations (tests, examples, end-to-end checks)
# --------------------------------------------------------------------------------------

_TINY_BASE: dict[str, Any] = {
    "_class_name": CLASS_NAME,
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "cross_attention_dim": 12,
}
_TINY: dict[str, dict[str, Any]] = {
    # SD 1.x: conv projections, one head count for every block.
    "sd15": {
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": 2,
    },
    # SD 2.x: linear projections, head counts per block.
    "sd21": {
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": [2, 4],
        "use_linear_projection": True,
        "upcast_attention": True,
    },
    # SDXL: text_time added conditions, transformer depth per block.
    "sdxl": {
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": [2, 4],
        "use_linear_projection": True,
        "transformer_layers_per_block": [1, 2],
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 4,
        "projection_class_embeddings_input_dim": 6 * 4 + 10,
    },
}


def tiny_config(kind: str = "sd15", **overrides: Any) -> dict[str, Any]:
    """A tiny random-weight architecture of the SD 1.x / 2.x / XL family, as a config.json dict.

    8 x 8 x 4 latents, channels (8, 16), one ResNet per block, prompt embeddings of width 12
    (SDXL: pooled ``text_embeds`` of width 10 and 6 ``time_ids``). The same dict builds
    diffusers' ``UNet2DConditionModel(**config)`` (without ``_class_name``).

    Args:
      kind: ``"sd15"`` (conv projections, one head count), ``"sd21"`` (linear projections, heads
        per block) or ``"sdxl"`` (``text_time``, ``transformer_layers_per_block``).
      **overrides: config keys to change.
    """
    if kind not in _TINY:
        raise ValueError(f"kind = {kind!r} is not a tiny configuration; known: {list(_TINY)}")
    return {**_TINY_BASE, **_TINY[kind], **overrides}
