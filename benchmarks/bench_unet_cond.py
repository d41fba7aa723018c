"""Forward time of the Flax ``UNet2DConditionModel`` port against diffusers' PyTorch model.

For each configuration (random weights, the same in both frameworks: the torch model's state dict
is converted with :func:`hso_jax.models.convert.state_dict_to_params`) this reports the
parameter count, XLA's FLOP count of one forward pass, the compile time of the jitted Flax
forward, its warm time per call (median of repeats) and diffusers' forward time per call (CPU,
float32, ``torch.no_grad``), at batch 1 with a 77-token prompt embedding, plus the max-abs
difference of the two outputs. Configurations:

* ``tiny-sd15``: :func:`hso_jax.models.tiny_config` ("sd15"), 8 x 8 x 4 latents;
* ``sd15``: Stable Diffusion 1.5's architecture (channels 320 / 640 / 1280 / 1280, 8 heads,
  768-wide prompt embeddings; 860 M parameters), 64 x 64 x 4 latents (512 px images).

A guided call (classifier-free guidance) costs two forward passes; the seconds per call here
times the number of network calls of an optimiser estimates its cost on a real checkpoint.

Writes ``<out>/bench_unet_cond.{md,json}``. Run alone on an idle machine::

    python benchmarks/bench_unet_cond.py [--configs tiny-sd15,sd15] [--repeats 3]
        [--torch-threads N] [--out DIR]

On a shared machine torch's thread pool waits on busy cores (the tiny config took 0.09 s per
call with 2 threads and 8 ms with 1 at a load average of 12 on 2 cores): pass
``--torch-threads 1`` there.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hso_jax.models import tiny_config
from hso_jax.models.convert import state_dict_to_params
from hso_jax.models.unet import count_params, unet_fn

OUT = Path(__file__).resolve().parent / "results"
TOKENS = 77
SD15_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
}
CONFIGS = {"tiny-sd15": tiny_config("sd15"), "sd15": SD15_CONFIG}


def _median_time(f, repeats: int) -> float:
    f()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def torch_reference(
    config: dict[str, Any], x: np.ndarray, t: np.ndarray, ctx: np.ndarray, repeats: int
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """diffusers' output, its median seconds per forward call, and its weights as Flax params."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    kw = {k: v for k, v in config.items() if not k.startswith("_")}
    net = UNet2DConditionModel(**kw).eval()
    xt, tt, ct = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)
    with torch.no_grad():
        ref = net(xt, tt, ct).sample.numpy()
        seconds = _median_time(lambda: net(xt, tt, ct).sample, repeats)
    return ref, seconds, state_dict_to_params(net.state_dict(), config)


def profile(name: str, config: dict[str, Any], repeats: int) -> dict[str, Any]:
    size = config["sample_size"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, config["in_channels"], size, size)).astype(np.float32)
    ctx = rng.standard_normal((1, TOKENS, config["cross_attention_dim"])).astype(np.float32)
    t = np.array([500.0], np.float32)
    load_before = os.getloadavg()[0]
    ref, torch_s, params = torch_reference(config, x, t, ctx, repeats)
    gc.collect()  # the torch model is gone: keep only one copy of the weights in memory

    fn = jax.jit(unet_fn(config))
    x_nhwc = x.transpose(0, 2, 3, 1)
    t0 = time.perf_counter()
    compiled = fn.lower(params, x_nhwc, t, ctx).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out = np.asarray(compiled(params, x_nhwc, t, ctx)).transpose(0, 3, 1, 2)
    flax_s = _median_time(lambda: jax.block_until_ready(compiled(params, x_nhwc, t, ctx)), repeats)
    return {
        "config": name,
        "latents": [1, size, size, config["in_channels"]],
        "prompt_tokens": TOKENS,
        "params": count_params(params),
        "gflops_forward": float(cost.get("flops", float("nan"))) / 1e9,
        "flax_compile_s": compile_s,
        "flax_forward_s": flax_s,
        "torch_forward_s": torch_s,
        "max_abs_diff": float(np.max(np.abs(out - ref))),
        # the machine's 1-minute load average before and after (shared machines: read times
        # relative to it)
        "load_avg": [load_before, os.getloadavg()[0]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {list(CONFIGS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    p.add_argument("--out", type=Path, default=OUT, help="output folder")
    p.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads (default: its own)"
    )
    a = p.parse_args()
    names = [n for n in a.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            p.error(f"unknown config {n!r}; known: {list(CONFIGS)}")
    import torch

    if a.torch_threads is not None:
        torch.set_num_threads(a.torch_threads)
    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    rows = []
    for n in names:
        rows.append(profile(n, CONFIGS[n], a.repeats))
        print(json.dumps(rows[-1]), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_unet_cond.json").write_text(
        json.dumps({"machine": info, "configs": rows}, indent=2) + "\n"
    )
    md = [
        "# UNet2DConditionModel forward: Flax port vs diffusers (CPU, float32, batch 1)",
        "",
        f"Machine: {info['platform']}, {info['cpu_count']} CPUs, backend {info['jax_backend']}, "
        f"jax {info['jax']}, torch {info['torch']} ({info['torch_threads']} threads). "
        f"Median of {a.repeats} warm calls; random weights, the same in both; prompt "
        f"embedding of {TOKENS} tokens. A guided call costs two forward passes.",
        "",
        "| config | latents | params | GFLOP | Flax compile s | Flax s/call | torch s/call "
        "| max abs diff | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['config']} | {'x'.join(map(str, r['latents'][1:]))} | {r['params']:,} "
            f"| {r['gflops_forward']:.1f} | {r['flax_compile_s']:.1f} | {r['flax_forward_s']:.4f} "
            f"| {r['torch_forward_s']:.4f} | {r['max_abs_diff']:.1e} "
            f"| {r['load_avg'][0]:.1f} / {r['load_avg'][1]:.1f} |"
        )
    (a.out / "bench_unet_cond.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
