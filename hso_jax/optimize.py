"""``hso_jax.optimize``: one entry point for every schedule optimiser.

Model-free methods (need only the noise process; a :class:`~hso_jax.Denoiser` or a
:class:`~hso_jax.noise.NoiseSchedule` is accepted):

* ``"hso"`` -- Hierarchical Schedule Optimization: differential evolution over the Karras
  initialisation family ``(rho, t_eps, T_max)``, each candidate refined by L-BFGS under the
  Midpoint Error Proxy, scored by the Spacing-Penalized Fitness (default);
* ``"hso-dmn"`` -- the same bi-level search with the DM-NonUniform objective;
* ``"mep-local"`` -- the lower level alone (MEP) from Karras ``rho = 7``;
* ``"dmn"`` -- the lower level alone with the DM-NonUniform objective from its recommended
  initialisation (DM-NonUniform, CVPR 2024).

Model-based: ``"ays"`` -- Align Your Steps (needs a Denoiser; ``data=``, ``key=``; see
:func:`hso_jax.optimizers.ays.optimize_ays`).

Solvers: ``"unipc"`` and ``"dpm-solver-pp"`` (multistep, NFE + 1 points) and ``"ddim"``
(NFE optimised points plus the fixed final point ``t_min``); see
:mod:`hso_jax.optimizers.hso`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .denoiser import Denoiser
from .noise import NoiseSchedule
from .optimizers.hso import METHODS as _HSO_METHODS
from .optimizers.hso import OPTIONS as _HSO_OPTIONS
from .optimizers.hso import SOLVERS as _HSO_SOLVERS
from .optimizers.hso import optimize_hso
from .optimizers.result import OptimizeResult

__all__ = ["optimize", "METHODS", "SOLVERS"]

METHODS = _HSO_METHODS + ("ays",)
SOLVERS = _HSO_SOLVERS


def optimize(
    model_or_noise: Denoiser | NoiseSchedule,
    nfe: int,
    method: str = "hso",
    solver: str = "unipc",
    seed: int = 66,
    **options: Any,
) -> OptimizeResult:
    """Optimise a sampling schedule for ``nfe`` network evaluations.

    Args:
      model_or_noise: a :class:`~hso_jax.Denoiser` (its ``noise`` is used by the model-free
        methods) or a :class:`~hso_jax.noise.NoiseSchedule` (model-free methods only).
      nfe: network evaluations of the sampler the schedule is for (integer >= 2).
      method: one of ``"hso"`` (default), ``"hso-dmn"``, ``"mep-local"``, ``"dmn"``, ``"ays"``.
      solver: ``"unipc"`` (default), ``"dpm-solver-pp"`` or ``"ddim"``; for ``"ays"`` any
        solver name :func:`~hso_jax.optimizers.ays.optimize_ays` accepts.
      seed: integer seed of the search (official HSO seed 66); the same seed gives the same
        result. For ``"ays"`` it makes the key when ``key=`` is not given.
      **options: method options (unknown names raise ``ValueError``):

        * all HSO-family methods: ``p`` (eps_tilde exponent, 2), ``frame`` (``"vp"`` |
          ``"native"``), ``gamma`` (penalty weight, 1e9), ``local_maxiter`` (100),
          ``local_gtol`` (1e-9, relative gradient at which it stops; converged is reported at
          1e-6), ``local_ftol`` (1e-13);
        * ``"hso"``, ``"hso-dmn"``: ``popsize`` (20), ``maxiter`` (60), ``tol`` (0.01),
          ``mutation`` ((0.5, 1.0)), ``recombination`` (0.7), ``polish`` (True), ``bounds``
          (((3, 16), (0.01, 0.03), (0.96, 1.0)) for rho, t_eps, T_max in normalised time);
        * ``"mep-local"``, ``"dmn"``: ``t_start``, ``t_end``, ``init`` (``"karras"``,
          ``"logsnr"``, ``"time"``, ``"quadratic"``), ``rho`` (7, Karras init);
        * ``"dmn"``, ``"hso-dmn"``: ``trunc_num`` (None = HSO's rule);
        * ``"ays"``: ``key``, ``data`` and the options of ``optimize_ays``.

    Returns:
      :class:`~hso_jax.optimizers.OptimizeResult` with ``t`` (decreasing model times),
      ``timesteps`` (discrete models), ``sigmas``, ``lambdas``, ``objective``, ``penalty``,
      ``params`` (``rho``, ``t_eps``, ``T_max`` for the bi-level methods), ``info``
      (generations, lower-level convergence, timings cold / warm, fitness history) and
      ``warnings`` (nothing is dropped silently).

    Raises:
      TypeError / ValueError on invalid input, naming the argument and what is allowed.
    """
    if isinstance(model_or_noise, Denoiser):
        noise = model_or_noise.noise
    elif isinstance(model_or_noise, NoiseSchedule):
        noise = model_or_noise
    else:
        raise TypeError(
            "model_or_noise must be a hso_jax.Denoiser or a hso_jax.noise.NoiseSchedule "
            f"(e.g. hso_jax.noise.preset('sd21')), got {type(model_or_noise).__name__}"
        )
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)):
        raise TypeError(f"nfe must be an integer >= 2, got {nfe!r}")
    nfe = int(nfe)
    if nfe < 2:
        raise ValueError(f"nfe must be an integer >= 2, got {nfe}")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")

    if method == "ays":
        return _ays(model_or_noise, nfe, solver, int(seed), options)

    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS} for method={method!r}, got {solver!r}")
    known = _HSO_OPTIONS[method]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method={method!r}; known options: {sorted(known)}"
        )
    return optimize_hso(noise, nfe, method=method, solver=solver, seed=int(seed), **options)


def _ays(model, nfe: int, solver, seed: int, options: dict) -> OptimizeResult:
    if not isinstance(model, Denoiser):
        raise TypeError(
            "method='ays' needs a hso_jax.Denoiser (it evaluates the network), got "
            f"{type(model).__name__}"
        )
    import jax

    from .optimizers.ays import optimize_ays  # lazy: model-based, heavier imports

    options = dict(options)
    key = options.pop("key", None)
    if key is None:
        key = jax.random.key(seed)
    data = options.pop("data", None)
    return optimize_ays(model, nfe, solver=solver, key=key, data=data, **options)
