"""The first thing the package does when one of its commands imports it: take charge of
SIGINT / SIGTERM, so that a signal while the command starts (imports JAX, a second or two) ends
it with one line and exit status 130 / 143 -- not a ``KeyboardInterrupt`` traceback, nor an
"Exception ignored" that lets the command run on.

Only the C module ``_signal`` and ``os`` / ``sys`` (loaded with the interpreter) are used: the
``signal`` module builds its enums for milliseconds, during which a signal would still raise.
A signal in the interpreter's own first ~20 ms (while CPython imports ``site``, before any
code of this package runs) gets CPython's response. A library import changes nothing.
"""

from __future__ import annotations

import _signal
import os
import sys

# Python's options that take a value in the next argument (``python -W error -m hso_jax``).
_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")
_EXIT = {_signal.SIGINT: (130, "SIGINT"), _signal.SIGTERM: (143, "SIGTERM")}


def command_name(argv: list[str] | None = None) -> str | None:
    """The program name if this process is one of the package's commands, else ``None``:
    ``hso-jax`` for the console script and ``python -m hso_jax``, ``python -m hso_jax.x.y`` for
    another module run with ``-m``. Read from ``sys.orig_argv`` (the interpreter's own command
    line), which is right while the package is still being imported."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    args = iter(argv[1:])
    for a in args:
        if a == "-m":
            module = next(args, "")
            if module in ("hso_jax", "hso_jax.__main__"):
                return "hso-jax"
            return f"python -m {module}" if module.startswith("hso_jax.") else None
        if a in _OPTIONS_WITH_VALUE:
            next(args, None)
        elif a == "-c" or not a.startswith("-"):  # a -c program or a script
            name = os.path.basename(a) if a != "-c" else ""
            return "hso-jax" if name.removesuffix(".exe") == "hso-jax" else None
    return None


def exit_at_once_in_commands() -> None:
    """In one of the package's commands, make SIGINT / SIGTERM end the process at once from now
    on (its later phases install their own handlers, see :mod:`hso_jax._signals`)."""
    prog = command_name()
    if prog is None:
        return

    def handler(signum, frame):
        signals = sys.modules.get("hso_jax._signals")
        finish = getattr(signals, "finish_interrupted", None)  # None while it is imported
        if finish is not None:  # cleanups, flush, one line, exit
            finish(prog, signals.Interrupted(signum))
        code, name = _EXIT[signum]
        os.write(2, f"{prog}: interrupted by {name}, stopped\n".encode())
        os._exit(code)

    for s in _EXIT:
        if _signal.getsignal(s) in (_signal.default_int_handler, _signal.SIG_DFL):
            try:
                _signal.signal(s, handler)
            except ValueError:  # not the main thread
                return
