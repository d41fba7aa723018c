"""The main job: which schedule is best for the shipped MNIST model at a given NFE?

``hso-jax demo`` (or :func:`run_demo`) optimises schedules for the embedded default model
(``hso_jax.models.load("mnist")``: an eps-prediction UNet under DDPM's linear discrete VP
process), samples every (schedule, solver) pair from the *same* initial noise, and compares
them with the exact probability-flow ODE solution from that noise (a tight diffrax solve to the
process's ``t_min``, cached on disk):

* RMSE / PSNR of the solver's output to the reference (the image a user keeps);
* the same after one shared final data-prediction step for everybody (one NFE more, counted);
* FD-MNIST: Fréchet distance in the shipped classifier's features to the 500 held-out digits;
* the wall time each optimiser took.

It writes ``results.md``, ``results.json``, ``samples.png`` (one row per schedule, the reference
on top) and ``schedules.png`` (sigma vs step, log scale) to the output folder it prints.

Cost. The shipped UNet costs about 2-3 ms per image and network call on a 2-core CPU, and the
reference needs about 1,500 calls per sample at ``rtol = atol = 1e-5``. So that the default
run takes under three minutes, not six, the references for the default batches (64 noises,
seed 0, and ``direct``'s 48) ship with the package (``models/zoo/mnist-v3/demo_reference/``,
written by this same code); each is copied into the reference cache and checked like any cache
entry (checksum, problem description). Any other ``num_samples`` / ``seed`` / tolerance
computes its references once and caches them.

The model-aware optimiser. ``direct`` descends the sample error of UniPC on the model itself,
on its own noises (32 for training, 16 held out; drawn from another key than the evaluation
noises, so the table scores it on noise it never saw), for 50 Adam iterations: about 80 s with
its compilation, and 7 % below the best baseline on this model. Its DPM-Solver++ row reuses
the UniPC schedule. After the table, one
line per solver says which schedule to use and by how much it beats the best baseline.

Solver flavours. HSO and DM-NonUniform optimise two schedules each: the DDIM flavour (NFE
optimised points, then the fixed final step to ``t_min``) for DDIM, and the multistep flavour
(NFE + 1 points) shared by DPM-Solver++(2M) and UniPC (the search does not depend on which
multistep solver follows).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _progress, _validate
from .models.zoo import MNIST_ID

__all__ = ["run_demo", "DEFAULT_OUT"]

DEFAULT_OUT = "hso_jax_out/demo"
DIRECT_NOISES = (32, 16)
"""Training and held-out noises of ``direct`` (8 training noises over-fit: the held-out error
stopped falling at iteration 3)."""
DIRECT_STEPS, DIRECT_PATIENCE, DIRECT_LR = 50, 50, 0.01
BASELINES = ("time-uniform", "logSNR", "Karras rho=7")
AYS_SETTINGS = {"num_samples": 16, "batch_size": 128, "rel_tol": 0.05}
"""``--full``'s AYS: the Monte-Carlo samples per estimate and stopping rule that
``benchmarks/bench_ays.py`` validated on this model (the defaults, up to 1,024 samples per
estimate and rel_tol 1 %, ran over 8 minutes without finishing a level)."""
GITS_NOISES = 256
"""``--full``'s GITS warm-up noises: the official count (``--num_warmup``), a draw of their
own (``fold_in(key(seed), 2)``)."""


SHIPPED_REFERENCES = Path(__file__).parent / "models" / "zoo" / MNIST_ID / "demo_reference"


def _solvers():
    """``{flavour: {name: solver}}``: the HSO / DMN flavour each solver runs."""
    from . import solvers

    return {
        "ddim": {"DDIM": solvers.ddim()},
        "unipc": {
            "DPM-Solver++(2M)": solvers.dpm_solver_pp(order=2),
            "UniPC-bh2": solvers.unipc(order=2, variant="bh2"),
        },
    }


def _schedules_for(ns, nfe: int, flavour: str, optimised: dict[str, Any]) -> dict[str, Any]:
    from . import schedules

    out = dict(
        zip(
            BASELINES,
            (
                schedules.time_uniform(ns, nfe),
                schedules.logsnr_uniform(ns, nfe),
                schedules.karras(ns, nfe, rho=7.0),
            ),
            strict=True,
        )
    )
    for name, by_flavour in optimised.items():
        if flavour in by_flavour:  # direct: the multistep flavour only
            out[name] = by_flavour[flavour]
    return out


def _seed_cache(path: Path, log) -> bool:
    """Copy the shipped reference for this exact problem into the cache, if there is one and
    the cache lacks it (the cache then validates it like any entry).

    Returns ``False`` when there is a shipped reference but the cache cannot take it (read-only
    or full): the caller then reads it where it ships."""
    shipped = SHIPPED_REFERENCES / path.name
    if shipped.is_file() and not path.exists():
        import shutil

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shipped, path)
        except OSError as e:
            log(
                f"      warning: cannot copy the shipped reference into the cache ({e}); "
                "reading it from the package"
            )
            return False
        log(f"      using the shipped reference {shipped.name}")
    return True


@jax.jit
def _final_x0_errors(model, x, t_last, ref):
    from .evaluation.metrics import psnr, rmse

    ns = model.noise
    x0 = model.x0(x, t_last.astype(x.dtype))
    ref0 = model.x0(ref, jnp.asarray(ns.t_min, x.dtype))
    return jnp.mean(rmse(x0, ref0)), jnp.mean(psnr(x0, ref0))


def _with_final_x0(model, x, t_last, ref) -> tuple[float, float]:
    """RMSE / PSNR after the shared final data-prediction step ``D(x, t_last)``, against the
    reference passed through the same step at ``t_min`` (as ``evaluate_grid(...,
    denoise_final=True)``; one NFE more, counted)."""
    e, p = _final_x0_errors(model, jnp.asarray(x), jnp.asarray(t_last, jnp.float32), ref)
    return float(e), float(p)


def _direct(model, nfe: int, noises, steps: int, log) -> Any:
    """``direct`` for UniPC on the training / held-out noises and their references, with a
    progress line every few seconds."""
    from .optimization import optimize

    x_tr, r_tr, x_va, r_va = noises

    def progress(info: dict[str, Any]) -> None:
        log(
            f"      direct: iteration {info['iteration']}/{steps}, training error "
            f"{info['train']:.4f}, held-out {info['val']:.4f}",
            every=info["iteration"] != 1,
        )

    return optimize(
        model,
        nfe,
        method="direct",
        solver="unipc",
        x_T=x_tr,
        reference=r_tr,
        x_T_val=x_va,
        reference_val=r_va,
        steps=steps,
        patience=DIRECT_PATIENCE,
        learning_rate=DIRECT_LR,
        callback=progress,
    )


def _optimise(model, nfe: int, flavours, full, key, log, direct) -> tuple[dict, dict]:
    """The schedules of every method by flavour, and their wall times. ``full``: ``None`` or
    GITS's noises (AYS and GITS run); ``direct``: ``None`` or its noises, references and
    iterations."""
    from .optimization import optimize

    optimised: dict[str, dict[str, np.ndarray]] = {}
    timings: dict[str, dict[str, float]] = {}
    methods = [("HSO", "hso"), ("DMN", "dmn")]
    for label, method in methods:
        optimised[label], timings[label] = {}, {}
        for flavour in flavours:
            t0 = time.perf_counter()
            # Model-free: the noise process is all they use.
            res = optimize(model.noise, nfe, method=method, solver=flavour)
            timings[label][flavour] = time.perf_counter() - t0
            optimised[label][flavour] = np.asarray(res.t)  # DDIM flavour ends at t_min
            for w in res.warnings:
                log(f"  note ({label}, {flavour}): {w}")
    if direct is not None:
        t0 = time.perf_counter()
        res = _direct(model, nfe, *direct, log)
        optimised["direct"] = {"unipc": np.asarray(res.t)}
        timings["direct"] = {"unipc": time.perf_counter() - t0}
        log(
            f"      direct: stopped at iteration {res.info['best_iteration']} "
            f"({res.info['stop_reason']}), held-out error {res.objective:.4f}"
        )
    if full is not None:
        for name, (by_flavour, seconds) in _ays_and_gits(model, nfe, flavours, full, key, log):
            optimised[name], timings[name] = by_flavour, seconds
    return optimised, timings


def _ays_and_gits(model, nfe: int, flavours, x_gits, key, log) -> Iterator[tuple[str, Any]]:
    """``--full``: AYS at :data:`AYS_SETTINGS` on 1,024 training digits and GITS on
    ``x_gits``; yields ``(name, (schedule by flavour, seconds by flavour))``."""
    from .models.zoo import load_mnist_digits
    from .optimization import optimize

    data, _ = load_mnist_digits("train")
    log(
        f"      AYS: {AYS_SETTINGS['num_samples']} Monte-Carlo samples per KLUB estimate, "
        f"rel_tol {AYS_SETTINGS['rel_tol']:g} (benchmarks/bench_ays.py's settings; the "
        "defaults take far longer)"
    )
    t0 = time.perf_counter()

    def sweep(d: dict[str, Any]) -> None:
        where = f"      AYS: level {d['level']}, sweep {d['sweep']}"
        if "klub" in d:
            log(f"{where}, KLUB {d['klub']:.1f}, {d['elapsed']:.0f} s")
        else:  # within the sweep
            log(f"{where}, {100 * d['scored']:.0f} % scored, {d['elapsed']:.0f} s", every=True)

    # Subdivision (10 -> 20 -> 40) keeps the 10-step level's points, and an NFE that
    # divides 10 interpolates exactly onto them: the levels would change nothing.
    rounds = 0 if 10 % nfe == 0 else True
    res = optimize(
        model, nfe, method="ays", data=jnp.asarray(data[:1024]), key=key, progress=False,
        callback=sweep, subdivide=rounds, **AYS_SETTINGS,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    yield "AYS", ({f: np.asarray(res.t) for f in flavours}, {f: dt for f in flavours})
    log(
        f"      GITS: iPNDM teacher of {x_gits.shape[0]} noises (61 points, the official "
        "configuration), then the search"
    )
    t0 = time.perf_counter()
    # DDIM and the multistep solvers buy nfe + 1 points alike: one search serves both
    def teacher(d: dict[str, Any]) -> None:
        log(f"      GITS: teacher {100 * d['teacher']:.0f} %, {d['elapsed']:.0f} s", every=True)

    res = optimize(model, nfe, method="gits", solver="unipc", x_T=x_gits, callback=teacher)
    dt = time.perf_counter() - t0
    yield "GITS", ({f: np.asarray(res.t) for f in flavours}, {f: dt for f in flavours})


def _image_grid(rows: list[np.ndarray], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.6 + 1.8, len(rows) * 0.7 + 0.3))
    for ax, row, label in zip(np.atleast_1d(axes), rows, labels, strict=True):
        strip = np.concatenate([np.clip(img[..., 0], -1, 1) for img in row], axis=1)
        ax.imshow(strip, cmap="gray", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _schedule_plot(named: dict[str, np.ndarray], ns, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ts in named.items():
        sig = np.asarray(ns.sigma_edm(jnp.asarray(ts)))
        ax.plot(np.arange(len(sig)), sig, marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("sigma = sigma_t / alpha_t (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    nfe: int = 5,
    num_samples: int = 64,
    seed: int = 0,
    full: bool = False,
    direct: bool = True,
    direct_noises: tuple[int, int] = DIRECT_NOISES,
    direct_steps: int = DIRECT_STEPS,
    model=None,
    model_id: str = MNIST_ID,
    fd: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cache_dir: str | Path | None = None,
    verbose: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Optimise, sample and compare schedules on the shipped MNIST model; write a report.

    Args:
      out_dir: output folder (created).
      nfe: network evaluations per sample (default 5).
      num_samples: initial noises (the same for every schedule and solver).
      seed: seed of the initial noise.
      full: also run Align Your Steps (at :data:`AYS_SETTINGS`) and GITS (minutes).
      direct: also run the model-aware ``direct`` for UniPC (default on).
      direct_noises: its training and held-out noises (drawn from ``fold_in(key(seed), 1)``,
        not the evaluation noises).
      direct_steps: its most iterations (it also stops after 50 without held-out progress).
      model: a Denoiser on 28x28x1 images (default: ``hso_jax.models.load("mnist")``).
      model_id: identity of ``model`` for the reference cache.
      fd: compute FD-MNIST (needs the shipped classifier).
      rtol, atol: tolerances of the reference solve.
      cache_dir: reference cache folder (default ``$HSO_JAX_CACHE`` or ``~/.cache/hso_jax``).
      verbose: print the table (stdout) and, with ``progress``, what the run is doing (stderr).
      progress: the progress lines (``hso-jax demo --quiet`` turns them off).

    Returns:
      The results dict that is also written to ``results.json``.
    """
    from .evaluation.grid import evaluate_grid
    from .reference.cache import cached_reference, reference_cache_path

    nfe = _validate.nfe(nfe, 2)
    num_samples = _validate.integer("num_samples", num_samples, 2)
    seed = _validate.seed(seed)
    direct = _validate.boolean("direct", direct)
    if not isinstance(direct_noises, (tuple, list)) or len(direct_noises) != 2:
        raise ValueError(
            "direct_noises must be a pair (training, held-out) of integers >= 1, got "
            f"{direct_noises!r}"
        )
    n_tr, n_va = (
        _validate.integer(f"direct_noises[{i}]", n, 1) for i, n in enumerate(direct_noises)
    )
    direct_steps = _validate.integer("direct_steps", direct_steps, 1)
    show = print if verbose else (lambda *a, **k: None)  # the result, on stdout
    log = _progress.lines(enabled=verbose and _validate.boolean("progress", progress))
    out = Path(out_dir)
    t_all = time.perf_counter()

    log(
        f"[1/4] reference: exact PF-ODE solution of {num_samples} noises"
        + (f" and of direct's {n_tr + n_va}" if direct else "")
        + " (diffrax, cached)"
    )
    if model is None:
        from .models.zoo import load

        model = load("mnist")
    ns = model.noise
    key = jax.random.key(seed)
    x_T = ns.prior(key, (num_samples, 28, 28, 1))
    x_D = ns.prior(jax.random.fold_in(key, 1), (n_tr + n_va, 28, 28, 1))
    x_G = ns.prior(jax.random.fold_in(key, 2), (GITS_NOISES, 28, 28, 1)) if full else None
    t0 = time.perf_counter()

    def reference(x):
        where = dict(key_id=model_id, rtol=rtol, atol=atol, cache_dir=cache_dir)
        if not _seed_cache(reference_cache_path(x, ns.t_max, ns.t_min, **where), log):
            where["cache_dir"] = SHIPPED_REFERENCES
        return cached_reference(model, x, ns.t_max, ns.t_min, **where)

    ref = reference(x_T)
    if direct:
        r_D = reference(x_D)
        direct_data = (x_D[:n_tr], r_D[:n_tr], x_D[n_tr:], r_D[n_tr:])
    t_ref = time.perf_counter() - t0

    by_flavour = _solvers()
    flavours = list(by_flavour)
    log(f"[2/4] optimising schedules for NFE {nfe}")
    optimised, timings = _optimise(
        model,
        nfe,
        flavours,
        x_G,  # GITS's warm-up noises (None: no --full)
        key,
        log,
        (direct_data, direct_steps) if direct else None,
    )

    log("[3/4] sampling every (schedule, solver) from the same noise")
    t0 = time.perf_counter()
    rows, samples_for_grid, schedules_unipc = [], {}, {}
    for flavour, solvers in by_flavour.items():
        scheds = _schedules_for(ns, nfe, flavour, optimised)
        recs = evaluate_grid(model, x_T, ref, scheds, solvers, return_samples=True)
        for r in recs:
            row = {"schedule": r.schedule, "solver": r.solver, "nfe": r.nfe}
            row["rmse"], row["psnr"] = r.metrics["rmse"], r.metrics["psnr"]
            row["rmse_x0"], row["psnr_x0"] = _with_final_x0(
                model, r.samples, scheds[r.schedule][-1], ref
            )
            if r.schedule in timings:
                row["optimise_s"] = float(timings[r.schedule][flavour])
            rows.append(row)
            if r.solver == "UniPC-bh2":
                samples_for_grid[r.schedule] = r.samples
                schedules_unipc[r.schedule] = scheds[r.schedule]
    t_sample = time.perf_counter() - t0
    solver_order = [name for solvers in by_flavour.values() for name in solvers]
    rows.sort(key=lambda r: solver_order.index(r["solver"]))  # stable: schedules keep order

    fd_values = {}
    if fd:
        log("[4/4] FD-MNIST to the held-out digits")
        from .evaluation import fd_mnist
        from .models.zoo import load_mnist_digits

        test_digits, _ = load_mnist_digits("test")
        fd_values["reference"] = float(fd_mnist(np.asarray(ref), test_digits))
        for name in schedules_unipc:
            fd_values[name] = float(fd_mnist(samples_for_grid[name], test_digits))
        for row in rows:
            if row["solver"] == "UniPC-bh2":
                row["fd_mnist"] = fd_values[row["schedule"]]

    total = time.perf_counter() - t_all
    table = _format(rows, nfe)
    text = (
        f"# hso-jax demo: MNIST UNet, NFE {nfe}, {num_samples} samples, seed {seed}\n\n"
        "Error to the exact PF-ODE solution from the same noise (reference carried to t_min). "
        "`rmse`/`psnr`: the solver's output as is; `+x0`: every method also gets the same final "
        "data-prediction step (NFE + 1). FD-MNIST (UniPC only): Fréchet distance in the "
        "classifier's features to the 500 held-out digits"
        + (f" (reference solution: {fd_values['reference']:.3f})" if fd else "")
        + ".\n\n"
        + (
            f"`direct`: optimised for UniPC-bh2 on {n_tr} other noises ({n_va} held out; "
            "the DPM-Solver++ row reuses its schedule). "
            if direct
            else ""
        )
        + (
            f"`GITS`: as its official code runs it (the `dev` metric, a 60-step iPNDM teacher "
            f"of {GITS_NOISES} noises of their own). `AYS`: "
            f"{AYS_SETTINGS['num_samples']} Monte-Carlo samples per KLUB estimate and rel_tol "
            f"{AYS_SETTINGS['rel_tol']:g} (`benchmarks/bench_ays.py`'s settings, not the "
            "defaults). "
            if full
            else ""
        )
        + "The optimisers' wall time includes their compilation.\n\n"
        + table
        + "\n"
        + _winners(rows)
        + f"\nReference: {t_ref:.1f} s; sampling: {t_sample:.1f} s; total: {total:.1f} s.\n"
    )
    result = {
        "nfe": nfe,
        "num_samples": num_samples,
        "seed": seed,
        "rows": rows,
        "fd_mnist": fd_values,
        "schedules": {
            name: {f: np.asarray(t).tolist() for f, t in v.items()}
            for name, v in optimised.items()
        },
        "winners": _winner_rows(rows),
        "reference_seconds": t_ref,
        "sampling_seconds": t_sample,
        "total_seconds": total,
    }
    names = list(schedules_unipc)
    n_show = min(10, num_samples)
    with _writing_set(out) as stage:
        (stage / "results.md").write_text(text)
        (stage / "results.json").write_text(json.dumps(result, indent=2))
        _image_grid(
            [np.asarray(ref)[:n_show]] + [samples_for_grid[n][:n_show] for n in names],
            ["reference"] + names,
            stage / "samples.png",
        )
        _schedule_plot(
            {n: np.asarray(schedules_unipc[n]) for n in names},
            ns,
            f"schedules at NFE {nfe} (UniPC / multistep flavour)",
            stage / "schedules.png",
        )
    show("")
    show(text)
    show(f"wrote {out}/results.md, results.json, samples.png, schedules.png")
    return result


@contextlib.contextmanager
def _writing_set(out: Path) -> Iterator[Path]:
    """Write a set of files into a staging folder inside ``out``, then move each into place:
    a failure while writing (a full disk) leaves ``out`` as it was (created only if needed,
    and removed again if it was created for nothing)."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".hso-jax-demo-", dir=out))
    try:
        yield stage
        for f in sorted(stage.iterdir()):
            f.replace(out / f.name)  # a rename: no new bytes written
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _winner_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per solver: the schedule of least RMSE, the best baseline, and the gain over it."""
    out = {}
    for solver in dict.fromkeys(r["solver"] for r in rows):
        mine = [r for r in rows if r["solver"] == solver]
        best = min(mine, key=lambda r: r["rmse"])
        base = min((r for r in mine if r["schedule"] in BASELINES), key=lambda r: r["rmse"])
        out[solver] = {
            "best": best["schedule"],
            "rmse": best["rmse"],
            "best_baseline": base["schedule"],
            "baseline_rmse": base["rmse"],
            "gain": 1.0 - best["rmse"] / base["rmse"],
        }
    return out


def _winners(rows: list[dict[str, Any]]) -> str:
    """One line per solver: which schedule to use, and by how much it beats the baselines."""
    lines = ["Which schedule to use (least RMSE):", ""]
    for solver, w in _winner_rows(rows).items():
        if w["best"] in BASELINES:
            lines.append(f"- {solver}: {w['best']} (a baseline), RMSE {w['rmse']:.4f}.")
        else:
            lines.append(
                f"- {solver}: {w['best']}, RMSE {w['rmse']:.4f}, {100 * w['gain']:.1f} % below "
                f"the best baseline ({w['best_baseline']}, {w['baseline_rmse']:.4f})."
            )
    return "\n".join(lines) + "\n"


def _format(rows: list[dict[str, Any]], nfe: int) -> str:
    head = (
        "| solver | schedule | NFE | RMSE | PSNR | RMSE +x0 | PSNR +x0 | FD-MNIST | optimise (s) |"
    )
    lines = [head, "|" + "---|" * 9]
    best = {}
    for r in rows:
        b = best.get(r["solver"])
        if b is None or r["rmse"] < b:
            best[r["solver"]] = r["rmse"]
    for r in rows:
        mark = " **best**" if r["rmse"] == best[r["solver"]] else ""
        fdv = f"{r['fd_mnist']:.3f}" if "fd_mnist" in r else "-"
        opt = f"{r['optimise_s']:.2f}" if "optimise_s" in r else "-"
        lines.append(
            f"| {r['solver']} | {r['schedule']}{mark} | {r['nfe']} | {r['rmse']:.4f} | "
            f"{r['psnr']:.2f} | {r['rmse_x0']:.4f} | {r['psnr_x0']:.2f} | {fdv} | {opt} |"
        )
    return "\n".join(lines) + "\n"
