"""The method contract: every optimiser of :func:`hso_jax.optimize` is a :class:`Method` in one
:data:`REGISTRY`.

A method is a name, whether it needs a model, a frozen ``Options`` dataclass (its keyword
options, validated when built) and ``run(problem, nfe, solver, options, seed)``, which returns
an :class:`~hso_jax.optimizers.OptimizeResult`. ``hso_jax.optimize`` looks the name up, builds
``Options(**kwargs)`` and calls ``run``; the command line, the demo, the benchmarks and the docs
read the registry. A method of one's own registers the same way::

    @dataclasses.dataclass(frozen=True)
    class Options:
        shrink: float = 0.5

    def run(problem, nfe, solver, options, seed):
        t = hso_jax.schedules.time_uniform(problem.noise, nfe) ** (1 + options.shrink)
        return OptimizeResult.from_t(t, problem.noise, objective=0.0, penalty=None,
                                     method="mine", solver=str(solver), nfe=nfe)

    register(Method("mine", needs_model=False, options=Options, run=run))
    hso_jax.optimize(noise, nfe=5, method="mine", shrink=0.2)

(As optax's ``GradientTransformation`` is a pair of functions, a method is a record of them.)
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

from ..noise import NoiseSchedule

__all__ = [
    "Method",
    "Problem",
    "REGISTRY",
    "UnknownOptionError",
    "build_options",
    "given_options",
    "method",
    "names",
    "option_names",
    "register",
]


class UnknownOptionError(TypeError, ValueError):
    """An option the method does not take (a ``TypeError``, as for an unknown keyword; also a
    ``ValueError``, as the option checks raised before the registry)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a method optimises for.

    Attributes:
      noise: the model's noise process.
      model: the :class:`~hso_jax.Denoiser`, or ``None`` (a model-free run on a process).
      end: where the schedule's last step lands (:data:`hso_jax.schedules.ENDS`; ``None``: the
        method's own default).
      grid: ``"continuous"`` or ``"steps"`` (network points on a discrete model's training
        steps).
      start_max: the latest start time a runtime takes (``None``: the process's ``t_max``).
    """

    noise: NoiseSchedule
    model: Any = None
    end: str | None = None
    grid: str = "continuous"
    start_max: float | None = None

    def starts_at_t_max(self, method: str) -> None:
        """Refuse a latest start below the process's ``t_max`` for a method that starts there."""
        if self.start_max is not None:
            raise ValueError(
                f"method={method!r} starts at the process's t_max; a target that starts below "
                f"it (t <= {self.start_max:g}) takes method='direct'"
            )

    def conventions(self) -> dict[str, Any]:
        """``end`` / ``grid`` / ``start_max`` as keywords (those that differ from the
        defaults)."""
        grid = None if self.grid == "continuous" else self.grid
        out = {"end": self.end, "grid": grid, "start_max": self.start_max}
        return {k: v for k, v in out.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Method:
    """One optimiser.

    Attributes:
      name: the name ``hso_jax.optimize(..., method=name)`` takes.
      needs_model: whether it evaluates the network (a Denoiser is required).
      options: a frozen dataclass of its keyword options; ``options(**kwargs)`` validates them.
      run: ``run(problem, nfe, solver, options, seed) -> OptimizeResult``.
      summary: one line for people (the command line's help, the docs).
      inputs: what a model-based method needs besides the model, by option name: ``"x_T"``
        (initial noises: direct, GITS, MEP-model) or ``"data"`` (data samples: AYS); the
        command line supplies them.
    """

    name: str
    needs_model: bool
    options: type
    run: Callable[..., Any]
    summary: str = ""
    inputs: tuple[str, ...] = ()


_METHODS: dict[str, Method] = {}
REGISTRY: Mapping[str, Method] = types.MappingProxyType(_METHODS)
"""Every registered method by name, read-only (:func:`register` adds one)."""


def register(m: Method) -> Method:
    """Add ``m`` to :data:`REGISTRY` (``ValueError`` if its name is taken)."""
    if not isinstance(m, Method):
        raise TypeError(f"register takes a hso_jax.optimizers.Method, got {type(m).__name__}")
    if not dataclasses.is_dataclass(m.options):
        raise TypeError(f"method {m.name!r}: options must be a dataclass, got {m.options!r}")
    if m.name in _METHODS:
        raise ValueError(f"a method named {m.name!r} is registered already")
    _METHODS[m.name] = m
    return m


def names(needs_model: bool | None = None) -> tuple[str, ...]:
    """The registered methods' names, the model-free ones first (``needs_model``: only those
    that do, or do not, need a model)."""
    ordered = sorted(_METHODS, key=lambda n: _METHODS[n].needs_model)  # stable
    return tuple(n for n in ordered if needs_model in (None, _METHODS[n].needs_model))


def method(name: str) -> Method:
    """The registered method ``name`` (``ValueError`` listing the known ones)."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"method must be one of {names()}, got {name!r}")
    return _METHODS[name]


def option_names(m: Method) -> tuple[str, ...]:
    """The keyword options of ``m``."""
    return tuple(f.name for f in dataclasses.fields(m.options) if f.init)


def build_options(m: Method, kwargs: dict[str, Any]):
    """``m.options(**kwargs)``; an unknown name raises :class:`UnknownOptionError` listing the
    known ones."""
    known = option_names(m)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise UnknownOptionError(
            f"unknown option(s) {unknown} for method={m.name!r}; known options: {sorted(known)}"
        )
    return m.options(**kwargs)


def given_options(options) -> dict[str, Any]:
    """The fields of an ``Options`` instance that differ from their defaults (what the user
    gave; the method's own defaults apply to the rest)."""
    out = {}
    for f in dataclasses.fields(options):
        v, d = getattr(options, f.name), f.default
        if v is d or (type(v) is type(d) and isinstance(v, _PLAIN) and v == d):
            continue
        out[f.name] = v
    return out


_PLAIN = (bool, int, float, str, tuple, type(None))
