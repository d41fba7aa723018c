"""``hso_jax.optimize``: one entry point for every schedule optimiser (the method registry's).

The model is a :class:`~hso_jax.Denoiser`, a plain JAX network ``fn(x, t_in)`` with
``noise=`` (preset name or :class:`~hso_jax.noise.NoiseSchedule`), ``prediction=`` (default
``"eps"``) and ``time_input=`` (default ``"auto"``) -- the arguments of
:class:`~hso_jax.Denoiser` -- or, for the model-free methods, just a
:class:`~hso_jax.noise.NoiseSchedule`::

    res = hso_jax.optimize(model_fn, nfe=5, noise="sd21")     # HSO, eps-prediction network
    res = hso_jax.optimize(hso_jax.noise.preset("sd21"), nfe=5, solver=hso_jax.solvers.unipc())

Model-free methods (need only the noise process; given a network they do not call it, and say
so in ``res.warnings``):

* ``"hso"`` -- Hierarchical Schedule Optimization: differential evolution over the Karras
  initialisation family ``(rho, t_eps, T_max)``, each candidate refined by L-BFGS under the
  Midpoint Error Proxy, scored by the Spacing-Penalized Fitness (default);
* ``"hso-dmn"`` -- the same bi-level search with the DM-NonUniform objective (HSO's truncNum
  rule);
* ``"mep-local"`` -- the lower level alone (MEP) from Karras ``rho = 7``;
* ``"dmn"`` -- DM-NonUniform (CVPR 2024) as its authors ship it: the DMN objective with the
  official truncNum 3, minimised from its recommended initialisation.

Model-based (call the network):

* ``"ays"`` -- Align Your Steps (``data=``, ``key=``; see
  :func:`hso_jax.optimizers.ays.optimize_ays`);
* ``"direct"`` -- gradient descent on the held-out sample error through the solver
  (``x_T=``; :func:`hso_jax.optimizers.direct.optimize_direct`);
* ``"gits"`` -- dynamic programming over a fine grid with the local truncation error along
  teacher trajectories (``x_T=``; :func:`hso_jax.optimizers.gits.optimize_gits`);
* ``"mep-model"`` -- HSO's bi-level search on the MEP with the true network term tabulated
  along teacher trajectories (``x_T=``; :mod:`hso_jax.objectives.mep_model`).

Solvers: ``"unipc"`` and ``"dpm-solver-pp"`` (multistep, NFE + 1 points; identical schedules
for the HSO family, whose objectives do not depend on the multistep solver) and ``"ddim"``
(NFE optimised points plus the fixed final point ``t_min``), or a solver object of one of these
kinds (the flavour follows its type); see :mod:`hso_jax.optimizers.hso`.

Flow models (:mod:`hso_jax.noise` presets ``sd3``, ``flux-dev``, ``wan``, ... span t in [0, 1],
where lam(1) = -inf and lam(0) = +inf). The samplers take both ends as limits; the methods built
on lam or sigma_edm are undefined there and raise ``ValueError`` naming the end: ``"dmn"`` and
``"mep-local"`` at their default ends (pass ``t_start`` / ``t_end`` inside (0, 1)), ``"ays"``,
``"gits"`` and ``"direct"`` on such a process (use ``preset("flow")``, t in [1e-3, 0.999], with
the same network). ``"hso"``, ``"hso-dmn"`` and ``"mep-model"`` search inside their box (the
MEP is +inf at t = 1, never NaN) and run as they are; ``"mep-model"``'s teacher grid is then
uniform in time. Any of these schedules is used by a flow pipeline from pure noise at its first
point; its last step may go to 0 (first order, returns the data prediction).

The tables live on the function: ``hso_jax.optimize.METHODS``, ``.MODEL_FREE``,
``.MODEL_BASED`` and ``.SOLVERS`` (the built-in methods; :data:`hso_jax.optimizers.REGISTRY`
has every registered one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from . import _validate, schedules
from ._xla_cache import enable as _enable_compile_cache
from .denoiser import Denoiser, as_denoiser
from .noise import NoiseSchedule, RectifiedFlow
from .optimizers import base
from .optimizers.hso_config import SOLVERS
from .optimizers.model_inputs import check_model, resolve_solver
from .optimizers.result import OptimizeResult
from .schedules import ENDS, GRIDS

__all__ = ["optimize", "METHODS", "MODEL_FREE", "MODEL_BASED", "SOLVERS"]

# The built-in methods, from the registry (hso_jax.optimizers.REGISTRY has every registered
# method, a user's too).
MODEL_FREE = base.names(needs_model=False)
MODEL_BASED = base.names(needs_model=True)
METHODS = MODEL_FREE + MODEL_BASED


def optimize(
    model: Denoiser | Callable | NoiseSchedule,
    nfe: int,
    method: str = "hso",
    solver: Any = None,
    seed: int = 66,
    *,
    noise: str | NoiseSchedule | None = None,
    prediction: str | None = None,
    time_input: str | Callable | None = None,
    target: Any = None,
    end: str | None = None,
    grid: str | None = None,
    **options: Any,
) -> OptimizeResult:
    """Optimise a sampling schedule for ``nfe`` network evaluations.

    Example: ``hso_jax.optimize(model_fn, nfe=5, noise="sd21")`` -- HSO's schedule for an
    eps-prediction network trained under Stable Diffusion 2.1's noise.

    Args:
      model: a :class:`~hso_jax.Denoiser`; a plain network callable ``fn(x, t_in)`` with
        ``noise=`` (it is wrapped as ``Denoiser(fn, noise, prediction, time_input)``; network
        parameters, conditioning and guidance need an explicit Denoiser); or a
        :class:`~hso_jax.noise.NoiseSchedule` (model-free methods only). The model-free
        methods use only the model's noise process and do not call the network (a warning
        in ``res.warnings`` says so).
        Conditions and guidance: a Denoiser with ``cond`` / ``uncond`` / ``guidance_scale``
        (one row per sample of ``x_T`` / ``data``, or one shared row; :mod:`hso_jax.batch`)
        is optimised for with each sample under its own condition, and the model-based
        methods return one schedule for the whole batch of conditions.
      nfe: network evaluations of the sampler the schedule is for (integer >= 2).
      method: one of ``"hso"`` (default), ``"hso-dmn"``, ``"mep-local"``, ``"dmn"`` (model-free)
        or ``"ays"``, ``"direct"``, ``"gits"``, ``"mep-model"`` (model-based); the tables
        ``optimize.METHODS``, ``optimize.MODEL_FREE``, ``optimize.MODEL_BASED``.
      solver: the sampler the schedule is for. HSO family (``"hso"``, ``"hso-dmn"``,
        ``"mep-local"``, ``"dmn"``, ``"mep-model"``): ``"unipc"`` (default),
        ``"dpm-solver-pp"`` or ``"ddim"``, or a solver object whose type picks the flavour
        (:class:`~hso_jax.solvers.UniPC`, multistep :class:`~hso_jax.solvers.DPMSolverPP`,
        :class:`~hso_jax.solvers.DDIM`). ``"unipc"`` and ``"dpm-solver-pp"`` give identical
        schedules (the MEP and DMN objectives do not depend on the multistep solver; the
        official HSO code has the UniPC and DDIM flavours only); the name is recorded in the
        result. ``"ays"``, ``"direct"``, ``"gits"``: any factory name of
        :mod:`hso_jax.solvers` or a solver object.
        Default ``"unipc"``; with ``target``, the target's solver (do not pass both).
      seed: integer seed of the search (official HSO seed 66); the same seed gives the same
        result. For ``"ays"`` it makes the key when ``key=`` is not given.
      noise: only with a callable ``model``, and required then: the noise process it was
        trained under, a preset name (:func:`hso_jax.noise.preset`, e.g. ``"sd21"``) or a
        :class:`~hso_jax.noise.NoiseSchedule`.
      prediction: only with a callable ``model``: what it returns, ``"eps"`` (default), ``"x0"``,
        ``"v"``, ``"flow"`` or ``"score"``.
      time_input: only with a callable ``model``: what it receives as time, ``"auto"`` (default:
        the continuous step index ``N t - 1`` for discrete-time processes, ``t`` otherwise),
        ``"index"``, ``"index-rounded"``, ``"t"``, ``"sigma_edm"``, ``"scaled"`` or a callable.
      target: where the schedule will run (:func:`hso_jax.export.target`, e.g.
        ``"diffusers:UniPCMultistepScheduler"``, ``"comfyui:euler"``): the schedule is
        optimised under the target's conventions -- its solver, its number of network calls,
        where its last step lands (``end``), its grid of network times (training steps for a
        discrete model in diffusers or ComfyUI) and its latest start -- so that
        :func:`hso_jax.export.export` gives the target exactly this sampler.
        ``res.info["target"]`` records it and ``res.info["sample"]`` the equal hso_jax call.
      end: where the last step lands (:data:`hso_jax.schedules.ENDS`): ``"free"`` (the HSO
        family's multistep flavour: the last point is optimised), ``"t_min"`` (a fixed final
        step to ``t_min``: HSO's DDIM flavour, the model-based methods' default) or ``"zero"``
        (a fixed final step to the data, ``t = 0``; the default on a flow model's whole range
        ``[0, 1]``, where its pipelines end). With ``target``, one of the target's (default:
        its own).
      grid: ``"continuous"`` (default) or ``"steps"``: the network points are moved onto the
        training steps of a discrete model and the result re-scored there (a target's
        grid when it has one).
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
        * ``"dmn"``, ``"hso-dmn"``: ``trunc_num``, a non-negative integer or ``"hso"`` (HSO's
          rule: 0 for N <= 5, 3 for N = 6, 7, 0 for N >= 8, from ``get_ts_lambdas`` in HSO's
          ``stages_step_optim.py``). Default for ``"dmn"``: 3, as in DM-NonUniform's official
          ``step_optim.py`` (``trunc_num="hso"`` gives this function's behaviour before it
          followed the official code); for ``"hso-dmn"``: ``"hso"``. ``info["trunc_num"]``
          reports the value used;
        * ``"ays"``: ``key``, ``data``, ``mesh`` and the options of ``optimize_ays``;
        * ``"direct"``: ``x_T`` (required), ``reference``, ``x_T_val``, ``reference_val``,
          ``cond_val`` / ``uncond_val`` (conditions of ``x_T_val``), ``val_fraction``,
          ``init`` (warm start: a schedule, an OptimizeResult or a dict of them), ``steps``,
          ``learning_rate``, ``patience``, ``remat``, ``batch_size``, ``mesh``, ...
          (``optimize_direct``);
        * ``"gits"``, ``"mep-model"``: the teacher, ``x_T`` (required unless ``teacher``, a
          :class:`~hso_jax.evaluation.Teacher`, is given), ``teacher_solver`` (``"exact"``
          or ``"ipndm"``), ``teacher_points`` (100), ``teacher_grid`` (``"logsnr"``),
          ``teacher_rtol`` / ``teacher_atol`` (1e-4), ``teacher_batch_size`` (samples per
          teacher solve), ``mesh`` (devices), ``callback`` (the teacher's progress);
          ``"gits"``: ``coeff``, ``metric`` and ``variant`` (``"official"``, the default: the
          ``"dev"`` metric and an iPNDM teacher on 61 Karras points; ``"exact"``: L2 against
          the exact teacher above); ``"mep-model"``: the options of ``"hso"`` except ``p``
          and ``frame``.

    Returns:
      :class:`~hso_jax.optimizers.OptimizeResult` with ``t`` (decreasing model times),
      ``timesteps`` (discrete models), ``sigmas``, ``lambdas``, ``objective``, ``penalty``,
      ``params`` (``rho``, ``t_eps``, ``T_max`` for the bi-level methods), ``info``
      (generations, lower-level convergence, timings cold / warm, fitness history) and
      ``warnings`` (nothing is dropped silently).

    Raises:
      TypeError / ValueError on invalid input, naming the argument and what is allowed; a
      callable ``model`` without ``noise=`` raises ``ValueError`` saying what to add.
    """
    if isinstance(model, NoiseSchedule):
        given = [
            k
            for k, v in (("noise", noise), ("prediction", prediction), ("time_input", time_input))
            if v is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(k + '=' for k in given)} only apply when model is a plain callable "
                "fn(x, t); model is already a NoiseSchedule"
            )
        noise_schedule = model
    elif isinstance(model, Denoiser) or callable(model):
        model = as_denoiser(
            model,
            noise=noise,
            prediction=prediction,
            time_input=time_input,
            example=f"hso_jax.optimize(model_fn, nfe={nfe!r}, noise='sd21')",
        )
        noise_schedule = model.noise
    else:
        raise TypeError(
            "model must be a hso_jax.Denoiser, a callable fn(x, t) with noise=... (e.g. "
            "hso_jax.optimize(model_fn, nfe=5, noise='sd21')), or a hso_jax.noise.NoiseSchedule "
            f"for the model-free methods (e.g. hso_jax.noise.preset('sd21')), got "
            f"{type(model).__name__}"
        )
    nfe = _validate.nfe(nfe, 2)
    m = base.method(method)
    seed = _validate.seed(seed)
    _enable_compile_cache()  # the persistent compilation cache (hso_jax._xla_cache)
    opts = base.build_options(m, options)
    if m.needs_model:
        check_model(model, m.name)
    solver, problem, recorded = _conventions(noise_schedule, m, solver, target, end, grid)
    problem = dataclasses.replace(problem, model=model if isinstance(model, Denoiser) else None)
    res = m.run(problem, nfe, solver, opts, int(seed))
    return _record(res, m, model, solver, recorded, noise_schedule)


_FLOW_NOTE = (
    "the same schedule for every flow model: the model-free methods see only the noise "
    "process, and SD3, Flux at any resolution and Wan at any shift are one process (the shift "
    "is a reparametrisation of time), whose log-SNR range is too wide for HSO's spacing rule; "
    "for a schedule of your model use a model-aware method (method='direct', 'gits' or "
    "'mep-model' with its network)"
)


def _conventions(noise, m: base.Method, solver, target, end, grid):
    """``(solver, problem, recorded)``: the solver to optimise for, the :class:`Problem`
    (the conventions of a target, or the ``end`` / ``grid`` asked for) and what ``info``
    records."""
    if target is not None:
        from .export.targets import target as make_target

        if solver is not None:
            raise TypeError(
                "pass solver= or target=, not both: the target fixes the solver (got "
                f"solver={solver!r}, target={getattr(target, 'name', target)!r})"
            )
        tgt = make_target(target, noise, end=end)
        if grid is not None and grid != tgt.grid:
            raise ValueError(
                f"grid={grid!r} contradicts target {tgt.name}, whose network times are on the "
                f"grid {tgt.grid!r}; leave grid out"
            )
        start_max = tgt.max_start if tgt.max_start < noise.t_max else None
        problem = base.Problem(noise, end=tgt.end, grid=tgt.grid, start_max=start_max)
        return tgt.solver(), problem, {"target": tgt.name, "target_variant": tgt.variant}
    solver = "unipc" if solver is None else solver
    if end is not None:
        _validate.choice("end", end, ENDS)
    elif isinstance(noise, RectifiedFlow) and noise.t_min == 0.0:
        # a flow model's pipelines end every schedule at the data, where its velocity is defined
        end = "zero"
    if grid is not None:
        _validate.choice("grid", grid, GRIDS)
        if grid == "steps" and not noise.is_discrete:
            raise ValueError(f"grid='steps' needs a discrete-time process, got {noise!r}")
    return solver, base.Problem(noise, end=end, grid=grid or "continuous"), {}


def _record(res: OptimizeResult, m: base.Method, model, solver, recorded: dict, noise):
    """``res`` with the target it was made for, the hso_jax call that samples it, and what a
    model-free run did not use (the network) or cannot tell apart (flow models)."""
    if isinstance(solver, str) and solver in SOLVERS and not recorded:
        obj = {"unipc": "unipc()", "dpm-solver-pp": "dpm_solver_pp()", "ddim": "ddim()"}[solver]
    else:
        obj = repr(resolve_solver(solver)[0])
    info = {
        **res.info,
        **recorded,
        "end": res.info.get("end", schedules.end_of(res.t, noise)),
        "sample": f"hso_jax.sample(model, x_T, res.t, hso_jax.solvers.{obj})",
    }
    notes = []
    if not m.needs_model and isinstance(model, Denoiser):
        note = (
            f"the network was not called: method={m.name!r} is model-free and uses only the "
            f"model's noise process ({getattr(noise, 'name', '') or noise!r}); the methods that "
            f"evaluate the network are {', '.join(map(repr, base.names(needs_model=True)))}"
        )
        if model.cond is not None or model.uncond is not None:
            w = model.guidance_scale
            note += (
                "; its conditions (cond / uncond"
                + (f", guidance_scale={w:g}" if w is not None else "")
                + ") were not used either"
            )
        notes.append(note)
    if not m.needs_model and isinstance(noise, RectifiedFlow):
        notes.append(_FLOW_NOTE)
    return dataclasses.replace(res, info=info, warnings=res.warnings + tuple(notes))


# The tables on the function: ``hso_jax.optimize.METHODS`` etc.
optimize.METHODS = METHODS
optimize.MODEL_FREE = MODEL_FREE
optimize.MODEL_BASED = MODEL_BASED
optimize.SOLVERS = SOLVERS
