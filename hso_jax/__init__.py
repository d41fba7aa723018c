"""hso_jax: optimised sampling schedules for diffusion models, in JAX."""

from . import batch, evaluation, io, models, noise, optimizers, schedules, solvers
from .denoiser import Denoiser
from .optimize import optimize
from .solvers import sample, sample_trajectory

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "batch",
    "evaluation",
    "io",
    "models",
    "noise",
    "optimize",
    "optimizers",
    "sample",
    "sample_trajectory",
    "schedules",
    "solvers",
    "__version__",
]
