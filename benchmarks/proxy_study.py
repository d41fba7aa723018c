"""Proxy validity study: do schedule objectives (MEP, DMN, KLUB) rank schedules like the true error?

HSO picks a schedule by minimising the model-free Midpoint Error Proxy (MEP); DM-NonUniform
minimises its Lagrange-quadrature bound (DMN); AYS minimises a Monte-Carlo KL upper bound
(KLUB). The open criticism of HSO is "is MEP a reliable predictor of quality?". This script
answers it with measurements: for many random valid schedules per NFE it computes every
objective and the true error of every solver, and reports the Spearman rank correlation.

What is measured, per model x regime x solver x NFE x objective:

* ``rho``: Spearman rank correlation (``scipy.stats.spearmanr``) between the objective of a
  schedule and its true error, over ``n`` random schedules, with a 95% interval from Fisher's z
  (standard error ``sqrt(1.06 / (n - 3))``, Fieller et al. 1957). ``rho = 1``: the objective
  orders schedules exactly as the error does.
* ``best_pct``: where the schedule that the objective ranks best lands in the true-error
  ranking (0 = truly best, 100 = truly worst), and ``best_ratio``: its error divided by the
  smallest error among the ``n`` schedules. This is what minimising the objective delivers.

True error: RMSE (per sample, then averaged over the batch) between the solver's output at the
schedule's last point and the reference solution of the probability-flow ODE from the same
``x_T`` at the process's ``t_min`` (:func:`hso_jax.evaluation.cached_reference`, a tight
adaptive diffrax solve, cached on disk). A schedule that starts after ``t_max`` or stops before
``t_min`` is not excused (the protocol of :mod:`hso_jax.evaluation.grid`).

Objectives are evaluated on each schedule exactly as the solver runs it (its NFE + 1 points, in
float64): ``objectives.mep(noise)``, ``objectives.dmn(noise)`` (HSO's truncNum rule) and
``objectives.klub.klub(model, data, key=...)`` (stochastic-DDIM KL bound; the same key, hence
the same random numbers, for every schedule of one NFE; data: mixture samples, or the MNIST
training digits).

Models (all under the ``ddpm`` VP process, linear betas, 1000 steps, t in [0.001, 1]):

* ``gm2d``: the 8-component ring mixture in 2-D, exact denoiser;
* ``gm64d``: the 8-component mixture in 64-D, exact denoiser (both from ``benchmarks/common.py``:
  the same mixtures as ``benchmarks/quality.py`` under the same names);
* ``mnist``: the shipped MNIST UNet (``hso_jax.models.load("mnist")``), few samples (CPU cost).

Solvers: DDIM, DPM-Solver++(2M), UniPC-bh2 (UniP-2 + UniC), all multistep with one network call
per step: NFE n uses n + 1 points, so the same schedules serve every solver.

Random valid schedules (seeded; the same set for every model and solver). Two regimes:

* ``fixed``: end points fixed at ``t_max = 1`` and ``t_min = 0.001``; only the interior varies
  (the lower level of HSO, DM-NonUniform);
* ``box``: start ``T_max ~ U[0.96, 1]`` and end ``t_eps ~ U[0.01, 0.03]`` (HSO's search box),
  interior as below (the upper level of HSO: the output is ``x(t_eps)``, as HSO's UniPC returns).

Interior points come from one of three families, chosen uniformly: Karras spacing of the EDM
noise level with ``rho ~ U[1, 16]``; power-law spacing in time ``t_k = t_end + (t_start -
t_end) (1 - k/n)^p``, ``p ~ U[1, 3]`` (uniform / quadratic time and beyond); power-law spacing
in half log-SNR ``lam_k = lam_start + (lam_end - lam_start) (k/n)^q``, ``log q ~ U[log 0.5,
log 2]``. Half of the schedules then get their lam increments perturbed by a Dirichlet draw
around the family's increments (concentration ``kappa ~ logU[5, 200]`` per increment). Every
schedule is strictly decreasing in float32 and passes :func:`hso_jax.schedules.check_schedule`;
a draw with a lam increment below 2% of the mean increment is redrawn.

Usage::

    .venv/bin/python benchmarks/proxy_study.py                  # full study (~15-20 min on CPU)
    .venv/bin/python benchmarks/proxy_study.py --quick          # smoke test (~2 min)
    .venv/bin/python benchmarks/proxy_study.py --models gm2d,gm64d --schedules 400

Writes ``benchmarks/results/proxy_study.{md,csv,json}``, the per-schedule values
``proxy_study_points.csv.gz`` and the scatter plots ``proxy_study_<model>.png``
(``proxy_study_quick*`` with ``--quick``). Run with ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import gzip
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import hso_jax as hj
from hso_jax import objectives as ob
from hso_jax import solvers as S
from hso_jax.evaluation import cached_reference
from hso_jax.evaluation.metrics import rmse
from hso_jax.objectives.klub import klub

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("gm2d", "gm64d", "mnist")
REGIMES = ("fixed", "box")
OBJECTIVES = ("mep", "dmn", "klub")
FAMILIES = ("karras", "time-power", "lam-power")
SOLVERS = {
    "ddim": S.ddim(),
    "dpmpp_2m": S.dpm_solver_pp(2),
    "unipc_bh2": S.unipc(2, "bh2"),
}
BOX_START = (0.96, 1.0)  # HSO's T_max box (normalised time = t for the ddpm process)
BOX_END = (0.01, 0.03)  # HSO's t_eps box
MIN_REL_STEP = 0.02  # smallest lam increment, relative to the mean increment
REF_TOL = 1e-5  # rtol = atol of the reference solve


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """How much of the study runs on one model."""

    num_noise: int  # x_T samples (batch) for the true error
    num_schedules: int  # random schedules per (regime, NFE)
    klub_schedules: int  # schedules (the first ones) that also get KLUB
    klub_samples: int  # Monte-Carlo samples per KLUB interval estimate
    chunk: int  # schedules per vmapped sampling call
    regimes: tuple[str, ...]


@dataclasses.dataclass
class Problem:
    """A model with its fixed evaluation data."""

    name: str
    model: hj.Denoiser
    x_T: jax.Array
    ref: jax.Array
    data: jax.Array  # x0 samples for KLUB


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def model_configs(args) -> dict[str, ModelConfig]:
    """Per-model sizes from the command line (``--quick`` shrinks everything)."""
    regimes = tuple(args.regimes.split(","))
    mnist_regimes = tuple(args.mnist_regimes.split(","))
    if args.quick:
        gm = ModelConfig(64, 32, 32, 16, 32, regimes)
        mn = ModelConfig(2, 8, 4, 8, 8, mnist_regimes)
    else:
        n = args.schedules
        gm = ModelConfig(512, n, n, args.klub_samples, n, regimes)
        mn = ModelConfig(
            args.mnist_samples,
            args.mnist_schedules,
            args.mnist_klub_schedules,
            args.mnist_klub_samples,
            args.mnist_chunk,
            mnist_regimes,
        )
    return {"gm2d": gm, "gm64d": gm, "mnist": mn}


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a, np.float64)).tobytes())
    return h.hexdigest()[:16]


def build_problem(name: str, cfg: ModelConfig, seed: int) -> Problem:
    """Model, initial noise, reference solution (cached) and KLUB data of one model."""
    key = jax.random.fold_in(jax.random.key(seed), MODELS.index(name))
    k_noise, k_data = jax.random.split(key)
    if name == "mnist":
        model = hj.models.load("mnist")
        shape = (28, 28, 1)
        data = jnp.asarray(hj.models.load_mnist_digits("train")[0])
        leaves = jax.tree_util.tree_leaves(model.params)
        key_id = f"proxy-mnist-{_digest(*leaves[:4], *leaves[-4:])}"
    else:
        gm = common.mixture(name)
        model = gm.denoiser(hj.noise.preset("ddpm"))
        shape = (gm.dim,)
        data = gm.sample(k_data, 4096).astype(jnp.float32)
        key_id = f"proxy-{name}-{_digest(gm.means, gm.stds, gm.log_weights)}"
    ns = model.noise
    x_T = ns.prior(k_noise, (cfg.num_noise, *shape))
    ref = cached_reference(
        model, x_T, ns.t_max, ns.t_min, key_id=key_id, rtol=REF_TOL, atol=REF_TOL
    )
    return Problem(name, model, x_T, jnp.asarray(ref, jnp.float32), data)


# ----------------------------------------------------------------------------------------------
# Random valid schedules
# ----------------------------------------------------------------------------------------------


def _family_lam(family: str, s, lam0, lam1, t0, t1, param, ns) -> np.ndarray:
    """Increasing lam grid of one family on the unit grid ``s`` (float64)."""
    if family == "karras":
        sig_hi, sig_lo = np.exp(-lam0), np.exp(-lam1)
        sig = (sig_hi ** (1 / param) * (1 - s) + sig_lo ** (1 / param) * s) ** param
        return -np.log(sig)
    if family == "time-power":
        t = t1 + (t0 - t1) * (1 - s) ** param
        with jax.enable_x64(True):
            return np.asarray(ns.lam(jnp.asarray(t, jnp.float64)))
    return lam0 + (lam1 - lam0) * s**param


def _dirichlet_perturb(lam: np.ndarray, rng, kappa: float) -> np.ndarray:
    """Redistribute the lam increments by Dirichlet(kappa * n * increments / total)."""
    h = np.diff(lam)
    total = lam[-1] - lam[0]
    w = rng.dirichlet(kappa * len(h) * h / total)
    return lam[0] + total * np.concatenate([[0.0], np.cumsum(w)])


def _draw_one(ns, nfe: int, regime: str, rng) -> tuple[np.ndarray, dict]:
    """One random schedule (float64 lam grid -> float32 t, decreasing) and how it was drawn."""
    if regime == "fixed":
        t0, t1 = ns.t_max, ns.t_min
    else:
        t0, t1 = rng.uniform(*BOX_START), rng.uniform(*BOX_END)
    with jax.enable_x64(True):
        lam0, lam1 = (float(v) for v in ns.lam(jnp.asarray([t0, t1], jnp.float64)))
    family = FAMILIES[rng.integers(len(FAMILIES))]
    param = {
        "karras": lambda: rng.uniform(1.0, 16.0),
        "time-power": lambda: rng.uniform(1.0, 3.0),
        "lam-power": lambda: math.exp(rng.uniform(math.log(0.5), math.log(2.0))),
    }[family]()
    s = np.linspace(0.0, 1.0, nfe + 1)
    lam = _family_lam(family, s, lam0, lam1, t0, t1, param, ns)
    kappa = math.exp(rng.uniform(math.log(5.0), math.log(200.0))) if rng.random() < 0.5 else 0.0
    if kappa:
        lam = _dirichlet_perturb(lam, rng, kappa)
    with jax.enable_x64(True):
        t = np.array(ns.t_from_lam(jnp.asarray(lam, jnp.float64)), np.float64)
    t[0], t[-1] = t0, t1  # exact end points despite rounding
    info = {"family": family, "param": param, "kappa": kappa, "t_start": t0, "t_end": t1}
    return t.astype(np.float32), info


def _is_valid(ts: np.ndarray, ns) -> bool:
    lam = np.asarray(ns.lam(jnp.asarray(ts)), np.float64)
    h = np.diff(lam)
    if not np.all(np.isfinite(h)) or h.min() < MIN_REL_STEP * h.mean():
        return False
    try:
        hj.schedules.check_schedule(ts, ns)
    except ValueError:
        return False
    return True


def sample_schedules(ns, nfe: int, n: int, regime: str, seed: int):
    """``n`` valid random schedules of ``nfe + 1`` points: ``(n, nfe + 1)`` float32 and infos."""
    rng = np.random.default_rng([seed, nfe, REGIMES.index(regime)])
    out, infos = [], []
    while len(out) < n:
        ts, info = _draw_one(ns, nfe, regime, rng)
        if _is_valid(ts, ns):
            out.append(ts)
            infos.append(info)
    return np.stack(out), infos


# ----------------------------------------------------------------------------------------------
# True error and objectives
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("solver",))
def _chunk_errors(model, x_T, ref, ts_chunk, solver):
    """Mean per-sample RMSE to the reference for each schedule of the chunk, ``(S,)``."""
    xs = common.sample_stack(model, x_T, ts_chunk, solver)
    return jax.vmap(lambda x: jnp.mean(rmse(x.astype(jnp.float32), ref)))(xs)


def true_errors(prob: Problem, ts: np.ndarray, solver, chunk: int) -> np.ndarray:
    """RMSE of every schedule (rows of ``ts``), in fixed-size vmapped chunks (NaN if not finite)."""
    n = ts.shape[0]
    pad = (-n) % chunk
    padded = np.concatenate([ts, np.repeat(ts[-1:], pad, axis=0)])
    out = []
    for i in range(0, padded.shape[0], chunk):
        part = jnp.asarray(padded[i : i + chunk])
        out.append(np.asarray(_chunk_errors(prob.model, prob.x_T, prob.ref, part, solver)))
    err = np.concatenate(out)[:n].astype(np.float64)
    return np.where(np.isfinite(err), err, np.nan)


def model_free_objectives(ns, ts: np.ndarray) -> dict[str, np.ndarray]:
    """MEP and DMN (float64) of every schedule as the solver runs it."""
    out = {}
    with jax.enable_x64(True):
        t64 = jnp.asarray(ts, jnp.float64)
        for name, obj in (("mep", ob.mep(ns)), ("dmn", ob.dmn(ns))):
            out[name] = np.asarray(jax.vmap(obj)(t64), np.float64)
    return out


def klub_values(prob: Problem, ts: np.ndarray, cfg: ModelConfig, seed: int) -> np.ndarray:
    """KLUB of the first ``cfg.klub_schedules`` schedules (NaN for the rest); one key for all."""
    nfe = ts.shape[1] - 1
    obj = klub(
        prob.model,
        prob.data,
        key=jax.random.key(seed + 7),
        num_samples=cfg.klub_samples,
        batch_size=2 * nfe * cfg.klub_samples,  # one network call per schedule, no padding
    )
    vals = np.full(ts.shape[0], np.nan)
    for i in range(min(cfg.klub_schedules, ts.shape[0])):
        vals[i] = float(obj(jnp.asarray(ts[i])))
    return vals


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def rank_stats(obj: np.ndarray, err: np.ndarray) -> dict[str, float]:
    """Spearman rho with a Fisher-z 95% interval, and what the objective's argmin achieves."""
    ok = np.isfinite(obj) & np.isfinite(err)
    n = int(ok.sum())
    if n < 5:
        return {
            "n": n,
            "rho": math.nan,
            "p": math.nan,
            "ci_lo": math.nan,
            "ci_hi": math.nan,
            "best_pct": math.nan,
            "best_ratio": math.nan,
        }
    o, e = obj[ok], err[ok]
    res = stats.spearmanr(o, e)
    rho = float(res.statistic)
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), math.sqrt(1.06 / (n - 3))
    best = int(np.argmin(o))
    pct = 100.0 * float(np.sum(e < e[best])) / (n - 1)
    return {
        "n": n,
        "rho": rho,
        "p": float(res.pvalue),
        "ci_lo": math.tanh(z - 1.96 * se),
        "ci_hi": math.tanh(z + 1.96 * se),
        "best_pct": pct,
        "best_ratio": float(e[best] / e.min()),
    }


# ----------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------


def study_cell(prob, cfg, regime, nfe, seed, timings):
    """Schedules, objectives and errors of one (model, regime, NFE); returns points and rows."""
    ns = prob.model.noise
    ts, infos = sample_schedules(ns, nfe, cfg.num_schedules, regime, seed)
    t0 = time.perf_counter()
    objs = model_free_objectives(ns, ts)
    t1 = time.perf_counter()
    objs["klub"] = klub_values(prob, ts, cfg, seed)
    t2 = time.perf_counter()
    errs = {}
    for sname, solver in SOLVERS.items():
        errs[sname] = true_errors(prob, ts, solver, cfg.chunk)
    t3 = time.perf_counter()
    tag = f"{prob.name}/{regime}/nfe{nfe}"
    timings[tag] = {"mep_dmn_s": t1 - t0, "klub_s": t2 - t1, "sampling_s": t3 - t2}
    rows = []
    for sname in SOLVERS:
        for oname in OBJECTIVES:
            r = rank_stats(objs[oname], errs[sname])
            rows.append(
                {
                    "model": prob.name,
                    "regime": regime,
                    "solver": sname,
                    "nfe": nfe,
                    "objective": oname,
                    **r,
                }
            )
    points = {"ts": ts, "infos": infos, "objs": objs, "errs": errs}
    return points, rows


def print_rows(rows, timing) -> None:
    """One line per solver: rho of each objective (n)."""
    head = f"  {rows[0]['model']:5s} {rows[0]['regime']:5s} NFE {rows[0]['nfe']}"
    print(
        f"{head}  [mep/dmn {timing['mep_dmn_s']:.1f}s, klub {timing['klub_s']:.1f}s, "
        f"sampling {timing['sampling_s']:.1f}s]",
        flush=True,
    )
    for sname in SOLVERS:
        parts = [
            f"{r['objective']} {r['rho']:+.3f} (n={r['n']})" for r in rows if r["solver"] == sname
        ]
        print(f"      {sname:10s} " + "   ".join(parts), flush=True)


def run_model(name, cfg, nfes, seed, timings):
    """The whole study on one model: {regime: {nfe: points}} and the table rows."""
    t0 = time.perf_counter()
    prob = build_problem(name, cfg, seed)
    timings[f"{name}/setup_reference"] = {"s": time.perf_counter() - t0}
    print(
        f"[{name}] x_T {tuple(prob.x_T.shape)}, reference ready ({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    points, rows = {}, []
    for regime in cfg.regimes:
        for nfe in nfes:
            pts, rws = study_cell(prob, cfg, regime, nfe, seed, timings)
            points.setdefault(regime, {})[nfe] = pts
            rows.extend(rws)
            print_rows(rws, timings[f"{name}/{regime}/nfe{nfe}"])
    return points, rows


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def _fmt(v, spec=".3f") -> str:
    return "nan" if v is None or not math.isfinite(v) else format(v, spec)


def summary_rows(rows):
    """Mean rho and median best_pct per (model, regime, objective) over solvers and NFEs."""
    out = []
    keys = sorted(
        {(r["model"], r["regime"], r["objective"]) for r in rows},
        key=lambda k: (MODELS.index(k[0]), REGIMES.index(k[1]), OBJECTIVES.index(k[2])),
    )
    for m, g, o in keys:
        sel = [r for r in rows if (r["model"], r["regime"], r["objective"]) == (m, g, o)]
        rho = np.array([r["rho"] for r in sel])
        pct = np.array([r["best_pct"] for r in sel])
        out.append(
            {
                "model": m,
                "regime": g,
                "objective": o,
                "mean_rho": float(np.nanmean(rho)) if np.isfinite(rho).any() else math.nan,
                "min_rho": float(np.nanmin(rho)) if np.isfinite(rho).any() else math.nan,
                "median_best_pct": float(np.nanmedian(pct)) if np.isfinite(pct).any() else math.nan,
            }
        )
    return out


def write_markdown(path: Path, rows, meta) -> None:
    """Main table (one line per model, regime, solver, NFE) and a per-objective summary."""
    lines = [
        "# Proxy validity study: objective vs true error (Spearman rank correlation)",
        "",
        f"Command: `{meta['command']}`  ",
        f"{common.machine_line(meta['machine'])} Wall time {meta['wall_s']:.0f} s.",
        "",
        "True error: mean per-sample RMSE to the reference PF-ODE solution at t_min from the same "
        "x_T. rho: Spearman correlation of the objective with the true error over n random "
        "schedules (1 = same ranking; [95% CI, Fisher z]). best%: true-error percentile of the "
        "schedule the objective ranks best (0 = truly best). Regimes: `fixed` = end points "
        "t_max -> t_min, random interior; `box` = random end points in HSO's box "
        "(T_max in [0.96, 1], t_eps in [0.01, 0.03]) and random interior.",
        "",
        "## Summary (over solvers and NFEs)",
        "",
        "| model | regime | objective | mean rho | min rho | median best% |",
        "|---|---|---|---:|---:|---:|",
    ]
    for s in summary_rows(rows):
        lines.append(
            f"| {s['model']} | {s['regime']} | {s['objective']} | "
            f"{_fmt(s['mean_rho'])} | {_fmt(s['min_rho'])} | "
            f"{_fmt(s['median_best_pct'], '.0f')} |"
        )
    lines += [
        "",
        "## Per model, regime, solver and NFE",
        "",
        "| model | regime | solver | NFE | "
        + " | ".join(f"{o} rho [95% CI] (n) | {o} best%" for o in OBJECTIVES)
        + " |",
        "|---|---|---|---:|" + "---:|---:|" * len(OBJECTIVES),
    ]
    cells = {}
    for r in rows:
        cells.setdefault((r["model"], r["regime"], r["solver"], r["nfe"]), {})[r["objective"]] = r
    for (m, g, s, nfe), by_obj in cells.items():
        parts = []
        for o in OBJECTIVES:
            r = by_obj[o]
            parts.append(
                f"{_fmt(r['rho'])} [{_fmt(r['ci_lo'], '.2f')}, {_fmt(r['ci_hi'], '.2f')}]"
                f" ({r['n']}) | {_fmt(r['best_pct'], '.0f')}"
            )
        lines.append(f"| {m} | {g} | {s} | {nfe} | " + " | ".join(parts) + " |")
    lines += ["", "Timings (s) and configuration: see the JSON file.", ""]
    path.write_text("\n".join(lines))


def write_csv(path: Path, rows) -> None:
    """The table, one row per (model, regime, solver, NFE, objective)."""
    fields = [
        "model",
        "regime",
        "solver",
        "nfe",
        "objective",
        "n",
        "rho",
        "p",
        "ci_lo",
        "ci_hi",
        "best_pct",
        "best_ratio",
    ]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in fields})


def write_points(path: Path, all_points) -> None:
    """Per-schedule values (schedule, objectives, errors) as gzipped CSV, for re-analysis."""
    fields = [
        "model",
        "regime",
        "nfe",
        "index",
        "family",
        "param",
        "kappa",
        "t_start",
        "t_end",
        "ts",
        *OBJECTIVES,
        *(f"err_{s}" for s in SOLVERS),
    ]
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for model, by_regime in all_points.items():
            for regime, by_nfe in by_regime.items():
                for nfe, p in by_nfe.items():
                    for i, info in enumerate(p["infos"]):
                        w.writerow(
                            [
                                model,
                                regime,
                                nfe,
                                i,
                                info["family"],
                                f"{info['param']:.4g}",
                                f"{info['kappa']:.4g}",
                                f"{info['t_start']:.6g}",
                                f"{info['t_end']:.6g}",
                                ";".join(f"{v:.6g}" for v in p["ts"][i]),
                                *(f"{p['objs'][o][i]:.6g}" for o in OBJECTIVES),
                                *(f"{p['errs'][s][i]:.6g}" for s in SOLVERS),
                            ]
                        )


def plot_model(path: Path, name: str, points, rows) -> None:
    """Objective vs error, log-log: rows = objectives, columns = NFE, colour = solver,
    marker = regime; each panel lists rho per solver and regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nfes = sorted({nfe for by_nfe in points.values() for nfe in by_nfe})
    fig, axes = plt.subplots(
        len(OBJECTIVES), len(nfes), figsize=(3.4 * len(nfes), 8.4), squeeze=False
    )
    colours = dict(zip(SOLVERS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    markers = {"fixed": "o", "box": "^"}
    for i, o in enumerate(OBJECTIVES):
        for j, nfe in enumerate(nfes):
            ax = axes[i, j]
            text = []
            for regime, by_nfe in points.items():
                p = by_nfe[nfe]
                for s in SOLVERS:
                    ax.scatter(
                        p["objs"][o],
                        p["errs"][s],
                        s=4,
                        alpha=0.45,
                        lw=0,
                        c=colours[s],
                        marker=markers[regime],
                        label=f"{s} ({regime})" if i == j == 0 else None,
                    )
                    r = next(
                        r
                        for r in rows
                        if (r["regime"], r["solver"], r["nfe"], r["objective"])
                        == (regime, s, nfe, o)
                    )
                    text.append(f"{regime[:3]} {s[:5]} {_fmt(r['rho'], '+.2f')}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.text(
                0.02,
                0.98,
                "\n".join(text),
                transform=ax.transAxes,
                fontsize=6,
                va="top",
                family="monospace",
            )
            ax.set_title(f"{o.upper()}, NFE {nfe}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(OBJECTIVES) - 1:
                ax.set_xlabel("objective", fontsize=8)
            if j == 0:
                ax.set_ylabel("RMSE to reference", fontsize=8)
    fig.legend(loc="lower center", ncol=6, fontsize=7, markerscale=3, frameon=False)
    fig.suptitle(
        f"{name}: objective vs true error (Spearman rho per regime and solver)", fontsize=10
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(path, dpi=72)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma list of gm2d, gm64d, mnist")
    p.add_argument("--nfes", default="4,5,6,8", help="comma list of NFE values")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test configuration")
    p.add_argument("--schedules", type=int, default=200, help="schedules per NFE (mixtures)")
    p.add_argument("--klub-samples", type=int, default=64, help="KLUB MC samples (mixtures)")
    p.add_argument("--regimes", default="fixed,box", help="regimes for the mixtures")
    p.add_argument("--mnist-schedules", type=int, default=200)
    p.add_argument("--mnist-samples", type=int, default=4, help="x_T samples for MNIST")
    p.add_argument("--mnist-klub-schedules", type=int, default=48)
    p.add_argument("--mnist-klub-samples", type=int, default=8)
    p.add_argument("--mnist-chunk", type=int, default=8, help="schedules per vmapped call")
    p.add_argument("--mnist-regimes", default="fixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    models = args.models.split(",")
    bad = [m for m in models if m not in MODELS]
    if bad:
        p.error(f"unknown models {bad}; known: {list(MODELS)}")
    for r in args.regimes.split(",") + args.mnist_regimes.split(","):
        if r not in REGIMES:
            p.error(f"unknown regime {r!r}; known: {list(REGIMES)}")
    return args, models, [int(v) for v in args.nfes.split(",")]


def main(argv=None) -> None:
    args, models, nfes = parse_args(argv)
    if args.quick and args.nfes == "4,5,6,8":
        nfes = [4, 6]
    cfgs = model_configs(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "proxy_study_quick" if args.quick else "proxy_study"
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": common.machine_info(),
        "nfes": nfes,
        "models": models,
        "seed": args.seed,
        "solvers": {k: repr(v) for k, v in SOLVERS.items()},
        "configs": {m: dataclasses.asdict(cfgs[m]) for m in models},
        "reference_tol": REF_TOL,
    }
    print(f"proxy study: models {models}, NFE {nfes}", flush=True)
    t_all = time.perf_counter()
    timings, rows, all_points = {}, [], {}
    for m in models:
        t0 = time.perf_counter()
        all_points[m], r = run_model(m, cfgs[m], nfes, args.seed, timings)
        rows.extend(r)
        timings[f"{m}/total"] = {"s": time.perf_counter() - t0}
        plot_model(out / f"{stem}_{m}.png", m, all_points[m], r)
    meta["wall_s"] = time.perf_counter() - t_all
    meta["timings"] = timings
    write_markdown(out / f"{stem}.md", rows, meta)
    write_csv(out / f"{stem}.csv", rows)
    write_points(out / f"{stem}_points.csv.gz", all_points)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {**meta, "summary": summary_rows(rows), "results": rows}, indent=1, default=float
        )
    )
    print(f"done in {meta['wall_s']:.0f} s; wrote {out / stem}.*", flush=True)


if __name__ == "__main__":
    main()
