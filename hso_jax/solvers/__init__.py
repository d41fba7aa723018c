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
``heun()``                             Heun (EDM / flow t)   2      2
=====================================  ====================  =====  ==========================

"calls" is network evaluations per step: a schedule of n + 1 points costs ``calls * n``.
The multistep methods (DPM-Solver++, SDE-DPM-Solver++, UniPC, iPNDM) carry their previous
evaluations in a :class:`History`.

**Flow models: the ends sigma = 1 and sigma = 0.** A flow pipeline's schedule runs from t = 1
(alpha = 0, lam = -inf) to t = 0 (sigma = 0, lam = +inf). Every multistep solver takes these
ends as limits: the step from sigma = 1 is first order (``x_1 = sigma_1 x_T + alpha_1 D``), a
data prediction at sigma = 1 does not count as history (its divided differences in lam vanish),
and a step into sigma = 0 is first order and returns the data prediction (diffusers' rule for
``final_sigmas_type="zero"``); iPNDM's step into sigma~ = 0 is finite as it stands. Samples and
gradients w.r.t. every point with finite lam are finite. Methods without such a limit refuse the
schedule with a ``ValueError``: singlestep DPM-Solver++ (intermediate points of an infinite
step), UniPC ``bh1`` with its corrector from sigma = 1 (weight B(h) = h), Heun in EDM variables
from sigma = 1. ``heun()`` integrates rectified flow in model time (diffusers'
FlowMatchHeunDiscreteScheduler); Euler and DDIM are the same method (diffusers'
FlowMatchEulerDiscreteScheduler). Parity with diffusers' flow schedulers is tested step by step
in ``tests/test_flow_solvers.py``.
"""

from .base import MultistepSolver, Solver
from .ddim import DDIM, ddim
from .dpm_solver_pp import DPMSolverPP, DPMSolverPPSinglestep, dpm_solver_pp
from .driver import Trajectory, sample, sample_trajectory
from .euler import Euler, euler
from .heun import Heun, heun
from .history import History
from .ipndm import IPNDM, ipndm
from .sde_dpm_solver_pp import SDEDPMSolverPP, sde_dpm_solver_pp
from .unipc import UniPC, unipc

__all__ = [
    "Solver",
    "MultistepSolver",
    "sample",
    "sample_trajectory",
    "Trajectory",
    "History",
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
