"""Denoiser: any network prediction -> data prediction x0(x, t) under a noise process.

With x = alpha x0 + sigma eps (``noise``), a network trained for one ``prediction`` type is
converted to the data prediction used by every solver:

* ``"eps"``:   x0 = (x - sigma eps_hat) / alpha
* ``"x0"``:    x0 = x0_hat
* ``"v"``:     v = alpha eps - sigma x0  =>  x0 = (alpha x - sigma v_hat) / (alpha^2 + sigma^2)
* ``"flow"``:  u = dx/dt = alpha' x0 + sigma' eps  =>
  x0 = (sigma' x - sigma u_hat) / (sigma' alpha - sigma alpha')
  (rectified flow: u = eps - x0, x0 = x - t u)
* ``"score"``: s = -eps / sigma  =>  eps = -sigma s_hat

Network calling convention: ``fn(x, t_in)``, or ``fn(params, x, t_in)`` when ``params`` is given,
with one extra positional argument ``cond`` when conditioning is set. ``t_in`` is a 0-d array:
by default the continuous step index ``N t - 1`` for discrete-time processes (DPM-Solver
convention, not rounded), and ``t`` itself otherwise (sigma for EDM); ``time_input`` chooses
``"index"``, ``"index-rounded"``, ``"t"``, ``"sigma_edm"``, ``"scaled"`` (1000 t) or any callable
``t -> t_in``.

Conditions. ``cond`` and ``uncond`` are pytrees whose array leaves carry the sample axis first:
leading size ``B`` (the batch of ``x``) gives one condition per sample, leading size 1 one
condition shared by all samples (broadcast to the batch here, so the network always receives
condition rows aligned with ``x``), and scalar leaves are passed unchanged. Any other leading
size raises ``ValueError``. How batches of conditions travel through solvers and optimisers
(split, chunked, sharded with their samples) is described in :mod:`hso_jax.batch`.

Classifier-free guidance (Ho & Salimans 2022): with ``guidance_scale = w``, the network is called
with ``cond`` and ``uncond`` and the raw prediction is ``p_u + w (p_c - p_u)``; one guided call
counts as one network evaluation (NFE), as everywhere in the field.

The Denoiser is a pytree: ``noise``, ``params``, ``cond`` and ``uncond`` are leaves, the network
function and options are static, so a jitted sampler is compiled once per network function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .noise import PRESETS, NoiseSchedule, preset

__all__ = [
    "Denoiser",
    "OutputShapeError",
    "PREDICTIONS",
    "TIME_INPUTS",
    "as_denoiser",
    "check_denoiser",
]

PREDICTIONS = ("eps", "x0", "v", "flow", "score")
TIME_INPUTS = ("auto", "index", "index-rounded", "t", "sigma_edm", "scaled")


class OutputShapeError(ValueError):
    """The network returned a prediction whose shape is not the state's (raised at trace time)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
    """A network with its noise process and prediction type.

    Args:
      fn: the network, ``fn(x, t_in[, cond])`` or ``fn(params, x, t_in[, cond])``.
      noise: the noise process the network was trained under.
      prediction: one of ``"eps"``, ``"x0"``, ``"v"``, ``"flow"``, ``"score"``.
      params: optional network parameters (a pytree), passed first to ``fn``.
      time_input: what the network receives as time (see module docstring), or a callable.
      cond, uncond: optional conditioning pytrees passed as the last argument of ``fn``.
      guidance_scale: classifier-free guidance scale ``w`` (needs ``cond`` and ``uncond``).
    """

    fn: Callable
    noise: NoiseSchedule
    prediction: str = "eps"
    params: Any = None
    time_input: str | Callable = "auto"
    cond: Any = None
    uncond: Any = None
    guidance_scale: float | None = None

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"fn must be callable, got {type(self.fn).__name__}")
        if not isinstance(self.noise, NoiseSchedule):
            raise TypeError(
                f"noise must be a hso_jax.noise.NoiseSchedule (e.g. hso_jax.noise.preset('sd15')), "
                f"got {type(self.noise).__name__}"
            )
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not callable(self.time_input) and self.time_input not in TIME_INPUTS:
            raise ValueError(
                f"time_input must be one of {TIME_INPUTS} or a callable, got {self.time_input!r}"
            )
        if self.time_input in ("index", "index-rounded") and not self.noise.is_discrete:
            raise ValueError(
                f"time_input={self.time_input!r} needs a discrete-time noise process, "
                f"got {self.noise!r}"
            )
        if self.guidance_scale is not None:
            if self.cond is None or self.uncond is None:
                raise ValueError(
                    "guidance_scale needs both cond and uncond (classifier-free guidance calls the "
                    "network once with each)"
                )

    # --- pytree ------------------------------------------------------------------------
    def tree_flatten(self):
        children = (self.noise, self.params, self.cond, self.uncond)
        aux = (self.fn, self.prediction, self.time_input, self.guidance_scale)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for name, value in zip(("noise", "params", "cond", "uncond"), children, strict=True):
            object.__setattr__(obj, name, value)
        meta = ("fn", "prediction", "time_input", "guidance_scale")
        for name, value in zip(meta, aux, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    def replace(self, **changes) -> Denoiser:
        """A copy with some fields changed (e.g. ``model.replace(cond=c)``)."""
        return dataclasses.replace(self, **changes)

    # --- network call ------------------------------------------------------------------
    def time_in(self, t):
        """The time argument the network receives for model time ``t``."""
        ti = self.time_input
        if callable(ti):
            return ti(t)
        if ti == "auto":
            ti = "index" if self.noise.is_discrete else "t"
        if ti == "index":
            return t * self.noise.num_steps - 1.0
        if ti == "index-rounded":
            return jnp.round(t * self.noise.num_steps) - 1.0
        if ti == "scaled":
            return 1000.0 * t
        if ti == "sigma_edm":
            return self.noise.sigma_edm(t)
        return t

    def _call(self, x, t_in, cond):
        args = () if self.params is None else (self.params,)
        tail = () if cond is None else (_align_condition(cond, x),)
        out = self.fn(*args, x, t_in, *tail)
        shape = getattr(out, "shape", None)
        if shape is None or tuple(shape) != tuple(jnp.shape(x)):
            got = f"shape {tuple(shape)}" if shape is not None else f"a {type(out).__name__}"
            raise OutputShapeError(
                f"the network fn returned {got} for x of shape {tuple(jnp.shape(x))}: a "
                f"{self.prediction!r} prediction must have exactly x's shape (nothing is "
                "broadcast); check the network's output, not the noise x_T"
            )
        return out

    def raw(self, x, t):
        """The network's own prediction at (x, t), guidance applied."""
        t = jnp.asarray(t, dtype=jnp.result_type(x.dtype, float))
        t_in = self.time_in(t)
        if self.guidance_scale is None:
            return self._call(x, t_in, self.cond)
        p_c = self._call(x, t_in, self.cond)
        p_u = self._call(x, t_in, self.uncond)
        return p_u + self.guidance_scale * (p_c - p_u)

    # --- conversions -------------------------------------------------------------------
    def x0(self, x, t):
        """Data prediction E[x0 | x_t = x] as seen by the network, in the dtype of ``x``
        (so a float32 sampler stays float32 even if the network computes in float64)."""
        return self.x0_from_raw(x, t, self.raw(x, t)).astype(x.dtype)

    def eps(self, x, t):
        """Noise prediction eps = (x - alpha x0) / sigma."""
        t = jnp.asarray(t, dtype=jnp.result_type(x.dtype, float))
        a, s = self.noise.alpha(t), self.noise.sigma(t)
        return ((x - a * self.x0(x, t)) / s).astype(x.dtype)

    def x0_from_raw(self, x, t, out):
        t = jnp.asarray(t, dtype=jnp.result_type(x.dtype, float))
        ns = self.noise
        a, s = ns.alpha(t), ns.sigma(t)
        p = self.prediction
        if p == "x0":
            return out
        if p == "eps":
            return (x - s * out) / a
        if p == "score":
            return (x + s * s * out) / a
        if p == "v":
            return (a * x - s * out) / (a * a + s * s)
        # flow velocity u = alpha' x0 + sigma' eps
        da = jax.grad(ns.alpha)(t)
        ds = jax.grad(ns.sigma)(t)
        return (ds * x - s * out) / (ds * a - s * da)


def _align_condition(cond, x):
    """Condition leaves with leading size 1 broadcast to ``x``'s batch; a leading size other
    than 1 or ``x``'s batch is an error (a misaligned condition batch)."""
    if jnp.ndim(x) < 1:
        return cond
    batch = jnp.shape(x)[0]

    def align(path, leaf):
        shape = jnp.shape(leaf)
        if len(shape) == 0 or shape[0] == batch:
            return leaf
        if shape[0] == 1:
            return jnp.broadcast_to(leaf, (batch, *shape[1:]))
        raise ValueError(
            f"condition leaf cond{jax.tree_util.keystr(path)} has leading size {shape[0]}, but "
            f"the state batch x has {batch} samples (shape {tuple(jnp.shape(x))}); a condition "
            f"needs one row per sample (leading size {batch}) or one shared row (leading size 1)"
        )

    return jax.tree_util.tree_map_with_path(align, cond)


jax.tree_util.register_pytree_node(Denoiser, lambda d: d.tree_flatten(), Denoiser.tree_unflatten)


def as_denoiser(
    model: Denoiser | Callable,
    *,
    noise: str | NoiseSchedule | None = None,
    prediction: str | None = None,
    time_input: str | Callable | None = None,
    example: str = "hso_jax.Denoiser(model_fn, noise='sd21')",
) -> Denoiser:
    """A :class:`Denoiser` from a Denoiser (returned unchanged) or a plain network callable.

    This is how the public entry points (:func:`hso_jax.optimize`, :func:`hso_jax.sample`)
    accept ``fn(x, t_in)`` directly: ``as_denoiser(fn, noise="sd21")`` is
    ``Denoiser(fn, noise=hso_jax.noise.preset("sd21"), prediction="eps", time_input="auto")``.

    Args:
      model: a :class:`Denoiser`, or a callable ``fn(x, t_in)`` (network parameters,
        conditioning and guidance need an explicit :class:`Denoiser`).
      noise: for a callable (required): the noise process it was trained under, a preset name
        (:func:`hso_jax.noise.preset`) or a :class:`~hso_jax.noise.NoiseSchedule`.
      prediction: for a callable: what it predicts (default ``"eps"``; see :data:`PREDICTIONS`).
      time_input: for a callable: what it receives as time (default ``"auto"``; see
        :data:`TIME_INPUTS`).
      example: the call shown in the error message when ``noise`` is missing.

    Raises:
      ValueError: a callable without ``noise``, or ``noise`` / ``prediction`` / ``time_input``
        given with a Denoiser (which carries its own; use ``model.replace(...)``); bad values.
      TypeError: ``model`` neither a Denoiser nor callable, or ``noise`` of the wrong type.
    """
    given = {
        k: v
        for k, v in (("noise", noise), ("prediction", prediction), ("time_input", time_input))
        if v is not None
    }
    if isinstance(model, Denoiser):
        if given:
            raise ValueError(
                f"{', '.join(f'{k}=' for k in given)} only apply when the model is a plain "
                "callable fn(x, t); this model is a hso_jax.Denoiser, which carries its own "
                f"noise, prediction and time_input (use model.replace({next(iter(given))}=...))"
            )
        return model
    if isinstance(model, NoiseSchedule) or not callable(model):
        raise TypeError(
            "model must be a hso_jax.Denoiser or a callable fn(x, t) (with noise=...), got "
            f"{type(model).__name__}"
        )
    if noise is None:
        raise ValueError(
            "model is a plain callable fn(x, t): add noise=<the noise process it was trained "
            f"under>, e.g. {example}; noise is a preset name (one of "
            f"{sorted(PRESETS)}) or a hso_jax.noise.NoiseSchedule. prediction= says "
            "what fn returns (default 'eps'; also 'x0', 'v', 'flow', 'score')"
        )
    if isinstance(noise, str):
        noise = preset(noise)  # unknown names: ValueError listing the presets
    elif not isinstance(noise, NoiseSchedule):
        raise TypeError(
            f"noise must be a preset name (one of {sorted(PRESETS)}) or a "
            f"hso_jax.noise.NoiseSchedule, got {type(noise).__name__}"
        )
    return Denoiser(
        model,
        noise=noise,
        prediction="eps" if prediction is None else prediction,
        time_input="auto" if time_input is None else time_input,
    )


def check_denoiser(model: Any, why: str = "") -> Denoiser:
    """``model`` if it is a :class:`Denoiser`, else ``TypeError`` that says what it is and,
    with ``why``, who needs one (e.g. ``"method='direct' evaluates the network"``)."""
    if not isinstance(model, Denoiser):
        need = f" ({why})" if why else ""
        raise TypeError(
            f"model must be a hso_jax.Denoiser{need}, e.g. hso_jax.Denoiser(fn, noise=...) or "
            f"GaussianMixture(...).denoiser(noise); got {type(model).__name__}"
        )
    return model
