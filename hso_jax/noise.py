"""Noise processes: x_t = alpha(t) x_0 + sigma(t) eps, and the maps t <-> lam <-> sigma_edm.

Every process exposes, as pure, jit-able, differentiable functions of model time ``t``:

* ``alpha(t)``, ``sigma(t)``, ``log_alpha(t)``;
* ``lam(t) = log(alpha / sigma)`` (half log-SNR) and its exact inverse ``t_from_lam``;
* ``sigma_edm(t) = sigma / alpha = exp(-lam)`` (EDM noise level) and ``t_from_sigma_edm``;

and the eager floats ``t_min`` / ``t_max`` (the time range a schedule may use). Discrete-time
VP processes (``VPDiscrete``) follow the DPM-Solver convention: step index ``k`` sits at
``t_k = (k + 1) / N`` and ``log alpha`` is linearly interpolated in ``t`` between steps, so
``t_min = 1 / N`` and ``t_max = 1``; the index of a continuous ``t`` is ``round(N t) - 1``.

**The data end, t = 0.** Every process has ``alpha(0) = 1``, ``sigma(0) = 0`` and
``lam(0) = +inf`` (:data:`DATA_END`). A schedule may end there even where ``t_min > 0``: its
last step lands on the data prediction at the previous point (first order, no network call at
0), which is how diffusers' schedulers with ``final_sigmas_type="zero"`` and ComfyUI's
``SIGMAS`` ending in 0 finish a sample.

Processes are frozen dataclasses registered as pytrees (arrays are leaves, scalars are static),
so they can be passed through ``jax.jit`` / ``jax.vmap`` like any argument.

References: Lu et al., "DPM-Solver" (NeurIPS 2022), Sec. 2 and App. (noise schedules);
Karras et al., "Elucidating the Design Space" (EDM, NeurIPS 2022), Table 1;
Liu et al., "Flow Straight and Fast" (rectified flow, ICLR 2023).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate

__all__ = [
    "DATA_END",
    "NoiseSchedule",
    "VPDiscrete",
    "VPLinear",
    "VPCosine",
    "EDM",
    "RectifiedFlow",
    "preset",
    "preset_options",
    "PRESETS",
    "flux_mu",
    "FLUX_SHIFT_CONFIG",
    "SHIFT_RANGE",
    "MAX_FLUX_RESOLUTION",
    "MAX_IMAGE_SEQ_LEN",
    "scaled_linear_betas",
    "linear_betas",
    "squaredcos_cap_v2_betas",
]

Array = Any

DATA_END = 0.0
"""Model time of the data (``sigma = 0``, ``lam = +inf``) in every process: a schedule may end
there (see the module docstring)."""


def _pytree(data_fields: tuple[str, ...], meta_fields: tuple[str, ...]):
    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
        return jax.tree_util.register_dataclass(
            cls, data_fields=list(data_fields), meta_fields=list(meta_fields)
        )

    return wrap


def _float_dtype(x: Array):
    """``x``'s dtype when floating, else None (let JAX pick the default float)."""
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else None


def _log_sigma_vp(log_alpha: Array) -> Array:
    """log sigma = 0.5 log(1 - alpha^2), stable for alpha -> 1 and alpha -> 0."""
    return 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))


def _log_alpha_vp_from_lam(lam: Array) -> Array:
    """For VP (alpha^2 + sigma^2 = 1): log alpha = -0.5 log(1 + e^{-2 lam})."""
    return -0.5 * jnp.logaddexp(0.0, -2.0 * lam)


class NoiseSchedule:
    """Base class. Subclasses define ``log_alpha``, ``log_sigma`` and ``t_from_lam``."""

    name: str
    t_min: float
    t_max: float
    variance_preserving: bool = True
    is_discrete: bool = False

    # --- to be defined by subclasses -------------------------------------------------
    def log_alpha(self, t: Array) -> Array:
        raise NotImplementedError

    def log_sigma(self, t: Array) -> Array:
        return _log_sigma_vp(self.log_alpha(t))

    def t_from_lam(self, lam: Array) -> Array:
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------
    def alpha(self, t: Array) -> Array:
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: Array) -> Array:
        return jnp.exp(self.log_sigma(t))

    def lam(self, t: Array) -> Array:
        """Half log-SNR lam(t) = log(alpha(t) / sigma(t)); strictly decreasing in t."""
        return self.log_alpha(t) - self.log_sigma(t)

    def sigma_edm(self, t: Array) -> Array:
        """EDM noise level sigma / alpha = exp(-lam)."""
        return jnp.exp(-self.lam(t))

    def t_from_sigma_edm(self, sigma_edm: Array) -> Array:
        return self.t_from_lam(-jnp.log(sigma_edm))

    @property
    def lam_min(self) -> float:
        """lam at t_max (the noisiest point of the range)."""
        return float(self.lam(jnp.asarray(self.t_max, _eager_dtype())))

    @property
    def lam_max(self) -> float:
        """lam at t_min (the cleanest point of the range)."""
        return float(self.lam(jnp.asarray(self.t_min, _eager_dtype())))

    def prior(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Initial noise x_T = sigma(t_max) * N(0, I) (the data term alpha(t_max) x_0 is dropped,
        as in every sampler of the field)."""
        return self.sigma(jnp.asarray(self.t_max, dtype)) * jax.random.normal(key, shape, dtype)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, "
            f"t_min={self.t_min:g}, t_max={self.t_max:g})"
        )


def _eager_dtype():
    return jnp.result_type(float)  # float64 under jax_enable_x64 or a jax.enable_x64 context


# --------------------------------------------------------------------------------------
# VP, discrete time
# --------------------------------------------------------------------------------------


@_pytree(data_fields=("log_alphas",), meta_fields=("name",))
class VPDiscrete(NoiseSchedule):
    """Discrete-time VP process from ``N`` training steps (DDPM, Stable Diffusion, ...).

    ``log_alphas[k] = 0.5 log(alphas_cumprod[k])`` sits at ``t_k = (k + 1) / N``; between steps
    ``log alpha`` is linear in ``t`` (DPM-Solver convention), so ``t`` ranges over ``[1/N, 1]``.
    Below the first step, ``log alpha`` runs linearly to 0 at ``t = 0``: the data end
    (``alpha = 1``, ``sigma = 0``), where a schedule may finish with a step that returns the
    data prediction (diffusers' ``final_sigmas_type="zero"``); the network is never evaluated
    there (its index would be -1). Build with :meth:`from_betas` or :meth:`from_alphas_cumprod`.
    """

    log_alphas: Array
    name: str = "vp-discrete"

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, name: str = "vp-discrete") -> VPDiscrete:
        a = np.asarray(alphas_cumprod, dtype=np.float64)
        if a.ndim != 1 or a.size < 2:
            raise ValueError(
                f"alphas_cumprod must be a 1-D array with at least 2 entries, got shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError("alphas_cumprod must be finite; it contains NaN or inf")
        if np.any(a <= 0) or np.any(a >= 1):
            raise ValueError(
                f"alphas_cumprod must lie in (0, 1); got values in [{a.min():g}, {a.max():g}]"
            )
        if np.any(np.diff(a) >= 0):
            k = int(np.argmax(np.diff(a) >= 0))
            raise ValueError(
                "alphas_cumprod must be strictly decreasing; "
                f"alphas_cumprod[{k + 1}] = {a[k + 1]:g} >= alphas_cumprod[{k}] = {a[k]:g}"
            )
        return cls(log_alphas=0.5 * np.log(a), name=name)

    @classmethod
    def from_betas(cls, betas, name: str = "vp-discrete") -> VPDiscrete:
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim != 1 or b.size < 2:
            raise ValueError(
                f"betas must be a 1-D array with at least 2 entries, got shape {b.shape}"
            )
        if not np.all(np.isfinite(b)):
            raise ValueError("betas must be finite; it contains NaN or inf")
        if np.any(b <= 0) or np.any(b >= 1):
            raise ValueError(f"betas must lie in (0, 1); got values in [{b.min():g}, {b.max():g}]")
        return cls(log_alphas=0.5 * np.cumsum(np.log1p(-b)), name=name)

    is_discrete = True

    @property
    def num_steps(self) -> int:
        return int(np.shape(self.log_alphas)[0])

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return 1.0 / self.num_steps

    @property
    def t_max(self) -> float:  # type: ignore[override]
        return 1.0

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.exp(2.0 * np.asarray(self.log_alphas, np.float64))

    def _table(self, dtype):
        """``(t, log alpha)`` nodes: the data end ``(0, 0)``, then
        ``((k + 1) / N, log_alphas[k])``."""
        n = self.num_steps
        la = jnp.asarray(self.log_alphas, dtype)
        t = jnp.arange(n + 1, dtype=la.dtype) / n
        return t, jnp.concatenate([jnp.zeros((1,), la.dtype), la])

    def log_alpha(self, t):
        t = jnp.asarray(t)
        grid, la = self._table(_float_dtype(t))
        return jnp.interp(t, grid, la)

    def t_from_lam(self, lam):
        lam = jnp.asarray(lam)
        grid, la = self._table(_float_dtype(lam))
        return jnp.interp(_log_alpha_vp_from_lam(lam), la[::-1], grid[::-1])

    # --- step indices ------------------------------------------------------------------
    def t_from_index(self, k):
        """t_k = (k + 1) / N."""
        return (jnp.asarray(k) + 1.0) / self.num_steps

    def index_from_t(self, t) -> np.ndarray:
        """Nearest training step: round(N t) - 1 (eager, integer NumPy array)."""
        return np.rint(np.asarray(t, np.float64) * self.num_steps).astype(np.int64) - 1

    def __repr__(self) -> str:
        return f"VPDiscrete(name={self.name!r}, num_steps={self.num_steps})"


def scaled_linear_betas(beta_start=0.00085, beta_end=0.012, n=1000) -> np.ndarray:
    """Stable Diffusion's "scaled_linear" betas: linspace(sqrt(b0), sqrt(b1), n) ** 2."""
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n, dtype=np.float64) ** 2


def linear_betas(beta_start=1e-4, beta_end=0.02, n=1000) -> np.ndarray:
    """DDPM's linear betas."""
    return np.linspace(beta_start, beta_end, n, dtype=np.float64)


def squaredcos_cap_v2_betas(n=1000, max_beta=0.999, s=0.008) -> np.ndarray:
    """Improved-DDPM cosine betas ("squaredcos_cap_v2", DeepFloyd IF):
    beta_i = min(1 - abar((i+1)/n) / abar(i/n), max_beta), abar(t) = cos((t + s)/(1 + s) pi/2)^2."""

    def abar(t):
        return np.cos((t + s) / (1 + s) * np.pi / 2) ** 2

    i = np.arange(n, dtype=np.float64)
    return np.minimum(1 - abar((i + 1) / n) / abar(i / n), max_beta)


# --------------------------------------------------------------------------------------
# VP, continuous time
# --------------------------------------------------------------------------------------


@_pytree(data_fields=(), meta_fields=("beta_0", "beta_1", "t_min", "t_max", "name"))
class VPLinear(NoiseSchedule):
    """Continuous VP with linear beta(t) = beta_0 + t (beta_1 - beta_0) (score-SDE "VP").

    log alpha(t) = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2; t in [t_min, t_max].
    """

    beta_0: float = 0.1
    beta_1: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0
    name: str = "vp-linear"

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def t_from_lam(self, lam):
        # Solve log alpha(t) = la for t >= 0 (DPM-Solver, Appendix); tmp = -2 log alpha.
        tmp = 2.0 * (self.beta_1 - self.beta_0) * jnp.logaddexp(-2.0 * lam, 0.0)
        delta = self.beta_0**2 + tmp
        return tmp / (jnp.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)


@_pytree(data_fields=(), meta_fields=("s", "t_min", "t_max", "name"))
class VPCosine(NoiseSchedule):
    """Continuous cosine VP (Nichol & Dhariwal 2021): alpha(t) = cos((t + s)/(1 + s) pi/2) /
    cos(s/(1 + s) pi/2). ``t_max = 0.9946`` avoids the singularity at t = 1 (as in DPM-Solver)."""

    s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 0.9946
    name: str = "vp-cosine"

    def _log_alpha_0(self):
        return math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def log_alpha(self, t):
        return jnp.log(jnp.cos((t + self.s) / (1.0 + self.s) * jnp.pi / 2.0)) - self._log_alpha_0()

    def t_from_lam(self, lam):
        la = _log_alpha_vp_from_lam(lam)
        scale = 2.0 * (1.0 + self.s) / jnp.pi
        return scale * jnp.arccos(jnp.exp(la + self._log_alpha_0())) - self.s


# --------------------------------------------------------------------------------------
# Non-VP processes
# --------------------------------------------------------------------------------------


@_pytree(data_fields=(), meta_fields=("t_min", "t_max", "name"))
class EDM(NoiseSchedule):
    """Variance-exploding EDM process: alpha = 1, sigma = t (so t = sigma_edm), t in
    [sigma_min, sigma_max] = [0.002, 80] by default. lam = -log t."""

    t_min: float = 0.002
    t_max: float = 80.0
    name: str = "edm"
    variance_preserving = False

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(t, float)))

    def log_sigma(self, t):
        return jnp.log(t)

    def t_from_lam(self, lam):
        return jnp.exp(-lam)


@_pytree(
    data_fields=(),
    meta_fields=(
        "t_min",
        "t_max",
        "name",
        "shift",
        "mu",
        "image_seq_len",
        "spacing",
        "num_train_timesteps",
    ),
)
class RectifiedFlow(NoiseSchedule):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t; lam = log((1 - t) / t),
    t = sigmoid(-lam).

    Model time is the flow's noise level, ``t = sigma`` (what SD3 / Flux / Wan and their
    schedulers call ``sigma``); the network receives ``timestep = num_train_timesteps * sigma``
    (:meth:`timestep`). The bare process (``preset("flow")``) keeps ``t`` in
    ``[1e-3, 1 - 1e-3]`` because lam(1) = -inf and lam(0) = +inf; the model presets (``sd3``,
    ``flux-dev``, ``flux-schnell``, ``wan``, ``flow`` with ``shift=``) span the whole range
    ``[0, 1]`` their pipelines step through: from pure noise at sigma = 1 to the data at 0.

    The *shift* of these models is a schedule transform, not a different process: every flow
    model here is this one process, and the shift only says where the model's default sampler
    puts its steps. The stored parameters define :meth:`shift_sigma`,

    .. math::
        \\tilde s = \\frac{a s}{1 + (a - 1) s}, \\qquad a = \\text{shift}
        \\;\\text{(static)} \\quad\\text{or}\\quad a = e^{\\mu} \\;\\text{(dynamic)},

    which is diffusers' static shift ``shift * s / (1 + (shift - 1) s)`` and, for ``mu``, its
    exponential time shift ``exp(mu) / (exp(mu) + (1/s - 1))`` written without the division by
    ``s``. ``spacing`` names the rule of the model's diffusers pipeline (see
    :func:`hso_jax.schedules.flow_default`): ``"euler"`` (FlowMatchEulerDiscreteScheduler
    ``set_timesteps(n)``: SD3, generic flow), ``"flux"`` (FluxPipeline: ``sigmas =
    linspace(1, 1/n, n)``), ``"unipc"`` (UniPCMultistepScheduler with ``use_flow_sigmas``: Wan).

    Attributes:
      shift: static shift factor (1 = no shift); ignored when ``mu`` is set.
      mu: dynamic (resolution-dependent) shift exponent, or None.
      image_seq_len: the image sequence length ``mu`` was computed from, or None.
      spacing: rule of the default schedule (``"euler"``, ``"flux"`` or ``"unipc"``).
      num_train_timesteps: scale of the network's time input (1000).

    References: Liu et al., "Flow Straight and Fast" (ICLR 2023); Esser et al., "Scaling
    Rectified Flow Transformers for High-Resolution Image Synthesis" (SD3, ICML 2024), Sec. 5.3.2
    (resolution-dependent shifting of the timestep schedule).
    """

    t_min: float = 1e-3
    t_max: float = 1.0 - 1e-3
    name: str = "flow"
    shift: float = 1.0
    mu: float | None = None
    image_seq_len: int | None = None
    spacing: str = "euler"
    num_train_timesteps: int = 1000
    variance_preserving = False

    def log_alpha(self, t):
        return jnp.log1p(-t)

    def log_sigma(self, t):
        return jnp.log(t)

    # alpha and sigma directly (not exp of the logs), so that their derivatives are finite at
    # the ends t = 1 (alpha = 0) and t = 0 (sigma = 0), where flow samplers start and stop.
    def alpha(self, t):
        return 1.0 - jnp.asarray(t, dtype=jnp.result_type(t, float))

    def sigma(self, t):
        return jnp.asarray(t, dtype=jnp.result_type(t, float))

    def t_from_lam(self, lam):
        return jax.nn.sigmoid(-lam)

    @property
    def shift_factor(self) -> float:
        """The factor ``a`` of :meth:`shift_sigma`: ``exp(mu)`` (dynamic) or ``shift``."""
        return math.exp(self.mu) if self.mu is not None else float(self.shift)

    def shift_sigma(self, s: Array) -> Array:
        """The model's shift transform of an unshifted sigma ``s`` in [0, 1]:
        ``a s / (1 + (a - 1) s)`` (see the class docstring); 0 -> 0, 1 -> 1, increasing."""
        a = self.shift_factor
        return a * s / (1.0 + (a - 1.0) * s)

    def unshift_sigma(self, u: Array) -> Array:
        """Inverse of :meth:`shift_sigma`: ``s = u / (a - (a - 1) u)``."""
        a = self.shift_factor
        return u / (a - (a - 1.0) * u)

    def timestep(self, t: Array) -> Array:
        """The network's time input: ``num_train_timesteps * sigma`` (sigma = t)."""
        return self.num_train_timesteps * t

    def __repr__(self) -> str:
        extra = ""
        if self.mu is not None:
            extra = f", mu={self.mu:.6g}, image_seq_len={self.image_seq_len}"
        elif self.shift != 1.0:
            extra = f", shift={self.shift:g}"
        return (
            f"RectifiedFlow(name={self.name!r}{extra}, t_min={self.t_min:g}, t_max={self.t_max:g})"
        )


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------

# Flux's diffusers scheduler config (black-forest-labs/FLUX.1-dev, scheduler_config.json) and the
# FluxPipeline's geometry: VAE factor 8, latents packed in 2 x 2 patches -> one token per 16 px.
FLUX_SHIFT_CONFIG = types.MappingProxyType(
    {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
)
_FLUX_PIXELS_PER_TOKEN = 16
_FLUX_DEFAULT_RESOLUTION = 1024  # FluxPipeline: default_sample_size 128 * vae_scale_factor 8


def flux_mu(image_seq_len: int) -> float:
    """Flux's dynamic shift exponent ``mu`` for an image sequence length (diffusers'
    ``calculate_shift`` with the FLUX.1-dev scheduler config :data:`FLUX_SHIFT_CONFIG`).

    ``mu`` is linear in the sequence length: 0.5 at 256 tokens (256 x 256 px), 1.15 at 4096
    tokens (1024 x 1024 px), and extrapolated beyond (2048 x 2048 px: 16384 tokens,
    mu = 3.23).

    .. math::
        m = \\frac{\\mu_{max} - \\mu_{base}}{L_{max} - L_{base}}, \\quad
        \\mu = L\\, m + (\\mu_{base} - m L_{base}).
    """
    c = FLUX_SHIFT_CONFIG
    # Same operations, in the same order, as diffusers' calculate_shift (bitwise equal).
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    b = c["base_shift"] - m * c["base_image_seq_len"]
    return image_seq_len * m + b


SHIFT_RANGE = (1e-3, 1e3)
"""Allowed static ``shift`` of the flow presets (SD3: 3, Wan: 5; Flux's dynamic shift at 4096 x
4096 px is exp(11.3) ~ 8e4 only through ``mu``): past it the shifted times collapse onto one
end in float32."""
MAX_FLUX_RESOLUTION = 4096
"""The largest side in pixels of a ``flux-dev`` image (FLUX.1 is trained up to ~2 megapixels)."""
MAX_IMAGE_SEQ_LEN = (MAX_FLUX_RESOLUTION // 16) ** 2
"""The most latent tokens of a ``flux-dev`` image: 65536 (4096 x 4096 px; mu = 11.3)."""


def _flux_seq_len(resolution) -> int:
    """Tokens of a FluxPipeline image: (height // 16) * (width // 16)."""
    size = resolution if isinstance(resolution, (tuple, list)) else (resolution, resolution)
    if len(size) != 2:
        raise ValueError(
            "preset 'flux-dev': resolution must be one size in pixels or (height, width), got "
            f"{resolution!r}"
        )
    h, w = (
        _validate.integer(
            "preset 'flux-dev': resolution", x, 1, maximum=MAX_FLUX_RESOLUTION, meaning=" (pixels)"
        )
        for x in size
    )
    if h % _FLUX_PIXELS_PER_TOKEN or w % _FLUX_PIXELS_PER_TOKEN:
        raise ValueError(
            f"preset 'flux-dev': resolution must be a multiple of {_FLUX_PIXELS_PER_TOKEN} px "
            f"(one latent token per 16 x 16 px), got {resolution!r}; FluxPipeline would round "
            "it down, so pass the size it actually generates"
        )
    return (h // _FLUX_PIXELS_PER_TOKEN) * (w // _FLUX_PIXELS_PER_TOKEN)


_FLOW_RANGE = {"t_min": 0.0, "t_max": 1.0}


def _sd3() -> RectifiedFlow:
    return RectifiedFlow(name="sd3", shift=3.0, spacing="euler", **_FLOW_RANGE)


def _flux_dev(*, resolution=None, image_seq_len=None) -> RectifiedFlow:
    if resolution is not None and image_seq_len is not None:
        raise TypeError(
            "preset 'flux-dev': pass resolution= or image_seq_len=, not both (got "
            f"resolution={resolution!r}, image_seq_len={image_seq_len!r})"
        )
    if image_seq_len is not None:
        seq = _validate.integer(
            "preset 'flux-dev': image_seq_len",
            image_seq_len,
            1,
            maximum=MAX_IMAGE_SEQ_LEN,
            meaning=" (latent tokens)",
        )
    else:
        seq = _flux_seq_len(_FLUX_DEFAULT_RESOLUTION if resolution is None else resolution)
    return RectifiedFlow(
        name="flux-dev", mu=flux_mu(seq), image_seq_len=seq, spacing="flux", **_FLOW_RANGE
    )


def _flux_schnell() -> RectifiedFlow:
    # Its scheduler config has shift 1.0 and use_dynamic_shifting false (the original code:
    # get_schedule(..., shift=(name != "flux-schnell"))), so resolution changes nothing.
    return RectifiedFlow(name="flux-schnell", shift=1.0, spacing="flux", **_FLOW_RANGE)


def _wan(*, shift=5.0) -> RectifiedFlow:
    shift = _validate.in_range("preset 'wan': shift", shift, SHIFT_RANGE)
    return RectifiedFlow(name="wan", shift=shift, spacing="unipc", **_FLOW_RANGE)


def _flow(*, shift=None) -> RectifiedFlow:
    if shift is None:
        return RectifiedFlow()
    shift = _validate.in_range("preset 'flow': shift", shift, SHIFT_RANGE)
    return RectifiedFlow(name="flow", shift=shift, spacing="euler", **_FLOW_RANGE)


PRESETS = {
    "sd15": lambda: VPDiscrete.from_betas(scaled_linear_betas(), name="sd15"),
    "sd21": lambda: VPDiscrete.from_betas(scaled_linear_betas(), name="sd21"),
    "sdxl": lambda: VPDiscrete.from_betas(scaled_linear_betas(), name="sdxl"),
    "ddpm": lambda: VPDiscrete.from_betas(linear_betas(), name="ddpm"),
    "cosine": lambda: VPDiscrete.from_betas(squaredcos_cap_v2_betas(), name="cosine"),
    "vp-linear": lambda: VPLinear(),
    "vp-cosine": lambda: VPCosine(),
    "edm": lambda: EDM(),
    "flow": _flow,
    "sd3": _sd3,
    "flux-dev": _flux_dev,
    "flux-schnell": _flux_schnell,
    "wan": _wan,
}


_NO_OPTION_HINT = {
    "flux-schnell": (
        " (its scheduler does not shift: shift 1.0, use_dynamic_shifting false, so the "
        "resolution does not change its schedule)"
    ),
    "sd3": " (its scheduler has a static shift of 3.0 at every resolution)",
}


def preset_options(name: str) -> tuple[str, ...]:
    """The keyword options :func:`preset` accepts for ``name`` (e.g. ``("shift",)`` for wan)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"noise preset must be one of {sorted(PRESETS)}, got {name!r}")
    return tuple(inspect.signature(PRESETS[name]).parameters)


@functools.cache
def _preset_cached(name: str, options: tuple) -> NoiseSchedule:
    return PRESETS[name](**{k: v for k, _, v in options})


def preset(name: str, **options) -> NoiseSchedule:
    """Noise process by name: one of ``sorted(PRESETS)``.

    Diffusion models: ``sd15``/``sd21``/``sdxl``: scaled-linear betas 0.00085..0.012, 1000
    steps; ``ddpm``: linear betas 1e-4..0.02, 1000 steps; ``cosine``: squaredcos_cap_v2 betas,
    1000 steps (DeepFloyd IF); ``vp-linear``: continuous VP, beta in [0.1, 20]; ``vp-cosine``:
    continuous cosine VP; ``edm``: sigma in [0.002, 80].

    Flow-matching models, all one :class:`RectifiedFlow` process (alpha = 1 - t, sigma = t,
    model time t = sigma, network time ``1000 sigma``) that differ only in their shift, a
    schedule transform (:meth:`RectifiedFlow.shift_sigma`) used by the model's default
    schedule :func:`hso_jax.schedules.flow_default`; t in [0, 1]:

    * ``sd3``: SD3 / SD3.5, static shift 3.0 (their scheduler config). No options.
    * ``flux-dev``: FLUX.1-dev, dynamic shift ``mu`` from the image sequence length
      (:func:`flux_mu`), exponential time shift. Options ``resolution`` (pixels: one size or
      ``(height, width)``, multiples of 16; default 1024, FluxPipeline's default) or
      ``image_seq_len`` (latent tokens, ``(height // 16) * (width // 16)``). At 1024 px,
      ``mu = 1.15``.
    * ``flux-schnell``: FLUX.1-schnell. Its scheduler does not shift (``shift = 1``,
      ``use_dynamic_shifting = False``), so it takes no resolution. No options.
    * ``wan``: Wan 2.x, static ``shift`` (default 5.0, the Wan T2V default at 720p; its
      diffusers checkpoints ship ``flow_shift = 3.0``, the 480p value: pass ``shift=3.0``).
    * ``flow``: generic rectified flow. Without options, the bare process on t in
      ``[1e-3, 1 - 1e-3]`` (finite log-SNR at both ends); with ``shift=S`` (1 = no shift), a
      flow-matching model sampled by FlowMatchEulerDiscreteScheduler(shift=S), t in [0, 1].

    The same object is returned for the same name and options (so compiled functions are
    reused).

    Raises:
      ValueError: an unknown name (the message lists the known ones) or a bad option value.
      TypeError: an option the preset does not take (the message lists the ones it does), or
        an option of the wrong type.
    """
    allowed = preset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"takes only {', '.join(allowed)}" if allowed else "takes no options"
        takes += _NO_OPTION_HINT.get(name, "")
        raise TypeError(
            f"preset {name!r} got unexpected option(s) {unknown} "
            f"(values {[options[k] for k in unknown]!r}); it {takes}"
        )
    # The type is part of the key: 1024.0 == 1024 must not return the cached 1024 preset.
    key = tuple(sorted((k, type(v), v) for k, v in options.items() if v is not None))
    try:
        hash(key)
    except TypeError:  # e.g. resolution as a list: validate without caching
        return PRESETS[name](**options)
    return _preset_cached(name, key)
