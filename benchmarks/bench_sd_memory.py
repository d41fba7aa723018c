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

The network (``--model sd15``, the default) is :class:`hso_jax.models.UNet2DConditionModel`
with Stable Diffusion 1.5's published configuration (channels 320 / 640 / 1280 / 1280, two
layers per block, 8 heads, cross-attention width 768; 860 M parameters), its parameters given
as shapes (``hso_jax.models.unet.abstract_params``); ``--model DIR`` takes a converted model
directory instead. The solver loop is compiled as a ``lax.scan`` (``unroll=False``): direct
unrolls it, which stores the same activations per step but multiplies the compile time by the
number of steps (too slow for 2 CPU cores at this size); ``--unroll`` compiles it unrolled.

The step is not run: one iteration on 2 CPU cores would take minutes. Run::

    python benchmarks/bench_sd_memory.py [--model sd15|DIR] [--batch 4] [--nfe 5]
        [--size 64] [--unroll] [--out benchmarks/results]

Writes ``<out>/bench_sd_memory.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import numpy as np

import hso_jax as hj
from hso_jax.models import denoiser_from_config
from hso_jax.models.unet import abstract_params
from hso_jax.optimizers.direct import direct_loss
from hso_jax.optimizers.refine import logits_from_lam

OUT = Path(__file__).resolve().parent / "results"
TEXT = (77, 768)
SD15 = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
"""Stable Diffusion 1.5's ``unet/config.json`` (runwayml/stable-diffusion-v1-5)."""


def sd15_model(size: int):
    config = dict(SD15, sample_size=size)
    model = denoiser_from_config(config, abstract_params(config))
    return model, "UNet2DConditionModel, Stable Diffusion 1.5 configuration, random weights"


def loaded_model(path: str):
    model = hj.models.load(path)
    params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), model.params)
    return model.replace(params=params), f"converted model {path}"


def lower_step(model, batch: int, size: int, nfe: int, remat: bool, cond_shape, unroll: bool):
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
        loss, g = jax.value_and_grad(direct_loss)(z, m, solver, x_tr, r_tr, ends, unroll, remat)
        return loss, g, direct_loss(z, m, solver, x_va, r_va, ends, unroll)

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
        f"guidance 7.5 (2 network calls per NFE), NFE {res['nfe']}, UniPC, solver loop "
        f"{'unrolled' if res['unroll'] else 'a lax.scan'}. Compiled on {res['backend']} "
        f"({common.machine_line(res['machine'])}), not run. GiB:",
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
    p.add_argument("--model", default="sd15", help="'sd15' or a converted model directory")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--size", type=int, default=64, help="latent height = width")
    p.add_argument(
        "--cond-shape", type=int, nargs=2, default=list(TEXT), help="(L, D), --model DIR"
    )
    p.add_argument("--unroll", action="store_true", help="unroll the solver loop as direct does")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    if a.model == "sd15":
        model, network = sd15_model(a.size)
        cond_shape = TEXT
    else:
        model, network = loaded_model(a.model)
        cond_shape = tuple(a.cond_shape)
    n_params = sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(model.params))
    runs = []
    for remat in (False, True):
        runs.append(lower_step(model, a.batch, a.size, a.nfe, remat, cond_shape, a.unroll))
        print(json.dumps(runs[-1]), flush=True)
    res = {
        "network": network,
        "parameters": int(n_params),
        "batch": a.batch,
        "size": a.size,
        "nfe": a.nfe,
        "cond_shape": list(cond_shape),
        "unroll": a.unroll,
        "backend": jax.default_backend(),
        "machine": common.machine_info(),
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
