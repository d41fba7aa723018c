"""Speed and behaviour of the HSO search (``hso_jax.optimize``) on CPU.

Measures, per (noise, solver, NFE):

* the time to a schedule three ways: **cold** -- the first ``hso_jax.optimize`` call in a new
  process with an empty package cache (tracing + XLA compilation + run); **cache hit** -- the
  same in another new process that finds the traced search in the program store and its
  executable in the persistent compilation cache, both written by the first
  (``hso_jax._xla_cache``, ``hso_jax.optimizers.programs``; reading + loading + run);
  **warm** -- the same call again in the same process (median and minimum of ``--repeats``
  calls). The new processes' wall times from start to exit (interpreter, ``import hso_jax``,
  the call) are reported too. Beside them, the official SciPy search
  (``hso_scipy_reference.py``) on the same problem, for the SD 2.1 cases it covers: its stored
  wall time by default, or measured now with ``--scipy run`` (tens of seconds to minutes per
  case);
* in-process cold: the first call after ``jax.clear_caches()`` and clearing the search's
  executable cache, with its CPU time (``process_time``, less sensitive to other processes on
  a shared machine) and the trace / compile / run split (the persistent cache is turned off
  in the benchmark's own process, so this is a real compilation);
* the result: SPF fitness, MEP, penalty, generations, timesteps, warnings;

and, once:

* lower-level solves per second (one vmapped call refining a population of 60 Karras
  initialisations, N = 5) and MEP evaluations per second (one vmapped call on 100 000
  schedules);
* observation 1: does the lower level reach the same optimum from any rho? (refine from
  rho in {3, 5, 7, 10, 16} at fixed end points, report the spread of the optima);
* observation 2: does the penalty dominate for NFE 6-15 (UniPC, SD 2.1)? (full search per NFE,
  report penalty / objective and whether the "penalty dominates" warning fires).

Writes ``benchmarks/results/bench_hso.{json,md}`` (``--out`` another folder). ``--quick``: SD 2.1
only, UniPC NFE 4, 5 and DDIM NFE 4, fewer repeats, no NFE 6-15 sweep. Run with ``nice`` on a
shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import numpy as np

import hso_jax as hj
from hso_jax import objectives as ob
from hso_jax.optimizers import compiled
from hso_jax.optimizers import hso as hso_mod
from hso_jax.optimizers.refine import refine

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
SCIPY_RESULTS = OUT / "hso_scipy_reference.json"
# Noise processes the SciPy reference implements (hso_scipy_reference.SD21).
SCIPY_NOISES = ("sd21",)

# One search in a new process; prints its timings as JSON on the last line of stdout.
_NEW_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
import hso_jax as hj
t1 = time.perf_counter()
r = hj.optimize(hj.noise.preset(sys.argv[1]), int(sys.argv[3]), solver=sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "call_s": t2 - t1, "timings": r.info["timings"],
                  "t": r.t.tolist()}))
"""
# Environment variables that would change where (or whether) the new processes cache.
_CACHE_VARIABLES = (
    "HSO_JAX_CACHE",
    "HSO_JAX_COMPILE_CACHE",
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_ENABLE_COMPILATION_CACHE",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
)


def _clear():
    compiled.clear()
    jax.clear_caches()


def _case(noise_name: str, solver: str, nfe: int, repeats: int, scipy: str) -> dict:
    ns = hj.noise.preset(noise_name)
    _clear()
    c0, w0 = time.process_time(), time.perf_counter()
    r = hj.optimize(ns, nfe, solver=solver)
    cold_wall, cold_cpu = time.perf_counter() - w0, time.process_time() - c0
    assert r.info["timings"]["cold"]
    warm = []
    for _ in range(repeats):
        w0 = time.perf_counter()
        r2 = hj.optimize(ns, nfe, solver=solver)
        warm.append(time.perf_counter() - w0)
        assert not r2.info["timings"]["cold"] and np.array_equal(r2.t, r.t)
    new = _cold_and_cache_hit(noise_name, solver, nfe)
    if not np.allclose(new["cold"]["t"], r.t, rtol=1e-12, atol=0):
        raise RuntimeError(f"the new process found another schedule: {new['cold']['t']} != {r.t}")
    return {
        "noise": noise_name,
        "solver": solver,
        "nfe": nfe,
        "n_intervals": r.info["n_intervals"],
        "cold_wall_s": cold_wall,
        "cold_cpu_s": cold_cpu,
        "trace_s": r.info["timings"]["trace_s"],
        "compile_s": r.info["timings"]["compile_s"],
        "compile_cpu_s": r.info["timings"]["compile_cpu_s"],
        "cold_run_s": r.info["timings"]["run_s"],
        "warm_median_s": statistics.median(warm),
        "warm_min_s": min(warm),
        "new_process": new,
        "scipy": _scipy_wall(noise_name, solver, nfe, scipy),
        "fitness": r.info["fitness"],
        "objective": r.objective,
        "penalty": r.penalty,
        "generations": r.info["generations"],
        "de_converged": r.info["de_converged"],
        "nfev": r.info["nfev"],
        "lower_level_solves_per_s": r.info["nfev"] / statistics.median(warm),
        "local_converged_fraction": r.info["population_local"]["converged_fraction"],
        "params": r.params,
        "timesteps": None if r.timesteps is None else r.timesteps.tolist(),
        "t": r.t.tolist(),
        "warnings": list(r.warnings),
    }


def _new_process(noise_name: str, solver: str, nfe: int, cache_root: str) -> dict:
    """One ``hso_jax.optimize`` call in a new Python process whose package cache is
    ``cache_root``; its wall time from start to exit and the call's own timings."""
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARIABLES}
    env["HSO_JAX_CACHE"] = cache_root
    cmd = [sys.executable, "-c", _NEW_PROCESS, noise_name, solver, str(nfe)]
    w0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - w0
    if p.returncode != 0:
        raise RuntimeError(f"new-process search failed ({p.returncode}):\n{p.stderr}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    tm = out["timings"]
    return {
        "process_wall_s": wall,
        "import_s": out["import_s"],
        "call_s": out["call_s"],
        "trace_s": tm["trace_s"],
        "compile_s": tm["compile_s"],
        "run_s": tm["run_s"],
        "program_loaded": tm["loaded"],
        "cache_entries": len(list((Path(cache_root) / "xla").glob("*-cache"))),
        "t": out["t"],
    }


def _cold_and_cache_hit(noise_name: str, solver: str, nfe: int) -> dict:
    """Two new processes sharing a fresh persistent cache: the first compiles (cold), the
    second loads what the first stored (cache hit)."""
    with tempfile.TemporaryDirectory(prefix="bench_hso_cache_") as root:
        cold = _new_process(noise_name, solver, nfe, root)
        hit = _new_process(noise_name, solver, nfe, root)
    if cold["t"] != hit["t"]:
        raise RuntimeError(f"cache hit changed the schedule: {cold['t']} != {hit['t']}")
    if cold["program_loaded"] or not hit["program_loaded"]:
        raise RuntimeError("the second process did not read the traced search the first stored")
    return {"cold": cold, "cache_hit": hit}


def _scipy_module():
    spec = importlib.util.spec_from_file_location(
        "hso_scipy_reference", HERE / "hso_scipy_reference.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scipy_wall(noise_name: str, solver: str, nfe: int, mode: str) -> dict | None:
    """Wall time of the official SciPy search on the same problem: stored
    (``hso_scipy_reference.json``) or measured now; None where it has no such case."""
    if mode == "none" or noise_name not in SCIPY_NOISES:
        return None
    if mode == "run":
        r = _scipy_module().run_case(solver, nfe)
        return {"wall_s": r["wall_s"], "fitness": r["fitness"], "source": "measured now"}
    if not SCIPY_RESULTS.exists():
        return None
    case = json.loads(SCIPY_RESULTS.read_text())["cases"].get(f"{solver}:{nfe}")
    if case is None:
        return None
    return {
        "wall_s": case["wall_s"],
        "fitness": case["fitness"],
        "source": f"stored ({SCIPY_RESULTS.name})",
    }


def _throughput() -> dict:
    ns = hj.noise.preset("sd21")
    m = ob.mep(ns)
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        psi = jnp.asarray(
            np.stack(
                [rng.uniform(3, 16, 60), rng.uniform(0.01, 0.03, 60), rng.uniform(0.96, 1, 60)], 1
            )
        )
        solve = jax.jit(jax.vmap(lambda p: refine(m.of_lam, hso_mod.init_family(ns, p, 5))))
        jax.block_until_ready(solve(psi))
        ts = []
        for _ in range(20):
            w0 = time.perf_counter()
            jax.block_until_ready(solve(psi))
            ts.append(time.perf_counter() - w0)
        lams = jnp.sort(jnp.asarray(rng.uniform(-2.6, 3.5, (100_000, 6))), axis=1)
        ev = jax.jit(jax.vmap(m.of_lam))
        jax.block_until_ready(ev(lams))
        es = []
        for _ in range(20):
            w0 = time.perf_counter()
            jax.block_until_ready(ev(lams))
            es.append(time.perf_counter() - w0)
    return {
        "lower_level_solves_per_s": 60 / statistics.median(ts),
        "lower_level_batch_s": statistics.median(ts),
        "mep_evals_per_s": 100_000 / statistics.median(es),
        "mep_batch_s": statistics.median(es),
    }


def _same_optimum_from_any_rho() -> list[dict]:
    rows = []
    rhos = jnp.array([3.0, 5.0, 7.0, 10.0, 16.0])
    with jax.enable_x64(True):
        for name in ("sd21", "ddpm"):
            ns = hj.noise.preset(name)
            m = ob.mep(ns)
            for n in (3, 4, 5, 8, 10):
                for t_eps, t_max in ((0.01, 1.0), (0.03, 0.96)):

                    def one(rho, n=n, t_eps=t_eps, t_max=t_max, ns=ns, m=m):
                        lam0 = hso_mod.karras_lam(ns, rho, t_eps, t_max, n)
                        return refine(m.of_lam, lam0)

                    r = jax.jit(jax.vmap(one))(rhos)
                    lam = np.asarray(r.lam)
                    val = np.asarray(r.value)
                    rows.append(
                        {
                            "noise": name,
                            "n_intervals": n,
                            "t_eps": t_eps,
                            "T_max": t_max,
                            "max_lam_spread": float(np.max(lam.max(0) - lam.min(0))),
                            "rel_objective_spread": float((val.max() - val.min()) / val.min()),
                            "all_converged": bool(np.all(np.asarray(r.converged))),
                        }
                    )
    return rows


def _penalty_sweep(nfes) -> list[dict]:
    rows = []
    ns = hj.noise.preset("sd21")
    for nfe in nfes:
        r = hj.optimize(ns, nfe, solver="unipc")
        rows.append(
            {
                "nfe": nfe,
                "d_min": r.info["d_min"],
                "objective": r.objective,
                "penalty": r.penalty,
                "max_violation": r.info["max_spacing_violation"],
                "penalty_dominates": any("penalty dominates" in w for w in r.warnings),
                "params": r.params,
                "timesteps": r.timesteps.tolist(),
            }
        )
    return rows


def _markdown(res: dict) -> str:
    md = ["# HSO search benchmark (`benchmarks/bench_hso.py`)", ""]
    meta = res["meta"]
    md += [
        f"{common.machine_line(meta)} Load average at end {meta.get('load_end', '?')}; mode: "
        f"{'quick' if meta['quick'] else 'full'}.",
        "",
        "## Time to a schedule: cold, cache hit, warm, and the official SciPy search",
        "",
        "Cold = the first `hso_jax.optimize` call in a new process with an empty package cache "
        "(tracing + XLA compilation + run); cache hit = the same call in another new process "
        "that reads the traced search and loads the executable the first one stored (reading + "
        "loading + run); warm = the call repeated in the same process (median). In brackets: "
        "the new "
        "process from start to exit (interpreter, `import hso_jax`, the call), what a repeated "
        "`hso-jax optimize` costs. SciPy = the official search (SciPy differential evolution + "
        "trust-constr, `benchmarks/hso_scipy_reference.py`) on the same problem, where it "
        "covers it (SD 2.1).",
        "",
        "| noise | solver | NFE | cold s (process s) | cache hit s (process s) | warm s | "
        "official SciPy s | SciPy / cache hit | SciPy / warm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sources = set()
    for c in res["cases"]:
        cold, hit = c["new_process"]["cold"], c["new_process"]["cache_hit"]
        sp = c.get("scipy")
        if sp is None:
            scipy_cols = "- | - | -"
        else:
            sources.add(sp["source"])
            scipy_cols = (
                f"{sp['wall_s']:.1f} | {sp['wall_s'] / hit['call_s']:.0f}x | "
                f"{sp['wall_s'] / c['warm_median_s']:.0f}x"
            )
        md.append(
            f"| {c['noise']} | {c['solver']} | {c['nfe']} | {cold['call_s']:.2f} "
            f"({cold['process_wall_s']:.2f}) | {hit['call_s']:.2f} ({hit['process_wall_s']:.2f}) "
            f"| {c['warm_median_s']:.3f} | {scipy_cols} |"
        )
    if sources:
        md += ["", f"SciPy times: {', '.join(sorted(sources))}."]
    md += [
        "",
        "## In-process detail",
        "",
        "Cold = first call after `jax.clear_caches()` in the benchmark's process (persistent "
        "cache off: tracing + compilation + run); CPU = process CPU time of that call (less "
        "sensitive to other processes); warm = the same call again (median).",
        "",
        "| noise | solver | NFE | cold wall s | cold CPU s | trace + compile s (CPU) | warm s | "
        "lower-level solves/s | generations | fitness | penalty | timesteps | warnings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        warn = "; ".join(w.split(":")[0] for w in c["warnings"]) or "-"
        md.append(
            f"| {c['noise']} | {c['solver']} | {c['nfe']} | {c['cold_wall_s']:.2f} | "
            f"{c['cold_cpu_s']:.2f} | {c['trace_s'] + c['compile_s']:.2f} "
            f"({c['compile_cpu_s']:.2f}) | {c['warm_median_s']:.3f} | "
            f"{c['lower_level_solves_per_s']:.0f} | {c['generations']} | {c['fitness']:.6g} | "
            f"{c['penalty']:.3g} | {c['timesteps']} | {warn} |"
        )
    tp = res["throughput"]
    md += [
        "",
        f"Lower level alone: {tp['lower_level_solves_per_s']:.0f} solves/s (a vmapped population "
        f"of 60, N = 5, {1e3 * tp['lower_level_batch_s']:.2f} ms per call). MEP: "
        f"{tp['mep_evals_per_s']:.3g} evaluations/s (100 000 schedules, N = 5, one vmapped call, "
        f"{1e3 * tp['mep_batch_s']:.1f} ms).",
        "",
        "## Observation 1: same lower-level optimum from any rho?",
        "",
        "Refine from Karras rho in {3, 5, 7, 10, 16} at fixed end points.",
        "",
        "| noise | N | t_eps | T_max | max spread of lam | rel. spread of MEP | all converged |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["same_optimum"]:
        md.append(
            f"| {r['noise']} | {r['n_intervals']} | {r['t_eps']} | {r['T_max']} | "
            f"{r['max_lam_spread']:.2e} | {r['rel_objective_spread']:.2e} | {r['all_converged']} |"
        )
    if res.get("penalty_sweep"):
        md += [
            "",
            "## Observation 2: does the penalty dominate for NFE 6-15? (SD 2.1, UniPC)",
            "",
            "| NFE | d_min | MEP | penalty | max violation | penalty dominates | rho, t_eps, T_max "
            "|",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["penalty_sweep"]:
            p = r["params"]
            md.append(
                f"| {r['nfe']} | {r['d_min']:.4f} | {r['objective']:.6g} | {r['penalty']:.4g} | "
                f"{r['max_violation']:.3g} | {r['penalty_dominates']} | "
                f"{p['rho']:.2f}, {p['t_eps']:.4f}, {p['T_max']:.4f} |"
            )
    return "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--scipy",
        choices=("stored", "run", "none"),
        default="stored",
        help="official SciPy search column: stored wall times (hso_scipy_reference.json), "
        "measured now (slow), or none",
    )
    args = ap.parse_args(argv)
    # The in-process cold column must compile: no persistent cache in this process (the new
    # processes of the cold / cache-hit columns get their own, fresh one).
    os.environ["HSO_JAX_COMPILE_CACHE"] = "0"
    if jax.config.jax_compilation_cache_dir:
        print(
            f"note: jax_compilation_cache_dir is set ({jax.config.jax_compilation_cache_dir}); "
            "the in-process cold column may be cache hits",
            flush=True,
        )
    repeats = args.repeats or (3 if args.quick else 7)
    if args.quick:
        plan = [("sd21", "unipc", 4), ("sd21", "unipc", 5), ("sd21", "ddim", 4)]
    else:
        plan = [
            (noise, solver, nfe)
            for noise in ("sd21", "ddpm")
            for solver in ("unipc", "ddim")
            for nfe in (4, 5, 6, 8, 10)
        ]
    res = {
        "meta": {
            **common.machine_info(),
            "quick": args.quick,
            "repeats": repeats,
            "scipy": args.scipy,
        },
        "cases": [],
    }
    for noise, solver, nfe in plan:
        c = _case(noise, solver, nfe, repeats, args.scipy)
        res["cases"].append(c)
        new = c["new_process"]
        print(
            f"{noise} {solver} NFE {nfe}: in-process cold {c['cold_wall_s']:.2f} s (CPU "
            f"{c['cold_cpu_s']:.2f} s); new process cold {new['cold']['call_s']:.2f} s "
            f"(process {new['cold']['process_wall_s']:.2f} s), cache hit "
            f"{new['cache_hit']['call_s']:.2f} s (process {new['cache_hit']['process_wall_s']:.2f}"
            f" s); warm {c['warm_median_s']:.3f} s; fitness {c['fitness']:.8g}, "
            f"timesteps {c['timesteps']}",
            flush=True,
        )
    res["throughput"] = _throughput()
    print(res["throughput"], flush=True)
    res["same_optimum"] = _same_optimum_from_any_rho()
    if not args.quick:
        res["penalty_sweep"] = _penalty_sweep(range(6, 16))
    res["meta"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    common.write_results(Path(args.out), "bench_hso", res, _markdown(res))
    print(_markdown(res))


if __name__ == "__main__":
    main()
