"""Flow-matching models (SD3, Flux, Wan): their pipelines' default schedules and Beta.

Every flow model is one process, rectified flow; what differs is the *shift*, a schedule
transform the model's default scheduler applies (:class:`hso_jax.noise.RectifiedFlow`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ..noise import RectifiedFlow
from ._common import check_nfe, check_noise, check_positive, finish

Array = Any

def check_flow_model(noise, what: str) -> RectifiedFlow:
    """A flow-matching model preset: a RectifiedFlow whose range is the whole [0, 1]."""
    check_noise(noise)
    if not isinstance(noise, RectifiedFlow):
        raise TypeError(
            f"{what} needs a flow-matching model (a RectifiedFlow preset: sd3, flux-dev, "
            f"flux-schnell, wan or flow with shift=), got {noise!r}"
        )
    if noise.t_min > 0.0 or noise.t_max < 1.0:
        raise ValueError(
            f"{what} gives the sigmas a flow model's pipeline steps through, from 1 to 0, but "
            f"{noise!r} covers only t in [{noise.t_min:g}, {noise.t_max:g}]; use a model preset "
            "(e.g. hso_jax.noise.preset('flow', shift=1.0) or preset('sd3'))"
        )
    return noise


# UniPCMultistepScheduler (use_flow_sigmas) lowers a first sigma within 1e-6 of 1 by 1e-6.
_UNIPC_EPS = 1e-6


def _flow_pipeline_sigmas(noise: RectifiedFlow, n: int, spacing: str) -> np.ndarray:
    """The ``n`` sigmas (no final 0) of the diffusers rule ``spacing``, float64."""
    shift = lambda u: np.where(u == 1.0, 1.0, noise.shift_sigma(u))  # noqa: E731 (pin 1 -> 1)
    n_train = noise.num_train_timesteps
    if spacing == "euler":
        # FlowMatchEulerDiscreteScheduler: __init__ stores sigma_min = the *shifted* last
        # training sigma (static shift only); set_timesteps(n) spaces timesteps linearly from
        # sigma_max to sigma_min and shifts them (again).
        lo = 1.0 / n_train if noise.mu is not None else float(shift(np.float64(1.0 / n_train)))
        return shift(np.linspace(1.0 * n_train, lo * n_train, n) / n_train)
    if spacing == "flux":
        return shift(np.linspace(1.0, 1.0 / n, n))  # FluxPipeline's sigmas, then set_timesteps
    if spacing == "unipc":
        sig = shift(np.linspace(1.0, 1.0 / n_train, n + 1)[:-1])
        if abs(sig[0] - 1.0) < _UNIPC_EPS:
            sig[0] -= _UNIPC_EPS
        return sig
    raise ValueError(f"spacing must be 'euler', 'flux' or 'unipc', got {spacing!r}")


def flow_default(noise: RectifiedFlow, nfe: int) -> jax.Array:
    """The schedule a flow model's diffusers pipeline steps through by default, with the final 0.

    With ``n = nfe`` inference steps and the shift ``a s / (1 + (a - 1) s)`` of the preset
    (:meth:`~hso_jax.noise.RectifiedFlow.shift_sigma`; ``a = e^mu`` for Flux), by the preset's
    ``spacing``:

    * ``"euler"`` (``sd3``, ``flow`` with ``shift=``; StableDiffusion3Pipeline and
      FlowMatchEulerDiscreteScheduler ``set_timesteps(n)``): ``u_i`` linear from 1 to
      ``shift(1/1000)`` in ``n`` points, ``sigma_i = shift(u_i)``. The last point is shifted
      twice (diffusers' scheduler stores the shifted ``sigma_min`` and shifts again): for SD3
      the schedule ends at 0.00893, not 0.00299. This is what the pipeline does, kept as is.
    * ``"flux"`` (``flux-dev``, ``flux-schnell``; FluxPipeline): ``sigma_i =
      shift(linspace(1, 1/n, n))``; for ``flux-dev`` the dynamic shift at the preset's
      resolution, for ``flux-schnell`` no shift.
    * ``"unipc"`` (``wan``; WanPipeline with its UniPCMultistepScheduler, ``use_flow_sigmas``):
      ``sigma_i = shift(linspace(1, 1/1000, n + 1)[:-1])``, the first lowered by 1e-6 from 1
      (as the scheduler does, to keep log(alpha) finite).

    then ``sigma_n = 0``. Model time is ``t = sigma``; the network sees ``1000 sigma_i`` for
    ``i < n``. Diffusers computes in float32; these values are the same formulas in float64.

    Args:
      noise: a flow-model preset (``hso_jax.noise.preset("sd3")``, ``("flux-dev",
        resolution=1024)``, ``("flux-schnell")``, ``("wan", shift=5.0)``, ``("flow",
        shift=1.0)``).
      nfe: number of steps ``n`` (>= 1): ``n`` network evaluations of the Euler sampler.

    Returns:
      ``(nfe + 1,)`` model times, strictly decreasing, from 1 (Wan: 1 - 1e-6) to 0.

    References: diffusers ``FlowMatchEulerDiscreteScheduler.set_timesteps``,
    ``FluxPipeline.__call__``, ``UniPCMultistepScheduler.set_timesteps``; Esser et al., "Scaling
    Rectified Flow Transformers" (SD3, ICML 2024), Sec. 5.3.2.
    """
    ns = check_flow_model(noise, "flow_default")
    n = check_nfe(nfe)
    sig = _flow_pipeline_sigmas(ns, n, ns.spacing)
    return finish(np.append(sig, 0.0), f"flow_default({ns.name!r})", n, (None, 0.0))


BETA_VARIANTS = ("comfyui", "diffusers")

# Size of ComfyUI's discrete sigma table: ModelSamplingFlux (Flux) has 10000 entries,
# ModelSamplingDiscreteFlow (SD3, Wan, other flow models) 1000.
_COMFYUI_TABLE_SIZE = {"flux": 10000, "euler": 1000, "unipc": 1000}


def beta(
    noise: RectifiedFlow,
    nfe: int,
    alpha: float = 0.6,
    beta: float = 0.6,
    *,
    variant: str = "comfyui",
) -> jax.Array:
    """Beta-quantile steps (Lee et al. 2024) for a flow model, with the final 0.

    Both variants place ``n = nfe`` points at quantiles ``F^{-1}(q)`` of the Beta(``alpha``,
    ``beta``) distribution, ``q`` falling from 1 (for ``alpha = beta = 0.6`` the points are
    dense at both ends), then append 0; they differ in the grid of ``q`` and in the variable
    the quantiles are spread over:

    * ``"comfyui"`` (default; ComfyUI's "beta" scheduler): over the *unshifted* training time.
      With ComfyUI's table of ``N`` sigmas ``shift(k / N)``, ``k = 1 .. N`` (``N = 10000`` for
      Flux's ``ModelSamplingFlux``, 1000 otherwise), ``k_i = rint(F^{-1}(1 - i/n) (N - 1))``
      for ``i = 0 .. n - 1`` and ``sigma_i = shift((k_i + 1) / N)``. The shift therefore
      moves the interior points, as it does for the model's default schedule. ComfyUI drops a
      step that rounds onto the previous one; here that raises ``ValueError`` instead.
    * ``"diffusers"`` (``use_beta_sigmas=True`` of FlowMatchEulerDiscreteScheduler):
      linearly between the end points of the model's default sigmas at ``n`` steps (see
      :func:`flow_default`; Wan's UniPC rule is replaced by the Euler scheduler's):
      ``sigma_i = s_min + F^{-1}(1 - i/(n - 1)) (s_max - s_min)``. The shift only moves the
      ends. This is the paper's formula in sigma, with the shifted range.

    The paper defines the quantiles over the model's time variable; ComfyUI's variant is the
    common one for flow models (Flux + "beta"), so it is the default.

    Args:
      noise: a flow-model preset (see :func:`flow_default`).
      nfe: number of steps ``n`` (>= 1).
      alpha: first shape parameter of the Beta distribution, > 0.
      beta: second shape parameter, > 0.
      variant: ``"comfyui"`` or ``"diffusers"`` (keyword-only).

    Returns:
      ``(nfe + 1,)`` model times (``t = sigma``), strictly decreasing, ending at 0.

    Reference: Lee et al., "Beta Sampling is All You Need: Efficient Image Generation Strategy
    for Diffusion Models using Stepwise Spectral Analysis" (arXiv:2407.12173, 2024); ComfyUI
    ``comfy/samplers.py`` (``beta_scheduler``); diffusers ``_convert_to_beta``.
    """
    import scipy.stats  # a dependency of jax

    ns = check_flow_model(noise, "beta")
    n = check_nfe(nfe)
    a = check_positive("alpha", alpha)
    b = check_positive("beta", beta)
    if not isinstance(variant, str) or variant not in BETA_VARIANTS:
        raise ValueError(f"variant must be one of {list(BETA_VARIANTS)}, got {variant!r}")
    what = f"beta({ns.name!r}, variant={variant!r})"
    if variant == "comfyui":
        size = _COMFYUI_TABLE_SIZE[ns.spacing]
        k = np.rint(scipy.stats.beta.ppf(1.0 - np.arange(n) / n, a, b) * (size - 1))
        dup = np.flatnonzero(np.diff(k) == 0)
        if dup.size:
            raise ValueError(
                f"{what} with nfe={n}: steps {int(dup[0])} and {int(dup[0]) + 1} round to the "
                f"same entry {int(k[dup[0]])} of ComfyUI's {size}-entry sigma table (ComfyUI "
                "would silently drop one step); use a smaller nfe"
            )
        u = (k + 1.0) / size
        sig = np.where(u == 1.0, 1.0, ns.shift_sigma(u))
    else:
        spacing = "euler" if ns.spacing == "unipc" else ns.spacing
        ends = _flow_pipeline_sigmas(ns, n, spacing)
        s_max, s_min = float(ends[0]), float(ends[-1])
        sig = s_min + scipy.stats.beta.ppf(1.0 - np.linspace(0.0, 1.0, n), a, b) * (s_max - s_min)
    return finish(np.append(sig, 0.0), what, n, (None, 0.0))
