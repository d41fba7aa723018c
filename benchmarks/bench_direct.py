"""Speed and memory of direct schedule optimisation (``hso_jax.optimizers.direct``) on MNIST.

``optimize_direct`` runs Adam on the schedule logits with exact gradients, reverse mode through
every network call of the solver. Measured on the shipped MNIST model
(``hso_jax.models.load("mnist")``, DDPM discrete VP, samples (28, 28, 1) float32), noise
``x_T = model.noise.prior(key(seed), (B_train + B_val, 28, 28, 1))`` split B_train / B_val:

* references: the exact PF-ODE solutions from ``x_T`` (``cached_reference``, rtol = atol =
  1e-4, key ``hso_jax.models.zoo.MNIST_ID``), computed once and passed in, so their cost
  (reported separately; a cache hit only loads a file) is not in the optimisation time;
* main run (the target "optimise a 5-step schedule in under 2 minutes warm on 2 CPU cores"):
  NFE 5, UniPC, B_train = B_val = 8, 60 steps, default patience, called twice in one process.
  Cold = first call (tracing + XLA compilation of the step + run), warm = second call with the
  same shapes (jit cache hit). Reported: wall time of the call, its CPU time, ``compile_s``,
  ``run_s``, iterations, time per iteration, train / held-out loss before and after, the chosen
  initialisation, XLA's memory analysis of the compiled step and the process's peak RSS;
* scaling: NFE in {5, 8} at B_train = 8 and B_train in {8, 16} at NFE 5 (B_val = B_train):
  a 2-step warm-up call, then a 10-step call (patience 10, so all 10 run); warm time per
  iteration = ``run_s / iterations`` of the second call, step memory from XLA.

Every configuration (the main run included) runs in a fresh subprocess (the script re-invokes
itself with ``--single NFE BATCH``), so each peak RSS belongs to that configuration alone; the
parent process computes (or loads) the references first, so the children only load them.

Writes ``<out>/bench_direct.{md,json}`` (``bench_direct_quick.*`` with ``--quick``: main
configuration only, 10 steps). Run::

    .venv/bin/python benchmarks/bench_direct.py [--quick] [--out DIR] [--cache-dir DIR] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np

import hso_jax as hj
from hso_jax.evaluation import cached_reference
from hso_jax.models.zoo import MNIST_ID
from hso_jax.optimizers.direct import direct_loss, optimize_direct
from hso_jax.optimizers.refine import logits_from_lam

OUT = Path(__file__).resolve().parent / "results"
SHAPE = (28, 28, 1)
SOLVER = "unipc"
KEY_ID = MNIST_ID
TOL = 1e-4
MAIN = (5, 8)  # (NFE, B_train)
SCALING = [(5, 8), (8, 8), (5, 16)]
MARK = "RESULT_JSON "
TARGET_STEPS, TARGET_S = 60, 120.0  # the target: 60 steps in < 2 min warm


def _data(batch: int, seed: int, cache_dir: str | None) -> tuple[Any, Any, Any, float]:
    """Model, x_T of B_train + B_val = 2 * batch samples, their references, reference time."""
    model = hj.models.load("mnist")
    ns = model.noise
    x_T = ns.prior(jax.random.key(seed), (2 * batch, *SHAPE))
    w0 = time.perf_counter()
    ref = cached_reference(
        model, x_T, ns.t_max, ns.t_min, key_id=KEY_ID, rtol=TOL, atol=TOL, cache_dir=cache_dir
    )
    ref = jax.block_until_ready(ref)
    return model, x_T, ref, time.perf_counter() - w0


def _call(model, x_T, ref, nfe: int, steps: int, patience: int | None) -> dict:
    kw = {} if patience is None else {"patience": patience}
    c0, w0 = time.process_time(), time.perf_counter()
    r = optimize_direct(
        model, nfe, solver=SOLVER, x_T=x_T, reference=ref, val_fraction=0.5, steps=steps, **kw
    )
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    i, tm = r.info, r.info["timings"]
    return {
        "steps": steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "compile_s": tm["compile_s"],
        "run_s": tm["run_s"],
        "per_iteration_s": tm["per_iteration_s"],
        "other_s": wall - tm["compile_s"] - tm["run_s"],  # init choice, checks, setup
        "iterations": i["iterations"],
        "best_iteration": i["best_iteration"],
        "stop_reason": i["stop_reason"],
        "init": i["init"],
        "init_candidates_train_loss": i["init_candidates_train_loss"],
        "init_train_loss": i["init_train_loss"],
        "init_val_loss": i["init_val_loss"],
        "train_loss": i["train_loss"],
        "val_loss": i["val_loss"],
        "step_memory_bytes": i["step_memory_bytes"],
        "train_history": i["train_history"].tolist(),
        "val_history": i["val_history"].tolist(),
        "t": r.t.tolist(),
        "timesteps": None if r.timesteps is None else r.timesteps.tolist(),
        "warnings": list(r.warnings),
    }


def _median_s(f, *args, repeats: int = 3, **kw) -> float:
    jax.block_until_ready(f(*args, **kw))  # compile
    ts = []
    for _ in range(repeats):
        w0 = time.perf_counter()
        jax.block_until_ready(f(*args, **kw))
        ts.append(time.perf_counter() - w0)
    return float(np.median(ts))


def _breakdown(model, x_T, ref, nfe: int) -> dict:
    """Warm median times of the parts of one iteration on the training half (time-uniform)."""
    solver = hj.solvers.unipc()
    b = x_T.shape[0] // 2
    x, r = x_T[:b], ref[:b]
    with jax.enable_x64(True):
        t = hj.schedules.time_uniform(model.noise, solver.num_points(nfe) - 1)
        t = np.asarray(t, np.float64)
        lam = np.asarray(model.noise.lam(jnp.asarray(t)), np.float64)
    ends = tuple(jnp.asarray(v, jnp.float32) for v in (lam[0], lam[-1], t[0], t[-1]))
    z = logits_from_lam(jnp.asarray(lam, jnp.float32))
    fwd = jax.jit(direct_loss, static_argnames="solver")
    vg = jax.jit(jax.value_and_grad(direct_loss), static_argnames=("solver", "unroll"))
    args = (z, model, solver, x, r, ends)
    return {
        "batch": b,
        "network_call_s": _median_s(jax.jit(model.x0), x, jnp.float32(0.5)),
        "forward_loss_s": _median_s(fwd, *args),
        "value_and_grad_s": _median_s(vg, *args),
        "value_and_grad_rolled_s": _median_s(vg, *args, unroll=1),
    }


def _single(nfe: int, batch: int, a: argparse.Namespace) -> dict:
    """One configuration, two calls (cold, warm) in this process."""
    model, x_T, ref, ref_s = _data(batch, a.seed, a.cache_dir)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cold = _call(model, x_T, ref, nfe, a.warmup_steps, a.patience)
    warm = _call(model, x_T, ref, nfe, a.steps, a.patience)
    out = {
        "nfe": nfe,
        "batch_train": batch,
        "batch_val": batch,
        "reference_load_s": ref_s,
        "rss_before_kib": rss_before,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "cold": cold,
        "warm": warm,
    }
    if a.breakdown:  # after the RSS reading: its extra executables must not count
        out["breakdown"] = _breakdown(model, x_T, ref, nfe)
    return out


def _child(
    nfe: int, batch: int, a: argparse.Namespace, steps: int, warmup: int, patience, breakdown=False
) -> dict:
    cmd = [sys.executable, __file__, "--single", str(nfe), str(batch), "--seed", str(a.seed)]
    cmd += ["--steps", str(steps), "--warmup-steps", str(warmup)]
    cmd += [] if patience is None else ["--patience", str(patience)]
    cmd += [] if a.cache_dir is None else ["--cache-dir", a.cache_dir]
    cmd += ["--breakdown"] if breakdown else []
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    line = next(s for s in reversed(p.stdout.splitlines()) if s.startswith(MARK))
    return json.loads(line[len(MARK) :])


def _mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def _mem(m: dict | None) -> str:
    if m is None:
        return "n/a"
    return f"{_mib(m['argument'])} / {_mib(m['output'])} / {_mib(m['temp'])}"


def _markdown(res: dict) -> str:
    meta, m = res["meta"], res["main"]
    md = ["# Direct schedule optimisation benchmark (`benchmarks/bench_direct.py`)", ""]
    md += [
        f"{common.machine_line(meta)} Load average at end {meta['load_end']}; mode: "
        f"{'quick' if meta['quick'] else 'full'}.",
        f"Command: `{meta['command']}`",
        "",
        f"Model: shipped MNIST denoiser, solver {SOLVER}, references = exact PF-ODE solutions "
        f"(rtol = atol = {TOL:g}, key `{KEY_ID}`). Reference time (parent process, "
        + ", ".join(f"{2 * b} samples: {s:.2f} s" for b, s in res["reference_s"].items())
        + "; a cache hit only loads the file). Each configuration runs in a fresh subprocess, so "
        "peak RSS (`ru_maxrss`) is that configuration's alone. Step memory = XLA memory analysis "
        "of the compiled iteration, argument / output / temp MiB (temp holds the activations "
        "kept for the reverse pass).",
        "",
        f"## Main: NFE {m['nfe']}, B_train = {m['batch_train']}, B_val = {m['batch_val']}, "
        f"{m['warm']['steps']} steps, default patience",
        "",
        "| call | wall s | CPU s | compile s | run s | other s | iterations | s / iteration | "
        "init | train loss before -> after | held-out loss before -> after | best it. | "
        "stop |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("cold", "warm"):
        c = m[name]
        md.append(
            f"| {name} | {c['wall_s']:.2f} | {c['cpu_s']:.2f} | {c['compile_s']:.2f} | "
            f"{c['run_s']:.2f} | {c['other_s']:.2f} | {c['iterations']} | "
            f"{c['per_iteration_s']:.3f} | {c['init']} | {c['init_train_loss']:.5f} -> "
            f"{c['train_loss']:.5f} | {c['init_val_loss']:.5f} -> {c['val_loss']:.5f} | "
            f"{c['best_iteration']} | {c['stop_reason']} |"
        )
    w = m["warm"]
    proj = w["other_s"] + TARGET_STEPS * w["per_iteration_s"]
    md += [
        "",
        f"Target: {TARGET_STEPS} steps in < {TARGET_S:.0f} s warm. Measured warm wall "
        f"{w['wall_s']:.1f} s for {w['iterations']} iterations; at "
        f"{w['per_iteration_s']:.2f} s / iteration, {TARGET_STEPS} iterations take about "
        f"{proj:.0f} s: target {'met' if proj < TARGET_S else 'NOT met'} "
        f"({proj / TARGET_S:.2f}x the target). Compile time of the warm call "
        f"{w['compile_s']:.3f} s (cache hit). Step memory (arg / out / temp MiB): "
        f"{_mem(w['step_memory_bytes'])}; peak RSS of the process {m['peak_rss_kib'] / 1024:.0f}"
        f" MiB ({m['rss_before_kib'] / 1024:.0f} MiB after loading model and references). "
        f"Init candidates (train loss): "
        + ", ".join(f"{k} {v:.5f}" for k, v in w["init_candidates_train_loss"].items())
        + f". Returned timesteps: {w['timesteps']}.",
    ]
    if w["warnings"]:
        md.append(f"Warnings: {'; '.join(w['warnings'])}.")
    hist = w["val_history"]
    md += [
        "",
        "Held-out loss by iteration (warm call, every 5th): "
        + ", ".join(f"{i}: {hist[i]:.4f}" for i in range(0, len(hist), 5))
        + f"; minimum {min(hist):.5f} at iteration {hist.index(min(hist))}.",
    ]
    if "breakdown" in m:
        bd = m["breakdown"]
        pred = bd["value_and_grad_s"] + bd["forward_loss_s"]
        md += [
            "",
            f"Where an iteration goes (warm medians, separately jitted, {bd['batch']} samples, "
            f"time-uniform schedule): one network call {bd['network_call_s']:.3f} s; loss "
            f"(sampling, NFE {m['nfe']}) {bd['forward_loss_s']:.3f} s; value and gradient "
            f"{bd['value_and_grad_s']:.3f} s "
            f"({bd['value_and_grad_s'] / bd['forward_loss_s']:.1f}x the loss); value and "
            f"gradient on the training half + loss on the held-out half = {pred:.3f} s vs "
            f"{w['per_iteration_s']:.3f} s measured per iteration. (Reverse mode through a plain "
            "network costs about 2-3x its forward pass.) `direct_loss` samples with the "
            "solver's scan fully unrolled (`sample(..., unroll=True)`); with the scan rolled, "
            f"value and gradient take {bd['value_and_grad_rolled_s']:.3f} s "
            f"({bd['value_and_grad_rolled_s'] / bd['value_and_grad_s']:.1f}x).",
        ]
    if res.get("scaling"):
        md += [
            "",
            "## Scaling (warm: 2-step warm-up call, then 10 steps; B_val = B_train)",
            "",
            "| NFE | B_train | compile s (cold) | compile s (warm call) | s / iteration | "
            "step memory arg / out / temp MiB | peak RSS MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in res["scaling"]:
            md.append(
                f"| {s['nfe']} | {s['batch_train']} | {s['cold']['compile_s']:.2f} | "
                f"{s['warm']['compile_s']:.3f} | {s['warm']['per_iteration_s']:.3f} | "
                f"{_mem(s['warm']['step_memory_bytes'])} | {s['peak_rss_kib'] / 1024:.0f} |"
            )
        md += ["", "| ratio | time | temp memory | peak RSS | expected if linear |"]
        md += ["|---|---|---|---|---|"]
        for r in res["ratios"]:
            md.append(
                f"| {r['name']} | {r['time']:.2f} | {r['temp']:.2f} | {r['rss']:.2f} | "
                f"{r['expected']:.2f} |"
            )
        md += ["", res["interpretation"]]
    return "\n".join(md) + "\n"


def _ratios(scaling: list[dict]) -> list[dict]:
    by = {(s["nfe"], s["batch_train"]): s for s in scaling}
    base = by[MAIN]
    out = []
    for key, name, exp in (((8, 8), "NFE 8 / NFE 5", 8 / 5), ((5, 16), "B 16 / B 8", 2.0)):
        s = by[key]
        tb, ts = base["warm"]["step_memory_bytes"], s["warm"]["step_memory_bytes"]
        out.append(
            {
                "name": name,
                "time": s["warm"]["per_iteration_s"] / base["warm"]["per_iteration_s"],
                "temp": float("nan") if not (tb and ts) else ts["temp"] / tb["temp"],
                "rss": s["peak_rss_kib"] / base["peak_rss_kib"],
                "expected": exp,
            }
        )
    return out


def _shape(ratio: float, expected: float) -> str:
    """'linear' within 20 % of the expected ratio, else sub- or super-linear."""
    if abs(ratio / expected - 1) <= 0.2:
        return "about linear"
    return "sub-linear" if ratio < expected else "super-linear"


def _interpret(ratios: list[dict]) -> str:
    n, b = ratios
    return (
        f"NFE 5 -> 8 (x1.60) costs {n['time']:.2f}x the time per iteration "
        f"({_shape(n['time'], 1.6)}) and {n['temp']:.2f}x the step's temporary memory "
        f"({_shape(n['temp'], 1.6)}); batch 8 -> 16 (x2.00) costs {b['time']:.2f}x the time "
        f"({_shape(b['time'], 2.0)}) and {b['temp']:.2f}x the temporary memory "
        f"({_shape(b['temp'], 2.0)}). Reverse mode keeps every activation of every network call "
        "for the backward pass, so step memory is expected to grow ~ linearly in NFE x batch."
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="main config only, 10 steps")
    ap.add_argument("--out", default=str(OUT), help="output folder")
    ap.add_argument("--cache-dir", default=None, help="reference cache (default ~/.cache)")
    ap.add_argument("--seed", type=int, default=0, help="seed of x_T")
    ap.add_argument("--single", nargs=2, type=int, metavar=("NFE", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=60, help=argparse.SUPPRESS)
    ap.add_argument("--warmup-steps", type=int, default=60, help=argparse.SUPPRESS)
    ap.add_argument("--patience", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.single:
        print(MARK + json.dumps(_single(*a.single, a)), flush=True)
        return

    meta = {
        **common.machine_info(),
        "quick": a.quick,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "seed": a.seed,
    }
    steps = 10 if a.quick else 60
    batches = sorted({MAIN[1]} | (set() if a.quick else {b for _, b in SCALING}))
    res: dict[str, Any] = {"meta": meta, "reference_s": {}}
    for b in batches:  # fill the cache here, so that the children only load references
        res["reference_s"][b] = _data(b, a.seed, a.cache_dir)[3]
        print(f"references, {2 * b} samples: {res['reference_s'][b]:.2f} s", flush=True)

    res["main"] = _child(*MAIN, a, steps, steps, None, breakdown=True)
    for name in ("cold", "warm"):
        c = res["main"][name]
        print(
            f"main {name}: wall {c['wall_s']:.2f} s (compile {c['compile_s']:.2f}, run "
            f"{c['run_s']:.2f}), {c['iterations']} it, {c['per_iteration_s']:.3f} s/it, init "
            f"{c['init']}, val {c['init_val_loss']:.5f} -> {c['val_loss']:.5f}",
            flush=True,
        )
    if not a.quick:
        res["scaling"] = []
        for nfe, b in SCALING:
            s = _child(nfe, b, a, 10, 2, 10)
            res["scaling"].append(s)
            print(
                f"NFE {nfe} B {b}: {s['warm']['per_iteration_s']:.3f} s/it, memory "
                f"{_mem(s['warm']['step_memory_bytes'])} MiB, RSS {s['peak_rss_kib'] / 1024:.0f}"
                " MiB",
                flush=True,
            )
        res["ratios"] = _ratios(res["scaling"])
        res["interpretation"] = _interpret(res["ratios"])
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    stem = "bench_direct_quick" if a.quick else "bench_direct"
    common.write_results(Path(a.out), stem, res, _markdown(res))
    print(_markdown(res))


if __name__ == "__main__":
    main()
