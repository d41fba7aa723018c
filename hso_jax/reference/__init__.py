"""Reference solutions: the exact probability-flow ODE solve, teacher trajectories on a fine
grid, and the on-disk cache of reference solutions.

This layer sits below the objectives and optimisers that need an exact solution (KLUB's model
samples, direct's targets, GITS / MEP-model's teachers) and above the solvers and models;
:mod:`hso_jax.evaluation` re-exports it for users.
"""

from . import cache, solve, teacher
from .cache import cached_reference, default_cache_dir, reference_cache_path
from .solve import REFERENCE_SOLVERS, reference_solve, reference_trajectory
from .teacher import GRIDS, Teacher, teacher_trajectories

__all__ = [
    "GRIDS",
    "REFERENCE_SOLVERS",
    "Teacher",
    "cache",
    "cached_reference",
    "default_cache_dir",
    "reference_cache_path",
    "reference_solve",
    "reference_trajectory",
    "solve",
    "teacher",
    "teacher_trajectories",
]
