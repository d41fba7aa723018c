"""Schedule optimisers.

* :mod:`~hso_jax.optimizers.de` -- differential evolution (best1bin, deferred), one jit-able loop;
* :mod:`~hso_jax.optimizers.refine` -- Optax L-BFGS refinement of a lam grid with fixed ends;
* :mod:`~hso_jax.optimizers.hso` -- HSO, the bi-level search (entry point of the HSO family);
* :mod:`~hso_jax.optimizers.single_level` -- DM-NonUniform's single-level optimiser (and
  ``"mep-local"``);
* :mod:`~hso_jax.optimizers.hso_config` -- :class:`HSOConfig`, the validated options of both;
* :mod:`~hso_jax.optimizers.ays` -- Align Your Steps;
* :mod:`~hso_jax.optimizers.direct` -- gradient descent on the held-out sample error through
  the solver;
* :mod:`~hso_jax.optimizers.gits` -- GITS, dynamic programming on a teacher grid;

* :mod:`~hso_jax.optimizers.mep_model` -- HSO's search on the model-aware MEP.

Every method registers itself in :data:`REGISTRY` (:mod:`~hso_jax.optimizers.base`: the
:class:`Method` contract); the public entry point is :func:`hso_jax.optimize`.
"""

from . import ays, direct, gits, mep_model  # noqa: F401 (they register their methods)
from .base import REGISTRY, Method, Problem, UnknownOptionError, method, register
from .de import DEResult, differential_evolution, latin_hypercube
from .hso import init_family, karras_lam, optimize_hso
from .hso_config import HSOConfig
from .refine import RefineResult, lam_from_logits, logits_from_lam, refine
from .result import OptimizeResult
from .single_level import optimize_dmn

__all__ = [
    "DEResult",
    "HSOConfig",
    "Method",
    "OptimizeResult",
    "Problem",
    "REGISTRY",
    "UnknownOptionError",
    "method",
    "register",
    "RefineResult",
    "differential_evolution",
    "init_family",
    "karras_lam",
    "lam_from_logits",
    "latin_hypercube",
    "logits_from_lam",
    "optimize_dmn",
    "optimize_hso",
    "refine",
]
