"""The configuration of an HSO-family search: the family's variants, solver flavours, options.

A :class:`Variant` says what one method of the family is: a bi-level search (differential
evolution over the Karras family, each candidate refined) or a single lower-level run, and its
objective. The modules that define the methods add their variants (``hso``, ``hso-dmn`` in
:mod:`~hso_jax.optimizers.hso`; ``dmn``, ``mep-local`` in :mod:`~hso_jax.optimizers.single_level`;
``mep-model`` in :mod:`~hso_jax.optimizers.mep_model`). :class:`HSOConfig` is the one
validated, frozen set of options of a variant; it is hashable, since it is the static argument
of the compiled searches (:func:`hso_jax.optimizers.programs.run_compiled`) and part of their
cache key. :func:`options_class` is the ``Options`` dataclass of a variant's
:class:`~hso_jax.optimizers.Method`: the fields of :class:`HSOConfig` that apply to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import _validate, solvers
from ..objectives.dmn import DMN_TRUNC_NUM
from ..objectives.mep import FRAMES
from ..objectives.spacing import GAMMA
from ..schedules import ENDS, GRIDS

__all__ = [
    "BOUNDS",
    "GRIDS",
    "INITS",
    "SOLVERS",
    "HSOConfig",
    "Variant",
    "add_variant",
    "options_class",
    "register_variant",
    "variant",
    "check_end",
    "default_end",
    "n_intervals",
    "solver_flavour",
]

SOLVERS = ("unipc", "dpm-solver-pp", "ddim")
BOUNDS = ((3.0, 16.0), (0.01, 0.03), (0.96, 1.0))
INITS = ("karras", "logsnr", "time", "quadratic")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One method of the HSO family.

    Attributes:
      name: the method's name.
      bilevel: a bi-level search (else one lower-level run from an initial grid).
      objective: ``"mep"``, ``"dmn"`` or ``"mep-model"`` (the model-aware MEP on a table of
        teacher predictions).
      trunc_num: a DMN objective's default truncNum (an integer or ``"hso"``, HSO's rule).
    """

    name: str
    bilevel: bool
    objective: str
    trunc_num: int | str | None = None

    def takes(self, applies: str) -> bool:
        """Whether an option that ``applies`` to ``"all"``, ``"closed_form"`` (the MEP / DMN
        formulas, shaped by ``p`` and ``frame``), ``"dmn"``, ``"bilevel"`` or ``"single"``
        methods is this variant's."""
        return {
            "all": True,
            "closed_form": self.objective != "mep-model",
            "dmn": self.objective == "dmn",
            "bilevel": self.bilevel,
            "single": not self.bilevel,
        }[applies]


_VARIANTS: dict[str, Variant] = {}


def add_variant(v: Variant) -> Variant:
    """Make ``v`` known to :class:`HSOConfig` (the method's module does, at import)."""
    if v.name in _VARIANTS:
        raise ValueError(f"an HSO-family variant named {v.name!r} exists already")
    _VARIANTS[v.name] = v
    return v


def variant(name: str) -> Variant:
    """The variant ``name`` (``ValueError`` listing the known ones)."""
    if not isinstance(name, str) or name not in _VARIANTS:
        raise ValueError(f"method must be one of {tuple(_VARIANTS)}, got {name!r}")
    return _VARIANTS[name]


def solver_flavour(solver: Any, method: str = "hso") -> str:
    """HSO's solver flavour (one of :data:`SOLVERS`) of a solver name or object.

    Objects map by type: :class:`~hso_jax.solvers.UniPC` -> ``"unipc"``, multistep
    :class:`~hso_jax.solvers.DPMSolverPP` -> ``"dpm-solver-pp"``, :class:`~hso_jax.solvers.DDIM`
    -> ``"ddim"``, :class:`~hso_jax.solvers.Euler` (the same update) -> ``"ddim"`` (the order
    and other settings do not change the schedule). ``method`` only
    names the method in error messages.
    """
    if isinstance(solver, str):
        if solver in SOLVERS:
            return solver
        raise ValueError(
            f"solver must be one of {SOLVERS} or a solver object of these kinds (e.g. "
            f"hso_jax.solvers.unipc()) for method={method!r}, got {solver!r}"
        )
    kinds = (
        (solvers.UniPC, "unipc"),
        (solvers.DPMSolverPP, "dpm-solver-pp"),
        (solvers.DDIM, "ddim"),
        (solvers.Euler, "ddim"),  # Euler in EDM's variables is DDIM
    )
    for cls, name in kinds:
        if isinstance(solver, cls):
            return name
    if isinstance(solver, solvers.Solver):
        raise ValueError(
            f"method={method!r} has schedule flavours for UniPC, DPM-Solver++ (multistep) and "
            f"DDIM solver objects, got {type(solver).__name__}; for another solver with one "
            "network call per step, solver='unipc' gives NFE + 1 points"
        )
    raise TypeError(
        f"solver must be one of {SOLVERS} or a hso_jax solver object (e.g. "
        f"hso_jax.solvers.unipc()) for method={method!r}, got {type(solver).__name__}"
    )


def default_end(solver: str) -> str:
    """The end of a flavour's schedules (:data:`hso_jax.schedules.ENDS`) when none is asked
    for: ``"t_min"`` for DDIM (HSO's fixed final step to the first training step), ``"free"``
    for the multistep flavours (the last point is ``t_eps``, optimised)."""
    return "t_min" if solver == "ddim" else "free"


def check_end(end: Any, solver: str) -> str:
    """``end`` validated (``None``: :func:`default_end` of the flavour)."""
    return default_end(solver) if end is None else _validate.choice("end", end, ENDS)


def n_intervals(end: str, nfe: int) -> int:
    """Optimised intervals of ``nfe`` network calls: ``nfe`` for a free end (the last point is
    optimised too), ``nfe - 1`` for a fixed final step (to ``t_min`` or to the data): the
    ``nfe`` network points are optimised, the final point is the end's."""
    return nfe if end == "free" else nfe - 1


def _option(default: Any, applies: str, *, traced: bool = False):
    """A field that is an option of the variants it ``applies`` to (:meth:`Variant.takes`). A
    ``traced`` value reaches the compiled search as an argument, so it takes no part in
    equality, hashing and ``repr``: one executable serves all its values (an on-disk program
    store may key on ``repr``)."""
    return dataclasses.field(
        default=default, compare=not traced, repr=not traced, metadata={"applies": applies}
    )


@dataclasses.dataclass(frozen=True)
class HSOConfig:
    """Validated options of one HSO-family search (see :func:`hso_jax.optimize` for their
    meaning); the constructor checks every value and normalises it (floats, tuples, the
    method's default ``trunc_num``).

    ``method`` and ``n`` (optimised intervals, :func:`n_intervals`) are not options; every
    other field is an option of the methods :meth:`option_names` lists. Equality, the hash and
    ``repr`` cover what changes the compiled program; ``gamma``, ``bounds``, ``rho``,
    ``t_start`` and ``t_end`` are passed to it as arguments and are left out of them (read
    them as attributes).

    Raises:
      TypeError: a value of the wrong type. ValueError: a value out of range.
    """

    method: str
    n: int
    p: float = _option(2.0, "closed_form")
    frame: str = _option("vp", "closed_form")
    gamma: float = _option(GAMMA, "all", traced=True)
    local_maxiter: int = _option(100, "all")
    local_gtol: float = _option(1e-9, "all")
    local_ftol: float = _option(1e-13, "all")
    # None: the method's default (DM-NonUniform's 3 for "dmn", HSO's rule for "hso-dmn")
    trunc_num: int | str | None = _option(None, "dmn")
    popsize: int = _option(20, "bilevel")
    maxiter: int = _option(60, "bilevel")
    tol: float = _option(0.01, "bilevel")
    mutation: tuple[float, float] = _option((0.5, 1.0), "bilevel")
    recombination: float = _option(0.7, "bilevel")
    polish: bool = _option(True, "bilevel")
    bounds: tuple[tuple[float, float], ...] = _option(BOUNDS, "bilevel", traced=True)
    init: str | None = _option(None, "single")  # None: the method's default grid
    rho: float = _option(7.0, "single", traced=True)
    t_start: float | None = _option(None, "single", traced=True)  # None: t_max
    t_end: float | None = _option(None, "single", traced=True)  # None: see dmn.py

    def __post_init__(self):
        v = _validate
        checked = {
            "method": variant(self.method).name,
            "n": v.integer("n", self.n, 1),
            "p": v.real("p", self.p, 0.0, open_lo=True),
            "frame": v.choice("frame", self.frame, FRAMES),
            "gamma": v.real("gamma", self.gamma, 0.0),
            "local_maxiter": v.integer("local_maxiter", self.local_maxiter, 1),
            "local_gtol": v.real("local_gtol", self.local_gtol, 0.0),
            "local_ftol": v.real("local_ftol", self.local_ftol, 0.0),
            "trunc_num": _trunc_num(variant(self.method), self.trunc_num),
            "popsize": v.integer("popsize", self.popsize, 2),
            "maxiter": v.integer("maxiter", self.maxiter, 1),
            "tol": v.real("tol", self.tol, 0.0),
            "mutation": _mutation(self.mutation),
            "recombination": v.real("recombination", self.recombination, 0.0, 1.0),
            "polish": v.boolean("polish", self.polish),
            "bounds": _bounds(self.bounds),
            "init": None if self.init is None else v.choice("init", self.init, INITS),
            "rho": v.real("rho", self.rho, 0.0, open_lo=True),
            "t_start": None if self.t_start is None else v.real("t_start", self.t_start),
            "t_end": None if self.t_end is None else v.real("t_end", self.t_end),
        }
        for name, value in checked.items():  # frozen: the normalised values go in this way
            object.__setattr__(self, name, value)

    @classmethod
    def option_names(cls, method: str) -> tuple[str, ...]:
        """The options ``method`` takes (the fields that apply to its variant)."""
        v = variant(method)
        return tuple(f.name for f in _option_fields() if v.takes(f.metadata["applies"]))

    @classmethod
    def from_options(cls, method: str, n: int, options: dict[str, Any]) -> HSOConfig:
        """The configuration of ``method`` on ``n`` intervals from user options; a name the
        method does not take raises ``ValueError`` listing those it does."""
        known = cls.option_names(method)
        bad = sorted(set(options) - set(known))
        if bad:
            raise ValueError(
                f"unknown option(s) {bad} for method={method!r}; known options: {sorted(known)}"
            )
        return cls(method=method, n=n, **options)

    @property
    def objective(self) -> str:
        """The objective the method minimises: ``"mep"``, ``"dmn"`` or ``"mep-model"``."""
        return variant(self.method).objective

    @property
    def bilevel(self) -> bool:
        """Whether the method is a bi-level search."""
        return variant(self.method).bilevel


def _option_fields() -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(HSOConfig) if "applies" in f.metadata)


def options_class(v: Variant, extra: tuple = ()) -> type:
    """The ``Options`` dataclass of ``v``'s method: the :class:`HSOConfig` fields that apply to
    it, with their defaults (then the ``extra`` fields, ``(name, type, field)``, of a method
    that takes more); built, it is validated as :class:`HSOConfig` validates."""
    own = [f for f in _option_fields() if v.takes(f.metadata["applies"])]

    def __post_init__(self):
        HSOConfig(method=v.name, n=1, **{f.name: getattr(self, f.name) for f in own})

    fields = [(f.name, f.type, dataclasses.field(default=f.default)) for f in own]
    fields += list(extra)
    name = "".join(p.capitalize() for p in v.name.split("-")) + "Options"
    return dataclasses.make_dataclass(
        name, fields, frozen=True, namespace={"__post_init__": __post_init__}
    )


def register_variant(v: Variant, run, summary: str, extra: tuple = (), inputs: tuple = ()):
    """Register ``v``'s :class:`~hso_jax.optimizers.Method`: its options are the
    :class:`HSOConfig` fields that apply to it (and ``extra``); it needs a model when it has
    ``inputs``."""
    from .base import Method, register

    return register(
        Method(
            v.name,
            needs_model=bool(inputs),
            options=options_class(v, extra),
            run=run,
            summary=summary,
            inputs=inputs,
        )
    )


def _trunc_num(v: Variant, tn) -> int | str | None:
    """``trunc_num`` -> an integer or ``"hso"`` (HSO's rule) for the DMN variants, whose
    default is their own (:attr:`Variant.trunc_num`: 3, the official DM-NonUniform value, for
    ``"dmn"``; HSO's rule for ``"hso-dmn"``); ``None`` stays ``None`` for the others."""
    if tn is None:
        if v.objective != "dmn":
            return None
        tn = v.trunc_num
    if isinstance(tn, str) and tn == "hso":
        return tn
    if isinstance(tn, bool) or not isinstance(tn, (int, np.integer)) or tn < 0:
        raise ValueError(
            f"trunc_num must be a non-negative integer (DM-NonUniform: {DMN_TRUNC_NUM}) or 'hso' "
            f"(HSO's rule: 0 for N <= 5, 3 for N = 6, 7, 0 for N >= 8), got {tn!r}"
        )
    return int(tn)


def _mutation(mut) -> tuple[float, float]:
    if not (isinstance(mut, (tuple, list)) and len(mut) == 2):
        raise ValueError(f"mutation must be a (low, high) pair in [0, 2), got {mut!r}")
    mut = (
        _validate.real("mutation[0]", mut[0], 0.0),
        _validate.real("mutation[1]", mut[1], 0.0, 2.0),
    )
    if not mut[0] <= mut[1]:
        raise ValueError(f"mutation must satisfy low <= high, got {mut!r}")
    return mut


def _bounds(bounds) -> tuple[tuple[float, float], ...]:
    try:
        b = tuple((float(lo), float(hi)) for lo, hi in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be three (low, high) pairs for (rho, t_eps, T_max), got {bounds!r}"
        ) from None
    if len(b) != 3 or not all(np.isfinite(x).all() and x[0] < x[1] for x in b):
        raise ValueError(
            "bounds must be three finite (low, high) pairs with low < high for "
            f"(rho, t_eps, T_max), got {bounds!r}"
        )
    if b[0][0] <= 0:
        raise ValueError(f"rho bounds must be positive, got {b[0]}")
    return b
