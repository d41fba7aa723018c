"""Shared input handling of the model-based optimisers (direct, GITS, model-aware MEP, AYS)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import _validate, solvers
from ..denoiser import Denoiser, check_denoiser
from ._ends import lam_is_finite

__all__ = [
    "resolve_solver",
    "check_model",
    "check_noise_batch",
    "teacher_from_options",
    "fixed_end",
    "to_data_end",
]

Array = Any

# Options every teacher-based method accepts (see ``teacher_from_options``), as dataclass
# fields (name, type, field) of the methods' Options.
TEACHER_FIELDS = (
    ("x_T", Any, dataclasses.field(default=None)),
    ("teacher", Any, dataclasses.field(default=None)),
    ("teacher_points", int, dataclasses.field(default=100)),
    ("teacher_grid", Any, dataclasses.field(default=None)),  # None: logsnr, or time on [0, 1]
    ("teacher_rtol", float, dataclasses.field(default=1e-4)),
    ("teacher_atol", float, dataclasses.field(default=1e-4)),
    ("teacher_batch_size", Any, dataclasses.field(default=None)),
    ("teacher_solver", str, dataclasses.field(default="exact")),  # or "ipndm"
    ("mesh", Any, dataclasses.field(default=None)),
    ("callback", Any, dataclasses.field(default=None)),  # the teacher's progress
)
TEACHER_OPTIONS = tuple(name for name, _, _ in TEACHER_FIELDS)


def resolve_solver(solver) -> tuple[solvers.Solver, str]:
    """A solver object and its name; strings name a factory of :mod:`hso_jax.solvers`."""
    if isinstance(solver, solvers.Solver):
        return solver, type(solver).__name__
    factories = sorted(
        n for n in solvers.__all__ if n[:1].islower() and n not in ("sample", "sample_trajectory")
    )
    known = [n.replace("_", "-") for n in factories]
    if not isinstance(solver, str) or solver.replace("_", "-") not in known:
        raise ValueError(
            f"solver must be a hso_jax solver object or one of {known} (its factory with default "
            f"arguments), got {solver!r}"
        )
    return getattr(solvers, solver.replace("-", "_"))(), solver.replace("_", "-")


def check_model(model, method: str) -> Denoiser:
    """``model`` if it is a Denoiser, else ``TypeError`` naming the method that needs one."""
    return check_denoiser(model, f"method={method!r} needs one: it evaluates the network")


def check_noise_batch(name: str, x, method: str, min_batch: int = 1) -> Array:
    """A concrete floating ``(B, ...)`` batch of initial noise with ``B >= min_batch``."""
    if x is None:
        raise ValueError(
            f"method={method!r} needs {name}=<initial noise, shape (B, ...)>, e.g. "
            f"model.noise.prior(jax.random.key(0), (32, *sample_shape))"
        )
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array of shape (B, ...), got {type(x).__name__}")
    x = jnp.asarray(x)
    if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a floating array of shape (B, ...) with ndim >= 2, got dtype "
            f"{x.dtype} and shape {tuple(x.shape)}"
        )
    if x.shape[0] < min_batch:
        raise ValueError(f"{name} must hold at least {min_batch} samples, got {x.shape[0]}")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def teacher_from_options(model: Denoiser, method: str, opts: dict) -> tuple[Any, dict]:
    """The teacher trajectories of a method: ``opts["teacher"]`` if given, else computed from
    ``opts["x_T"]`` on a fine grid (in chunks of ``teacher_batch_size`` samples, split over
    ``mesh``; per-sample conditions of the model go with their noises). Returns the teacher
    and a description for ``info``."""
    # imported here: the reference solve brings diffrax (about a second), which the
    # model-free searches that share this module's options never need
    from ..reference.teacher import SOLVERS, Teacher, teacher_trajectories

    teacher = opts.get("teacher")
    if teacher is not None:
        if not isinstance(teacher, Teacher):
            raise TypeError(
                "teacher must be a hso_jax.evaluation.Teacher (from teacher_trajectories), got "
                f"{type(teacher).__name__}"
            )
        k = int(np.shape(teacher.t)[0])
        b = int(teacher.x.shape[1])
        return teacher, {"teacher": "given", "teacher_points": k, "teacher_batch": b}
    x_T = check_noise_batch("x_T", opts.get("x_T"), method)
    points = opts.get("teacher_points", 100)
    # a uniform lam grid is undefined on a range with an infinite lam end (a flow's [0, 1])
    finite = lam_is_finite(model.noise, model.noise.t_max) and lam_is_finite(
        model.noise, model.noise.t_min
    )
    grid = opts.get("teacher_grid")
    grid = ("logsnr" if finite else "time") if grid is None else grid
    rtol = opts.get("teacher_rtol", 1e-4)
    atol = opts.get("teacher_atol", 1e-4)
    size, mesh = opts.get("teacher_batch_size"), opts.get("mesh")
    solver = _validate.choice("teacher_solver", opts.get("teacher_solver", "exact"), SOLVERS)
    teacher = teacher_trajectories(
        model,
        x_T,
        num_points=points,
        grid=grid,
        rtol=rtol,
        atol=atol,
        batch_size=size,
        mesh=mesh,
        solver=solver,
        callback=opts.get("callback"),
    )
    info = {
        "teacher": "computed",
        "teacher_solver": solver,
        "teacher_points": int(teacher.t.shape[0]),
        "teacher_grid": grid if isinstance(grid, str) else "user",
        "teacher_batch": int(x_T.shape[0]),
        "teacher_batch_size": size,
    }
    if solver == "exact":
        info.update(teacher_rtol=rtol, teacher_atol=atol)
    return teacher, info


def fixed_end(end, method: str) -> str:
    """The end of a method whose schedules run from ``t_max`` to a fixed final point:
    ``"t_min"`` (default) or ``"zero"`` (the data end); a free end is not theirs."""
    if end is None:
        return "t_min"
    if end not in ("t_min", "zero"):
        raise ValueError(
            f"method={method!r} ends its schedules at t_min or at the data (end='t_min' or "
            f"'zero'), got end={end!r}; the free end is the HSO family's (method='hso')"
        )
    return end


def to_data_end(t: np.ndarray, method: str) -> tuple[np.ndarray, str]:
    """``t`` (ending at ``t_min``) with its last point moved to the data end ``t = 0``, and
    the warning that says the last interval was optimised to ``t_min``."""
    t = np.array(t, np.float64)
    t_min = float(t[-1])
    t[-1] = 0.0
    return t, (
        f"{method} optimised the schedule with its last interval ending at t_min = {t_min:.6g}; "
        "the last step here goes to the data (t = 0) from the same points (end='zero'), as "
        "a runtime with a final sigma of 0 runs it"
    )
