"""XLA's memory analysis of direct's optimisation step at Stable Diffusion size, with and
without rematerialisation.

Direct schedule optimisation (``hso_jax.optimizers.direct``) differentiates the sample error
through every network call of the solver. One iteration is: value and gradient of
``direct_loss`` on the training batch (reverse mode through all NFE guided network calls) plus
the held-out loss. This script lowers exactly that computation (Adam's update of the 5 logits
is left out: a few bytes) for

* latents ``(B, 64, 64, 4)`` NHWC (SD 1.x at 512 px), ``B = 4`` training and 4 held-out noises,
  NFE 5 with UniPC, the solver loop unrolled as direct runs it;
* prompt embeddings ``(B, 77, 768)`` per sample, one shared null embedding ``(1, 77, 768)``,
  classifier-free guidance 7.5 (two network calls per NFE);
* random weights, given only as shapes (``jax.ShapeDtypeStruct``): nothing is allocated or run,
  the step is compiled (XLA CPU) and ``compiled.memory_analysis()`` is read;

once with ``remat=False`` and once with ``remat=True`` (``jax.checkpoint`` of each solver step:
the reverse pass keeps one state per step and recomputes the step's network calls). Reported:
argument (parameters, noises, conditions), output, temporary (activations kept for the reverse
pass and scratch) and generated-code sizes, and the compile time.

The network (``--model standin``, the default) is an SD-1.5-shaped stand-in written here: conv
UNet with channels 320 / 640 / 1280 / 1280, two ResNet blocks per level (time embedding added),
a transformer block (self-attention, cross-attention to the prompt, GEGLU feed-forward) after
each ResNet block of the first three levels and in the middle, skip connections, 8 heads. It
has the activation pattern that dominates SD's memory (self-attention over 4096 tokens at
64 x 64) but is not diffusers' ``UNet2DConditionModel``: parameter counts differ (printed).
``--model DIR`` instead loads a converted model directory (``hso_jax.models.load``) and uses
its parameters' shapes.

The step is not run: one iteration on 2 CPU cores would take minutes. Run::

    python benchmarks/bench_sd_memory.py [--model standin|DIR] [--batch 4] [--nfe 5]
        [--size 64] [--out benchmarks/results]

Writes ``<out>/bench_sd_memory.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import hso_jax as hj
from hso_jax.optimizers.direct import direct_loss
from hso_jax.optimizers.refine import logits_from_lam

OUT = Path(__file__).resolve().parent / "results"
CHANNELS = (320, 640, 1280, 1280)
ATTENTION = (True, True, True, False)
HEADS = 8
TEXT = (77, 768)


class ResBlock(nn.Module):
    ch: int

    @nn.compact
    def __call__(self, x, temb):
        h = nn.Conv(self.ch, (3, 3))(nn.silu(nn.GroupNorm(32)(x)))
        h = h + nn.Dense(self.ch)(nn.silu(temb))[:, None, None, :]
        h = nn.Conv(self.ch, (3, 3))(nn.silu(nn.GroupNorm(32)(h)))
        if x.shape[-1] != self.ch:
            x = nn.Conv(self.ch, (1, 1))(x)
        return x + h


class Transformer(nn.Module):
    ch: int

    @nn.compact
    def __call__(self, x, ctx):
        b, h, w, c = x.shape
        y = nn.Dense(c)(nn.GroupNorm(32)(x).reshape(b, h * w, c))
        y = y + nn.MultiHeadDotProductAttention(HEADS)(nn.LayerNorm()(y))
        y = y + nn.MultiHeadDotProductAttention(HEADS)(nn.LayerNorm()(y), ctx)
        a, g = jnp.split(nn.Dense(8 * c)(nn.LayerNorm()(y)), 2, axis=-1)
        y = y + nn.Dense(c)(a * nn.gelu(g))
        return x + nn.Dense(c)(y).reshape(b, h, w, c)


class StandIn(nn.Module):
    """SD-1.5-shaped conditional UNet (see the module docstring), eps prediction."""

    @nn.compact
    def __call__(self, x, t, ctx):
        freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(160) / 160)
        temb = jnp.broadcast_to(t, (x.shape[0],))[:, None] * freqs
        temb = jnp.concatenate([jnp.sin(temb), jnp.cos(temb)], axis=-1)
        temb = nn.Dense(1280)(nn.silu(nn.Dense(1280)(temb)))
        h = nn.Conv(CHANNELS[0], (3, 3))(x)
        skips = []
        for i, (ch, att) in enumerate(zip(CHANNELS, ATTENTION, strict=True)):
            for _ in range(2):
                h = ResBlock(ch)(h, temb)
                h = Transformer(ch)(h, ctx) if att else h
                skips.append(h)
            if i < len(CHANNELS) - 1:
                h = nn.Conv(ch, (3, 3), strides=2)(h)
        h = Transformer(CHANNELS[-1])(ResBlock(CHANNELS[-1])(h, temb), ctx)
        for i, (ch, att) in reversed(list(enumerate(zip(CHANNELS, ATTENTION, strict=True)))):
            for _ in range(2):
                h = ResBlock(ch)(jnp.concatenate([h, skips.pop()], axis=-1), temb)
                h = Transformer(ch)(h, ctx) if att else h
            if i > 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
        return nn.Conv(4, (3, 3))(nn.silu(nn.GroupNorm(32)(h)))


def standin_model(size: int):
    net = StandIn()
    x = jax.ShapeDtypeStruct((1, size, size, 4), jnp.float32)
    ctx = jax.ShapeDtypeStruct((1, *TEXT), jnp.float32)
    params = jax.eval_shape(
        lambda x, c: net.init(jax.random.key(0), x, jnp.float32(0.0), c), x, ctx
    )

    def fn(params, x, t, ctx):
        return net.apply(params, x, t, ctx)

    model = hj.Denoiser(fn, noise=hj.noise.preset("sd15"), params=params)
    return model, "SD-1.5-shaped stand-in (this script's StandIn)"


def loaded_model(path: str):
    model = hj.models.load(path)
    params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), model.params)
    return model.replace(params=params), f"converted model {path}"


def lower_step(model, batch: int, size: int, nfe: int, remat: bool, cond_shape):
    """Compile direct's iteration (value and gradient on the training batch, held-out loss)."""
    solver = hj.solvers.unipc()
    ns = model.noise
    with jax.enable_x64(True):
        ts = np.asarray(hj.schedules.logsnr_uniform(ns, solver.num_points(nfe) - 1))
        lam = np.asarray(ns.lam(jnp.asarray(ts)))
    z = logits_from_lam(jnp.asarray(lam, jnp.float32))
    ends = tuple(jnp.float32(v) for v in (lam[0], lam[-1], ts[0], ts[-1]))
    latents = jax.ShapeDtypeStruct((batch, size, size, 4), jnp.float32)
    emb = jax.ShapeDtypeStruct((batch, *cond_shape), jnp.float32)
    null = jax.ShapeDtypeStruct((1, *cond_shape), jnp.float32)
    guided = model.replace(cond=emb, uncond=null, guidance_scale=7.5)

    def step(z, m, x_tr, r_tr, x_va, r_va):
        loss, g = jax.value_and_grad(direct_loss)(z, m, solver, x_tr, r_tr, ends, True, remat)
        return loss, g, direct_loss(z, m, solver, x_va, r_va, ends)

    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(z, guided, latents, latents, latents, latents).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    keys = ("argument", "output", "temp", "generated_code")
    mem = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in keys} if m is not None else None
    return {"remat": remat, "compile_s": compile_s, "memory_bytes": mem}


def _gib(b) -> str:
    return f"{b / 2**30:.2f}"


def markdown(res: dict) -> str:
    lines = [
        "# Direct's step at Stable Diffusion size: XLA memory analysis",
        "",
        f"Network: {res['network']} ({res['parameters'] / 1e6:.0f} M parameters). Latents "
        f"{res['batch']} x {res['size']} x {res['size']} x 4 (training) + the same held out, "
        f"prompt embeddings {res['batch']} x {res['cond_shape'][0]} x {res['cond_shape'][1]}, "
        f"guidance 7.5 (2 network calls per NFE), NFE {res['nfe']}, UniPC, unrolled solver "
        f"loop. Compiled on {res['backend']} ({res['machine']}), not run. GiB:",
        "",
        "| remat | argument | output | temp | generated code | compile s |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        m = r["memory_bytes"]
        lines.append(
            f"| {r['remat']} | {_gib(m['argument'])} | {_gib(m['output'])} | {_gib(m['temp'])} "
            f"| {_gib(m['generated_code'])} | {r['compile_s']:.0f} |"
        )
    off, on = (r["memory_bytes"]["temp"] for r in res["runs"])
    lines += [
        "",
        f"Rematerialisation divides the temporary memory (activations kept for the reverse "
        f"pass) by {off / max(on, 1):.1f} ({_gib(off)} -> {_gib(on)} GiB) at the price of "
        "about one more forward pass per step. Argument memory is the float32 parameters plus "
        "the noises and embeddings.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="standin", help="'standin' or a converted model dir")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--size", type=int, default=64, help="latent height = width")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    if a.model == "standin":
        model, network = standin_model(a.size)
    else:
        model, network = loaded_model(a.model)
    cond_shape = TEXT
    n_params = sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(model.params))
    runs = []
    for remat in (False, True):
        runs.append(lower_step(model, a.batch, a.size, a.nfe, remat, cond_shape))
        print(json.dumps(runs[-1]), flush=True)
    res = {
        "network": network,
        "parameters": int(n_params),
        "batch": a.batch,
        "size": a.size,
        "nfe": a.nfe,
        "cond_shape": list(cond_shape),
        "backend": jax.default_backend(),
        "machine": f"{platform.machine()}, {jax.device_count()} device(s)",
        "jax": jax.__version__,
        "runs": runs,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_sd_memory.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "bench_sd_memory.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
