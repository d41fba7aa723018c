"""Solvers: pure, jit-able, differentiable functions of the schedule, run by one scan driver.

Factories (paper defaults as keyword arguments, validated eagerly) return small immutable
solver objects; :func:`sample` / :func:`sample_trajectory` run any of them over a schedule.

=====================================  ====================  =====  ==========================
factory                                method                calls  order
=====================================  ====================  =====  ==========================
``ddim()``                             DDIM / DPM-Solver-1   1      1
``ddim(eta=1.0)``                      stochastic DDIM       1      (SDE)
``dpm_solver_pp(order=2)``             DPM-Solver++(2M/3M)   1      order
``dpm_solver_pp(3, "singlestep")``     DPM-Solver++(2S/3S)   order  order
``sde_dpm_solver_pp(order=2)``         SDE-DPM-Solver++(2M)  1      (SDE)
``unipc(order=2)``                     UniPC bh1 / bh2       1      order + 1 with corrector
``ipndm(order=4)``                     iPNDM                 1      order on sigma-uniform grids
``euler()``                            EDM Euler             1      1
``heun()``                             EDM Heun              2      2
=====================================  ====================  =====  ==========================

"calls" is network evaluations per step: a schedule of n + 1 points costs ``calls * n``.
"""

from .base import Solver
from .ddim import DDIM, ddim
from .dpm_solver_pp import DPMSolverPP, DPMSolverPPSinglestep, dpm_solver_pp
from .driver import Trajectory, sample, sample_trajectory
from .euler import Euler, euler
from .heun import Heun, heun
from .ipndm import IPNDM, ipndm
from .sde_dpm_solver_pp import SDEDPMSolverPP, sde_dpm_solver_pp
from .unipc import UniPC, unipc

__all__ = [
    "Solver",
    "sample",
    "sample_trajectory",
    "Trajectory",
    # factories
    "ddim",
    "dpm_solver_pp",
    "sde_dpm_solver_pp",
    "unipc",
    "ipndm",
    "euler",
    "heun",
    # solver classes
    "DDIM",
    "DPMSolverPP",
    "DPMSolverPPSinglestep",
    "SDEDPMSolverPP",
    "UniPC",
    "IPNDM",
    "Euler",
    "Heun",
]
