"""Schedule optimisers.

* :mod:`~hso_jax.optimizers.de` -- differential evolution (best1bin, deferred), one jit-able loop;
* :mod:`~hso_jax.optimizers.refine` -- Optax L-BFGS refinement of a lam grid with fixed ends;
* :mod:`~hso_jax.optimizers.hso` -- HSO (bi-level) and its single-level relatives;
* :mod:`~hso_jax.optimizers.ays` -- Align Your Steps (imported on use);
* :mod:`~hso_jax.optimizers.direct` -- gradient descent on the held-out sample error through
  the solver (imported on use);
* :mod:`~hso_jax.optimizers.gits` -- GITS, dynamic programming on a teacher grid (imported on
  use).

The public entry point is :func:`hso_jax.optimize`.
"""

from .de import DEResult, differential_evolution, latin_hypercube
from .hso import init_family, karras_lam, optimize_hso
from .refine import RefineResult, lam_from_logits, logits_from_lam, refine
from .result import OptimizeResult

__all__ = [
    "DEResult",
    "OptimizeResult",
    "RefineResult",
    "differential_evolution",
    "init_family",
    "karras_lam",
    "lam_from_logits",
    "latin_hypercube",
    "logits_from_lam",
    "optimize_hso",
    "refine",
]
