"""Argument types of the command lines (``hso-jax``, ``python -m hso_jax.models.train``).

Each type turns the text of one flag into a value or raises ``argparse.ArgumentTypeError``
with the allowed range, which argparse prints as ``argument --flag: ...`` (exit status 2).
Ranges are closed: a value outside them could only overflow, exhaust memory or collide.
"""

from __future__ import annotations

import argparse
import math


def integer(lo: int, hi: int | None = None):
    """An integer in ``[lo, hi]`` (``hi=None``: no upper bound)."""
    want = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {want}, got {v}")
        return v

    parse.__name__ = want
    return parse


def real(lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False):
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``)."""
    if math.isinf(lo) and math.isinf(hi):
        want = "a finite number"
    elif math.isinf(hi):
        want = f"a finite number {'>' if open_lo else '>='} {lo:g}"
    else:
        want = f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}]"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return v

    parse.__name__ = want
    return parse


finite = real()
