"""hso_jax: optimised sampling schedules for diffusion models, in JAX.

The subpackages and the top-level names load on first use (PEP 562), so ``import hso_jax``
costs milliseconds and the ``hso-jax`` command can take charge of Ctrl-C before JAX loads.
"""

from __future__ import annotations

from . import _startup

_startup.exit_at_once_in_commands()  # first: Ctrl-C while a command starts gives one line

from . import _lazy  # noqa: E402

__version__ = "0.1.0"

_SUBMODULES = (
    "batch",
    "denoiser",
    "evaluation",
    "export",
    "io",
    "models",
    "noise",
    "objectives",
    "optimizers",
    "reference",
    "schedules",
    "solvers",
)
_OBJECTS = {  # name -> the module that defines it
    "Denoiser": "denoiser",
    "optimize": "optimization",
    "sample": "solvers",
    "sample_trajectory": "solvers",
}

__all__ = sorted((*_SUBMODULES, *_OBJECTS, "__version__"))


__getattr__, __dir__ = _lazy.attributes(__name__, globals(), _SUBMODULES, _OBJECTS)

