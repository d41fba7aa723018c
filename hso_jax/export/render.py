"""An optimised schedule as a target runs it: values, config, and the code to paste.

:func:`export` checks that a schedule is what the target runs -- the same number of network
calls, the same end, network points on the target's grid -- and refuses it otherwise with one
line that says what to do. It never rewrites a schedule: a schedule made for another end or
grid is re-optimised for the target (``hso_jax.optimize(..., target=...)``), or projected
onto training steps explicitly (:func:`hso_jax.schedules.on_training_steps`).
"""

from __future__ import annotations

import dataclasses
import pprint
from typing import Any

import jax
import numpy as np

from ..noise import DATA_END, PRESETS, NoiseSchedule, preset
from ..optimizers.result import OptimizeResult
from ..schedules import (
    check_on_steps,
    check_schedule,
    end_of,
    eval_float64,
    on_training_steps,
)
from .targets import Target, target

__all__ = [
    "Export",
    "export",
    "for_target",
    "network_times",
    "resolve_noise",
    "runtime_units",
]


@dataclasses.dataclass(frozen=True)
class Export:
    """A schedule for one target.

    Attributes:
      target: the :class:`~hso_jax.export.Target`.
      noise: the model's noise process.
      t: the schedule (model times, float64), ``target.num_points(nfe)`` points.
      nfe: network calls the target makes on it (a guided call counts once).
      timesteps: the network's time input at every point but the last, in the target's units
        (diffusers: integer training steps for discrete models, ``1000 t`` for flow models;
        k-diffusion / ComfyUI: the sigma the model wrapper receives).
      sigmas: the runtime's sigma list, final value included (diffusers and k-diffusion on
        discrete / continuous models: ``sigma / alpha``; flow models: ``t``).
      config: scheduler config entries (diffusers) that make it run this sampler.
    """

    target: Target
    noise: NoiseSchedule
    t: np.ndarray
    nfe: int
    timesteps: list
    sigmas: list[float]
    config: dict

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what :func:`~hso_jax.export.diffusers_scheduler` and the command line
        read back."""
        return {
            "target": self.target.name,
            "runs_as": self.target.runs_as,
            "process": self.target.process,
            "end": self.target.end,
            "variant": self.target.variant,
            "nfe": self.nfe,
            "timesteps": self.timesteps,
            "sigmas": self.sigmas,
            "config": self.config,
            "t": [float(x) for x in self.t],
        }

    def reproduce(self) -> str:
        """The hso_jax call that is the same sampler."""
        return f"hso_jax.sample(model, x_T, ts, hso_jax.solvers.{self.target.solver()!r})"

    def snippet(self, source: str | None = None) -> str:
        """What to paste, as Python (diffusers, k-diffusion) or as node settings (ComfyUI).

        ``source``: the schedule file the export was made from; a scheduler that
        :func:`~hso_jax.export.diffusers_scheduler` adapts then reads it from there instead
        of from values written into the snippet."""
        if self.target.passing == "adapter":
            return _adapter_snippet(self, source)
        return _SNIPPETS[self.target.passing](self)


def resolve_noise(schedule, noise: NoiseSchedule | None) -> NoiseSchedule:
    """``noise``, or the preset named by an OptimizeResult."""
    if noise is not None:
        if not isinstance(noise, NoiseSchedule):
            raise TypeError(f"noise must be a hso_jax.noise.NoiseSchedule, got {noise!r}")
        return noise
    name = getattr(schedule, "noise", None)
    if isinstance(name, str) and name in PRESETS:
        return preset(name)
    raise ValueError(
        f"pass noise= (the model's hso_jax.noise.NoiseSchedule): the schedule names no preset "
        f"process (noise={name!r})"
    )


def network_times(t: np.ndarray, solver) -> np.ndarray:
    """Model times of the network calls of ``solver`` on ``t``, in call order (Heun: both
    ends of every step, but only its start on a last step into the data)."""
    if solver.calls_per_step == 1:
        return t[:-1]
    out = []
    for a, b in zip(t[:-1], t[1:], strict=True):
        out += [a] if b == DATA_END else [a, b]
    return np.asarray(out)


def runtime_units(t: np.ndarray, tgt: Target, noise: NoiseSchedule) -> list:
    """Model times in the target's network-time units."""
    if tgt.runtime == "diffusers":
        if tgt.process == "discrete":
            return [int(k) for k in noise.index_from_t(t)]
        return [float(x) for x in noise.num_train_timesteps * t]
    return _sigmas(t, tgt, noise)


def _sigmas(t: np.ndarray, tgt: Target, noise: NoiseSchedule) -> list[float]:
    if tgt.process == "flow":
        return [float(x) for x in t]
    return [float(x) for x in eval_float64(noise, "sigma_edm", t)]


def export(
    schedule,
    target_name: str | Target,
    noise: NoiseSchedule | None = None,
    *,
    end: str | None = None,
    variant: str | None = None,
) -> Export:
    """The export of ``schedule`` for ``target_name``.

    Args:
      schedule: an :class:`~hso_jax.optimizers.OptimizeResult` or a concrete schedule (model
        times).
      target_name: a target (:func:`~hso_jax.export.target`), e.g.
        ``"diffusers:UniPCMultistepScheduler"``.
      noise: the model's noise process (default: the preset an OptimizeResult names).
      end, variant: as for :func:`~hso_jax.export.target`; by default the end is the
        schedule's own when the target can run it.

    Returns:
      An :class:`Export`.

    Raises:
      ValueError: the target cannot run the schedule exactly as optimised: another end,
        network points off its grid of training steps, or a length that no number of network
        calls gives. The message says what to run instead.
    """
    noise = resolve_noise(schedule, noise)
    ts = schedule.t if isinstance(schedule, OptimizeResult) else schedule
    if isinstance(ts, jax.core.Tracer):
        raise TypeError("export is eager: the schedule must be concrete, not a traced value")
    check_schedule(ts, noise, name="schedule")
    t = np.asarray(ts, np.float64)
    own_end = end_of(t, noise)
    probe = target(target_name, noise)  # its ends; the variant is checked below
    if end is None and own_end in probe.spec.ends[probe.process]:
        end = own_end
    tgt = target(probe, noise, end=end, variant=variant)
    if own_end != tgt.end:
        raise ValueError(
            f"the schedule ends at t = {t[-1]:.9g} (end={own_end!r}), but {tgt.name} ends its "
            f"last step at {'the data, t = 0' if tgt.end == 'zero' else 't_min'} "
            f"(end={tgt.end!r}): it would run another trajectory. Optimise for the target "
            f"(hso_jax.optimize(..., target={tgt.name!r}); hso-jax optimize --target "
            f"{tgt.name})"
        )
    if t[0] > tgt.max_start:
        raise ValueError(
            f"{tgt.name} on a {tgt.process} model starts at most at t = {tgt.max_start!r} "
            f"(diffusers' own start for it), but the schedule starts at t = {float(t[0])!r}; "
            "optimise "
            f"for the target (hso_jax.optimize(..., target={tgt.name!r}) starts there)"
        )
    solver = tgt.solver()
    n = t.shape[0] - 1
    nfe = solver.nfe(n, to_data=tgt.end == "zero")
    if tgt.grid == "steps":
        check_on_steps(t, noise, tgt.name)
    return Export(
        target=tgt,
        noise=noise,
        t=t,
        nfe=nfe,
        timesteps=runtime_units(t[:-1], tgt, noise),
        sigmas=_sigmas(t, tgt, noise),
        config=tgt.config(),
    )


def for_target(ts, tgt: Target, noise: NoiseSchedule) -> np.ndarray:
    """A schedule made without a target (a baseline, a published table: ``nfe + 1`` points
    from the start to ``t_min``) as ``tgt`` runs it: its last point moved to the target's end
    (``"zero"``: to the data end 0, the convention of ComfyUI's own AYS and OSS nodes; a
    free end keeps it), then its network points onto the target's grid of training steps.
    The result is what the target runs, and what :func:`export` accepts."""
    check_schedule(ts, noise, name="ts")
    t = np.array(ts, np.float64)
    if tgt.end == "zero":
        t[-1] = DATA_END
    elif tgt.end == "t_min" and end_of(t, noise) != "t_min":
        raise ValueError(
            f"{tgt.name} with end='t_min' needs a schedule ending at t_min = {noise.t_min:g}, "
            f"got t = {t[-1]:.9g}"
        )
    if tgt.grid == "steps":
        t = on_training_steps(t, noise)
    return t


# --------------------------------------------------------------------------------------
# Snippets
# --------------------------------------------------------------------------------------


def _kwargs(config: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def _calls(e: Export) -> str:
    net = "transformer" if e.target.process == "flow" else "UNet"
    return f"{e.nfe} {net} calls (a classifier-free guided call counts once)"


def _timesteps_snippet(e: Export) -> str:
    cls = e.target.runs_as
    note = f"# {e.target.spec.note}\n" if e.target.passing == "redirect" else ""
    return (
        f"{note}from diffusers import {cls}\n\n"
        f"pipe.scheduler = {cls}.from_config(\n    pipe.scheduler.config, {_kwargs(e.config)}\n)\n"
        f"image = pipe(prompt, timesteps={e.timesteps}).images[0]  # {_calls(e)}\n"
    )


def _sigmas_snippet(e: Export) -> str:
    cls = e.target.runs_as
    return (
        f"from diffusers import {cls}\n\n"
        f"pipe.scheduler = {cls}.from_config(\n    pipe.scheduler.config, {_kwargs(e.config)}\n)\n"
        "# pipelines with a sigmas= argument (FluxPipeline, StableDiffusion3Pipeline); the\n"
        "# scheduler appends the final 0. Others (WanPipeline):\n"
        "# hso_jax.export.diffusers_scheduler\n"
        f"image = pipe(prompt, sigmas={e.sigmas[:-1]}).images[0]  # {_calls(e)}\n"
    )


def _adapter_snippet(e: Export, source: str | None) -> str:
    if source is None:
        what = pprint.pformat(e.to_dict(), sort_dicts=False, width=92).replace("\n", "\n    ")
        call = f"diffusers_scheduler(\n    {what},\n    pipe.scheduler,\n)"
    else:
        extra = "".join(
            f", {k}={v!r}" for k, v in (("end", e.target.end), ("variant", e.target.variant))
            if v is not None
        )
        call = (
            f"diffusers_scheduler(\n    {source!r}, pipe.scheduler, "
            f"target={e.target.name!r}{extra}\n)"
        )
    return (
        f"# {e.target.spec.note}: hso_jax installs the schedule itself\n"
        "from hso_jax.export import diffusers_scheduler\n\n"
        f"pipe.scheduler = {call}\n"
        f"image = pipe(prompt, num_inference_steps={e.t.shape[0] - 1}).images[0]  # {_calls(e)}\n"
    )


def _list_snippet(e: Export) -> str:
    if e.target.runtime == "comfyui":
        return (
            f"SIGMAS = {e.sigmas}\n"
            f"# SamplerCustom (or SamplerCustomAdvanced): sampler = KSamplerSelect "
            f"'{e.target.scheduler}', sigmas = this list (a manual-sigmas node), cfg as usual; "
            f"{e.nfe} model calls\n"
        )
    return (
        "import torch\n"
        f"from k_diffusion.sampling import {e.target.scheduler}\n\n"
        f"sigmas = torch.tensor({e.sigmas}, dtype=torch.float64)\n"
        f"x = {e.target.scheduler}(denoiser, torch.randn(shape) * sigmas[0], sigmas)  "
        f"# denoiser(x, sigma) -> x0; {e.nfe} calls\n"
    )


_SNIPPETS = {
    "timesteps": _timesteps_snippet,
    "redirect": _timesteps_snippet,
    "sigmas": _sigmas_snippet,
    "list": _list_snippet,
}
