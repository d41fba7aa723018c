"""Benchmark the solvers: driver overhead, vmap throughput over schedules, cost of gradients.

Two models:

* ``gmm``: the exact denoiser of a 4-component Gaussian mixture in 2-D (cheap: measures the
  solver and driver themselves), a batch of 1024 points;
* ``unet``: a tiny Flax Linen UNet (:mod:`hso_jax.models.unet`, diffusers ``UNet2DModel``
  layout: 2 levels, 16/32 channels, one attention level), 28x28x1, batch 64, eps prediction,
  random weights (speed does not depend on them). On a CPU one forward pass takes ~1 s, so
  ``--quick`` times only DDIM and UniPC on it, with 2 warm repeats.

Measurements (float32, NFE = 10, logSNR-uniform schedules of the ``sd15`` process for the
UNet and of ``vp-linear`` for the mixture):

(a) overhead: warm time of one ``hso_jax.sample`` call vs the same number of bare jitted model
    calls (``model.x0``) dispatched from a Python loop; ratio = sample / loop;
(b) throughput (mixture only): one jitted ``vmap`` of ``sample`` over 256 schedules vs 256
    separate ``sample`` calls;
(c) gradients: ``jax.jit(jax.grad(err))`` w.r.t. the schedule, ``err = mean((sample(ts) -
    x_ref)^2)`` (``x_ref``: a DPM-Solver++(3M) solve with twice the steps), relative to
    ``jax.jit(err)``: the plain call (``unroll=None``, unrolled under differentiation) and the
    rolled scan (``unroll=1``, the plain call before), with XLA's temporary memory of each
    compiled gradient and the largest difference between the two. ``--grad-only`` runs (c)
    alone, on the two models and the shipped MNIST UNet at batch 8
    (``bench_solvers_grad.{md,json}``).

Every timing separates the first call (compile + run) from the warm median over repeats
(``block_until_ready`` everywhere). Results go to ``benchmarks/results/bench_solvers.{md,json}``.

Usage::

    python benchmarks/bench_solvers.py            # full
    python benchmarks/bench_solvers.py --quick    # fewer repeats and solvers
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import numpy as np

import hso_jax as hj
from hso_jax import solvers as S
from hso_jax.models import unet as unet_mod
from hso_jax.models.zoo import MNIST_ID

RESULTS = Path(__file__).resolve().parent / "results"
NFE = 10


def _block(x):
    return jax.block_until_ready(x)


def _time(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """First call (compile + run) and the warm median / min over ``repeats`` calls, seconds."""
    t0 = time.perf_counter()
    _block(fn())
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(fn())
        warm.append(time.perf_counter() - t0)
    return {"first_s": first, "warm_median_s": statistics.median(warm), "warm_min_s": min(warm)}


def _solvers(quick: bool) -> dict[str, S.Solver]:
    all_ = {
        "ddim": S.ddim(),
        "dpm_solver_pp_2m": S.dpm_solver_pp(2),
        "dpm_solver_pp_3m": S.dpm_solver_pp(3),
        "dpm_solver_pp_2s": S.dpm_solver_pp(2, "singlestep"),
        "unipc_bh2_3": S.unipc(3),
        "ipndm": S.ipndm(),
        "heun": S.heun(),
    }
    if quick:
        return {k: all_[k] for k in ("ddim", "dpm_solver_pp_2m", "unipc_bh2_3", "heun")}
    return all_


# --- models -----------------------------------------------------------------------------------


def _gmm_problem():
    ns = hj.noise.preset("vp-linear")
    gm = hj.models.GaussianMixture(
        np.array([[1.2, 0.6], [-1.0, -0.4], [0.4, -1.3], [-0.6, 1.1]]),
        np.array([0.3, 0.45, 0.25, 0.35]),
    )
    model = gm.denoiser(ns)
    x_T = ns.prior(jax.random.key(0), (1024, 2))
    return "gmm", model, x_T


def _unet_problem():
    ns = hj.noise.preset("sd15")
    cfg = unet_mod.UNetConfig(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    params = unet_mod.init_params(cfg, jax.random.key(0))
    fn = unet_mod.unet_fn(cfg)

    def net(params, x, t):  # UNet2D takes a batch of times
        return fn(params, x, jnp.broadcast_to(t, x.shape[:1]))

    model = hj.Denoiser(net, noise=ns, prediction="eps", params=params)
    x_T = ns.prior(jax.random.key(0), (64, 28, 28, 1))
    return "unet", model, x_T


def _mnist_problem():
    from hso_jax.models.zoo import load

    model = load("mnist")
    return "mnist", model, model.noise.prior(jax.random.key(0), (8, 28, 28, 1))


def _schedule(model, num_points: int) -> jax.Array:
    ns = model.noise
    lam = jnp.linspace(ns.lam_min, ns.lam_max, num_points)
    t = ns.t_from_lam(lam.astype(jnp.float32))
    return t.at[0].set(ns.t_max).at[-1].set(ns.t_min)  # exact end points despite rounding


# --- measurements -----------------------------------------------------------------------------


def bench_overhead(model, x_T, solvers, repeats):
    x0_jit = jax.jit(lambda m, x, t: m.x0(x, t))
    rows = {}
    for name, solver in solvers.items():
        ts = _schedule(model, solver.num_points(NFE))
        # The evaluation times the solver would use, approximated by repeating the schedule's
        # (multistep solvers evaluate at ts[:-1]; singlestep / Heun at intermediate points too).
        t_calls = [ts[i % (ts.shape[0] - 1)] for i in range(NFE)]

        def loop(t_calls=t_calls):
            out = x_T
            for t in t_calls:
                out = x0_jit(model, x_T, t)
            return out

        s = _time(lambda ts=ts, solver=solver: hj.sample(model, x_T, ts, solver), repeats)
        b = _time(loop, repeats)
        rows[name] = {
            "sample": s,
            "bare_loop": b,
            "overhead_ratio": s["warm_median_s"] / b["warm_median_s"],
        }
    return rows


def bench_vmap(model, x_T, solver, repeats, num_schedules=256):
    n = solver.num_points(NFE)
    base = np.asarray(_schedule(model, n), np.float64)
    rng = np.random.default_rng(0)
    lam = np.asarray(model.noise.lam(jnp.asarray(base)))
    # Random interior perturbations, end points fixed, still strictly decreasing in t.
    jitter = rng.uniform(-0.3, 0.3, (num_schedules, n - 2)) * np.diff(lam).min()
    lam_b = np.repeat(lam[None], num_schedules, 0)
    lam_b[:, 1:-1] += jitter
    ts_b = np.array(model.noise.t_from_lam(jnp.asarray(lam_b)), np.float64)
    ts_b[:, 0], ts_b[:, -1] = base[0], base[-1]
    ts_b = jnp.asarray(ts_b, jnp.float32)
    x_small = x_T[:64]
    batched = jax.jit(jax.vmap(lambda ts: hj.sample(model, x_small, ts, solver)))

    def separate():
        return [hj.sample(model, x_small, ts_b[k], solver) for k in range(num_schedules)]

    v = _time(lambda: batched(ts_b), repeats)
    s = _time(separate, max(1, repeats // 2))
    return {
        "solver": type(solver).__name__,
        "num_schedules": num_schedules,
        "x_shape": list(x_small.shape),
        "vmapped": v,
        "separate": s,
        "speedup": s["warm_median_s"] / v["warm_median_s"],
        "schedules_per_s_vmapped": num_schedules / v["warm_median_s"],
        "schedules_per_s_separate": num_schedules / s["warm_median_s"],
    }


def _temp_bytes(jitted, *args) -> int | None:
    """XLA's temporary memory of the compiled ``jitted(*args)`` (None where not reported)."""
    stats = jitted.lower(*args).compile().memory_analysis()
    return None if stats is None else int(stats.temp_size_in_bytes)


def bench_grad(model, x_T, solver, repeats):
    """The plain call's gradient (``unroll=None``: unrolled under differentiation) against the
    rolled scan's (``unroll=1``, the plain call before), each relative to the forward pass."""
    ts = _schedule(model, solver.num_points(NFE))
    # Any fixed target serves for timing: a solve with twice the steps.
    x_ref = hj.sample(model, x_T, _schedule(model, 2 * NFE + 1), S.dpm_solver_pp(3))

    def err(ts, unroll=None):
        return jnp.mean((hj.sample(model, x_T, ts, solver, unroll=unroll) - x_ref) ** 2)

    f = jax.jit(err)
    fwd = _time(lambda: f(ts), repeats)
    out = {"solver": type(solver).__name__, "forward": fwd, "x_shape": list(x_T.shape)}
    grads = {}
    for label, unroll in (("rolled", 1), ("plain", None)):
        g = jax.jit(jax.grad(lambda t, u=unroll: err(t, u)))
        bwd = _time(lambda g=g: g(ts), repeats)
        grads[label] = np.asarray(g(ts), np.float64)
        out[label] = {
            "grad": bwd,
            "grad_over_forward_warm": bwd["warm_median_s"] / fwd["warm_median_s"],
            "grad_over_forward_compile": bwd["first_s"] / fwd["first_s"],
            "temp_bytes": _temp_bytes(g, ts),
            "grad_finite": bool(np.all(np.isfinite(grads[label]))),
        }
    diff = np.max(np.abs(grads["plain"] - grads["rolled"])) / np.max(np.abs(grads["rolled"]))
    out["max_rel_diff"] = float(diff)
    out["forward_temp_bytes"] = _temp_bytes(f, ts)
    return out


# --- report -----------------------------------------------------------------------------------


def _ms(x):
    return f"{1e3 * x:.2f}"


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _grad_lines(g) -> list[str]:
    f = g["forward"]
    lines = [
        f"Gradient w.r.t. ts ({g['solver']}, x {tuple(g['x_shape'])}): forward "
        f"{_ms(f['first_s'])} / {_ms(f['warm_median_s'])} ms, XLA temp "
        f"{_mib(g['forward_temp_bytes'])} MiB. The plain call (`unroll=None`, unrolled under "
        "differentiation) against the rolled scan (`unroll=1`, the plain call before); the "
        f"two gradients differ by {g['max_rel_diff']:.1e} (max, relative).",
        "",
        "| scan | grad first | grad warm | grad / forward warm | grad / forward first "
        "| XLA temp MiB |",
        "|---|---|---|---|---|---|",
    ]
    for label in ("rolled", "plain"):
        r = g[label]
        lines.append(
            f"| {label} | {_ms(r['grad']['first_s'])} | {_ms(r['grad']['warm_median_s'])} | "
            f"{r['grad_over_forward_warm']:.2f} | {r['grad_over_forward_compile']:.2f} | "
            f"{_mib(r['temp_bytes'])} |"
        )
    return lines


def _markdown(res) -> str:
    lines = [
        "# Solver benchmark",
        "",
        f"{common.machine_line(res['machine'])} float32; NFE = {NFE}"
        f"{'; --quick' if res['quick'] else ''}.",
        "",
        "Times in ms: first call (compile + run) / warm median. Overhead ratio = warm `sample` "
        "over the same number of bare jitted model calls from a Python loop (< 1: the single "
        "compiled scan beats per-call dispatch).",
        "",
    ]
    for prob in res["problems"]:
        p = res["problems"][prob]
        lines += [
            f"## {prob}: {p['description']}",
            "",
            f"Warm repeats: {p['repeats']}.",
            "",
            "| solver | sample first | sample warm | bare loop warm | overhead ratio |",
            "|---|---|---|---|---|",
        ]
        for name, r in p["overhead"].items():
            lines.append(
                f"| {name} | {_ms(r['sample']['first_s'])} | {_ms(r['sample']['warm_median_s'])} "
                f"| {_ms(r['bare_loop']['warm_median_s'])} | {r['overhead_ratio']:.2f} |"
            )
        lines += ["", *_grad_lines(p["grad"]), ""]
        if "vmap" in p:
            v = p["vmap"]
            lines += [
                f"vmap over {v['num_schedules']} schedules ({v['solver']}, x {v['x_shape']}): "
                f"one jitted vmapped call {_ms(v['vmapped']['first_s'])} / "
                f"{_ms(v['vmapped']['warm_median_s'])} ms "
                f"({v['schedules_per_s_vmapped']:.0f} schedules/s) vs {v['num_schedules']} "
                f"separate calls {_ms(v['separate']['warm_median_s'])} ms "
                f"({v['schedules_per_s_separate']:.0f} schedules/s): speed-up "
                f"{v['speedup']:.1f}x.",
                "",
            ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and solvers")
    parser.add_argument("--repeats", type=int, default=None, help="warm repeats per timing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    parser.add_argument(
        "--grad-only",
        action="store_true",
        help="only (c), on the mixture, the tiny UNet and the shipped MNIST UNet at batch 8 "
        "(bench_solvers_grad.{md,json})",
    )
    args = parser.parse_args(argv)
    if args.grad_only:
        return grad_only(args)
    repeats = args.repeats or (5 if args.quick else 20)
    solvers = _solvers(args.quick)
    res = {
        "machine": common.machine_info(),
        "quick": args.quick,
        "repeats": repeats,
        "nfe": NFE,
        "problems": {},
    }
    for make, desc in (
        (_gmm_problem, "4-component 2-D Gaussian mixture (exact denoiser), 1024 points"),
        (_unet_problem, "tiny Flax UNet (16/32 channels, attention), 28x28x1, batch 64"),
    ):
        name, model, x_T = make()
        reps, sols = repeats, solvers
        if name == "unet" and args.quick:
            reps = 2
            sols = {k: v for k, v in solvers.items() if k in ("ddim", "unipc_bh2_3")}
        print(f"[{name}] overhead ...", flush=True)
        p = {"description": desc, "repeats": reps}
        p["overhead"] = bench_overhead(model, x_T, sols, reps)
        print(f"[{name}] grad ...", flush=True)
        p["grad"] = bench_grad(model, x_T, S.dpm_solver_pp(2), reps)
        if name == "gmm":
            print(f"[{name}] vmap ...", flush=True)
            p["vmap"] = bench_vmap(model, x_T, S.dpm_solver_pp(2), repeats)
        res["problems"][name] = p
    md = _markdown(res)
    common.write_results(args.out, "bench_solvers", res, md)
    print(md)


def grad_only(args) -> None:
    """(c) alone: the plain call's gradient against the rolled scan's, three models."""
    repeats = args.repeats or 5
    res = {"machine": common.machine_info(), "repeats": repeats, "nfe": NFE, "problems": {}}
    lines = [
        "# Solver benchmark: gradients through the sampler",
        "",
        f"{common.machine_line(res['machine'])} float32; NFE = {NFE}; warm repeats {repeats}. "
        "Times in ms: first call (compile + run) / warm median. Command: "
        "`python benchmarks/bench_solvers.py --grad-only`.",
        "",
    ]
    for make, desc in (
        (_gmm_problem, "4-component 2-D Gaussian mixture (exact denoiser), 1024 points"),
        (_unet_problem, "tiny Flax UNet (16/32 channels, attention), 28x28x1, batch 64"),
        (_mnist_problem, f"the shipped MNIST UNet ({MNIST_ID}), batch 8"),
    ):
        name, model, x_T = make()
        print(f"[{name}] grad ...", flush=True)
        g = bench_grad(model, x_T, S.dpm_solver_pp(2), repeats)
        res["problems"][name] = {"description": desc, "grad": g}
        lines += [f"## {name}: {desc}", "", *_grad_lines(g), ""]
    md = "\n".join(lines)
    common.write_results(args.out, "bench_solvers_grad", res, md)
    print(md)


if __name__ == "__main__":
    main()
