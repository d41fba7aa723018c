"""Progress lines of the commands: plain lines on stderr (not a bar, so that a log file or a
pipe reads them as a terminal does), the frequent ones at most one every :data:`EVERY_S`."""

from __future__ import annotations

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
