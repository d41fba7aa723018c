"""Sample quality of sampling schedules: error to the exact PF-ODE solution, NLL, FD-MNIST.

Fair-comparison rule. Schedules end at different times: HSO (multistep flavour) stops at its
own ``t_eps`` in [0.01, 0.03] of the normalised time, DMN and the hand-made schedules at the
process's ``t_min``, and the DDIM flavours of HSO / DMN end with a fixed final step to
``t_min``. Every schedule is judged by the solver's output under its documented end convention
(the last state ``x(ts[-1])``, nothing added), compared with the exact PF-ODE solution from the
same ``x_T`` carried to the process's ``t_min``: stopping early is not excused, it shows up as
error. The ``+x0`` columns give every method the same final data-prediction step
``D(x(ts[-1]), ts[-1])`` (one more network evaluation, counted in its NFE) and compare with the
reference passed through the same step (``evaluate_grid(..., denoise_final=True)``).

What it measures, on three models that share DDPM's linear discrete VP process
(``hso_jax.noise.preset("ddpm")``, so the model-free HSO / DMN schedules are optimised once):

* ``gm2d``: an 8-component Gaussian mixture on a ring in 2-D (exact denoiser);
* ``gm64d``: an 8-component Gaussian mixture in 64-D with seeded means (exact denoiser);
  both defined in ``benchmarks/common.py``, shared with the proxy study;
* ``mnist``: the shipped MNIST UNet (``hso_jax.models.load("mnist")``, eps prediction);

for the solvers DDIM, DPM-Solver++(2M), DPM-Solver++(3M), UniPC-bh2 and iPNDM, the NFEs
{4, 5, 6, 8, 10} and the schedules time-uniform, logSNR-uniform, Karras rho = 7, DMN, HSO
(``hso_jax.optimize(noise, nfe, method=..., solver=flavour)``, flavour ``"ddim"`` for DDIM and
``"unipc"`` for the multistep solvers, iPNDM included) and AYS (``method="ays"``; its schedule
does not depend on the solver, so it is optimised once per model at the largest NFE and
log-linearly interpolated in ``sigma`` to the other NFEs, exactly as ``optimize_ays`` does for
any NFE):

1. RMSE and PSNR to the reference (a tight adaptive diffrax solve, cached on disk by
   ``hso_jax.evaluation.cached_reference``), as is and ``+x0``. PSNR uses data range 2 for
   MNIST (pixels in [-1, 1]) and the range of the reference samples for the mixtures;
2. Gaussian mixtures: the exact mean NLL of the samples under the mixture (nats);
   MNIST: FD-MNIST, the Frechet distance in the shipped classifier's features to the 500
   held-out digits (biased upwards for few samples: compare only within one run);
3. the wall time of every optimiser, cold (first call in the process, with compilation) and
   warm (the same call again; AYS on MNIST is not repeated).

All schedules of one length are evaluated in one compiled, vmapped call per solver by
``hso_jax.evaluation.evaluate_grid``; every entry starts from the same ``x_T``.

Outputs (``--out``, default ``benchmarks/results``): ``quality.md``, ``quality.csv``,
``quality.json`` (machine, command line, settings, timings, every number, the schedules),
``quality_<model>.png`` (RMSE vs NFE, one subplot per solver, log scale; dashed: ``+x0`` at its
counted NFE) and ``quality_mnist_samples.png`` (NFE 5 samples per schedule). ``--quick`` writes
``quality_quick.*`` / ``quality_quick_*.png`` instead, so both can live side by side.

``--trajectory`` adds the trajectory-based optimisers (``quality_trajectory.*``): GITS (one
schedule per NFE) as the official code configures it (``dev`` metric, 60-step iPNDM teacher on
a 61-point Karras grid) and as ``variant="exact"`` (L2 error against the exact 100-point
log-SNR teacher), the model-aware MEP (per HSO flavour) and direct (per solver, warm-started
from the best of every other schedule on its training batch), for NFE 4-6 and DDIM,
DPM-Solver++(2M), UniPC-bh2 and iPNDM (GITS's official pairing). They see only their own
noises (``key(seed + 1)``: a training and an equal held-out batch for direct, the teacher batch
for GITS / MEP-model), never the evaluation noise. MNIST is evaluated there on the demo's 64
noises, whose rtol-1e-5 reference ships with the package; the tables add a direct-vs-best-of-
the-six summary per model.

``--flow`` runs the flow-matching oracle study instead (``quality_flow.{md,json}``; ``--merge``
keeps the other mixture's rows): ``gm2d`` and ``gm64d`` wrapped as flow-matching networks (exact
velocity) under SD3's process (``preset("sd3")``, shift 3.0), RMSE to the exact solution from
pure noise at t = 1 to t = 0, Euler and UniPC-bh2, NFE 4, 6, 8, 10, every optimiser (HSO, DMN,
AYS, GITS, MEP-model, direct) against the pipelines' baselines (default shifted uniform, beta,
the Optimal-Steps Flux table, logSNR-uniform). Every schedule runs as a pipeline runs it, NFE
steps ending at 0: the optimisers (which need finite log-SNR ends, so they run on
``preset("flow")``, t in [1e-3, 0.999], with the same network) get NFE steps and their end
point is replaced by 0 (pasted as ``sigmas=t[:-1]``). About 37 minutes on a loaded 2-core CPU.

Run::

    python benchmarks/quality.py --trajectory     # about 30-40 minutes on a 2-core CPU
    python benchmarks/quality.py --quick          # a few minutes on a 2-core CPU
    python benchmarks/quality.py                  # full grid (MNIST takes long on a CPU)
    python benchmarks/quality.py --models gm2d,gm64d --out /tmp/q

``--quick`` runs NFE 5 only (``--nfe`` overrides): every solver and schedule for the mixtures
(512 samples), and MNIST with UniPC-bh2 on 8 samples, a looser reference tolerance (1e-3) and
a one-sweep AYS (8 Monte-Carlo samples, 3 candidates). Compilation dominates on a CPU (each
optimiser call and each (solver, NFE) sampler compiles anew, about 2 s for a mixture and 10 s
with the UNet), one UNet call on 64 images takes about a second and the adaptive MNIST
reference needs hundreds of calls. FD-MNIST on 8 samples is dominated by its small-sample bias
(compare with the reference's own value); use the full mode for FD.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np

from hso_jax import schedules, solvers
from hso_jax.evaluation import cached_reference, evaluate_grid, psnr, reference_solve, rmse
from hso_jax.models.zoo import MNIST_ID
from hso_jax.noise import preset
from hso_jax.optimization import optimize
from hso_jax.schedules import check_schedule

MODELS = ("gm2d", "gm64d", "mnist")
NOISE = "ddpm"
ALL_NFES = (4, 5, 6, 8, 10)
SAMPLE_GRID_NFE = 5
SCHEDULES = ("time-uniform", "logSNR", "Karras rho=7", "DMN", "HSO", "AYS")
TRAJECTORY = ("GITS", "GITS-exact", "MEP-model", "direct")
ALL_SCHEDULES = SCHEDULES + TRAJECTORY
OPTIMISED = {"DMN": "dmn", "HSO": "hso"}
TRAJ_SOLVERS = ("DDIM", "DPM-Solver++(2M)", "UniPC-bh2", "iPNDM")
# solver name -> the factory name optimize(..., method="direct") takes with the same defaults
DIRECT_SOLVER = {
    "DDIM": "ddim",
    "DPM-Solver++(2M)": "dpm-solver-pp",
    "UniPC-bh2": "unipc",
    "iPNDM": "ipndm",
}

# solver name -> (factory, HSO / DMN flavour)
SOLVERS: dict[str, tuple[Callable[[], Any], str]] = {
    "DDIM": (solvers.ddim, "ddim"),
    "DPM-Solver++(2M)": (lambda: solvers.dpm_solver_pp(order=2), "unipc"),
    "DPM-Solver++(3M)": (lambda: solvers.dpm_solver_pp(order=3), "unipc"),
    "UniPC-bh2": (lambda: solvers.unipc(order=2, variant="bh2"), "unipc"),
    "iPNDM": (solvers.ipndm, "unipc"),
}

QUICK = {
    "samples": {"gm2d": 512, "gm64d": 512, "mnist": 8},
    "nfes": {"gm2d": (5,), "gm64d": (5,), "mnist": (5,)},
    "solvers": {"mnist": ("UniPC-bh2",)},
    "ref_tol": {"gm2d": None, "gm64d": None, "mnist": 1e-3},
    "ays": {
        "gm": dict(num_samples=256, max_sweeps=4, subdivide=1, refine_sweeps=3, candidates=7),
        "mnist": dict(num_samples=8, max_sweeps=1, subdivide=False, candidates=3, batch_size=64),
    },
    "fd_nfes": (SAMPLE_GRID_NFE,),
}
FULL = {
    "samples": {"gm2d": 4096, "gm64d": 4096, "mnist": 128},
    "nfes": {m: ALL_NFES for m in MODELS},
    "solvers": {},
    "ref_tol": {"gm2d": None, "gm64d": None, "mnist": 1e-4},
    "ays": {
        "gm": dict(num_samples=1024),
        "mnist": dict(num_samples=8, max_sweeps=3, refine_sweeps=1, batch_size=128),
    },
    "fd_nfes": ALL_NFES,
}
# --trajectory: the trajectory-based optimisers (direct, GITS, model-aware MEP) against every
# other schedule, NFE 4-6, three solvers. MNIST is evaluated on the demo's 64 noises, whose
# reference (rtol 1e-5) ships with the package; training / teacher noises are separate draws.
TRAJ = {
    "samples": {"gm2d": 4096, "gm64d": 4096, "mnist": 64},
    "nfes": {m: (4, 5, 6) for m in MODELS},
    "solvers": {m: TRAJ_SOLVERS for m in MODELS},
    "ref_tol": {"gm2d": None, "gm64d": None, "mnist": 1e-5},
    "ays": {
        "gm": dict(num_samples=1024),
        "mnist": dict(num_samples=8, max_sweeps=1, subdivide=False, candidates=3, batch_size=64),
    },
    "fd_nfes": (SAMPLE_GRID_NFE,),
    "train": {"gm2d": 256, "gm64d": 256, "mnist": 8},  # direct: training = held-out size
    "teacher": {"gm2d": 256, "gm64d": 256, "mnist": 16},
    # learning rates: the smooth oracles take 0.1, the network the default 0.01 (see
    # optimize_direct's learning_rate)
    "direct": {"gm": dict(steps=100, learning_rate=0.1), "mnist": dict(steps=60)},
}


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------


class _Counter:
    """Fallback progress display when tqdm is not installed: ``[k/n] label``."""

    def __init__(self, total: int, desc: str):
        self.total, self.n, self.desc = total, 0, desc

    def set_postfix_str(self, s: str) -> None:
        self.label = s

    def update(self, k: int = 1) -> None:
        self.n += k
        print(f"  {self.desc} [{self.n}/{self.total}] {getattr(self, 'label', '')}", flush=True)

    def close(self) -> None:
        pass


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Counter(total, desc)
    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """One benchmark model: the Denoiser, the shared noise and what its metrics need."""

    name: str
    model: Any
    x_T: Any
    key_id: str
    gm: Any = None  # the GaussianMixture for NLL
    data: Any = None  # data samples for AYS
    data_range: float = 2.0


def build_model(name: str, num_samples: int, seed: int, demo_batch: bool = False) -> ModelSpec:
    """The named model with its initial noise (seeded) and AYS data. ``demo_batch``: MNIST on
    the demo's noises (``prior(key(0), (64, 28, 28, 1))``), whose reference ships."""
    noise = preset(NOISE)
    key = jax.random.key(seed)
    k_noise, k_data = jax.random.split(key)
    if name == "mnist":
        from hso_jax.models.zoo import load, load_mnist_digits

        model = load("mnist")
        data, _ = load_mnist_digits("train")
        if demo_batch:
            x_T = model.noise.prior(jax.random.key(0), (64, 28, 28, 1))
            return ModelSpec(name, model, x_T, MNIST_ID, data=jnp.asarray(data))
        x_T = model.noise.prior(k_noise, (num_samples, 28, 28, 1))
        return ModelSpec(name, model, x_T, f"quality-{MNIST_ID}", data=jnp.asarray(data))
    gm = common.mixture(name)
    model = gm.denoiser(noise)
    x_T = noise.prior(k_noise, (num_samples, gm.dim))
    data = gm.sample(k_data, 8192)
    return ModelSpec(name, model, x_T, f"quality-{name}-seed{seed}-v1", gm=gm, data=data)


def reference(spec: ModelSpec, tol: float | None, cache_dir) -> Any:
    """Exact PF-ODE solution from ``x_T`` at ``t_max`` to ``t_min`` (cached on disk)."""
    ns = spec.model.noise
    tol = 16.0 * float(jnp.finfo(spec.x_T.dtype).eps) if tol is None else tol
    if spec.key_id == MNIST_ID:  # the demo's batch: use the reference that ships with it
        from hso_jax.demo import _seed_cache
        from hso_jax.evaluation import reference_cache_path

        where = dict(key_id=spec.key_id, rtol=tol, atol=tol, cache_dir=cache_dir)
        _seed_cache(reference_cache_path(spec.x_T, ns.t_max, ns.t_min, **where), _log)
    return cached_reference(
        spec.model,
        spec.x_T,
        ns.t_max,
        ns.t_min,
        key_id=spec.key_id,
        rtol=tol,
        atol=tol,
        cache_dir=cache_dir,
    )


# --------------------------------------------------------------------------------------
# Schedules and optimisers
# --------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def optimise_model_free(noise, nfes: Iterable[int], flavours: Iterable[str]) -> tuple[dict, list]:
    """HSO / DMN schedules ``{(label, flavour, nfe): t}`` and their cold / warm wall times."""
    jobs = [(lab, fl, n) for lab in OPTIMISED for fl in sorted(flavours) for n in sorted(nfes)]
    out, timings = {}, []
    bar = _progress(len(jobs), "optimise HSO/DMN")
    for label, flavour, nfe in jobs:
        bar.set_postfix_str(f"{label} {flavour} NFE {nfe}")

        def run(label=label, flavour=flavour, nfe=nfe):
            return optimize(noise, nfe, method=OPTIMISED[label], solver=flavour)

        res, cold = _timed(run)
        _, warm = _timed(run)
        out[(label, flavour, nfe)] = np.asarray(res.t, np.float64)
        timings.append(
            dict(
                method=label,
                flavour=flavour,
                nfe=nfe,
                cold_s=cold,
                warm_s=warm,
                t_end=float(res.t[-1]),
                warnings=list(res.warnings),
            )
        )
        bar.update(1)
    bar.close()
    return out, timings


def optimise_ays(spec: ModelSpec, nfe: int, options: dict, seed: int, warm: bool) -> tuple:
    """One AYS search at ``nfe``; returns its result and a timing record."""

    def run():
        return optimize(
            spec.model,
            nfe,
            method="ays",
            solver="dpm-solver-pp",
            key=jax.random.key(seed),
            data=spec.data,
            progress=False,
            **options,
        )

    res, cold = _timed(run)
    warm_s = _timed(run)[1] if warm else None
    info = res.info
    timing = dict(
        method="AYS",
        flavour="any",
        nfe=nfe,
        model=spec.name,
        cold_s=cold,
        warm_s=warm_s,
        t_end=float(res.t[-1]),
        warnings=list(res.warnings),
        options=dict(options),
        stop_reason=info.get("stop_reason"),
        network_evaluations=info.get("network_evaluations"),
    )
    return res, timing


def optimise_trajectory(spec, nfes, solver_names, cfg, args, baselines) -> tuple[dict, list]:
    """GITS, MEP-model (per HSO flavour) and direct (per solver) schedules for one model.

    Training / teacher noises are a separate draw (``key(seed + 1)``) from the evaluation
    noise. ``baselines(nfe, flavour)`` returns the other schedules of the comparison; direct
    starts from the best of them (and of GITS / MEP-model) on its training batch.
    """
    from hso_jax.evaluation import teacher_trajectories

    name, model = spec.name, spec.model
    n_tr, n_teach = cfg["train"][name], cfg["teacher"][name]
    x_all = model.noise.prior(
        jax.random.key(args.seed + 1), (2 * n_tr, *spec.x_T.shape[1:]), spec.x_T.dtype
    )
    tol = 1e-4 if name == "mnist" else None
    train = ModelSpec(name, model, x_all, f"{spec.key_id}-train-seed{args.seed + 1}")
    _log(f"[{name}] references of {2 * n_tr} training / held-out noises (cached)")
    ref_all, ref_s = _timed(lambda: reference(train, tol, args.cache_dir))
    _log(f"[{name}] teacher trajectories of {n_teach} noises (exact 100 points, iPNDM 61)")
    teacher, teach_s = _timed(lambda: teacher_trajectories(model, x_all[:n_teach]))
    official, official_s = _timed(
        lambda: teacher_trajectories(
            model, x_all[:n_teach], num_points=61, grid="karras", solver="ipndm"
        )
    )
    out, timings = {}, []
    flavours = sorted({SOLVERS[s][1] for s in solver_names})
    direct_opts = cfg["direct"]["gm" if spec.gm is not None else "mnist"]
    jobs = [(label, "any", n) for label in ("GITS", "GITS-exact") for n in nfes]
    jobs += [("MEP-model", fl, n) for fl in flavours for n in nfes]
    jobs += [("direct", sv, n) for sv in solver_names for n in nfes]
    bar = _progress(len(jobs), f"trajectory optimisers {name}")
    for label, which, nfe in jobs:
        bar.set_postfix_str(f"{label} {which} NFE {nfe}")
        if label == "GITS":
            run = functools.partial(optimize, model, nfe, method="gits", teacher=official)
        elif label == "GITS-exact":
            run = functools.partial(
                optimize, model, nfe, method="gits", variant="exact", teacher=teacher
            )
        elif label == "MEP-model":
            run = functools.partial(
                optimize, model, nfe, method="mep-model", solver=which, teacher=teacher
            )
        else:
            fl = SOLVERS[which][1]
            init = dict(baselines(nfe, fl))
            init["GITS"] = out[("GITS", "any", nfe)]
            init["GITS-exact"] = out[("GITS-exact", "any", nfe)]
            init["MEP-model"] = out[("MEP-model", fl, nfe)]
            run = functools.partial(
                optimize,
                model,
                nfe,
                method="direct",
                solver=DIRECT_SOLVER[which],
                x_T=x_all[:n_tr],
                reference=ref_all[:n_tr],
                x_T_val=x_all[n_tr:],
                reference_val=ref_all[n_tr:],
                init=init,
                **direct_opts,
            )
        res, cold = _timed(run)
        out[(label, which, nfe)] = np.asarray(res.t, np.float64)
        rec = dict(
            method=label,
            model=name,
            flavour=which,
            nfe=nfe,
            cold_s=cold,
            warm_s=None,
            t_end=float(res.t[-1]),
            warnings=list(res.warnings),
        )
        if label == "direct":
            i = res.info
            rec.update(
                {k: i[k] for k in ("train_loss", "val_loss", "init_train_loss", "init_val_loss")}
            )
            rec.update(init=i["init"], iterations=i["iterations"], stop=i["stop_reason"])
            rec.update(compile_s=i["timings"]["compile_s"], run_s=i["timings"]["run_s"])
        timings.append(rec)
        bar.update(1)
        if label == "direct":
            jax.clear_caches()  # each direct run compiles its own (large, unrolled) step
    bar.close()
    timings.append(
        dict(
            method="teacher + references",
            model=name,
            flavour="-",
            nfe=0,
            cold_s=teach_s + official_s + ref_s,
            warm_s=None,
            t_end=float("nan"),
            warnings=[
                f"exact teacher {teach_s:.1f} s, iPNDM teacher {official_s:.1f} s, training "
                f"references {ref_s:.1f} s"
            ],
        )
    )
    return out, timings


def ays_schedule(noise, res, nfe: int) -> np.ndarray:
    """The AYS schedule for ``nfe``: log-linear interpolation of the finest level's sigmas."""
    sig = np.asarray(res.info["levels"][-1]["sigmas"], np.float64)
    with jax.enable_x64(True):
        sig = np.asarray(schedules.loglinear_interp(jnp.asarray(sig), nfe + 1), np.float64)
        t = np.array(noise.t_from_sigma_edm(jnp.asarray(sig)), np.float64)
    t[0], t[-1] = float(res.t[0]), float(res.t[-1])
    return np.asarray(check_schedule(t, noise, name=f"AYS NFE {nfe}"), np.float64)


def schedules_for(
    noise, nfe: int, flavour: str, optimised: dict, ays, traj: dict | None = None
) -> dict[str, np.ndarray]:
    """Every schedule of the comparison for one NFE and one HSO / DMN flavour (direct, which
    is per solver, is evaluated separately)."""
    with jax.enable_x64(True):
        out = {
            "time-uniform": schedules.time_uniform(noise, nfe),
            "logSNR": schedules.logsnr_uniform(noise, nfe),
            "Karras rho=7": schedules.karras(noise, nfe, rho=7.0),
        }
        out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    for label in OPTIMISED:
        out[label] = optimised[(label, flavour, nfe)]
    if ays is not None:
        out["AYS"] = ays_schedule(noise, ays, nfe)
    if traj:
        out["GITS"] = traj[("GITS", "any", nfe)]
        out["GITS-exact"] = traj[("GITS-exact", "any", nfe)]
        out["MEP-model"] = traj[("MEP-model", flavour, nfe)]
    return out


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def _neg_log_prob(gm, x, ref):
    return -gm.log_prob(x)


def metric_fns(spec: ModelSpec) -> dict[str, Callable]:
    """Per-sample metrics for evaluate_grid (built once per model so compilations are reused)."""
    fns = {"rmse": rmse, "psnr": functools.partial(psnr, data_range=float(spec.data_range))}
    if spec.gm is not None:
        fns["nll"] = functools.partial(_neg_log_prob, spec.gm)
    return fns


class FDMnist:
    """FD-MNIST to the held-out digits, with the test statistics computed once."""

    def __init__(self):
        from hso_jax.evaluation import feature_statistics
        from hso_jax.models.classifier import load_classifier
        from hso_jax.models.zoo import load_mnist_digits

        self.params = load_classifier()
        test, _ = load_mnist_digits("test")
        with jax.enable_x64(True):
            self.mu, self.cov = feature_statistics(self._features(test))

    def _features(self, x):
        from hso_jax.models.classifier import mnist_features

        return np.asarray(mnist_features(self.params, np.asarray(x)), np.float64)

    def __call__(self, x) -> float:
        from hso_jax.evaluation import feature_statistics, frechet_distance

        with jax.enable_x64(True):
            mu, cov = feature_statistics(self._features(x))
            return float(frechet_distance(mu, cov, self.mu, self.cov))


def _merge(rows: dict, spec: ModelSpec, flavour: str, recs, denoise_final: bool, ts) -> None:
    suffix = "_x0" if denoise_final else ""
    for r in recs:
        row = rows.setdefault(
            (spec.name, r.solver, r.schedule, r.num_points - 1),
            dict(
                model=spec.name,
                solver=r.solver,
                schedule=r.schedule,
                flavour=flavour,
                nfe=r.num_points - 1,
                t_end=float(ts[r.schedule][-1]),
            ),
        )
        row["nfe" + suffix] = r.nfe
        for k, v in r.metrics.items():
            row[k + suffix] = v
        row["nonfinite" + suffix] = r.num_nonfinite


def _solver_groups(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for n in names:
        factory, flavour = SOLVERS[n]
        groups.setdefault(flavour, {})[n] = factory()
    return groups


def evaluate_model(spec, ref, nfes, solver_names, optimised, ays, fd, fd_nfes, traj=None):
    """All rows of one model, plus the NFE-5 samples for the image grid."""
    noise = spec.model.noise
    fns = metric_fns(spec)
    groups = _solver_groups(solver_names)
    rows: dict = {}
    grid: dict[str, dict[str, np.ndarray]] = {}
    bar = _progress(len(nfes) * len(groups) * 2, f"evaluate {spec.name}")
    for nfe in nfes:
        for flavour, solv in groups.items():
            ts = schedules_for(noise, nfe, flavour, optimised, ays, traj)
            parts = [(ts, solv)]
            if traj:  # direct: one schedule per solver
                parts += [({"direct": traj[("direct", k, nfe)]}, {k: v}) for k, v in solv.items()]
            for ts_part, solv_part in parts:
                for df in (False, True):
                    bar.set_postfix_str(f"NFE {nfe} {'/'.join(solv_part)}{' +x0' if df else ''}")
                    recs = evaluate_grid(
                        spec.model, spec.x_T, ref, ts_part, solv_part, metrics=fns, denoise_final=df
                    )
                    _merge(rows, spec, flavour, recs, df, ts_part)
                if fd is not None and nfe in fd_nfes:
                    g = grid if nfe == SAMPLE_GRID_NFE else None
                    _fd_rows(rows, spec, nfe, ts_part, solv_part, fd, g)
            bar.update(2)
    bar.close()
    return list(rows.values()), grid


def _fd_rows(rows, spec, nfe, ts, solv, fd, grid) -> None:
    names = list(ts)
    stack = jnp.stack([jnp.asarray(ts[n], spec.x_T.dtype) for n in names])
    for sv_name, solver in solv.items():
        xs, x0s = common.sample_stack(spec.model, spec.x_T, stack, solver, denoise_final=True)
        xs, x0s = np.asarray(xs), np.asarray(x0s)
        for g, sc in enumerate(names):
            row = rows[(spec.name, sv_name, sc, nfe)]
            row["fd"], row["fd_x0"] = fd(xs[g]), fd(x0s[g])
            if grid is not None:
                grid.setdefault(sv_name, {})[sc] = xs[g]


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def _fmt(v, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)


def _table(rows, model: str, key: str, second: str | None, lower_better: bool = True) -> str:
    """Markdown table: rows (solver, NFE), columns schedules, best cell bold."""
    sub = [r for r in rows if r["model"] == model and key in r]
    if not sub:
        return ""
    scheds = [s for s in ALL_SCHEDULES if any(r["schedule"] == s for r in sub)]
    cells = {(r["solver"], r["nfe"], r["schedule"]): r for r in sub}
    lines = ["| solver | NFE | " + " | ".join(scheds) + " |", "|---|---|" + "---|" * len(scheds)]
    for sv in SOLVERS:
        for nfe in sorted({r["nfe"] for r in sub if r["solver"] == sv}):
            vals = {s: cells[(sv, nfe, s)][key] for s in scheds if (sv, nfe, s) in cells}
            best = (min if lower_better else max)(vals.values(), key=lambda v: (np.isnan(v), v))
            out = []
            for s in scheds:
                if s not in vals:
                    out.append("-")
                    continue
                c = _fmt(vals[s], ".4g")
                if second:
                    c += " / " + _fmt(cells[(sv, nfe, s)].get(second), ".2f")
                out.append(f"**{c}**" if vals[s] == best else c)
            nfe_lab = str(nfe) if not key.endswith("_x0") else f"{nfe}+1"
            lines.append(f"| {sv} | {nfe_lab} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def winners(rows, model: str, key: str) -> dict[str, int]:
    """How many (solver, NFE) cells each schedule wins on ``key`` (lower is better, ties shared)."""
    cells: dict[tuple, list] = {}
    for r in rows:
        if r["model"] == model and key in r and np.isfinite(r[key]):
            cells.setdefault((r["solver"], r["nfe"]), []).append((r[key], r["schedule"]))
    count = dict.fromkeys(ALL_SCHEDULES, 0)
    for vals in cells.values():
        best = min(v for v, _ in vals)
        for v, sc in vals:
            count[sc] += v == best  # ties: every tied schedule gets the cell
    return {k: v for k, v in count.items() if v}


def _timing_table(timings) -> str:
    lines = [
        "| optimiser | model | flavour | NFE | cold (s) | warm (s) | t_end | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        notes = "; ".join(w.split(":")[0] for w in t.get("warnings", [])) or "-"
        lines.append(
            f"| {t['method']} | {t.get('model', 'all (' + NOISE + ')')} | {t['flavour']} | "
            f"{t['nfe']} | {_fmt(t['cold_s'], '.2f')} | {_fmt(t['warm_s'], '.3f')} | "
            f"{t['t_end']:.4g} | {notes} |"
        )
    return "\n".join(lines) + "\n"


def direct_summary(rows, timings, model: str) -> str:
    """Direct vs the best of the six schedules of the papers, on the evaluation noise."""
    sub = {(r["solver"], r["nfe"], r["schedule"]): r for r in rows if r["model"] == model}
    tim = {(t["flavour"], t["nfe"]): t for t in timings if t.get("model") == model}
    keys = sorted({(sv, n) for sv, n, sc in sub if sc == "direct"}, key=lambda k: (k[0], k[1]))
    if not keys:
        return ""
    lines = [
        "| solver | NFE | direct | best of the six | which | direct / best | direct train -> "
        "held-out loss (init) | init | iterations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sv, nfe in keys:
        d = sub[(sv, nfe, "direct")]["rmse"]
        six = {sc: sub[(sv, nfe, sc)]["rmse"] for sc in SCHEDULES if (sv, nfe, sc) in sub}
        best = min(six, key=six.get)
        t = tim.get((sv, nfe), {})
        loss = (
            f"{_fmt(t.get('train_loss'), '.4g')} -> {_fmt(t.get('val_loss'), '.4g')} "
            f"({_fmt(t.get('init_train_loss'), '.4g')} -> {_fmt(t.get('init_val_loss'), '.4g')})"
        )
        lines.append(
            f"| {sv} | {nfe} | {d:.4g} | {six[best]:.4g} | {best} | {d / six[best]:.3f} | "
            f"{loss} | {t.get('init', '-')} | {t.get('iterations', '-')} |"
        )
    return "\n".join(lines) + "\n"


METRIC_TABLES = (
    ("rmse", "psnr", "RMSE / PSNR (dB) to the reference at t_min, solver output as is"),
    ("rmse_x0", "psnr_x0", "RMSE / PSNR (dB) +x0: same final data-prediction step for all"),
    ("nll", None, "NLL (nats) under the mixture, as is (below data NLL = too concentrated)"),
    ("nll_x0", None, "NLL (nats) under the mixture, +x0 (below data NLL = too concentrated)"),
    ("fd", None, "FD-MNIST to the held-out digits, as is"),
    ("fd_x0", None, "FD-MNIST to the held-out digits, +x0"),
)


def markdown(result: dict) -> str:
    rows, lines = result["rows"], []
    lines.append(f"# Schedule quality benchmark ({result['mode']} mode)\n")
    lines.append(f"Command: `{result['command']}`  ")
    m = result["machine"]
    lines.append(f"{common.machine_line(m)} Total wall time {result['total_s']:.1f} s.\n")
    lines.append(
        "Fair comparison: every schedule is judged by the solver's output under its documented "
        "end convention (HSO's multistep flavour stops at its t_eps, the others at t_min), "
        "compared with the exact PF-ODE solution from the same x_T carried to t_min. `+x0`: "
        "every method gets the same final data-prediction step (NFE + 1, counted). Bold: best "
        "schedule of the row. All models use the `ddpm` process.\n"
    )
    if result.get("merged"):
        k = result["merged"]
        lines.append(
            f"Rows of {', '.join(k['models'])} are kept from an earlier run (`{k['command']}`, "
            f"{k['total_s']:.1f} s, load average at start {k['load_average']}); the model-free "
            "optimiser timings and the other models' rows are from the command above.\n"
        )
    lines.append("## Optimiser wall time\n")
    lines.append(_timing_table(result["timings"]))
    for name, info in result["models"].items():
        lines.append(f"## {name}\n")
        lines.append(info["description"] + "\n")
        summary = direct_summary(rows, result["timings"], name)
        if summary:
            lines.append(
                "### direct vs the best of time-uniform / logSNR / Karras / DMN / HSO / AYS\n"
            )
            lines.append(
                "RMSE to the reference on the evaluation noise (never seen by the optimiser); "
                "losses: mean RMSE on direct's training / held-out batches, at the returned "
                "schedule and (in brackets) at its initialisation.\n"
            )
            lines.append(summary)
        for key, second, title in METRIC_TABLES:
            t = _table(rows, name, key, second)
            if t:
                lines.append(f"### {title}\n")
                lines.append(t)
        lines.append(
            "Cells won per schedule (lower is better): "
            + "; ".join(
                f"{k}: {winners(rows, name, k)}"
                for k, _, _ in METRIC_TABLES
                if any(k in r for r in rows if r["model"] == name)
            )
            + "\n"
        )
    return "\n".join(lines)


CSV_FIELDS = (
    "model",
    "solver",
    "schedule",
    "flavour",
    "nfe",
    "t_end",
    "rmse",
    "psnr",
    "nll",
    "fd",
    "nfe_x0",
    "rmse_x0",
    "psnr_x0",
    "nll_x0",
    "fd_x0",
    "nonfinite",
    "nonfinite_x0",
)


def write_csv(rows, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(rows, model: str, path: Path) -> None:
    """RMSE vs NFE, one subplot per solver, one line per schedule (dashed: +x0)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    sub = [r for r in rows if r["model"] == model]
    solv = [s for s in SOLVERS if any(r["solver"] == s for r in sub)]
    fig, axes = plt.subplots(1, len(solv), figsize=(2.9 * len(solv) + 0.6, 3.0), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["black", "grey", "olive"]
    colours = dict(zip(ALL_SCHEDULES, palette, strict=False))
    for ax, sv in zip(axes[0], solv, strict=True):
        for sc in ALL_SCHEDULES:
            pts = sorted(
                (r["nfe"], r["rmse"], r["rmse_x0"])
                for r in sub
                if r["solver"] == sv and r["schedule"] == sc
            )
            if not pts:
                continue
            n, e, e0 = (np.array(v, float) for v in zip(*pts, strict=True))
            ax.plot(n, e, "o-", ms=3, color=colours[sc], label=sc)
            ax.plot(n + 1, e0, "x--", ms=3, lw=0.8, color=colours[sc])
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(sv, fontsize=9)
        ax.set_xlabel("NFE", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("RMSE to reference", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"{model}: solid = solver output, dashed = +x0 (NFE + 1)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_samples(grid: dict, ref, path: Path, n_show: int = 8) -> None:
    """MNIST samples at NFE 5: one row per schedule (reference on top), one column per solver."""
    plt = _plt()
    solv = list(grid)
    scheds = [s for s in ALL_SCHEDULES if s in grid[solv[0]]]
    rows = ["reference"] + scheds
    fig, axes = plt.subplots(
        len(rows),
        len(solv),
        squeeze=False,
        figsize=(len(solv) * n_show * 0.45 + 1.2, len(rows) * 0.5 + 0.5),
    )
    for j, sv in enumerate(solv):
        for i, lab in enumerate(rows):
            imgs = np.asarray(ref if lab == "reference" else grid[sv][lab])[:n_show]
            strip = np.concatenate([np.clip(im[..., 0], -1, 1) for im in imgs], axis=1)
            ax = axes[i][j]
            ax.imshow(strip, cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(lab, rotation=0, ha="right", va="center", fontsize=7)
            if i == 0:
                ax.set_title(f"{sv}, NFE {SAMPLE_GRID_NFE}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _describe(spec: ModelSpec, ref, cfg_model: dict, fd) -> tuple[str, dict]:
    n = int(spec.x_T.shape[0])
    info = dict(samples=n, key_id=spec.key_id, **cfg_model)
    if spec.gm is not None:
        from hso_jax.evaluation import gmm_nll

        info["nll_reference"] = float(gmm_nll(spec.gm, ref))
        info["nll_data"] = float(gmm_nll(spec.gm, spec.data[:n]))
        text = (
            f"{spec.gm.num_components}-component Gaussian mixture in {spec.gm.dim}-D, {n} "
            f"samples; NLL of the reference samples {info['nll_reference']:.3f}, of {n} exact "
            f"data samples {info['nll_data']:.3f}; PSNR data range {spec.data_range:.3g}."
        )
    else:
        info["fd_reference"] = fd(ref) if fd is not None else None
        text = (
            f"Shipped MNIST UNet, {n} samples; FD-MNIST of the reference samples "
            f"{_fmt(info['fd_reference'], '.3f')} (the floor for this sample count)."
        )
    text += f" Reference solve: {info['reference_s']:.1f} s (tolerance {info['ref_tol']})."
    return text, info


def run_model(name, cfg, args, optimised, timings, prefix, out) -> tuple[list, dict]:
    n = cfg["samples"][name]
    spec = build_model(name, n, args.seed, demo_batch=args.trajectory)
    tol = cfg["ref_tol"][name]
    _log(f"[{name}] reference PF-ODE solve of {n} samples (cached)")
    ref, ref_s = _timed(lambda: reference(spec, tol, args.cache_dir))
    if spec.gm is not None:
        spec.data_range = float(jnp.max(ref) - jnp.min(ref))
    nfes = args.nfe or cfg["nfes"][name]
    ays = None
    if "AYS" not in args.skip:
        _log(f"[{name}] AYS search at NFE {max(nfes)}")
        ays_opts = cfg["ays"]["gm" if spec.gm is not None else "mnist"]
        ays, t = optimise_ays(spec, max(nfes), ays_opts, args.seed, warm=spec.gm is not None)
        timings.append(t)
    fd = FDMnist() if name == "mnist" else None
    solver_names = cfg["solvers"].get(name, tuple(SOLVERS))
    traj = None
    if args.trajectory:

        def baselines(nfe, flavour):
            return schedules_for(spec.model.noise, nfe, flavour, optimised, ays)

        traj, t = optimise_trajectory(spec, nfes, solver_names, cfg, args, baselines)
        timings += t
    rows, grid = evaluate_model(
        spec, ref, nfes, solver_names, optimised, ays, fd, cfg["fd_nfes"], traj
    )
    desc, info = _describe(
        spec,
        ref,
        dict(
            reference_s=ref_s,
            ref_tol=tol or "float32 floor",
            nfes=list(nfes),
            solvers=list(solver_names),
        ),
        fd,
    )
    if ays is not None:
        info["ays_t"] = {n: ays_schedule(spec.model.noise, ays, n).tolist() for n in nfes}
    if traj is not None:
        info["trajectory_t"] = {"/".join(map(str, k)): v.tolist() for k, v in traj.items()}
    plot_errors(rows, name, out / f"{prefix}_{name}.png")
    if grid:
        plot_samples(grid, ref, out / f"{prefix}_mnist_samples.png")
    info["description"] = desc
    return rows, info


# --------------------------------------------------------------------------------------
# --flow: flow-matching models (SD3's shift), every optimiser against the pipelines' baselines
# --------------------------------------------------------------------------------------

FLOW_PRESET = "sd3"  # RectifiedFlow, t in [0, 1], static shift 3.0
FLOW_NFES = (4, 6, 8, 10)
FLOW_SOLVERS = {"Euler": solvers.euler, "UniPC-bh2": solvers.unipc}
FLOW_SAMPLES = {"gm2d": 1024, "gm64d": 512}
FLOW_OPT = dict(
    ays=dict(num_samples=256, max_sweeps=4, subdivide=1, refine_sweeps=3, candidates=7),
    teacher=dict(teacher_points=60),
    teacher_batch=128,
    direct=dict(steps=40, learning_rate=0.1),
    direct_batch=128,
)


def _to_pipeline(t, nfe: int) -> np.ndarray:
    """A schedule as a flow pipeline runs it: its last point set to 0, where flow pipelines end
    (pasted as ``sigmas=t[:-1]``, diffusers' FlowMatch schedulers append the 0); ``nfe`` steps.
    The last step, into sigma = 0, returns the data prediction."""
    t = np.array(t, np.float64)
    if t.shape[0] != nfe + 1:
        raise ValueError(f"schedule has {t.shape[0]} points for NFE {nfe}: {t}")
    t[-1] = 0.0
    return t


def flow_schedules(closed, open_, model, x_teach, x_direct, data, nfe, cache, timings):
    """Every schedule of the flow study at one NFE, as pipelines run them (see ``--flow``).

    Optimisers get ``nfe`` steps on the open range of ``open_`` (finite log-SNR at both ends),
    whose end is then replaced by 0 (:func:`_to_pipeline`); baselines come from the closed
    preset.
    ``model = (name, Denoiser on open_)``; ``cache`` keeps the model-free schedules (shared by
    the models) and each model's AYS result (optimised once, interpolated to every NFE)."""
    tag, model_open = model
    out = {
        "default": schedules.flow_default(closed, nfe),
        "beta": schedules.beta(closed, nfe),
        "OSS-flux": schedules.optimal_steps(closed, nfe, model="flux"),
        "logSNR": schedules.logsnr_uniform(open_, nfe),
    }
    m = nfe

    def timed(label, fn):
        res, secs = _timed(fn)
        timings.append(
            dict(model=tag, method=label, nfe=nfe, seconds=secs, warnings=list(res.warnings))
        )
        return res.t

    for label, method in (("HSO", "hso"), ("DMN", "dmn")):
        if (label, nfe) not in cache:
            cache[(label, nfe)] = timed(label, lambda method=method: optimize(open_, m, method))
        out[label] = cache[(label, nfe)]
    if (
        "AYS",
        tag,
    ) not in cache:  # once at the largest NFE, log-linearly interpolated (as optimize_ays)
        cache[("AYS", tag)] = _timed(
            lambda: optimize(
                model_open,
                max(FLOW_NFES),
                method="ays",
                data=data,
                key=jax.random.key(7),
                **FLOW_OPT["ays"],
            )
        )
        secs = cache[("AYS", tag)][1]
        timings.append(dict(model=tag, method="AYS", nfe=max(FLOW_NFES), seconds=secs))
    out["AYS"] = ays_schedule(open_, cache[("AYS", tag)][0], m)
    teacher = dict(x_T=x_teach, **FLOW_OPT["teacher"])
    # the exact variant: the configuration the committed flow study was run with
    out["GITS"] = timed(
        "GITS", lambda: optimize(model_open, m, method="gits", variant="exact", **teacher)
    )
    out["MEP-model"] = timed(
        "MEP-model", lambda: optimize(model_open, m, method="mep-model", **teacher)
    )
    for name, make in FLOW_SOLVERS.items():
        out[f"direct/{name}"] = timed(
            f"direct/{name}",
            lambda make=make: optimize(
                model_open, m, method="direct", solver=make(), x_T=x_direct, **FLOW_OPT["direct"]
            ),
        )
    return {k: _to_pipeline(v, nfe) for k, v in out.items()}


def run_flow_model(name, args, closed, open_, cache, timings):
    """RMSE to the reference (t = 1 -> 0) of every (schedule, solver, NFE) on one mixture."""
    gm = common.mixture(name)
    n = FLOW_SAMPLES[name] if args.samples is None else args.samples
    k_eval, k_teach, k_direct, k_data = jax.random.split(jax.random.key(args.seed), 4)
    x_T = jax.random.normal(k_eval, (n, gm.dim))  # pure noise at t = 1
    model = gm.denoiser(closed, prediction="flow")  # a flow-matching network: exact velocity
    model_open = gm.denoiser(open_, prediction="flow")
    x_teach = jax.random.normal(k_teach, (FLOW_OPT["teacher_batch"], gm.dim))
    x_direct = jax.random.normal(k_direct, (FLOW_OPT["direct_batch"], gm.dim))
    data = gm.sample(k_data, 4096)
    ref, ref_s = _timed(lambda: reference_solve(model, x_T, 1.0, 0.0))
    _log(f"{name}: reference 1 -> 0 in {ref_s:.1f} s")
    rows, scheds = [], {}
    nfes = args.nfe or FLOW_NFES
    bar = _progress(len(nfes), f"flow {name}")
    for nfe in nfes:
        ts = flow_schedules(
            closed, open_, (name, model_open), x_teach, x_direct, data, nfe, cache, timings
        )
        scheds.update({f"{k}/{nfe}": v.tolist() for k, v in ts.items()})
        sol = {k: make() for k, make in FLOW_SOLVERS.items()}
        for rec in evaluate_grid(model, x_T, ref, {k: jnp.asarray(v) for k, v in ts.items()}, sol):
            direct_for = rec.schedule.split("/")[1] if rec.schedule.startswith("direct/") else None
            if direct_for is not None and direct_for != rec.solver:
                continue  # direct is optimised for one solver
            label = "direct" if direct_for else rec.schedule
            rows.append(
                dict(
                    model=name,
                    nfe=nfe,
                    solver=rec.solver,
                    schedule=label,
                    rmse=float(rec.metrics["rmse"]),
                )
            )
        bar.update(1)
    bar.close()
    info = dict(dim=gm.dim, samples=n, reference_s=ref_s, preset=FLOW_PRESET)
    return rows, scheds, info


FLOW_BASELINES = ("default", "beta", "OSS-flux", "logSNR")
FLOW_METHODS = ("HSO", "DMN", "AYS", "GITS", "MEP-model", "direct")


def flow_markdown(result: dict) -> str:
    """RMSE tables (schedule x NFE) per model and solver, best per column in bold."""
    lines = [
        "# Flow-matching oracle study (SD3's shift 3.0)",
        "",
        f"Command: `{result['command']}`; total {result['total_s'] / 60:.1f} min on "
        f"{result['machine'].get('cpu', 'CPU')} (load at the end "
        f"{result['machine'].get('load_average_end')}).",
        "",
        "RMSE to the exact PF-ODE solution from the same pure noise at t = 1 to the data at "
        "t = 0 (tight diffrax solve), Gaussian mixtures wrapped as flow-matching networks "
        "(exact velocity). Every schedule runs as a flow pipeline runs it, NFE steps ending at "
        "t = 0 (the last step returns the data prediction): the optimisers' schedules (NFE "
        "steps on t in [1e-3, 0.999], start as optimised, x_T taken as the state there) with "
        "their end point replaced by 0 (pasted as `sigmas=t[:-1]`, the FlowMatch schedulers "
        "append the 0). Baselines: `default` = SD3's shifted uniform "
        "(FlowMatchEulerDiscreteScheduler), `beta` = Beta(0.6, 0.6) quantiles (ComfyUI), "
        "`OSS-flux` = the Optimal-Steps Flux table log-linearly interpolated, `logSNR` = uniform "
        "in log-SNR on [1e-3, 0.999], end replaced by 0.",
        "",
    ]
    rows = result["rows"]
    for model in result["models"]:
        for solver in FLOW_SOLVERS:
            sub = [r for r in rows if r["model"] == model and r["solver"] == solver]
            nfes = sorted({r["nfe"] for r in sub})
            if not sub:
                continue
            lines += [
                f"## {model}, {solver}",
                "",
                "| schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                "|---|" + "---|" * len(nfes),
            ]
            best = {n: min(r["rmse"] for r in sub if r["nfe"] == n) for n in nfes}
            for sched in FLOW_BASELINES + FLOW_METHODS:
                cells = []
                for n in nfes:
                    v = [r["rmse"] for r in sub if r["nfe"] == n and r["schedule"] == sched]
                    c = f"{v[0]:.4f}" if v else "-"
                    cells.append(f"**{c}**" if v and v[0] == best[n] else c)
                lines.append(f"| {sched} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main_flow(args) -> dict:
    """``--flow``: write ``quality_flow.{md,json}`` (``--merge`` keeps the other models)."""
    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "quality_flow"
    closed, open_ = preset(FLOW_PRESET), preset("flow")
    models = [m for m in args.models if m in FLOW_SAMPLES]
    rows, infos, scheds, timings, kept = [], {}, {}, [], None
    if args.merge and (out / f"{prefix}.json").is_file():
        old = json.loads((out / f"{prefix}.json").read_text())
        keep = [m for m in old["models"] if m not in models]
        kept = dict(models=keep, command=old["command"])
        infos = {m: old["models"][m] for m in keep}
        rows = [r for r in old["rows"] if r["model"] in keep]
        scheds = {k: v for k, v in old["schedules"].items() if k.split("/")[0] in keep}
    cache = {}
    for name in models:
        jax.clear_caches()
        r, sc, info = run_flow_model(name, args, closed, open_, cache, timings)
        rows += r
        infos[name] = info
        scheds.update({f"{name}/{k}": v for k, v in sc.items()})
        result = dict(
            mode="flow",
            command=" ".join([Path(sys.executable).name, *sys.argv]),
            machine=common.machine_info(),
            settings=dict(nfes=args.nfe or FLOW_NFES, **FLOW_OPT),
            timings=timings,
            models=infos,
            rows=rows,
            schedules=scheds,
            total_s=time.perf_counter() - t_all,
        )
        if kept:
            result["merged"] = kept
        result["machine"]["load_average_end"] = list(os.getloadavg())
        (out / f"{prefix}.md").write_text(flow_markdown(result))
        (out / f"{prefix}.json").write_text(json.dumps(result, indent=1, default=_json_default))
        _log(f"wrote {out}/{prefix}.md, .json ({', '.join(infos)})")
    return result


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings (< 5 min on 2 cores)")
    ap.add_argument(
        "--trajectory",
        action="store_true",
        help="the trajectory-based optimisers (direct, GITS official and exact, MEP-model) "
        "against all others, NFE 4-6, DDIM / DPM-Solver++(2M) / UniPC-bh2 / iPNDM",
    )
    ap.add_argument(
        "--flow",
        action="store_true",
        help="flow-matching oracle study: gm2d / gm64d under SD3's flow, every optimiser vs the "
        "pipelines' baselines, Euler and UniPC, NFE 4-10 (quality_flow.*)",
    )
    ap.add_argument("--samples", type=int, default=None, help="--flow: samples per mixture")
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    ap.add_argument("--out", default="benchmarks/results", help="output folder")
    ap.add_argument("--nfe", default=None, help="comma-separated NFEs (overrides the mode's)")
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of x_T and AYS (mixtures: benchmarks/common.py)"
    )
    ap.add_argument("--cache-dir", default=None, help="reference cache (default ~/.cache)")
    ap.add_argument("--skip", default="", help="comma-separated optimisers to skip (AYS)")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other models' rows of the mode's existing result file in --out and "
        "replace only --models (recorded in the result)",
    )
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = sorted(set(args.models) - set(MODELS))
    if bad or not args.models:
        ap.error(f"--models must be a subset of {MODELS}, got {bad or args.models}")
    args.nfe = tuple(int(v) for v in args.nfe.split(",")) if args.nfe else None
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.quick and args.trajectory:
        ap.error("--quick and --trajectory are separate modes: choose one")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.flow:
        return main_flow(args)
    t_all = time.perf_counter()
    mode = "quick" if args.quick else "trajectory" if args.trajectory else "full"
    cfg = {"quick": QUICK, "full": FULL, "trajectory": TRAJ}[mode]
    prefix = {"quick": "quality_quick", "full": "quality", "trajectory": "quality_trajectory"}[mode]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = common.machine_info()

    all_nfes = sorted({n for m in args.models for n in (args.nfe or cfg["nfes"][m])})
    flavours = {SOLVERS[s][1] for m in args.models for s in cfg["solvers"].get(m, SOLVERS)}
    _log(f"mode {mode}: models {args.models}, NFE {all_nfes}")
    optimised, timings = optimise_model_free(preset(NOISE), all_nfes, flavours)

    rows, models, kept = [], {}, None
    if args.merge and (out / f"{prefix}.json").is_file():
        old = json.loads((out / f"{prefix}.json").read_text())
        keep = [m for m in old["models"] if m not in args.models]
        kept = dict(
            models=keep,
            command=old["command"],
            total_s=old["total_s"],
            load_average=old["machine"].get(
                "load_average_start", old["machine"].get("load_average")
            ),
        )
        models = {m: old["models"][m] for m in keep}
        rows = [r for r in old["rows"] if r["model"] in keep]
        # model-free optimiser timings (no "model" key) come from this run
        timings += [t for t in old["timings"] if t.get("model") in keep]
    for name in args.models:
        # free the executables of the previous model: XLA's CPU JIT maps memory per
        # executable, and a full --trajectory run once died in LLVM with "Cannot allocate
        # memory" (24 GiB free) late in its MNIST evaluation
        jax.clear_caches()
        r, info = run_model(name, cfg, args, optimised, timings, prefix, out)
        rows += r
        models[name] = info
        # written after every model, so a late failure keeps the finished models
        result = dict(
            mode=mode,
            command=" ".join([Path(sys.executable).name, *sys.argv]),
            machine=machine,
            settings=dict(cfg),
            timings=timings,
            models=models,
            rows=rows,
            schedules={f"{lab}/{fl}/{n}": t.tolist() for (lab, fl, n), t in optimised.items()},
            winners={m: {k: winners(rows, m, k) for k, _, _ in METRIC_TABLES} for m in models},
            total_s=time.perf_counter() - t_all,
        )
        if kept:
            result["merged"] = kept
        write_results(result, out, prefix)
    return result


def write_results(result: dict, out: Path, prefix: str) -> None:
    """``<out>/<prefix>.{md,csv,json}`` of the models finished so far."""
    result["machine"]["load_average_end"] = list(os.getloadavg())
    (out / f"{prefix}.md").write_text(markdown(result))
    write_csv(result["rows"], out / f"{prefix}.csv")
    (out / f"{prefix}.json").write_text(json.dumps(result, indent=1, default=_json_default))
    _log(
        f"wrote {out}/{prefix}.md, .csv, .json ({', '.join(result['models'])}) "
        f"at {result['total_s']:.1f} s"
    )


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    main()
