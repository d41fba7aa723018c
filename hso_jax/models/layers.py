"""Building blocks shared by the Flax U-Net ports (:mod:`.unet`, :mod:`.unet_cond`).

Each block is the Flax Linen counterpart of a diffusers module, with the same parameter names
(``resnets_0/conv1/kernel`` for ``resnets.0.conv1.weight``), so that
:mod:`hso_jax.models.convert` maps a diffusers state dict one-to-one. All blocks take NHWC
inputs. Dropout is ignored (inference ports).

* :func:`timestep_embedding`, :class:`TimestepEmbedding` - ``Timesteps`` and
  ``TimestepEmbedding`` of diffusers' ``embeddings.py``.
* :class:`GroupNorm` - group normalisation, faster than ``flax.linen.GroupNorm`` on CPU.
* :class:`ResnetBlock2D`, :class:`Downsample2D`, :class:`Upsample2D` - ``resnet.py``.
* :func:`multi_head_attention`, :class:`AttentionBlock` - scaled dot-product attention (blockwise,
  with an online softmax, for long sequences) and the spatial self-attention of
  ``UNet2DModel``'s attention blocks.
* :class:`DownBlock`, :class:`UpBlock`, :class:`MidBlock` - the ResNet (+ attention) stacks of
  ``unet_2d_blocks.py``; the attention layer is a factory, so the same stack serves
  ``AttnDownBlock2D`` (self-attention) and ``CrossAttnDownBlock2D`` (a transformer that also
  reads the text context).

Reference: diffusers ``src/diffusers/models/{embeddings,resnet,attention_processor}.py`` and
``unets/unet_2d_blocks.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "ACTIVATIONS",
    "timestep_embedding",
    "TimestepEmbedding",
    "GroupNorm",
    "conv",
    "ResnetBlock2D",
    "multi_head_attention",
    "AttentionBlock",
    "Downsample2D",
    "Upsample2D",
    "DownBlock",
    "UpBlock",
    "MidBlock",
    "to_nhwc",
    "from_nhwc",
    "embed_time",
    "unet_trunk",
]

Array = Any

ACTIVATIONS: dict[str, Callable] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
}


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


class TimestepEmbedding(nn.Module):
    """``linear_1 -> act -> linear_2``, both of width ``dim`` (diffusers ``TimestepEmbedding``)."""

    dim: int
    act: str = "silu"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Dense(self.dim, name="linear_1")(x)
        return nn.Dense(self.dim, name="linear_2")(ACTIVATIONS[self.act](x))


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) over NHWC inputs, parameters ``scale`` and ``bias``.

    ``y = (x - mu_g) / sqrt(var_g + eps) * scale + bias`` with the mean and the (two-pass, as
    torch computes it) variance of each sample over H, W and the ``C / groups`` channels of
    group g. The statistics are reduced over H * W per channel first and then summed within
    each group: the same numbers as a reduction over a (B, H, W, G, C/G) view (flax's
    ``nn.GroupNorm``), which XLA's CPU backend runs faster (``benchmarks/bench_mnist_model.py``).
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


def conv(features: int, kernel: int, name: str, stride: int = 1, padding: Any = None) -> nn.Conv:
    """A 2-D convolution with torch's symmetric padding (default ``(kernel - 1) // 2``)."""
    padding = (kernel - 1) // 2 if padding is None else padding
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, name=name)


def to_nhwc(x: Array, data_format: str, in_channels: int) -> Array:
    """Validate a 4-D input in ``data_format`` and return it NHWC (float32 inside the nets)."""
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D ({data_format}), got shape {x.shape}")
    if data_format == "NCHW":
        x = jnp.transpose(x, (0, 2, 3, 1))
    if x.shape[-1] != in_channels:
        raise ValueError(
            f"x has {x.shape[-1]} channels, the config expects in_channels={in_channels} "
            f"(data_format={data_format!r})"
        )
    return x.astype(jnp.float32) if x.dtype != jnp.float32 else x


def from_nhwc(h: Array, data_format: str, dtype: Any) -> Array:
    """Inverse of :func:`to_nhwc`: cast back to ``dtype`` and lay out as ``data_format``."""
    h = h.astype(dtype)
    return jnp.transpose(h, (0, 3, 1, 2)) if data_format == "NCHW" else h


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
        act = ACTIVATIONS[self.act]
        h = act(GroupNorm(self.groups, self.eps, name="norm1")(x))
        h = conv(self.out_channels, 3, "conv1")(h)
        t_out = self.out_channels * (2 if self.time_scale_shift == "scale_shift" else 1)
        t = nn.Dense(t_out, name="time_emb_proj")(act(temb))[:, None, None, :]
        if self.time_scale_shift == "scale_shift":
            scale, shift = jnp.split(t, 2, axis=-1)
            h = GroupNorm(self.groups, self.eps, name="norm2")(h) * (1.0 + scale) + shift
        else:
            h = GroupNorm(self.groups, self.eps, name="norm2")(h + t)
        h = conv(self.out_channels, 3, "conv2")(act(h))
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "conv_shortcut")(x)
        return (x + h) / self.output_scale_factor


BLOCKWISE_MIN_SCORES = 2**20
"""Query length x key length from which :func:`multi_head_attention` runs blockwise."""

ATTENTION_BLOCK = 512
"""Query and key block length of the blockwise attention (the fastest on a 2-core CPU at SD
1.5's 4096 x 4096 self-attention: 185 ms a layer against 869 ms for the plain form)."""


def multi_head_attention(
    q: Array, k: Array, v: Array, heads: int, *, block: int | None = None
) -> Array:
    """softmax(q k^T / sqrt(d)) v per head, the softmax in float32 (``upcast_softmax``).

    From ``Lq * Lk >= BLOCKWISE_MIN_SCORES`` (or with ``block``) the softmax is computed block
    by block with a running maximum and sum (the online softmax of FlashAttention, Dao et al.
    2022): the (Lq, Lk) score matrix is never materialised, and the result equals the plain
    form to float32 round-off.

    Args:
      q: queries (B, Lq, heads * d); k, v: keys and values (B, Lk, heads * d).
      heads: number of heads.
      block: force the blockwise form with this block length (default: by size, blocks of
        :data:`ATTENTION_BLOCK`).

    Returns:
      (B, Lq, heads * d), heads concatenated as torch's ``reshape`` orders them.
    """
    b, lq, inner = q.shape
    d = inner // heads
    if block is not None or lq * k.shape[1] >= BLOCKWISE_MIN_SCORES:
        return _blockwise_attention(q, k, v, heads, block or ATTENTION_BLOCK)
    q = q.reshape(b, lq, heads, d)
    k = k.reshape(b, k.shape[1], heads, d)
    v = v.reshape(b, v.shape[1], heads, d)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, lq, inner)


def _blockwise_attention(q: Array, k: Array, v: Array, heads: int, block: int) -> Array:
    """:func:`multi_head_attention` over query blocks (``lax.map``), each a scan over key
    blocks that keeps the running row maximum ``m``, sum ``l`` and output ``acc`` (float32):
    ``m' = max(m, max_k s)``, ``l' = l e^(m - m') + sum_k e^(s - m')``, ``acc' = acc e^(m - m')
    + e^(s - m') v``, and the result ``acc / l``. Padded keys get ``s = -inf``."""
    b, lq, inner = q.shape
    lk, d = k.shape[1], inner // heads
    nq, nk = -(-lq // block), -(-lk // block)

    def split(x, n):  # (B, L, heads * d) -> (n, B, heads, block, d), zero-padded
        x = jnp.pad(x, ((0, 0), (0, n * block - x.shape[1]), (0, 0)))
        return x.reshape(b, n, block, heads, d).transpose(1, 0, 3, 2, 4)

    ks, vs = split(k, nk), split(v, nk)
    bias = jnp.where(jnp.arange(nk * block) < lk, 0.0, -jnp.inf).astype(jnp.float32)
    scale = 1.0 / math.sqrt(d)

    def rows(qb):
        def step(carry, kvb):
            m, l, acc = carry
            kb, vb, bb = kvb
            s = jnp.einsum("bhqd,bhkd->bhqk", qb, kb).astype(jnp.float32) * scale + bb
            m_new = jax.lax.stop_gradient(jnp.maximum(m, s.max(-1)))  # the result is exact
            p = jnp.exp(s - m_new[..., None])  # for any m: no gradient through it
            a = jnp.exp(m - m_new)
            pv = jnp.einsum("bhqk,bhkd->bhqd", p.astype(vb.dtype), vb,
                            preferred_element_type=jnp.float32)  # fmt: skip
            return (m_new, l * a + p.sum(-1), acc * a[..., None] + pv), None

        shape = qb.shape[:-1]
        init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(qb.shape, jnp.float32))  # fmt: skip
        (_, l, acc), _ = jax.lax.scan(step, init, (ks, vs, bias.reshape(nk, block)))
        return (acc / l[..., None]).astype(v.dtype)

    out = jax.lax.map(rows, split(q, nq))  # (nq, B, heads, block, d)
    return out.transpose(1, 0, 3, 2, 4).reshape(b, nq * block, inner)[:, :lq]


class AttentionBlock(nn.Module):
    """Spatial self-attention with residual (diffusers ``Attention`` from a deprecated attn block).

    ``heads = channels // head_dim``; output ``(attn + x) / rescale_output_factor``.
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
        h = x if self.groups is None else GroupNorm(self.groups, self.eps, name="group_norm")(x)
        h = h.reshape(b, hgt * wid, c)
        q, k, v = (nn.Dense(inner, name=n)(h) for n in ("to_q", "to_k", "to_v"))
        out = multi_head_attention(q, k, v, heads)
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
        return conv(self.channels, 3, "conv", stride=2, padding=self.padding)(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    channels: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.channels, 3, "conv")(x)


# --------------------------------------------------------------------------------------
# ResNet (+ attention) stacks. ``attn`` is None (DownBlock2D / UpBlock2D) or a factory
# ``attn(j, name=...) -> module`` for layer j; the module is called as ``module(h, *context)``
# with the block's extra call arguments (none for self-attention, the text context for
# cross-attention transformers).
# --------------------------------------------------------------------------------------


def _resnet_attention(block: nn.Module, j: int, h: Array, temb: Array, context: tuple) -> Array:
    """Layer j of a down / up block: ``resnets_j`` [-> ``attentions_j``], as submodules of
    ``block`` (called from its compact method)."""
    h = ResnetBlock2D(
        block.out_channels,
        block.groups,
        block.eps,
        block.act,
        block.time_scale_shift,
        name=f"resnets_{j}",
    )(h, temb)
    if block.attn is not None:
        h = block.attn(j, name=f"attentions_{j}")(h, *context)
    return h


class DownBlock(nn.Module):
    """``layers`` x (ResNet [-> attention]) [-> Downsample2D]; returns (h, skip outputs)."""

    out_channels: int
    num_layers: int
    add_downsample: bool
    groups: int
    eps: float
    act: str
    time_scale_shift: str
    downsample_padding: int
    attn: Callable | None = None

    @nn.compact
    def __call__(self, h: Array, temb: Array, *context: Any) -> tuple[Array, list[Array]]:
        outs = []
        for j in range(self.num_layers):
            h = _resnet_attention(self, j, h, temb, context)
            outs.append(h)
        if self.add_downsample:
            h = Downsample2D(self.out_channels, self.downsample_padding, name="downsamplers_0")(h)
            outs.append(h)
        return h, outs


class UpBlock(nn.Module):
    """``layers`` x (concat skip -> ResNet [-> attention]) [-> Upsample2D]."""

    out_channels: int
    num_layers: int
    add_upsample: bool
    groups: int
    eps: float
    act: str
    time_scale_shift: str
    attn: Callable | None = None

    @nn.compact
    def __call__(self, h: Array, res: tuple[Array, ...], temb: Array, *context: Any) -> Array:
        res = list(res)
        for j in range(self.num_layers):
            h = jnp.concatenate([h, res.pop()], axis=-1)
            h = _resnet_attention(self, j, h, temb, context)
        if self.add_upsample:
            h = Upsample2D(self.out_channels, name="upsamplers_0")(h)
        return h


class MidBlock(nn.Module):
    """ResNet, then ``num_layers`` x ([attention ->] ResNet), all ResNets with one output scale
    (``UNetMidBlock2D`` / ``UNetMidBlock2DCrossAttn``)."""

    groups: int
    eps: float
    act: str
    time_scale_shift: str
    output_scale_factor: float
    num_layers: int = 1
    attn: Callable | None = None

    @nn.compact
    def __call__(self, h: Array, temb: Array, *context: Any) -> Array:
        c = h.shape[-1]
        res_kw = dict(
            groups=self.groups,
            eps=self.eps,
            act=self.act,
            time_scale_shift=self.time_scale_shift,
            output_scale_factor=self.output_scale_factor,
        )
        h = ResnetBlock2D(c, name="resnets_0", **res_kw)(h, temb)
        for j in range(self.num_layers):
            if self.attn is not None:
                h = self.attn(j, name=f"attentions_{j}")(h, *context)
            h = ResnetBlock2D(c, name=f"resnets_{j + 1}", **res_kw)(h, temb)
        return h


# --------------------------------------------------------------------------------------
# The U-Net skeleton shared by UNet2DModel and UNet2DConditionModel. Both helpers create
# submodules, so they are called from inside a parent's ``nn.compact`` method.
# --------------------------------------------------------------------------------------


def embed_time(
    t: Array,
    batch: int,
    channels: int,
    dim: int,
    flip_sin_to_cos: bool,
    freq_shift: float,
    act: str,
) -> Array:
    """``time_proj`` + ``time_embedding``: sinusoid of width ``channels`` -> MLP of width ``dim``.

    ``t`` (a scalar or shape (batch,), any float) is broadcast to the batch.
    """
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (batch,))
    temb = timestep_embedding(t, channels, flip_sin_to_cos, freq_shift)
    return TimestepEmbedding(dim, act, name="time_embedding")(temb)


def unet_trunk(
    x: Array,
    temb: Array,
    down: list[DownBlock],
    mid: MidBlock | None,
    up: list[UpBlock],
    context: tuple = (),
    *,
    out_channels: int,
    groups: int,
    eps: float,
    act: str,
    conv_in_kernel: int = 3,
    conv_out_kernel: int = 3,
) -> Array:
    """``conv_in`` -> down blocks (collecting skips) -> mid -> up blocks (consuming them) ->
    ``GroupNorm -> act -> conv_out``, on NHWC ``x``; ``context`` goes to every block."""
    h = conv(down[0].out_channels, conv_in_kernel, "conv_in")(x)
    skips = [h]
    for block in down:
        h, res = block(h, temb, *context)
        skips.extend(res)
    if mid is not None:
        h = mid(h, temb, *context)
    for block in up:
        n = block.num_layers
        res, skips = skips[-n:], skips[:-n]
        h = block(h, tuple(res), temb, *context)
    h = ACTIVATIONS[act](GroupNorm(groups, eps, name="conv_norm_out")(h))
    return conv(out_channels, conv_out_kernel, "conv_out")(h)
