"""Solvers: pure, jit-able, differentiable functions of the schedule, run by one scan driver."""

from .base import Solver
from .ddim import DDIM, ddim
from .driver import Trajectory, sample, sample_trajectory

__all__ = ["Solver", "DDIM", "ddim", "sample", "sample_trajectory", "Trajectory"]
