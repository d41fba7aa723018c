"""MEP-model: HSO's bi-level search on the Midpoint Error Proxy with the network's own term.

The closed-form MEP of :mod:`~hso_jax.optimizers.hso` models the data prediction; here its
network term is tabulated along teacher trajectories of the model
(:func:`hso_jax.objectives.mep_table`, :mod:`hso_jax.objectives.mep_model`), and the same
bi-level search (differential evolution over the Karras family, L-BFGS below) minimises it.
The options are HSO's (but ``p`` and ``frame``, which shape the closed form) and the teacher's
(:data:`~hso_jax.optimizers.model_inputs.TEACHER_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import time

from ..objectives.mep_model import mep_table
from .base import given_options
from .hso import optimize_hso
from .hso_config import Variant, add_variant, register_variant
from .model_inputs import TEACHER_FIELDS, TEACHER_OPTIONS, teacher_from_options
from .result import OptimizeResult

__all__ = ["MEP_MODEL", "optimize_mep_model"]

MEP_MODEL = add_variant(Variant("mep-model", bilevel=True, objective="mep-model"))


def optimize_mep_model(problem, nfe: int, solver, options, seed: int) -> OptimizeResult:
    """The teacher, its MEP table, then the bi-level search (the registered method's run)."""
    opts = given_options(options)
    teacher_opts = {k: opts.pop(k) for k in TEACHER_OPTIONS if k in opts}
    t0 = time.perf_counter()
    teacher, teacher_info = teacher_from_options(problem.model, "mep-model", teacher_opts)
    table = mep_table(teacher)
    teacher_s = time.perf_counter() - t0
    res = optimize_hso(
        problem.noise, nfe, method="mep-model", solver=solver, seed=seed, table=table,
        **problem.conventions(), **opts,
    )  # fmt: skip
    timings = {**res.info["timings"], "teacher_s": teacher_s}
    return dataclasses.replace(res, info={**res.info, **teacher_info, "timings": timings})


register_variant(
    MEP_MODEL,
    optimize_mep_model,
    "HSO's search on the Midpoint Error Proxy with the network's term, tabulated along teacher "
    "trajectories",
    extra=TEACHER_FIELDS,
    inputs=("x_T",),
)
