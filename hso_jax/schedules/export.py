"""The plain values of a schedule for diffusers and ComfyUI / k-diffusion, exactly as it is.

:mod:`hso_jax.export` builds on them: the per-scheduler targets, their configs, adapters and
the checks that run the runtimes' own code.
"""

from __future__ import annotations

import types
from typing import Any

import jax
import numpy as np

from ..noise import NoiseSchedule, RectifiedFlow
from ._common import check_noise, eval_float64
from .check import check_on_steps, check_schedule, end_of


def concrete_schedule(ts, noise, what: str) -> np.ndarray:
    check_noise(noise)
    ts = getattr(ts, "t", ts)  # an OptimizeResult: its schedule
    ts = check_schedule(ts, noise)
    if isinstance(ts, jax.core.Tracer):
        raise TypeError(f"{what} is eager: ts must be a concrete array, not a traced value")
    return np.asarray(ts, np.float64)


# The scheduler config that makes FlowMatchEulerDiscreteScheduler step through given sigmas as
# they are: set_timesteps(sigmas=...) applies the static shift (sigma' = shift s / (1 + (shift -
# 1) s)) or, with use_dynamic_shifting, the time shift with the pipeline's mu, to the sigmas it
# is given; shift 1 without dynamic shifting is the identity.
FLOW_SCHEDULER_CONFIG = types.MappingProxyType({"shift": 1.0, "use_dynamic_shifting": False})

_FLOW_PIPELINES = {
    "sd3": "StableDiffusion3Pipeline",
    "flux-dev": "FluxPipeline",
    "flux-schnell": "FluxPipeline",
    "wan": "WanPipeline",
}

def _flow_pipeline_note(noise: RectifiedFlow) -> tuple[str, str]:
    pipeline = _FLOW_PIPELINES.get(noise.name, "FluxPipeline / StableDiffusion3Pipeline")
    note = (
        f"pass sigmas=sigmas to {pipeline} after pipe.scheduler = FlowMatchEulerDiscreteScheduler"
        ".from_config(pipe.scheduler.config, shift=1.0, use_dynamic_shifting=False) (its "
        "set_timesteps shifts the sigmas it is given, with the static shift or the pipeline's "
        "mu; shift 1 keeps them): it steps through exactly these sigmas and its final 0"
    )
    if noise.name == "wan":
        note = (
            "WanPipeline takes no sigmas= (it calls scheduler.set_timesteps(num_inference_steps)); "
            "use hso_jax.export.diffusers_scheduler(...), which installs the schedule in the "
            "pipeline's scheduler"
        )
    return pipeline, note


def to_diffusers(ts, noise: NoiseSchedule) -> dict[str, Any]:
    """The values diffusers takes for a schedule: its network calls and where it ends.

    A schedule of ``n + 1`` points makes ``n`` network calls, at ``ts[:-1]`` (one-call
    solvers); its last point is where the last step lands, which in diffusers is the
    scheduler's ``final_sigmas_type``: the data end ``t = 0`` (``"zero"``) or ``t_min``
    (``"sigma_min"``, the first training step). A schedule whose last point is neither (HSO's
    multistep flavour ends at its optimised ``t_eps``) has no diffusers form; it is refused,
    as is one whose network points lie between training steps (diffusers passes integer
    timesteps). Optimise for the target instead: ``hso_jax.optimize(..., target=...)``;
    :func:`hso_jax.export.export` adds each scheduler's config and the code to paste.

    **Discrete-time processes**: ``timesteps[i] = round(N t_i) - 1`` for the ``n`` network
    points (``scheduler.set_timesteps(timesteps=...)`` / ``pipe(..., timesteps=...)``),
    ``sigmas`` the ``n + 1`` values ``sigma / alpha`` the scheduler steps through (its final
    value included: 0 or ``sigma(t_min)``), ``final_sigmas_type`` and ``nfe = n``.

    **Flow models** (:class:`~hso_jax.noise.RectifiedFlow`: ``sd3``, ``flux-dev``, ...): the
    schedule must end at ``t = 0`` (the flow schedulers append the final 0). ``sigmas`` are
    the ``n`` flow times ``t`` to pass as ``pipe(..., sigmas=sigmas)``, ``timesteps`` the
    network's ``1000 sigma``; ``scheduler_config`` (:data:`FLOW_SCHEDULER_CONFIG`: ``shift=1.0,
    use_dynamic_shifting=False``) keeps ``FlowMatchEulerDiscreteScheduler`` from shifting the
    sigmas a second time; ``pipeline`` and ``note`` say so in words.

    Args:
      ts: schedule (strictly decreasing model times), ending at 0 or at ``t_min``, or an
        :class:`~hso_jax.optimizers.OptimizeResult` (its ``t``).
      noise: a discrete-time process (e.g. ``preset("sd15")``) or a flow model's.

    Returns:
      Discrete: ``{"timesteps": list[int], "sigmas": list[float], "final_sigmas_type": str,
      "nfe": int}``. Flow: ``{"sigmas", "timesteps": list[float], "scheduler_config": dict,
      "pipeline", "note": str, "nfe": int}``.

    Raises:
      ValueError: a continuous-time process other than a flow, another end, or network
        points off the training steps.
    """
    t = concrete_schedule(ts, noise, "to_diffusers")
    end = end_of(t, noise)
    n = t.shape[0] - 1
    if isinstance(noise, RectifiedFlow):
        if end != "zero":
            raise ValueError(
                f"ts ends at t = {t[-1]:.9g}, but the flow schedulers of diffusers append a final "
                f"0: the pipeline would make {n + 1} network calls on another trajectory. Use a "
                "schedule ending at 0 (hso_jax.optimize(..., target='diffusers:euler'))"
            )
        pipeline, note = _flow_pipeline_note(noise)
        sig = t[:-1]
        return {
            "sigmas": [float(x) for x in sig],
            "timesteps": [float(x) for x in noise.num_train_timesteps * sig],
            "scheduler_config": dict(FLOW_SCHEDULER_CONFIG),
            "pipeline": pipeline,
            "note": note,
            "nfe": n,
        }
    if not noise.is_discrete:
        raise ValueError(
            f"to_diffusers needs a discrete-time process with integer training steps, but "
            f"{noise!r} is continuous; export its sigmas with to_comfyui or use the times ts "
            "directly"
        )
    if end == "free":
        raise ValueError(
            f"ts ends at t = {t[-1]:.9g}, but diffusers' schedulers end their last step at the "
            f"data (final_sigmas_type='zero') or at t_min = {noise.t_min:g} ('sigma_min'); "
            "optimise for a diffusers target (hso_jax.optimize(..., target="
            "'diffusers:unipc'); hso-jax optimize --format diffusers)"
        )
    check_on_steps(t, noise, "diffusers")
    return {
        "timesteps": [int(x) for x in noise.index_from_t(t[:-1])],
        "sigmas": [float(x) for x in eval_float64(noise, "sigma_edm", t)],
        "final_sigmas_type": "zero" if end == "zero" else "sigma_min",
        "nfe": n,
    }


def to_comfyui(ts, noise: NoiseSchedule) -> list[float]:
    """A schedule as a k-diffusion / ComfyUI ``SIGMAS`` list (high to low), exactly.

    The values are ``sigma_edm(t) = sigma / alpha``, the noise level k-diffusion and ComfyUI
    use for VP (eps / v) and EDM models, ending at 0 where the schedule ends at the data
    (``t = 0``). For :class:`~hso_jax.noise.RectifiedFlow` they are the flow times ``t``
    themselves, because ComfyUI's flow models (SD3, Flux) read ``sigma`` as
    ``x = (1 - sigma) x_0 + sigma eps``. A list of ``n + 1`` values makes ``n`` network calls
    with a one-call sampler (Euler, DPM++ 2M; Heun: ``2 n``, ``2 n - 1`` when it ends at 0).
    Nothing is appended or replaced: a schedule optimised to end at 0 gives a list ending at
    0 (ComfyUI's convention), one optimised with a free end keeps it.

    ComfyUI evaluates a discrete-time model at the training step nearest to each sigma, so
    for such a model the network points must lie on training steps (``ValueError``
    otherwise, as for :func:`to_diffusers`).

    Paste the list into ComfyUI's ``SamplerCustom`` (or ``SamplerCustomAdvanced``) through a
    ``SIGMAS`` input; :func:`hso_jax.export.export` names the sampler that equals the
    optimised one.

    Args:
      ts: schedule (strictly decreasing model times), or an
        :class:`~hso_jax.optimizers.OptimizeResult` (its ``t``).
      noise: its noise process.

    Returns:
      List of Python floats, decreasing.
    """
    t = concrete_schedule(ts, noise, "to_comfyui")
    if noise.is_discrete:
        check_on_steps(t, noise, "ComfyUI")
    sig = t.copy() if isinstance(noise, RectifiedFlow) else eval_float64(noise, "sigma_edm", t)
    return [float(x) for x in sig]
