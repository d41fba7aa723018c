"""Where the time of a UNet forward goes: the Flax ports against diffusers' PyTorch modules.

For each configuration both frameworks run the same network (random weights, diffusers' init,
converted with :func:`hso_jax.models.convert.state_dict_to_params`) on the same input:

* **JAX**: a ``jax.profiler`` trace of warm calls of the jitted forward. XLA's CPU runtime
  records one event per executed thunk, named after its HLO instruction; the compiled HLO
  maps each name to its operation and to the module it came from (``metadata.op_name``, e.g.
  ``UNet2D/down_blocks_0/resnets_0/conv1/conv_general_dilated``).
* **PyTorch**: ``torch.profiler`` over warm calls, self CPU time per ``aten`` operator.

Both are grouped into the same categories (convolution, attention / linear matmuls,
normalisation, elementwise and other) and reported per forward call, next to the wall time
of an unprofiled call and the ratio JAX / PyTorch. Configurations:

* ``mnist``: the shipped model's architecture (``UNet2DModel``, 687 k parameters), batch 64;
* ``sd15``: Stable Diffusion 1.5's ``UNet2DConditionModel`` (860 M parameters), batch 1,
  64 x 64 x 4 latents, a 77-token prompt embedding;
* ``sd15-plain-attention``: the same with every attention in the plain form (the full score
  matrix materialised, as before the blockwise attention of long sequences), against the
  same PyTorch profile.

Writes ``<out>/profile_ports.{md,json}``. Run alone on an idle machine (the profile of a
shared machine measures the other jobs too)::

    python benchmarks/profile_ports.py [--configs mnist,sd15] [--repeats 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import common
import jax
import numpy as np
from bench_unet_cond import SD15_CONFIG, TOKENS, _median_time

from hso_jax.models import layers
from hso_jax.models.convert import state_dict_to_params
from hso_jax.models.train import MNIST_CONFIG
from hso_jax.models.unet import unet_fn

OUT = Path(__file__).resolve().parent / "results"
CATEGORIES = ("convolution", "attention", "linear", "normalisation", "elementwise / other")
TOP = 12


_ATTENTION = re.compile(r"attn\d*|attentions?(_\d+)?")
_SUBMODULE = re.compile(r"to_|proj|norm|group_norm|transformer|ff")


def _category(op: str, where: str) -> str:
    """Category of an operation ``op`` (HLO or aten name) made by module ``where`` (its path in
    the network, JAX only). Attention: the ops of an attention module itself (scores, softmax,
    weighted sum, also inside its blockwise loops), not those of its projections or norms."""
    op, parts = op.lower(), where.lower().split("/")
    if "conv" in op:
        return "convolution"
    at = [i for i, p in enumerate(parts) if _ATTENTION.fullmatch(p)]
    inside = at and not _SUBMODULE.match(parts[at[-1] + 1] if at[-1] + 1 < len(parts) else "")
    if inside or any(k in op for k in ("bmm", "scaled_dot_product", "softmax")):
        return "attention"
    if any(k in op for k in ("dot", "matmul", "mm", "linear")):
        return "linear"
    if "norm" in op or "norm" in parts[-1]:
        return "normalisation"
    return "elementwise / other"


# --------------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------------

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? (\w[\w-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_NESTING = ("while", "call", "conditional")


def _hlo_index(hlo: str) -> dict[str, tuple[str, str, str]]:
    """HLO instruction name -> (operation, output shape, module path of its origin). An
    instruction without metadata (e.g. a fusion inside a loop body) takes the module path most
    common among the instructions of its computation."""
    index, members = {}, collections.defaultdict(list)
    computation = ""
    for line in hlo.splitlines():
        if line.endswith("{") and not line.startswith(" "):
            computation = line.split(" (", 1)[0]
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        meta = _OP_NAME.search(line)
        path, _, op = meta.group(1).rpartition("/") if meta else ("", "", opcode)
        index[name] = (op if opcode == "fusion" and meta else opcode, shape, path)
        members[computation].append(name)
    for names in members.values():
        paths = collections.Counter(index[n][2] for n in names if index[n][2])
        if paths:
            common = paths.most_common(1)[0][0]
            for n in names:
                if not index[n][2]:
                    index[n] = (index[n][0], index[n][1], common)
    return index


def jax_profile(fn, args, repeats: int) -> dict[str, Any]:
    """Wall time of an unprofiled call and the per-thunk profile of ``repeats`` calls of
    ``fn(*args)`` (the parameters among ``args``, as in use: not folded in as constants)."""
    jax.clear_caches()  # traced afresh: a setting of the layers may have changed since
    compiled = jax.jit(lambda *a: fn(*a)).lower(*args).compile()
    index = _hlo_index(compiled.as_text())
    wall_ms = _median_time(lambda: jax.block_until_ready(compiled(*args)), repeats) * 1e3
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(repeats):
            jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        trace = next(Path(d).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op: dict[str, float] = collections.Counter()
    for e in events:
        # loops and calls are left out: the thunks of their bodies are counted themselves
        if e.get("ph") == "X" and e["name"] in index and index[e["name"]][0] not in _NESTING:
            per_op[e["name"]] += e.get("dur", 0) / 1e3 / repeats  # ms per call
    ops = []
    for name, ms in per_op.items():
        op, shape, path = index[name]
        ops.append(dict(name=name, op=op, shape=shape, module=path, ms=ms,
                        category=_category(op, path)))  # fmt: skip
    return _summary(wall_ms, ops)


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


def torch_profile(net, inputs, repeats: int) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        wall_ms = _median_time(lambda: net(*inputs), repeats) * 1e3
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(repeats):
                net(*inputs)
    ops = []
    for e in prof.key_averages(group_by_input_shape=True):
        ms = e.self_cpu_time_total / 1e3 / repeats
        if ms > 0:
            shape = str(e.input_shapes[0]) if e.input_shapes else ""
            ops.append(dict(name=e.key, op=e.key, shape=shape, module="", ms=ms,
                            category=_category(e.key, "")))  # fmt: skip
    return _summary(wall_ms, ops)


def _summary(wall_ms: float, ops: list[dict[str, Any]]) -> dict[str, Any]:
    ops.sort(key=lambda o: -o["ms"])
    by_cat = {c: sum(o["ms"] for o in ops if o["category"] == c) for c in CATEGORIES}
    return dict(wall_ms=wall_ms, profiled_ms=sum(o["ms"] for o in ops), categories=by_cat,
                top=ops[:TOP])  # fmt: skip


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------


def _mnist(rng):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    config = dict(MNIST_CONFIG)
    net = UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    t = np.full((64,), 500.0, np.float32)
    params = state_dict_to_params(net.state_dict(), config)
    return (net, (torch.from_numpy(x), torch.from_numpy(t)),
            unet_fn(config), (params, x.transpose(0, 2, 3, 1), t))  # fmt: skip


def _sd15(rng):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = SD15_CONFIG
    net = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    net = net.eval()
    x = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    ctx = rng.standard_normal((1, TOKENS, config["cross_attention_dim"])).astype(np.float32)
    t = np.array([500.0], np.float32)
    params = state_dict_to_params(net.state_dict(), config)
    return (net, tuple(torch.from_numpy(v) for v in (x, t, ctx)),
            unet_fn(config), (params, x.transpose(0, 2, 3, 1), t, ctx))  # fmt: skip


CONFIGS = {
    "mnist": (_mnist, "UNet2DModel, shipped architecture, batch 64", {}),
    "sd15": (_sd15, "SD 1.5 UNet2DConditionModel, batch 1, 64x64x4", {}),
    # the same with every attention in the plain form (the score matrix materialised): what
    # the blockwise attention of long sequences gains
    "sd15-plain-attention": (_sd15, "SD 1.5, plain attention", {"BLOCKWISE_MIN_SCORES": math.inf}),
}
_TORCH: dict[Any, dict[str, Any]] = {}  # PyTorch profile per network, measured once a run


def run(name: str, repeats: int) -> dict[str, Any]:
    make, what, layer_settings = CONFIGS[name]
    net, t_in, fn, j_in = make(np.random.default_rng(0))
    if make not in _TORCH:
        _TORCH[make] = torch_profile(net, t_in, repeats)
    torch_res = _TORCH[make]
    del net
    saved = {k: getattr(layers, k) for k in layer_settings}
    try:
        for k, v in layer_settings.items():
            setattr(layers, k, v)
        jax_res = jax_profile(fn, j_in, repeats)
    finally:
        for k, v in saved.items():
            setattr(layers, k, v)
    return dict(config=name, what=what, jax=jax_res, torch=torch_res,
                ratio=jax_res["wall_ms"] / torch_res["wall_ms"])  # fmt: skip


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], repeats: int) -> str:
    md = [
        "# Where a UNet forward spends its time: Flax ports vs diffusers (CPU, float32)",
        "",
        f"{common.machine_line(info)} torch {info['torch']} ({info['torch_threads']} threads). "
        f"Wall: median of {repeats} unprofiled warm calls; profiles: mean of {repeats} "
        "profiled calls, per call (JAX: XLA thunks; PyTorch: self CPU time of aten ops).",
        "",
        "| config | JAX ms | PyTorch ms | JAX / PyTorch | "
        + " | ".join(f"{c} JAX / PT ms" for c in CATEGORIES) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(CATEGORIES),
    ]
    for r in rows:
        j, t = r["jax"], r["torch"]
        cats = " | ".join(
            f"{j['categories'][c]:.1f} / {t['categories'][c]:.1f}" for c in CATEGORIES
        )
        md.append(f"| {r['config']} | {j['wall_ms']:.1f} | {t['wall_ms']:.1f} | "
                  f"{r['ratio']:.2f} | {cats} |")  # fmt: skip
    for r in rows:
        for side in ("jax", "torch") if r["config"] != "sd15-plain-attention" else ("jax",):
            md += ["", f"## {r['config']} ({r['what']}): top {TOP} operations, {side}", "",
                   "| ms | category | operation | shape | module |",
                   "|---:|---|---|---|---|"]  # fmt: skip
            for o in r[side]["top"]:
                module = o["module"].replace("jit(<lambda>)/", "")
                md.append(f"| {o['ms']:.2f} | {o['category']} | {o['op']} | {o['shape']} | "
                          f"{module} |")  # fmt: skip
    return "\n".join(md) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {list(CONFIGS)}")
    p.add_argument("--repeats", type=int, default=5, help="calls per measurement")
    p.add_argument("--out", type=Path, default=OUT, help="output folder")
    a = p.parse_args()
    names = [n for n in a.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            p.error(f"argument --configs: unknown config {n!r}; known: {list(CONFIGS)}")
    import torch

    info = {**common.machine_info(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}  # fmt: skip
    rows = []
    for n in names:
        rows.append(run(n, a.repeats))
        r = rows[-1]
        print(f"{n}: JAX {r['jax']['wall_ms']:.1f} ms, PyTorch {r['torch']['wall_ms']:.1f} ms "
              f"({r['ratio']:.2f}x)", flush=True)  # fmt: skip
    common.write_results(a.out, "profile_ports", {"machine": info, "configs": rows},
                         markdown(rows, info, a.repeats))  # fmt: skip


if __name__ == "__main__":
    main()
