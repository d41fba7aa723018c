"""Export targets: a runtime's scheduler or sampler, and the hso_jax sampler it equals.

A schedule is only worth what the user's runtime makes of it. A :class:`Target` names a
runtime (``diffusers``, ``k-diffusion``, ``comfyui``), its scheduler or sampler and the
configuration under which that code runs *the optimised sampler, step for step*:

* the same update (:meth:`Target.solver`, an hso_jax solver; e.g. diffusers'
  ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``, ``solver_order=2``,
  ``lower_order_final=True`` is ``dpm_solver_pp(order=2)``);
* the same network calls: ``nfe`` calls at the schedule's first ``nfe`` points (Heun: two per
  step, one on a last step into the data);
* the same end (:data:`hso_jax.schedules.ENDS`): where the runtime's last step lands, fixed by
  its config (``final_sigmas_type``) or free (a ``SIGMAS`` list);
* the same times: a runtime that passes integer ``timesteps`` to a discrete-time model
  evaluates it on training steps only, so such targets have ``grid="steps"`` and the schedule
  is optimised (or projected and re-scored) there.

How the schedule reaches the runtime (:attr:`Target.passing`): ``"timesteps"`` /
``"sigmas"`` (the scheduler's own ``set_timesteps`` argument), ``"adapter"`` (the scheduler
takes no custom schedule: :func:`hso_jax.export.diffusers_scheduler` returns one that does),
``"redirect"`` (exported to another scheduler that is the same update and takes a custom
schedule: ``DDIMScheduler`` -> ``DPMSolverMultistepScheduler(solver_order=1)``) or
``"list"`` (k-diffusion / ComfyUI: a sigma list). Every row is checked by running the
runtime's own code (:func:`hso_jax.export.check`; diffusers 0.42.1, k-diffusion 0.1.1).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable

from .. import solvers
from ..noise import NoiseSchedule, RectifiedFlow
from ..schedules import ENDS

__all__ = ["PROCESSES", "RUNTIMES", "TARGETS", "Target", "process_kind", "target"]

RUNTIMES = ("diffusers", "k-diffusion", "comfyui")
PROCESSES = ("discrete", "flow", "continuous")
"""Process kinds a target may run: ``"discrete"`` (:class:`~hso_jax.noise.VPDiscrete`: SD 1.5 /
2.1 / SDXL, DDPM), ``"flow"`` (:class:`~hso_jax.noise.RectifiedFlow`: SD3, Flux, Wan) and
``"continuous"`` (the other processes: continuous VP, EDM)."""


def process_kind(noise: NoiseSchedule) -> str:
    """The kind (:data:`PROCESSES`) of a noise process."""
    if isinstance(noise, RectifiedFlow):
        return "flow"
    return "discrete" if noise.is_discrete else "continuous"


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What one scheduler or sampler can run: ends per process kind (default first), the
    hso_jax solver, how a schedule is passed, and the config that makes it our sampler."""

    ends: dict[str, tuple[str, ...]]
    solver: Callable[[str], solvers.Solver]
    passing: dict[str, str]
    config: Callable[[str, str, str], dict] = lambda process, end, variant: {}
    variants: tuple[str, ...] = ()
    note: str = ""
    max_start: dict[str, float] = dataclasses.field(default_factory=dict)


def _no_custom_spacing() -> dict:
    return {
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "thresholding": False,
    }


def _flow_config() -> dict:
    # The schedule is installed as given: no shift on top, no dynamic shifting.
    return {
        "use_flow_sigmas": True,
        "prediction_type": "flow_prediction",
        "flow_shift": 1.0,
        "use_dynamic_shifting": False,
    }


def _final_sigmas(end: str) -> str:
    return "zero" if end == "zero" else "sigma_min"


def _dpm_config(process, end, variant) -> dict:
    cfg = {
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "final_sigmas_type": _final_sigmas(end),
        "use_lu_lambdas": False,
        **_no_custom_spacing(),
    }
    return {**cfg, **(_flow_config() if process == "flow" else {})}


def _unipc_config(process, end, variant) -> dict:
    cfg = {
        "predict_x0": True,
        "solver_type": variant,
        "solver_order": 2,
        "lower_order_final": True,
        "disable_corrector": [],
        "final_sigmas_type": _final_sigmas(end),
        **_no_custom_spacing(),
    }
    return {**cfg, **(_flow_config() if process == "flow" else {})}


def _ddim_config(process, end, variant) -> dict:
    # DDIMScheduler steps by a fixed stride and takes no custom timesteps; first-order
    # DPM-Solver++ is the same update (DDIM, eta = 0) and does.
    return {**_dpm_config(process, end, variant), "solver_order": 1}


def _euler_config(process, end, variant) -> dict:
    return {
        "final_sigmas_type": _final_sigmas(end),
        "timestep_type": "discrete",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
    }


def _flow_match_config(process, end, variant) -> dict:
    # set_timesteps(sigmas=...) shifts the sigmas it is given (static shift, or the time
    # shift with the pipeline's mu); shift 1 without dynamic shifting keeps them as they are.
    return {
        "shift": 1.0,
        "use_dynamic_shifting": False,
        "shift_terminal": None,
        "invert_sigmas": False,
        "stochastic_sampling": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
    }


def _flow_heun_config(process, end, variant) -> dict:
    return {"shift": 1.0}


_DIFFUSERS = {
    "DPMSolverMultistepScheduler": _Spec(
        ends={"discrete": ("zero", "t_min"), "flow": ("zero",)},
        solver=lambda variant: solvers.dpm_solver_pp(order=2),
        passing={"discrete": "timesteps", "flow": "adapter"},
        config=_dpm_config,
    ),
    "UniPCMultistepScheduler": _Spec(
        ends={"discrete": ("zero", "t_min"), "flow": ("zero",)},
        solver=lambda variant: solvers.unipc(
            order=2, variant=variant, lower_order_final="always"
        ),
        passing={"discrete": "adapter", "flow": "adapter"},
        config=_unipc_config,
        variants=("bh2", "bh1"),
        # diffusers starts its own flow schedules at 1 - 1e-6 ("to avoid inf log(alpha)");
        # from sigma = 1 exactly its second corrector takes the limit of UniC-2 where ours
        # warms up from an empty history, so a flow schedule for it starts below 1 too
        max_start={"flow": 1.0 - 1e-6},
        note="UniPCMultistepScheduler.set_timesteps takes no custom timesteps (and custom "
        "sigmas only for flow models, shifted again)",
    ),
    "DDIMScheduler": _Spec(
        ends={"discrete": ("zero", "t_min")},
        solver=lambda variant: solvers.ddim(),
        passing={"discrete": "redirect"},
        config=_ddim_config,
        note="DDIMScheduler steps by a fixed stride and takes no custom timesteps: the export "
        "is DPMSolverMultistepScheduler with solver_order=1, the same update (DDIM, eta = 0); "
        "final_sigmas_type='zero' is DDIM's set_alpha_to_one=True, 'sigma_min' its False",
    ),
    "EulerDiscreteScheduler": _Spec(
        ends={"discrete": ("zero", "t_min")},
        solver=lambda variant: solvers.euler(),
        passing={"discrete": "timesteps"},
        config=_euler_config,
    ),
    "FlowMatchEulerDiscreteScheduler": _Spec(
        ends={"flow": ("zero",)},
        solver=lambda variant: solvers.euler(),
        passing={"flow": "sigmas"},
        config=_flow_match_config,
    ),
    "FlowMatchHeunDiscreteScheduler": _Spec(
        ends={"flow": ("zero",)},
        solver=lambda variant: solvers.heun(),
        passing={"flow": "adapter"},
        config=_flow_heun_config,
        note="FlowMatchHeunDiscreteScheduler.set_timesteps takes no custom sigmas",
    ),
}

_LIST_ENDS = ("zero", "free", "t_min")
_SAMPLERS = {
    "sample_euler": _Spec(
        ends={k: _LIST_ENDS for k in PROCESSES},
        solver=lambda variant: solvers.euler(),
        passing={k: "list" for k in PROCESSES},
    ),
    "sample_heun": _Spec(
        ends={k: _LIST_ENDS for k in PROCESSES},
        solver=lambda variant: solvers.heun(),
        passing={k: "list" for k in PROCESSES},
    ),
    # In k-diffusion's variables a flow's sigma is t, not sigma / alpha: its DPM-Solver++(2M)
    # extrapolates in -log t, another method than DPM-Solver++ in the half log-SNR.
    "sample_dpmpp_2m": _Spec(
        ends={"discrete": _LIST_ENDS, "continuous": _LIST_ENDS},
        solver=lambda variant: solvers.dpm_solver_pp(order=2, lower_order_final=False),
        passing={"discrete": "list", "continuous": "list"},
        note="k-diffusion's sample_dpmpp_2m on a flow model extrapolates the data prediction "
        "in -log(sigma) with sigma = t, which is not DPM-Solver++ in the half log-SNR",
    ),
}
_COMFYUI_NAMES = {"euler": "sample_euler", "heun": "sample_heun", "dpmpp_2m": "sample_dpmpp_2m"}

TARGETS = types.MappingProxyType(
    {
        **{f"diffusers:{k}": v for k, v in _DIFFUSERS.items()},
        **{f"k-diffusion:{k}": v for k, v in _SAMPLERS.items()},
        **{f"comfyui:{k}": _SAMPLERS[v] for k, v in _COMFYUI_NAMES.items()},
    }
)
"""Every target by name (``runtime:scheduler``), read-only."""

# Short names: diffusers by solver (the flow schedulers for Euler / Heun on a flow model),
# k-diffusion without the ``sample_`` prefix.
_ALIASES = {
    "diffusers": {
        "dpm-solver-pp": "DPMSolverMultistepScheduler",
        "dpmsolver++": "DPMSolverMultistepScheduler",
        "unipc": "UniPCMultistepScheduler",
        "ddim": "DDIMScheduler",
        "euler": "EulerDiscreteScheduler",
    },
    "k-diffusion": {k: v for k, v in _COMFYUI_NAMES.items()},
    "comfyui": {},
}
_FLOW_ALIASES = {
    "diffusers:EulerDiscreteScheduler": "diffusers:FlowMatchEulerDiscreteScheduler",
    "diffusers:DDIMScheduler": "diffusers:FlowMatchEulerDiscreteScheduler",
    "diffusers:heun": "diffusers:FlowMatchHeunDiscreteScheduler",
}


@dataclasses.dataclass(frozen=True)
class Target:
    """One export target for one process kind (see module docstring). Build with
    :func:`target`.

    Attributes:
      runtime: ``"diffusers"``, ``"k-diffusion"`` or ``"comfyui"``.
      scheduler: the scheduler class (diffusers) or sampler (``sample_euler``, ComfyUI's
        ``euler``) the user runs.
      process: the process kind (:data:`PROCESSES`).
      end: where the last step lands (:data:`hso_jax.schedules.ENDS`).
      variant: UniPC's ``solver_type`` (``"bh2"`` or ``"bh1"``), else ``None``.
    """

    runtime: str
    scheduler: str
    process: str
    end: str
    variant: str | None = None

    @property
    def name(self) -> str:
        return f"{self.runtime}:{self.scheduler}"

    @property
    def spec(self) -> _Spec:
        return TARGETS[self.name]

    @property
    def passing(self) -> str:
        """``"timesteps"``, ``"sigmas"``, ``"adapter"``, ``"redirect"`` or ``"list"``."""
        return self.spec.passing[self.process]

    @property
    def grid(self) -> str:
        """``"steps"``: the network is evaluated on training steps only (discrete models in
        diffusers, which pass integer timesteps, and in ComfyUI, which rounds to the nearest
        step); ``"continuous"``: at any time."""
        if self.process == "discrete" and self.runtime in ("diffusers", "comfyui"):
            return "steps"
        return "continuous"

    @property
    def runs_as(self) -> str:
        """The scheduler that actually runs (``DDIMScheduler`` is exported to first-order
        ``DPMSolverMultistepScheduler``)."""
        return "DPMSolverMultistepScheduler" if self.passing == "redirect" else self.scheduler

    @property
    def max_start(self) -> float:
        """The latest start time the target runs as our sampler (1 - 1e-6 for UniPC on a flow
        model, as diffusers' own flow schedules; else no limit)."""
        return self.spec.max_start.get(self.process, float("inf"))

    def solver(self) -> solvers.Solver:
        """The hso_jax solver that is this target's update, step for step."""
        return self.spec.solver(self.variant)

    def config(self) -> dict:
        """The scheduler config entries that make it run our sampler (diffusers; empty for
        the sampler lists)."""
        return self.spec.config(self.process, self.end, self.variant)

    def num_points(self, nfe: int) -> int:
        """Schedule length for ``nfe`` network calls in this target."""
        return self.solver().num_points(nfe, to_data=self.end == "zero")

    def describe(self) -> str:
        """One line: the target, its end, its solver."""
        variant = f", solver_type={self.variant}" if self.variant else ""
        return (
            f"{self.name} ({self.process} model{variant}, end={self.end}, grid={self.grid}; "
            f"hso_jax solver {self.solver()!r})"
        )


def _resolve(name: str, process: str) -> str:
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(
            f"target must be 'runtime:scheduler', e.g. 'diffusers:UniPCMultistepScheduler' or "
            f"'comfyui:euler'; known: {sorted(TARGETS)}, got {name!r}"
        )
    runtime, _, sched = name.partition(":")
    if runtime not in RUNTIMES:
        raise ValueError(f"target runtime must be one of {RUNTIMES}, got {runtime!r} in {name!r}")
    full = f"{runtime}:{_ALIASES[runtime].get(sched, sched)}"
    if process == "flow":
        full = _FLOW_ALIASES.get(full, _FLOW_ALIASES.get(f"{runtime}:{sched}", full))
    if full not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known: {sorted(TARGETS)}")
    return full


def _nearest(process: str, end: str | None) -> str:
    """A target that runs ``process`` (and ``end``), for error messages."""
    for name, spec in TARGETS.items():
        if process in spec.ends and (end is None or end in spec.ends[process]):
            return name
    return "none"


def target(
    name: str | Target, noise: NoiseSchedule, *, end: str | None = None, variant: str | None = None
) -> Target:
    """The export target ``name`` for a model on ``noise``.

    Args:
      name: ``"runtime:scheduler"``: a key of :data:`TARGETS`
        (``"diffusers:UniPCMultistepScheduler"``, ``"k-diffusion:sample_dpmpp_2m"``,
        ``"comfyui:euler"``) or a short name (``"diffusers:unipc"``, ``"diffusers:dpm-solver-pp"``,
        ``"diffusers:ddim"``, ``"diffusers:euler"`` -- on a flow model the flow-matching
        schedulers --, ``"k-diffusion:dpmpp_2m"``); or a :class:`Target` (checked against
        ``noise``).
      noise: the model's noise process.
      end: where the last step lands (:data:`hso_jax.schedules.ENDS`); default: the
        target's own default (``"zero"``: diffusers' ``final_sigmas_type`` default, and the
        ComfyUI / k-diffusion convention of a ``SIGMAS`` list ending in 0).
      variant: UniPC only: ``"bh2"`` (default) or ``"bh1"``.

    Raises:
      ValueError: an unknown target, a process kind or end the target cannot run (the message
        names one that can), a variant of a target without variants.
    """
    process = process_kind(noise)
    if isinstance(name, Target):
        end = name.end if end is None else end
        variant = name.variant if variant is None else variant
        name = name.name
    full = _resolve(name, process)
    spec = TARGETS[full]
    if process not in spec.ends:
        extra = f" ({spec.note})" if spec.note else ""
        raise ValueError(
            f"target {full} cannot run a {process} model ({noise!r}){extra}; nearest that "
            f"works: {_nearest(process, end)}"
        )
    allowed = spec.ends[process]
    end = allowed[0] if end is None else end
    if end not in ENDS:
        raise ValueError(f"end must be one of {ENDS}, got {end!r}")
    if end not in allowed:
        raise ValueError(
            f"target {full} on a {process} model ends at {' or '.join(allowed)}, not "
            f"end={end!r}; nearest target that ends there: {_nearest(process, end)}"
        )
    if spec.variants:
        variant = spec.variants[0] if variant is None else variant
        if variant not in spec.variants:
            raise ValueError(f"variant of {full} must be one of {spec.variants}, got {variant!r}")
        if variant == "bh1" and end == "zero":
            raise ValueError(
                f"{full} with solver_type='bh1' returns NaN on a last step into sigma = 0 "
                "(diffusers 0.42.1: its B(h) = h is infinite there); use end='t_min' "
                "(final_sigmas_type='sigma_min') or variant='bh2'"
            )
    elif variant is not None:
        raise ValueError(f"target {full} has no variants, got variant={variant!r}")
    runtime, _, sched = full.partition(":")
    return Target(runtime, sched, process, end, variant if spec.variants else None)
