"""Schedules: validation, baseline discretisations, published tables, flow defaults, exports.

A schedule is a 1-D array of model times ``t``, strictly decreasing, inside the noise
process's ``[t_min, t_max]`` (its last point may also be the data end ``t = 0``): ``ts[0]`` is
the start time (most noise), ``ts[-1]`` the end time. Every baseline here is
``f(noise, nfe, ...) -> ts`` with ``nfe + 1`` points, i.e. ``nfe`` intervals. A multistep solver
(DDIM, DPM-Solver++(2M), UniPC) spends exactly ``nfe`` network evaluations on such a schedule
(one per interval, at its left end); a solver with ``k`` calls per step spends ``k * nfe``
(see ``Solver.num_points``).

One module per idea:

* :mod:`~hso_jax.schedules.check`: :func:`check_schedule`, the ends (:data:`ENDS`,
  :func:`end_of`) and the training-step grid (:func:`on_training_steps`);
* :mod:`~hso_jax.schedules.baselines`: time-uniform, time-quadratic, logSNR-uniform, Karras,
  polyexponential, KL-optimal and their spacing formulas;
* :mod:`~hso_jax.schedules.published`: the AYS and Optimal-Steps tables;
* :mod:`~hso_jax.schedules.flow`: the flow pipelines' default schedules and Beta;
* :mod:`~hso_jax.schedules.export`: :func:`to_diffusers` and :func:`to_comfyui`, exactly as the
  schedule is (nothing appended or rounded; :mod:`hso_jax.export` has the per-scheduler
  targets, adapters and checks).

:data:`BASELINES` is the one name -> schedule table the rest of the package uses.
"""

from __future__ import annotations

import types

import jax

from ..noise import NoiseSchedule
from ._common import C_RANGE, RHO_RANGE, eval_float64
from .baselines import (
    karras,
    karras_sigmas,
    kl_optimal,
    kl_optimal_sigmas,
    loglinear_interp,
    logsnr_uniform,
    polyexponential,
    polyexponential_sigmas,
    time_quadratic,
    time_uniform,
)
from .check import (
    ENDS,
    GRIDS,
    RANGE_RTOL,
    check_on_steps,
    check_schedule,
    end_of,
    on_training_steps,
)
from .export import FLOW_SCHEDULER_CONFIG, to_comfyui, to_diffusers
from .flow import BETA_VARIANTS, beta, flow_default
from .published import AYS_TABLES, OSS_TABLES, ays, optimal_steps

__all__ = [
    "check_schedule",
    "time_uniform",
    "time_quadratic",
    "logsnr_uniform",
    "karras",
    "polyexponential",
    "kl_optimal",
    "RHO_RANGE",
    "C_RANGE",
    "ays",
    "AYS_TABLES",
    "flow_default",
    "beta",
    "BETA_VARIANTS",
    "optimal_steps",
    "OSS_TABLES",
    "karras_sigmas",
    "polyexponential_sigmas",
    "kl_optimal_sigmas",
    "loglinear_interp",
    "to_diffusers",
    "to_comfyui",
    "ENDS",
    "GRIDS",
    "end_of",
    "on_training_steps",
    "check_on_steps",
    "FLOW_SCHEDULER_CONFIG",
    "BASELINES",
    "baseline",
    "RANGE_RTOL",
    "eval_float64",
]

BASELINES = types.MappingProxyType(
    {
        "time": time_uniform,
        "quadratic": time_quadratic,
        "logsnr": logsnr_uniform,
        "karras": karras,
        "polyexponential": polyexponential,
        "kl-optimal": kl_optimal,
        "ays": ays,
        "default": flow_default,
        "beta": beta,
        "oss": optimal_steps,
    }
)
"""The one name -> schedule table (read-only): every ``f(noise, nfe, ...)`` of this module by
the name the rest of the package (optimisers' ``init``, teacher grids, the CLI's ``--kind``)
uses for it. ``"uniform"`` is accepted as an alias of ``"time"`` by :func:`baseline`."""

_ALIASES = {"uniform": "time"}


def baseline(name: str, noise: NoiseSchedule, nfe: int, **kwargs) -> jax.Array:
    """The baseline schedule called ``name`` in :data:`BASELINES` (``"uniform"`` = ``"time"``).

    Args:
      name: a key of :data:`BASELINES` or an alias.
      noise, nfe, kwargs: passed to the schedule function.

    Raises:
      ValueError: an unknown name (the known ones are listed).
    """
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if not isinstance(key, str) or key not in BASELINES:
        raise ValueError(
            f"unknown baseline schedule {name!r}; known: {sorted(BASELINES)} (alias "
            "'uniform' = 'time')"
        )
    return BASELINES[key](noise, nfe, **kwargs)
