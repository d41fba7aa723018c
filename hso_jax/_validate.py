"""Eager argument checks shared by the whole package (the lowest layer: imports no hso_jax).

One rule for every public function: a value of the wrong *type* raises ``TypeError``, a value
of the right type outside what is allowed raises ``ValueError``; both name the argument, show
the value and say what is allowed. ``bool`` is never accepted as a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MAX_NFE",
    "MAX_SEED",
    "integer",
    "nfe",
    "seed",
    "real",
    "in_range",
    "boolean",
    "choice",
    "prng_key",
]

MAX_NFE = 1000
"""The most network evaluations a schedule may spend: as many as the steps a discrete model
is trained on (1000), far past the 4-50 where schedules matter."""
MAX_SEED = 2**32 - 1
"""The largest seed: ``jax.random.key`` keeps only the low 32 bits of a seed in 32-bit mode, so
larger seeds would silently collide with smaller ones."""


def integer(
    name: str,
    value: Any,
    minimum: int | None = None,
    *,
    maximum: int | None = None,
    allowed: Sequence[int] | None = None,
    meaning: str = "",
) -> int:
    """``value`` as an ``int`` (Python or NumPy integer) in ``[minimum, maximum]`` / one of
    ``allowed``."""
    if allowed is not None:
        want = f"one of {tuple(allowed)}"
    elif minimum is not None and maximum is not None:
        want = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an integer >= {minimum}"
    else:
        want = "an integer" if maximum is None else f"an integer <= {maximum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {want}{meaning}, got {value!r} ({type(value).__name__})")
    v = int(value)
    if (
        (minimum is not None and v < minimum)
        or (maximum is not None and v > maximum)
        or (allowed is not None and v not in allowed)
    ):
        raise ValueError(f"{name} must be {want}{meaning}, got {v}")
    return v


def nfe(value: Any, minimum: int = 1, *, name: str = "nfe", meaning: str = "") -> int:
    """A number of network evaluations in ``[minimum, MAX_NFE]``."""
    return integer(name, value, minimum, maximum=MAX_NFE, meaning=meaning)


def seed(value: Any, name: str = "seed") -> int:
    """A seed in ``[0, MAX_SEED]``."""
    return integer(name, value, 0, maximum=MAX_SEED)


def real(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    open_lo: bool = False,
) -> float:
    """``value`` as a finite ``float`` in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo is not None and (v <= lo if open_lo else v < lo):
        raise ValueError(f"{name} must be {'>' if open_lo else '>='} {lo}, got {value!r}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value!r}")
    return v


def in_range(name: str, value: Any, bounds: tuple[float, float], meaning: str = "") -> float:
    """``value`` as a ``float`` in the closed interval ``bounds`` (``nan`` / ``inf`` outside)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in [{bounds[0]:g}, {bounds[1]:g}]{meaning}, got "
            f"{value!r} ({type(value).__name__})"
        )
    v = float(value)
    if not bounds[0] <= v <= bounds[1]:
        raise ValueError(f"{name} must lie in [{bounds[0]:g}, {bounds[1]:g}]{meaning}, got {v!r}")
    return v


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0 / 1 / None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``allowed``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def callback(value: Any, name: str = "callback"):
    """``value`` if it is ``None`` or callable (a progress callback)."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {value!r}")
    return value


def prng_key(name: str, key: Any):
    """``key`` if it is a JAX PRNG key (typed ``jax.random.key`` or a raw ``PRNGKey``)."""
    import jax  # here: this module is imported by the CLI before JAX loads

    if key is None:
        raise TypeError(f"{name} must be a PRNG key (e.g. jax.random.key(0)), got None")
    try:
        jax.random.fold_in(key, 0)
    except Exception as e:  # noqa: BLE001 - any failure means "not a key"
        raise TypeError(f"{name} must be a PRNG key (e.g. jax.random.key(0)), got {key!r}") from e
    return key
