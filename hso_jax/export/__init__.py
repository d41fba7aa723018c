"""Exports: an optimised schedule in diffusers, k-diffusion or ComfyUI, run exactly as
optimised (the same network calls, times, end and update), and the check that runs it there.

* :func:`target` / :data:`TARGETS`: the runtimes' schedulers and samplers, each with the
  hso_jax solver it equals and the config that makes it so (:mod:`~hso_jax.export.targets`);
* :func:`export`: a schedule for a target (values, config, :meth:`Export.snippet`);
* :func:`diffusers_scheduler`: a diffusers scheduler that steps through an export, for the
  schedulers without a custom-schedule argument (UniPC, FlowMatchHeun, flow DPM-Solver++);
* :func:`check`: run the export in the target's own code on an analytic Gaussian mixture;
  count the network calls, record their times, compare the sample with :func:`hso_jax.sample`.
"""

from .check import CheckReport, check, check_mixture
from .diffusers import diffusers_scheduler
from .render import Export, export, for_target
from .targets import PROCESSES, RUNTIMES, TARGETS, Target, process_kind, target

__all__ = [
    "PROCESSES",
    "RUNTIMES",
    "TARGETS",
    "CheckReport",
    "Export",
    "Target",
    "check",
    "check_mixture",
    "diffusers_scheduler",
    "export",
    "for_target",
    "process_kind",
    "target",
]
