"""GITS against its official code: the same teacher, cost matrix and schedules (run once).

What it does: runs the official GITS implementation (``gits-main/gits_utils.py`` of
zju-pi/diff-sampler, a checkout given by ``--official``) and ``hso_jax``'s
:func:`~hso_jax.optimizers.gits.optimize_gits` on the same problem and compares them step by
step:

* data: the 64-D Gaussian mixture ``gm64d`` of :mod:`benchmarks.common`, under EDM's process
  (``sigma`` in ``[0.002, 80]``), its exact denoiser wrapped as the official ``net(x, sigma)``
  on images of shape ``(1, 8, 8)``;
* noise: 256 warm-up samples ``EDM.prior(key(SEED), (256, 64))``, handed to the official code
  in place of its ``torch.randn`` draw (``--batch=256``, so its single round sees all of them);
* official settings (its command-line defaults and launch script): 60-step iPNDM teacher
  (``max_order=4``) on a 61-point polynomial ``rho = 7`` grid, ``coeff = 1.15``, metrics
  ``dev`` (default) and ``l2``, ``num_steps = NFE + 1`` for NFE 3..10, ``afs=False``;
* the official code runs in float64 (``torch.set_default_dtype``), so the comparison is of the
  algorithms, not of float32 rounding.

Compared: the teacher states (max abs difference), every cost matrix entry (max abs difference
relative to the largest cost), and the grid indices of the schedules, which must be equal.

Writes ``benchmarks/results/gits_official.{md,json}``; ``tests/test_gits.py`` reads the official
indices from the JSON and checks that the library reproduces them. Run (a minute)::

    git -C <diff-sampler mirror> archive HEAD gits-main | tar -x -C /tmp/gits
    .venv/bin/python benchmarks/gits_official.py --official /tmp/gits/gits-main
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import hso_jax as hj  # noqa: E402
from hso_jax.optimizers.gits import gits_cost_matrix, optimize_gits  # noqa: E402
from hso_jax.reference.teacher import teacher_trajectories  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, mixture_64d, write_results  # noqa: E402

SEED = 7
WARMUP = 256
NFES = tuple(range(3, 11))
METRICS = ("dev", "l2")
EDM = hj.noise.preset("edm")
SHAPE = (1, 8, 8)
OUT = Path(__file__).resolve().parent / "results"


def problem():
    """The denoiser and the warm-up noise both implementations receive."""
    model = mixture_64d().denoiser(EDM)
    x_T = EDM.prior(jax.random.key(SEED), (WARMUP, 64))
    return model, np.asarray(x_T, np.float64)


def run_official(path: Path, model, x_T: np.ndarray) -> dict:
    """Teacher, cost matrices and schedules of the official code on ``(model, x_T)``."""
    import torch
    import torch.distributed as tdist

    sys.path.insert(0, str(path))
    import gits_utils  # the official module (needs its solvers / solver_utils / torch_utils)
    import solvers

    torch.set_default_dtype(torch.float64)
    if not tdist.is_initialized():
        tdist.init_process_group("gloo", init_method="tcp://127.0.0.1:29531", rank=0, world_size=1)

    class Net(torch.nn.Module):
        img_channels, img_resolution, label_dim = SHAPE[0], SHAPE[1], 0
        sigma_min, sigma_max = float(EDM.t_min), float(EDM.t_max)

        def forward(self, x, sigma, class_labels=None):
            y = np.asarray(x.detach().cpu().numpy(), np.float64).reshape(x.shape[0], -1)
            d = model.x0(jax.numpy.asarray(y), float(sigma))
            return torch.from_numpy(np.asarray(d, np.float64).reshape(x.shape))

    latents = torch.from_numpy(x_T.reshape(WARMUP, *SHAPE) / float(EDM.t_max))
    kwargs = dict(
        dataset_name="gm64d",
        num_warmup=WARMUP,
        max_batch_size=WARMUP,
        sigma_min=float(EDM.t_min),
        sigma_max=float(EDM.t_max),
        num_steps_tea=61,
        schedule_type="polynomial",
        schedule_rho=7.0,
        afs=False,
        coeff=1.15,
        model_source="edm",
        solver_tea="ipndm",
        solver="ipndm",
        max_order=4,
        prompt=None,
        denoise_to_zero=False,
    )
    net, real_randn, out = Net(), torch.randn, {"indices": {}, "cost": {}}
    torch.randn = lambda *a, **k: latents.clone()
    try:
        for metric in METRICS:
            for nfe in NFES:
                t0 = time.perf_counter()
                dp = gits_utils.get_dp_list(
                    net, torch.device("cpu"), **kwargs, metric=metric, num_steps=nfe + 1
                )
                out["indices"][f"{metric}/{nfe}"] = [int(i) for i in dp]
                out.setdefault("seconds", {})[f"{metric}/{nfe}"] = time.perf_counter() - t0
            # the cost matrix is not returned: rebuild it from the same steps the official
            # loop takes, with its own cal_deviation (for the comparison of entries)
            out["cost"][metric] = official_cost(gits_utils, solvers, net, latents, kwargs, metric)
    finally:
        torch.randn = real_randn
    return out


def official_cost(gits_utils, solvers, net, latents, kwargs, metric):
    """The official cost matrix, by the official loop (``get_dp_list`` keeps it local)."""
    import torch

    t_steps = solvers.get_schedule(61, kwargs["sigma_min"], kwargs["sigma_max"], schedule_rho=7)
    traj, eps = solvers.ipndm_sampler(
        net, latents, t_steps=t_steps, max_order=4, return_inters=True, return_eps=True
    )
    k, bs = 61, latents.shape[0]
    dev_tea = gits_utils.cal_deviation(traj, SHAPE[0], SHAPE[1], bs=bs).mean(dim=0)
    dev_tea = torch.cat([dev_tea, torch.zeros_like(dev_tea[:1])])
    cost = np.zeros((k, k))
    for i in range(k - 1):
        for j in range(i + 1, k):
            x_next = traj[i] + (t_steps[j] - t_steps[i]) * eps[i]
            if metric == "l2":
                cost[i, j] = float(torch.norm(x_next - traj[j], p=2, dim=(1, 2, 3)).mean())
            else:
                temp = torch.stack((traj[0], x_next, traj[-1]))
                dev = gits_utils.cal_deviation(temp, SHAPE[0], SHAPE[1], bs=bs).mean(dim=0)
                cost[i, j] = float(dev - dev_tea[j - 1])
    return {"matrix": cost, "teacher": traj.numpy().reshape(k, bs, -1)}


def run_ours(model, x_T: np.ndarray) -> dict:
    teacher = teacher_trajectories(
        model, jax.numpy.asarray(x_T), num_points=61, grid="karras", solver="ipndm"
    )
    out = {"indices": {}, "cost": {}, "seconds": {}, "teacher": np.asarray(teacher.x)}
    for metric in METRICS:
        out["cost"][metric] = gits_cost_matrix(teacher, EDM, metric)
        for nfe in NFES:
            t0 = time.perf_counter()
            res = optimize_gits(model, nfe, solver="ipndm", teacher=teacher, metric=metric)
            out["indices"][f"{metric}/{nfe}"] = res.params["indices"]
            out["seconds"][f"{metric}/{nfe}"] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", type=Path, required=True, help="the checkout's gits-main/")
    p.add_argument("--out", type=Path, default=OUT, help="results directory")
    args = p.parse_args(argv)
    if not (args.official / "gits_utils.py").is_file():
        p.error(f"argument --official: no gits_utils.py in {args.official}")
    model, x_T = problem()
    print("official code ...", file=sys.stderr)
    off = run_official(args.official, model, x_T)
    print("hso_jax ...", file=sys.stderr)
    ours = run_ours(model, x_T)

    teacher_diff = float(np.max(np.abs(ours["teacher"] - off["cost"]["dev"]["teacher"])))
    rows, cost_diff, equal = [], {}, True
    for metric in METRICS:
        a, b = ours["cost"][metric], off["cost"][metric]["matrix"]
        upper = np.triu(np.ones(a.shape, bool), 1)
        cost_diff[metric] = float(np.max(np.abs(a[upper] - b[upper])) / np.max(np.abs(b[upper])))
        for nfe in NFES:
            key = f"{metric}/{nfe}"
            same = ours["indices"][key] == off["indices"][key]
            equal &= same
            rows.append(
                f"| {metric} | {nfe} | {off['indices'][key]} | "
                f"{'equal' if same else ours['indices'][key]} |"
            )
    data = {
        "problem": {
            "mixture": "gm64d",
            "noise": "edm",
            "x_T": f"EDM.prior(jax.random.key({SEED}), ({WARMUP}, 64))",
            "teacher": "60-step iPNDM (order 4), 61-point polynomial rho = 7 grid",
            "coeff": 1.15,
            "nfes": NFES,
        },
        "official_indices": off["indices"],
        "hso_jax_indices": ours["indices"],
        "all_equal": equal,
        "teacher_max_abs_diff": teacher_diff,
        "cost_max_rel_diff": cost_diff,
        "official_seconds": off["seconds"],
        "machine": machine_info(),
    }
    md = "\n".join(
        [
            "# GITS: hso_jax against the official code",
            "",
            f"gm64d under EDM, {WARMUP} warm-up noises (seed {SEED}), official settings (60-step "
            "iPNDM teacher on a 61-point rho = 7 grid, coeff 1.15), both in float64.",
            "",
            f"- teacher states: max |difference| {teacher_diff:.3g}",
            "- cost matrices: max |difference| / max |cost| "
            + ", ".join(f"{m} {v:.3g}" for m, v in cost_diff.items()),
            f"- schedules: {'all equal' if equal else 'DIFFERENT (see table)'}",
            "",
            "| metric | NFE | official grid indices | hso_jax |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    write_results(args.out, "gits_official", data, md)
    print(md)
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
