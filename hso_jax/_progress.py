"""Progress lines of the commands: plain lines on stderr (not a bar, so that a log file or a
pipe reads them as a terminal does), the frequent ones at most one every :data:`EVERY_S`; and
the progress of compiled solves, reported from inside them (:func:`solve_step`)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable

EVERY_S = 5.0
"""Seconds between two throttled lines of a long search (its first line comes at once)."""


def lines(prefix: str = "", enabled: bool = True) -> Callable[..., None]:
    """``say(text, every=False)``: the line ``PREFIX TEXT`` on stderr; with ``every`` only when
    :data:`EVERY_S` seconds have passed since the last line. Nothing when not ``enabled``."""
    last = [-math.inf]

    def say(text: str, every: bool = False) -> None:
        now = time.monotonic()
        if not enabled or (every and now - last[0] < EVERY_S):
            return
        last[0] = now
        print(f"{prefix}{text}", file=sys.stderr, flush=True)

    return say


# --------------------------------------------------------------------------------------
# Progress of compiled solves (reference solves, teacher runs)
# --------------------------------------------------------------------------------------

_listener: list = [None]  # f(fraction) of the solves now running, or None


def solve_step(fraction) -> None:
    """Called from inside compiled solves (diffrax's progress meter of the reference solves,
    the scan of a teacher run) with the fraction of the current solve done, 0 to 1; passes it
    on to whoever listens (:func:`listening`), else does nothing. A module-level function, so
    the compiled programs are the same whether anyone listens or not."""
    f = _listener[0]
    if f is not None:
        f(min(1.0, max(0.0, float(fraction))))


def listened() -> bool:
    """Whether someone listens to the solves' progress (a host loop then reports its steps)."""
    return _listener[0] is not None


@contextlib.contextmanager
def listening(report: Callable[[float], None] | None):
    """Within: the progress of the solves, as a fraction of all of them, goes to
    ``report(fraction)`` (``None``: to whoever listened before)."""
    outer = _listener[0]
    if report is not None:
        _listener[0] = report
    try:
        yield
    finally:
        _listener[0] = outer


@contextlib.contextmanager
def part(lo: float, hi: float):
    """Within: a solve's fraction ``f`` reaches the listener as ``lo + (hi - lo) f`` (one
    chunk of samples out of several)."""
    outer = _listener[0]
    if outer is not None:
        _listener[0] = lambda f: outer(lo + (hi - lo) * f)
    try:
        yield
    finally:
        _listener[0] = outer


def to_listener(key: str = "solved"):
    """``callback(d)`` that passes ``d[key]`` to the listener of now (``None`` when nobody
    listens): a nested call's progress, reported where the caller's goes."""
    f = _listener[0]
    return None if f is None else (lambda d: f(d[key]))


def as_fraction_callback(callback, key: str, t0: float | None = None):
    """``report(fraction)`` that calls ``callback({key: fraction, "elapsed": seconds})``, or
    ``None`` without a callback."""
    if callback is None:
        return None
    start = time.perf_counter() if t0 is None else t0
    return lambda f: callback({key: f, "elapsed": time.perf_counter() - start})
