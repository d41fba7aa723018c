"""Run an export in its target's own code and compare it with hso_jax's sampler.

The network is an analytic Gaussian mixture (:class:`~hso_jax.models.GaussianMixture`, exact
data prediction, noise and velocity), called from torch with what the runtime gives it. The
check counts the runtime's network calls, records the times the network receives, and
compares the runtime's final sample with :func:`hso_jax.sample` on the same initial noise
(float64 on our side and in the runtime's arithmetic; diffusers keeps its sigmas in float32).

A pasted schedule is right when all three agree: the number of calls is the optimised NFE,
the network sees the optimised times, and the sample is the optimised sampler's.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np

from ..models.gaussian_mixture import GaussianMixture
from ..noise import NoiseSchedule
from ..solvers import sample
from .diffusers import diffusers_scheduler, scheduler_class
from .kdiffusion import sampling
from .render import Export, export, network_times, runtime_units

__all__ = ["CheckReport", "check", "check_mixture"]

DEFAULT_TOLERANCE = 1e-4
_TIMES_RTOL = 1e-6


def check_mixture() -> GaussianMixture:
    """The oracle of the checks: three components in 3-D with unequal weights and widths."""
    return GaussianMixture(
        np.array([[1.0, -0.5, 0.3], [-1.2, 0.4, -0.2], [0.1, 1.0, 0.8]]),
        np.array([0.3, 0.5, 0.2]),
        weights=np.array([0.5, 0.3, 0.2]),
    )


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What the target's own code did with an export.

    Attributes:
      target: the target's name; ``version``: the runtime's installed version.
      nfe, expected_nfe: network calls the runtime made, and the export's NFE.
      times, expected_times: the network's time input per call, in the runtime's units.
      max_deviation: largest absolute difference between the runtime's final samples and
        :func:`hso_jax.sample`'s; ``tolerance``: the bound it is held to.
    """

    target: str
    version: str
    nfe: int
    expected_nfe: int
    times: tuple[float, ...]
    expected_times: tuple[float, ...]
    max_deviation: float
    tolerance: float

    @property
    def times_match(self) -> bool:
        a, b = np.asarray(self.times), np.asarray(self.expected_times)
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=_TIMES_RTOL, atol=1e-9))

    @property
    def passed(self) -> bool:
        return (
            self.nfe == self.expected_nfe
            and self.times_match
            and bool(self.max_deviation <= self.tolerance)
        )

    def summary(self) -> str:
        """A few lines for people."""

        def fmt(v):
            return "[" + ", ".join(f"{x:.6g}" for x in v) + "]"

        return "\n".join(
            [
                f"target      {self.target} ({self.version})",
                f"calls       {self.nfe} network calls (optimised for {self.expected_nfe})",
                f"times       {fmt(self.times)}",
                f"expected    {fmt(self.expected_times)}"
                + ("" if self.times_match else "  <- differ"),
                f"final       max |runtime - hso_jax| = {self.max_deviation:.3g} "
                f"(tolerance {self.tolerance:g}) on a 3-D Gaussian mixture",
                f"result      {'OK' if self.passed else 'FAILED'}",
            ]
        )


def _f64(noise: NoiseSchedule, method: str, t: float) -> float:
    with jax.enable_x64(True):
        return float(getattr(noise, method)(jnp.asarray(t, jnp.float64)))


def _discrete_output(gm: GaussianMixture, ns, x, t: float, prediction: str):
    """The mixture as a discrete-time network: its noise (``"epsilon"``) or its velocity
    ``v = alpha eps - sigma x0`` (``"v_prediction"``) at model time ``t``."""
    eps = gm.eps(x, ns, t)
    if prediction == "epsilon":
        return eps
    a, s = _f64(ns, "alpha", t), _f64(ns, "sigma", t)
    return a * eps - s * gm.x0(x, ns, t)


def _run_diffusers(e: Export, gm: GaussianMixture, x_T: np.ndarray, prediction: str):
    import torch

    ns, tgt = e.noise, e.target
    cls = scheduler_class(tgt.runs_as)
    if tgt.process == "discrete":
        ac = np.asarray(ns.alphas_cumprod, np.float64)
        betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
        base = cls(
            num_train_timesteps=ns.num_steps, trained_betas=betas, prediction_type=prediction
        )
    else:
        base = cls(**{k: v for k, v in e.config.items() if k in ("use_flow_sigmas",)})
    if tgt.passing == "adapter":
        sched = diffusers_scheduler(e, base)
        sched.set_timesteps(num_inference_steps=e.t.shape[0] - 1)
    else:
        sched = cls.from_config(base.config, **e.config)
        if tgt.passing == "sigmas":
            sched.set_timesteps(sigmas=e.sigmas[:-1])
        else:
            sched.set_timesteps(timesteps=e.timesteps)
    # Euler's state is x / alpha (its scale_model_input multiplies by alpha again).
    ve = tgt.process == "discrete" and tgt.runs_as == "EulerDiscreteScheduler"
    t0, t_end = float(e.t[0]), float(e.t[-1])
    x = torch.from_numpy(np.array(x_T / (_f64(ns, "alpha", t0) if ve else 1.0)))
    times = []
    with jax.enable_x64(True):
        for step_t in sched.timesteps:
            # as the pipelines do (the flow-matching schedulers have no input scaling)
            scale = getattr(sched, "scale_model_input", None)
            x_in = x if scale is None else scale(x, step_t)
            times.append(float(step_t))
            xin = jnp.asarray(x_in.numpy(), jnp.float64)
            if tgt.process == "discrete":
                t_model = (float(step_t) + 1.0) / ns.num_steps
                out = _discrete_output(gm, ns, xin, t_model, prediction)
            else:
                out = gm.velocity(xin, ns, float(step_t) / ns.num_train_timesteps)
            x = sched.step(torch.from_numpy(np.array(out, np.float64)), step_t, x).prev_sample
    final = x.numpy().astype(np.float64) * (_f64(ns, "alpha", t_end) if ve else 1.0)
    return final, times


def _run_kdiffusion(e: Export, gm: GaussianMixture, x_T: np.ndarray, prediction: str):
    import torch

    ns, tgt = e.noise, e.target
    name = tgt.scheduler if tgt.scheduler.startswith("sample_") else f"sample_{tgt.scheduler}"
    sampler = getattr(sampling(), name)
    flow = tgt.process == "flow"
    times = []

    def denoiser(x, sigma):  # k-diffusion's model: (x in its variables, sigma) -> x0
        s = float(sigma[0])
        times.append(s)
        t = s if flow else float(_t_from_sigma(ns, s))
        a = 1.0 if flow else _f64(ns, "alpha", t)
        with jax.enable_x64(True):
            x0 = gm.x0(jnp.asarray(x.numpy() * a, jnp.float64), ns, t)
        return torch.from_numpy(np.array(x0, np.float64))

    t0, t_end = float(e.t[0]), float(e.t[-1])
    scale = 1.0 if flow else _f64(ns, "alpha", t0)
    x = torch.from_numpy(np.array(x_T / scale))
    sig = torch.tensor(e.sigmas, dtype=torch.float64)
    out = sampler(denoiser, x, sig, disable=True)
    end_scale = 1.0 if flow else _f64(ns, "alpha", t_end)
    return out.numpy().astype(np.float64) * end_scale, times


def _t_from_sigma(noise, s: float) -> float:
    if s == 0.0:
        return 0.0
    return _f64(noise, "t_from_sigma_edm", s)


def _version(runtime: str) -> str:
    dist = "diffusers" if runtime == "diffusers" else "k-diffusion"
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return f"{dist} (version unknown)"


def check(
    schedule,
    target=None,
    noise: NoiseSchedule | None = None,
    *,
    num_samples: int = 4,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    prediction: str = "epsilon",
) -> CheckReport:
    """Run ``schedule`` in the target's own code on the Gaussian-mixture oracle.

    Args:
      schedule: an :class:`~hso_jax.export.Export`, or a schedule / OptimizeResult with
        ``target`` (and ``noise`` where the result names no preset), as for
        :func:`~hso_jax.export.export`.
      num_samples, seed: the initial noises (drawn with :meth:`NoiseSchedule.prior`, at the
        schedule's first time).
      tolerance: the largest absolute deviation of the final samples that passes.
      prediction: what the network returns to a diffusers scheduler of a discrete-time model:
        ``"epsilon"`` (SD 1.5, SDXL) or ``"v_prediction"`` (SD 2.x at 768 px); the
        scheduler converts it (flow schedulers take the velocity, k-diffusion the data
        prediction).

    Returns:
      A :class:`CheckReport` (``report.passed``, ``report.summary()``).
    """
    e = schedule if isinstance(schedule, Export) else export(schedule, target, noise)
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction must be 'epsilon' or 'v_prediction', got {prediction!r}")
    if prediction != "epsilon" and not (
        e.target.runtime == "diffusers" and e.target.process == "discrete"
    ):
        raise ValueError(
            f"prediction={prediction!r} applies to diffusers' schedulers of discrete-time "
            f"models, not to {e.target.name} on a {e.target.process} model"
        )
    gm = check_mixture()
    ns, solver = e.noise, e.target.solver()
    with jax.enable_x64(True):
        n = jax.random.normal(jax.random.key(seed), (num_samples, 3), jnp.float64)
        x_T = np.asarray(ns.sigma(jnp.asarray(e.t[0], jnp.float64)) * n, np.float64)
        ours = np.asarray(
            sample(gm.denoiser(ns), jnp.asarray(x_T), jnp.asarray(e.t, jnp.float64), solver),
            np.float64,
        )
    run = _run_diffusers if e.target.runtime == "diffusers" else _run_kdiffusion
    theirs, times = run(e, gm, x_T, prediction)
    expected = runtime_units(network_times(e.t, solver), e.target, ns)
    return CheckReport(
        target=e.target.name,
        version=_version(e.target.runtime),
        nfe=len(times),
        expected_nfe=e.nfe,
        times=tuple(float(v) for v in times),
        expected_times=tuple(float(v) for v in expected),
        max_deviation=float(np.max(np.abs(theirs - ours))),
        tolerance=float(tolerance),
    )
