"""Evaluation: metrics, grid evaluation (sharded), and -- re-exported from
:mod:`hso_jax.reference` -- reference solutions and teacher trajectories.

See :mod:`hso_jax.evaluation.grid` for the fair-comparison protocol.
"""

from ..reference import (
    REFERENCE_SOLVERS,
    Teacher,
    cache,
    cached_reference,
    default_cache_dir,
    reference_cache_path,
    reference_solve,
    reference_trajectory,
    teacher_trajectories,
)
from . import grid, metrics
from .grid import GridRecord, evaluate_grid, format_table, make_batch_mesh, shard_batch
from .metrics import (
    fd_mnist,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_samples,
    gmm_nll,
    mean_psnr,
    mean_rmse,
    psnr,
    rmse,
    sliced_wasserstein,
)

__all__ = [
    "REFERENCE_SOLVERS",
    "GridRecord",
    "Teacher",
    "cache",
    "cached_reference",
    "default_cache_dir",
    "evaluate_grid",
    "fd_mnist",
    "feature_statistics",
    "format_table",
    "frechet_distance",
    "frechet_distance_from_samples",
    "gmm_nll",
    "grid",
    "make_batch_mesh",
    "mean_psnr",
    "mean_rmse",
    "metrics",
    "psnr",
    "reference_cache_path",
    "reference_solve",
    "reference_trajectory",
    "rmse",
    "shard_batch",
    "sliced_wasserstein",
    "teacher_trajectories",
]
