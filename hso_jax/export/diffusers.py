"""A diffusers scheduler that steps through an exported schedule, for schedulers without a
custom-schedule argument (and for pipelines that pass none).

``UniPCMultistepScheduler.set_timesteps`` takes no custom timesteps,
``FlowMatchHeunDiscreteScheduler`` no custom sigmas, DPM-Solver++ / UniPC with
``use_flow_sigmas`` shift the sigmas they are given, and ``WanPipeline`` passes none.
:func:`diffusers_scheduler` returns a scheduler of the target's class, configured as the
target says, whose ``set_timesteps`` installs the exported network timesteps and sigmas
(final value included) after the class's own ``set_timesteps`` has reset its state;
everything else (``step``, the multistep history, the corrector) is the class's own code.
Written for and tested against diffusers 0.42.1, where these schedulers read their schedule
from ``self.timesteps`` and ``self.sigmas`` only.

Needs torch and diffusers (the ``convert`` extra); imported lazily.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from ..io import load_schedule
from ..optimizers.result import OptimizeResult
from .render import Export, export, resolve_noise

__all__ = ["diffusers_scheduler", "scheduler_class"]

_PAYLOAD_KEYS = ("target", "runs_as", "process", "timesteps", "sigmas", "config", "t")


def scheduler_class(name: str):
    """The diffusers scheduler class ``name`` (ImportError with the install line without it)."""
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this export needs diffusers and torch: pip install 'hso-jax[convert]'"
        ) from e
    return getattr(diffusers, name)


def _payload(schedule, noise, target, end=None, variant=None) -> dict[str, Any]:
    """The export's dict: from an Export, its dict, an OptimizeResult or a schedule file."""
    if isinstance(schedule, Export):
        return schedule.to_dict()
    if isinstance(schedule, dict) and all(k in schedule for k in _PAYLOAD_KEYS):
        if target is not None or noise is not None:
            raise ValueError("an exported dict already names its target and values")
        return schedule
    if isinstance(schedule, (str, os.PathLike)):
        record = load_schedule(schedule)
        target = target if target is not None else record["options"].get("target")
        noise = noise if noise is not None else resolve_noise(_Named(record["noise"]), None)
        schedule = np.asarray(record["t"], np.float64)
    elif isinstance(schedule, OptimizeResult) and target is None:
        target = schedule.info.get("target")
    if target is None:
        raise ValueError(
            "pass target= (e.g. 'diffusers:UniPCMultistepScheduler'): the schedule was not "
            "optimised for a target"
        )
    return export(schedule, target, noise, end=end, variant=variant).to_dict()


class _Named:
    """Something with a noise name (what :func:`resolve_noise` reads)."""

    def __init__(self, noise: str):
        self.noise = noise


def _check_process(payload: dict, base) -> None:
    """The user's scheduler must be for the process the schedule was made for."""
    cfg = base.config
    if payload["process"] == "discrete":
        ac = getattr(base, "alphas_cumprod", None)
        if ac is None:
            raise ValueError(
                f"{type(base).__name__} is not a scheduler of a discrete-time model; the "
                f"schedule is for {payload['target']} on one"
            )
        ac = np.asarray(ac, np.float64)
        k = np.asarray(payload["timesteps"], np.int64)
        if k.max() >= ac.size:
            raise ValueError(
                f"the scheduler has {ac.size} training steps, the schedule uses step {k.max()}"
            )
        theirs = np.sqrt((1.0 - ac[k]) / ac[k])
        ours = np.asarray(payload["sigmas"][: k.size], np.float64)
        rel = float(np.max(np.abs(theirs - ours) / ours))
        if rel > 1e-4:
            raise ValueError(
                "the scheduler's noise schedule is not the one the schedule was optimised for "
                f"(sigma at its timesteps differs by up to {rel:.2g} relative); optimise with "
                "the model's own betas (--betas-file, VPDiscrete.from_betas)"
            )
    elif payload["process"] == "flow" and "num_train_timesteps" in cfg:
        if int(cfg["num_train_timesteps"]) != 1000:
            raise ValueError(
                f"the scheduler has num_train_timesteps={cfg['num_train_timesteps']}, the "
                "flow export assumes 1000 (network time = 1000 sigma)"
            )


def diffusers_scheduler(
    schedule, scheduler, *, noise=None, target: Any = None, end=None, variant=None
):
    """A scheduler that runs ``schedule`` exactly: the export's target class and config,
    with the exported timesteps and sigmas.

    Usage: ``pipe.scheduler = diffusers_scheduler(result, pipe.scheduler)``, then
    ``pipe(prompt, num_inference_steps=n)`` (``n`` = the schedule's steps; a pipeline that
    passes its own default ``sigmas`` / ``timesteps`` of that length, as FluxPipeline does,
    is given this schedule instead, and any other length is refused).

    Args:
      schedule: an :class:`~hso_jax.export.Export` or its ``to_dict()``, an
        :class:`~hso_jax.optimizers.OptimizeResult` optimised for a diffusers target (or with
        ``target=``), or a schedule file (``hso-jax optimize --format json --out FILE``).
      scheduler: the pipeline's scheduler (its config supplies the training betas, the
        prediction type and the rest; the target's config entries are set on top).
      noise, target, end, variant: for an OptimizeResult or file (see
        :func:`~hso_jax.export.export`; default: the target the schedule was optimised for).

    Returns:
      A scheduler instance (a subclass of the target's diffusers class, with its name).

    Raises:
      ValueError: a target of another runtime, or a scheduler whose training noise schedule
        differs from the one the schedule was made for.
    """
    payload = _payload(schedule, noise, target, end, variant)
    if not payload["target"].startswith("diffusers:"):
        raise ValueError(
            f"diffusers_scheduler needs a diffusers target, got {payload['target']}; "
            "k-diffusion / ComfyUI take the sigma list as it is"
        )
    cls = scheduler_class(payload["runs_as"])
    _check_process(payload, scheduler)
    sub = _installing(cls)
    out = sub.from_config(scheduler.config, **payload["config"])
    out.hso_jax_schedule = payload
    return out


@functools.cache
def _installing(cls):
    """A subclass of ``cls`` (same name) whose ``set_timesteps`` installs the payload."""

    def set_timesteps(
        self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None
    ):
        import torch

        p = self.hso_jax_schedule
        n = len(p["t"]) - 1
        for name, given in (
            ("num_inference_steps", num_inference_steps),
            ("sigmas", None if sigmas is None else len(sigmas)),
            ("timesteps", None if timesteps is None else len(timesteps)),
        ):
            if given is not None and given != n:
                raise ValueError(
                    f"this {cls.__name__} runs the hso_jax schedule of {n} steps "
                    f"({p['target']}); got {name} of length {given}: call the pipeline with "
                    f"num_inference_steps={n} and no sigmas / timesteps"
                )
        cls.set_timesteps(self, num_inference_steps=n, device=device)
        if p["process"] == "discrete":
            ts = torch.tensor(p["timesteps"], dtype=torch.int64)
        else:
            ts = torch.tensor(p["timesteps"], dtype=torch.float32)
        sig = torch.tensor(p["sigmas"], dtype=torch.float32)
        if cls.__name__ == "FlowMatchHeunDiscreteScheduler":
            # two calls per step (the start, then the end of the step), one on the last step
            ts = torch.cat([ts[:1], ts[1:].repeat_interleave(2)])
            sig = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
        self.timesteps = ts.to(device) if device is not None else ts
        self.sigmas = sig
        self.num_inference_steps = n

    return type(cls.__name__, (cls,), {"set_timesteps": set_timesteps, "__module__": __name__})
