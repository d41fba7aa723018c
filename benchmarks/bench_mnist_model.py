"""Where the MNIST U-Net's compute goes: FLOPs, forward and training-step time per config.

For each candidate architecture (diffusers ``UNet2DModel`` configs on 28 x 28 x 1) this reports
the parameter count, XLA's FLOP count of one forward pass per sample (``cost_analysis`` of the
compiled function), the Flax port's forward time at batch 64 (jit, warm, median of repeats), the
same config's forward time in diffusers' PyTorch ``UNet2DModel`` (CPU, ``torch.no_grad``; needs
the ``convert`` extra, skipped without it), and the time of one training step (loss, gradient,
Adam, EMA; compile time reported separately) at the given batch sizes. Also times the
GroupNorm of the port against flax's ``nn.GroupNorm`` on the shapes where it matters.

Writes ``<out>/bench_mnist_model.{md,json}``. Run alone on an idle machine::

    python benchmarks/bench_mnist_model.py [--configs base,wide_low,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np

from hso_jax.models.train import MNIST_CONFIG, RECIPES, make_train_step
from hso_jax.models.unet import GroupNorm, count_params, init_params, unet_fn

OUT = Path(__file__).resolve().parent / "results"


def _median_time(f, *args, repeats: int = 7) -> float:
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def torch_forward_s(config: dict[str, Any], batch: int) -> float | None:
    """diffusers' UNet2DModel forward (CPU, no grad) on the same config, or None without torch."""
    try:
        import torch
        from diffusers import UNet2DModel
    except ImportError:
        return None
    torch.manual_seed(0)
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    net = UNet2DModel(**cfg).eval()
    x = torch.randn(batch, 1, 28, 28)
    t = torch.full((batch,), 500.0)
    with torch.no_grad():
        f = lambda: net(x, t).sample  # noqa: E731
        f()
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def profile_config(name: str, config: dict[str, Any], batches: tuple[int, ...]) -> dict[str, Any]:
    params = init_params(config, jax.random.key(0))
    fn = jax.jit(unet_fn(config))
    x = jax.random.normal(jax.random.key(1), (64, 28, 28, 1), jnp.float32)
    t = jnp.full((64,), 500.0, jnp.float32)
    x1, t1 = x[:1], t[:1]
    cost = fn.lower(params, x1, t1).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    row = {
        "config": name,
        "block_out_channels": config["block_out_channels"],
        "down_block_types": config["down_block_types"],
        "layers_per_block": config["layers_per_block"],
        "params": count_params(params),
        "fwd_mflop_per_sample": float(cost.get("flops", float("nan"))) / 1e6,
        "fwd_ms_per_sample_b64": 1e3 * _median_time(fn, params, x, t) / 64,
    }
    tf = torch_forward_s(config, 64)
    row["torch_fwd_ms_per_sample_b64"] = None if tf is None else 1e3 * tf / 64
    for b in batches:
        step, state = make_train_step(config, dataclasses.replace(RECIPES["v2"], batch_size=b))
        t0 = time.perf_counter()
        state, _ = step(state)
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            state, loss = step(state)
            jax.block_until_ready(loss)
            ts.append(time.perf_counter() - t0)
        row[f"step_s_b{b}"] = float(np.median(ts))
        row[f"compile_s_b{b}"] = compile_s
    return row


def groupnorm_rows() -> list[dict[str, Any]]:
    import flax.linen as nn

    rows = []
    for shape in [(64, 28, 28, 32), (64, 28, 28, 96), (64, 14, 14, 64)]:
        x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 1.0
        ref = nn.GroupNorm(num_groups=8, epsilon=1e-5, use_fast_variance=False)
        ours = GroupNorm(num_groups=8, epsilon=1e-5)
        p = ref.init(jax.random.key(1), x)
        f_ref, f_ours = jax.jit(ref.apply), jax.jit(ours.apply)
        rows.append(
            {
                "shape": list(shape),
                "flax_ms": 1e3 * _median_time(f_ref, p, x, repeats=21),
                "port_ms": 1e3 * _median_time(f_ours, p, x, repeats=21),
                "max_abs_diff": float(jnp.max(jnp.abs(f_ref(p, x) - f_ours(p, x)))),
            }
        )
    return rows


def candidate_configs() -> dict[str, dict[str, Any]]:
    base = dict(MNIST_CONFIG)
    v1 = {
        **base,
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    }
    return {
        "v1:32-64-64": v1,
        "32-32-64": {**v1, "block_out_channels": [32, 32, 64]},
        "v2:16-32-64": {**v1, "block_out_channels": [16, 32, 64]},
        "32-64-128": {**v1, "block_out_channels": [32, 64, 128]},
        "32-64-64-no-attn": {
            **v1,
            "down_block_types": ["DownBlock2D"] * 3,
            "up_block_types": ["UpBlock2D"] * 3,
        },
        "32-64-64-lpb2": {**v1, "layers_per_block": 2},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--configs", default=None, help=f"comma-separated subset of {list(candidate_configs())}"
    )
    p.add_argument("--batches", default="32,64")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    cands = candidate_configs()
    names = list(cands) if a.configs is None else a.configs.split(",")
    bad = sorted(set(names) - set(cands))
    if bad:
        p.error(f"unknown --configs {bad}; known: {list(cands)}")
    batches = tuple(int(b) for b in a.batches.split(","))
    gn = groupnorm_rows()
    rows = []
    for n in names:
        rows.append(profile_config(n, cands[n], batches))
        print(json.dumps(rows[-1]), flush=True)
    info = common.machine_info()
    hdr = ["config", "params", "MFLOP/sample", "fwd ms/sample (Flax)", "fwd ms/sample (torch)"]
    hdr += [f"step s (B={b})" for b in batches]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for r in rows:
        tv = r["torch_fwd_ms_per_sample_b64"]
        cells = [
            r["config"],
            f"{r['params']:,}",
            f"{r['fwd_mflop_per_sample']:.0f}",
            f"{r['fwd_ms_per_sample_b64']:.2f}",
            "-" if tv is None else f"{tv:.2f}",
        ] + [f"{r[f'step_s_b{b}']:.3f}" for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    gl = [
        "| GroupNorm input | flax nn.GroupNorm ms | port ms | max abs diff |",
        "|---|---|---|---|",
    ]
    for r in gn:
        gl.append(
            f"| {tuple(r['shape'])} | {r['flax_ms']:.2f} | {r['port_ms']:.2f} | "
            f"{r['max_abs_diff']:.1e} |"
        )
    md = (
        "# MNIST U-Net: compute per config\n\n"
        f"{common.machine_line(info)} Forward at batch 64, median of 7; training step = loss + "
        "gradient + Adam + EMA, median of 5 after compile.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(gl)
        + "\n"
    )
    data = {"machine": info, "configs": rows, "groupnorm": gn}
    common.write_results(a.out, "bench_mnist_model", data, md)
    print(md)


if __name__ == "__main__":
    main()
