"""Cost of the model-based optimisers on a conditional model: network calls x seconds per call.

For each method (``direct``, ``ays``, ``gits``, ``mep-model``) on a guided conditional model
with one condition per noise, this script counts every evaluation of the network on one sample
(a guided prediction is two: conditional and unconditional), measures the seconds of one such
evaluation (the network on a batch of ``--batch`` samples, jitted, warm, divided by the batch),
and reports both with the product, the predicted network time, next to the measured wall time
of the call (cold: with compilation; then warm, a second identical call). Evaluations are
counted at run time by a ``jax.debug.callback`` inside the network (forward evaluations,
recomputations included; the reverse pass of direct's gradient, about two evaluations' worth
of work per forward one, is not a call and is not counted).

Models: ``--model tiny`` (default), the tiny random SD-1.5-like
:class:`~hso_jax.models.UNet2DConditionModel` of ``hso_jax.models.tiny_config("sd15")``
(latents ``(8, 8, 4)``, channels 8 / 16, prompt embeddings ``(B, 5, 12)``), or ``--model DIR``,
a converted conditional model directory (``hso_jax.models.load``); random prompt and null
embeddings of ``--cond-shape``. For a real model multiply the counts by its time per
evaluation on your hardware.

Run::

    python benchmarks/bench_cond_cost.py [--model tiny|DIR] [--batch 8] [--nfe 5]
        [--shape 8 8 4] [--cond-shape 5 12] [--out benchmarks/results]

Writes ``<out>/bench_cond_cost.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import jax
import jax.numpy as jnp

import hso_jax as hj
from hso_jax.models import denoiser_from_config, tiny_config
from hso_jax.models.unet import init_params

OUT = Path(__file__).resolve().parent / "results"
COUNT = [0]


def _count(rows):
    COUNT[0] += int(rows.size)


def counted(fn):
    """``fn`` that adds its batch size to ``COUNT`` whenever it runs (under jit too)."""

    def wrapped(params, x, t, cond):
        # an array of the batch (batched under vmap, unlike the static x.shape[0])
        jax.debug.callback(_count, x.reshape(x.shape[0], -1)[:, 0])
        return fn(params, x, t, cond)

    return wrapped


def tiny_unet():
    config = tiny_config("sd15")
    return denoiser_from_config(config, init_params(config, jax.random.key(0)))


def seconds_per_evaluation(model, x, t, repeats: int = 20) -> float:
    f = jax.jit(lambda m, x, t: m.raw(x, t))
    m = model.replace(guidance_scale=None, uncond=None)  # one network call on the batch
    jax.block_until_ready(f(m, x, t))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(m, x, t))
    return (time.perf_counter() - t0) / repeats / x.shape[0]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch", type=int, default=8, help="noises (and conditions)")
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--shape", type=int, nargs="+", default=[8, 8, 4], help="sample shape")
    p.add_argument("--cond-shape", type=int, nargs=2, default=[5, 12], help="(L, D)")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    shape, cond_shape = tuple(a.shape), tuple(a.cond_shape)
    if a.model == "tiny":
        model, name = tiny_unet(), 'tiny random UNet2DConditionModel (tiny_config("sd15"))'

    else:
        model, name = hj.models.load(a.model), f"converted model {a.model}"
    model = model.replace(fn=counted(model.fn))
    ks = jax.random.split(jax.random.key(1), 4)
    b = a.batch
    emb = jax.random.normal(ks[0], (b, *cond_shape))
    null = jax.random.normal(ks[1], (1, *cond_shape))
    model = model.replace(cond=emb, uncond=null, guidance_scale=7.5)
    x_T = model.noise.prior(ks[2], (b, *shape))
    sec = seconds_per_evaluation(model, x_T, jnp.float32(0.5))
    data = hj.sample(model, x_T, hj.schedules.logsnr_uniform(model.noise, 20), hj.solvers.unipc())
    methods = {
        "direct": dict(x_T=x_T, steps=20, patience=20),
        "ays": dict(data=data, num_samples=b, progress=False),
        "gits": dict(x_T=x_T),
        "mep-model": dict(x_T=x_T),
    }
    rows = []
    for method, kw in methods.items():
        walls = []
        for _ in range(2):  # cold, warm
            COUNT[0] = 0
            t0 = time.perf_counter()
            res = hj.optimize(model, a.nfe, method=method, **kw)
            walls.append(time.perf_counter() - t0)
        evals = COUNT[0]
        rows.append(
            dict(
                method=method,
                evaluations=evals,
                seconds_per_evaluation=sec,
                network_s=evals * sec,
                wall_cold_s=walls[0],
                wall_warm_s=walls[1],
                t=res.t.tolist(),
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    res = dict(
        network=name,
        batch=b,
        nfe=a.nfe,
        shape=list(shape),
        cond_shape=list(cond_shape),
        guidance=7.5,
        machine=common.machine_info(),
        jax=jax.__version__,
        rows=rows,
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cond_cost.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Cost of the model-based optimisers on a conditional model",
        "",
        f"Network: {name}; {b} noises with one prompt embedding each {tuple(cond_shape)}, a "
        f"shared null embedding, guidance 7.5 (2 evaluations per NFE), NFE {a.nfe}, sample "
        f"shape {tuple(shape)}, default options (direct: 20 steps). "
        f"{common.machine_line(res['machine'])} One "
        "evaluation = the network on one sample (forward; recomputations counted).",
        "",
        "| method | evaluations | s / evaluation | evaluations x s | wall cold s | wall warm s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['evaluations']:,} | {r['seconds_per_evaluation']:.2e} | "
            f"{r['network_s']:.2f} | {r['wall_cold_s']:.1f} | {r['wall_warm_s']:.1f} |"
        )
    lines += [
        "",
        "On a network this small the wall time is compilation and overhead, not network time; "
        "for a real model the column `evaluations` times its time per evaluation is the "
        "estimate (direct adds its reverse passes, about twice its forward work).",
        "",
    ]
    (out / "bench_cond_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
