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

Model-based (need a :class:`~hso_jax.Denoiser`):

* ``"ays"`` -- Align Your Steps (``data=``, ``key=``; see
  :func:`hso_jax.optimizers.ays.optimize_ays`);
* ``"direct"`` -- gradient descent on the held-out sample error through the solver
  (``x_T=``; :func:`hso_jax.optimizers.direct.optimize_direct`);
* ``"gits"`` -- dynamic programming over a fine grid with the local truncation error along
  teacher trajectories (``x_T=``; :func:`hso_jax.optimizers.gits.optimize_gits`);
* ``"mep-model"`` -- HSO's bi-level search on the MEP with the true network term tabulated
  along teacher trajectories (``x_T=``; :mod:`hso_jax.objectives.mep_model`).

Solvers: ``"unipc"`` and ``"dpm-solver-pp"`` (multistep, NFE + 1 points) and ``"ddim"``
(NFE optimised points plus the fixed final point ``t_min``); see
:mod:`hso_jax.optimizers.hso`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .denoiser import Denoiser
from .noise import NoiseSchedule
from .optimizers._trajectory import TEACHER_OPTIONS
from .optimizers.hso import METHODS as _HSO_METHODS
from .optimizers.hso import OPTIONS as _HSO_OPTIONS
from .optimizers.hso import SOLVERS as _HSO_SOLVERS
from .optimizers.hso import optimize_hso
from .optimizers.result import OptimizeResult

__all__ = ["optimize", "METHODS", "MODEL_FREE", "MODEL_BASED", "SOLVERS"]

MODEL_FREE = tuple(m for m in _HSO_METHODS if m != "mep-model")
MODEL_BASED = ("ays", "direct", "gits", "mep-model")
METHODS = MODEL_FREE + MODEL_BASED
_TEACHER = TEACHER_OPTIONS
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
      method: one of ``"hso"`` (default), ``"hso-dmn"``, ``"mep-local"``, ``"dmn"`` (model-free)
        or ``"ays"``, ``"direct"``, ``"gits"``, ``"mep-model"`` (model-based).
      solver: ``"unipc"`` (default), ``"dpm-solver-pp"`` or ``"ddim"`` (the HSO flavours); for
        ``"ays"``, ``"direct"`` and ``"gits"`` any factory name of :mod:`hso_jax.solvers` or a
        solver object.
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
        * ``"ays"``: ``key``, ``data`` and the options of ``optimize_ays``;
        * ``"direct"``: ``x_T`` (required), ``reference``, ``x_T_val``, ``reference_val``,
          ``val_fraction``, ``init`` (warm start: a schedule, an OptimizeResult or a dict of
          them), ``steps``, ``learning_rate``, ``patience``, ... (``optimize_direct``);
        * ``"gits"``, ``"mep-model"``: the teacher, ``x_T`` (required unless ``teacher``, a
          :class:`~hso_jax.evaluation.Teacher`, is given), ``teacher_points`` (100),
          ``teacher_grid`` (``"logsnr"``), ``teacher_rtol`` / ``teacher_atol`` (1e-4);
          ``"gits"``: ``coeff``; ``"mep-model"``: the options of ``"hso"`` except ``p`` and
          ``frame``.

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

    if method in MODEL_BASED:
        return _model_based(model_or_noise, nfe, method, solver, int(seed), options)

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
    import jax

    from .optimizers.ays import optimize_ays  # lazy: model-based, heavier imports

    options = dict(options)
    key = options.pop("key", None)
    if key is None:
        key = jax.random.key(seed)
    data = options.pop("data", None)
    return optimize_ays(model, nfe, solver=solver, key=key, data=data, **options)


def _model_based(model, nfe: int, method: str, solver, seed: int, options: dict):
    from .optimizers._trajectory import check_model

    check_model(model, method)
    if method == "ays":
        return _ays(model, nfe, solver, seed, options)
    if method == "direct":
        import inspect

        from .optimizers.direct import optimize_direct

        params = inspect.signature(optimize_direct).parameters
        known = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k != "solver")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for method='direct'; known options: {known}"
            )
        return optimize_direct(model, nfe, solver=solver, **options)
    if method == "gits":
        from .optimizers.gits import optimize_gits

        return optimize_gits(model, nfe, solver=solver, **options)
    return _mep_model(model, nfe, solver, seed, options)


def _mep_model(model, nfe: int, solver, seed: int, options: dict) -> OptimizeResult:
    import time

    from .objectives.mep_model import mep_table
    from .optimizers._trajectory import teacher_from_options

    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS} for method='mep-model', got {solver!r}")
    teacher_opts = {k: options[k] for k in _TEACHER if k in options}
    search_opts = {k: v for k, v in options.items() if k not in _TEACHER}
    known = _HSO_OPTIONS["mep-model"]
    unknown = sorted(set(search_opts) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method='mep-model'; known options: "
            f"{sorted(known + _TEACHER)}"
        )
    t0 = time.perf_counter()
    teacher, teacher_info = teacher_from_options(model, "mep-model", teacher_opts)
    table = mep_table(teacher)
    teacher_s = time.perf_counter() - t0
    res = optimize_hso(
        model.noise, nfe, method="mep-model", solver=solver, seed=seed, table=table, **search_opts
    )
    res.info.update(teacher_info)
    res.info["timings"]["teacher_s"] = teacher_s
    return res
