"""What every benchmark script shares: the machine record, the result files, the named test
mixtures and batched sampling of a stack of schedules.

The Gaussian mixtures are named once here, so that a name means one mixture in every study:

* ``gm2d``: 8 equal components on a ring of radius 0.8 in 2-D, std 0.05;
* ``gm64d``: 8 equal-weight components in 64-D, means ``0.5 N(0, I)``, stds ``U(0.1, 0.2)``
  (seeded; pairwise mean distances ~5.7 against stds ~0.15).

Scripts import this module as ``common`` (they run as ``python benchmarks/<script>.py``, which
puts this folder on ``sys.path``).
"""

from __future__ import annotations

import functools
import json
import os
import platform
from pathlib import Path
from typing import Any

import jax
import numpy as np

import hso_jax as hj

__all__ = [
    "MIXTURE_SEED",
    "machine_info",
    "mixture",
    "mixture_64d",
    "ring_mixture",
    "sample_stack",
    "write_results",
]

MIXTURE_SEED = 0  # the seed of gm64d's means and stds in every study


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Host and JAX facts recorded with every result (the load average says whether other jobs
    shared the cores while the benchmark ran)."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "load_average_start": load,
    }


def machine_line(m: dict[str, Any]) -> str:
    """One Markdown line describing :func:`machine_info`'s record."""
    return (
        f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['backend']}), JAX {m['jax']}, Python "
        f"{m['python']}; load average at start {m['load_average_start']}."
    )


def write_results(out: Path, stem: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (``data``) and ``<stem>.md`` (``markdown``) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    js.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    md.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    return js, md


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (np.ndarray, jax.Array)):
        return np.asarray(v).tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def ring_mixture(radius: float = 0.8, std: float = 0.05, k: int = 8) -> hj.models.GaussianMixture:
    """``k`` equal components on a circle of ``radius`` in 2-D (``gm2d`` with the defaults)."""
    ang = 2.0 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return hj.models.GaussianMixture(means, std)


def mixture_64d(seed: int = MIXTURE_SEED) -> hj.models.GaussianMixture:
    """``gm64d``: 8 components in 64-D with seeded means and stds."""
    rng = np.random.default_rng(seed)
    means = 0.5 * rng.standard_normal((8, 64))
    stds = rng.uniform(0.1, 0.2, size=8)
    return hj.models.GaussianMixture(means, stds)


def mixture(name: str) -> hj.models.GaussianMixture:
    """The mixture a study means by ``name`` (``gm2d`` or ``gm64d``)."""
    if name == "gm2d":
        return ring_mixture()
    if name == "gm64d":
        return mixture_64d()
    raise ValueError(f"unknown mixture {name!r}; known: 'gm2d', 'gm64d'")


@functools.partial(jax.jit, static_argnames=("solver", "denoise_final"))
def sample_stack(model, x_T, ts_stack, solver, denoise_final: bool = False):
    """Samples ``(G, B, ...)`` of ``G`` equal-length schedules (rows of ``ts_stack``) from the
    same ``x_T``, in one vmapped compiled call; with ``denoise_final`` also the samples after
    one data-prediction step at each schedule's last time."""

    def one(ts):
        x = hj.sample(model, x_T, ts, solver)
        return (x, model.x0(x, ts[-1])) if denoise_final else x

    return jax.vmap(one)(ts_stack)
