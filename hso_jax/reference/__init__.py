"""Reference solutions: the exact probability-flow ODE solve, teacher trajectories on a fine
grid, and the on-disk cache of reference solutions.

This layer sits below the objectives and optimisers that need an exact solution (KLUB's model
samples, direct's targets, GITS / MEP-model's teachers) and above the solvers and models;
:mod:`hso_jax.evaluation` re-exports it for users.

Its submodules load on first use (PEP 562): the cache's folder rules are needed by every
command, diffrax (a second or more to import) only by a reference solve.
"""

from __future__ import annotations

from .. import _lazy

_SUBMODULES = ("cache", "solve", "teacher")
_OBJECTS = {  # name -> the submodule that defines it
    "GRIDS": "teacher",
    "REFERENCE_SOLVERS": "solve",
    "Teacher": "teacher",
    "cached_reference": "cache",
    "default_cache_dir": "cache",
    "reference_cache_path": "cache",
    "reference_solve": "solve",
    "reference_trajectory": "solve",
    "teacher_trajectories": "teacher",
}

__all__ = sorted((*_SUBMODULES, *_OBJECTS))


__getattr__, __dir__ = _lazy.attributes(__name__, globals(), _SUBMODULES, _OBJECTS)
