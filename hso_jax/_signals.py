"""Prompt, clean stops on SIGINT / SIGTERM for the command line.

Python turns SIGINT into ``KeyboardInterrupt`` only when the main thread next runs Python code;
while it waits in XLA (a compilation can take a minute) the signal is pending, and unwinding
through JAX afterwards and tearing the interpreter down while XLA's threads still run has been
seen to crash (SIGSEGV). So :func:`stop_on_signals`:

1. raises :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so ``finally``
   blocks run and the caller can clean up and report one line (where Python cannot raise it --
   inside a gc callback or ``__del__``, e.g. JAX's -- it would print "Exception ignored" and a
   traceback; the unraisable hook ends the process there instead);
2. and, because the main thread may be stuck in native code, a watcher thread woken through
   :func:`signal.set_wakeup_fd` (written by the C-level handler, no GIL needed) gives it
   ``grace`` seconds; if the caller has not finished by then it runs the registered cleanups,
   prints the one-line message and ends the process with ``os._exit``.

Cleanups: temporary files created through :func:`temp_file` are removed, and callbacks
registered with :func:`on_interrupt` run (e.g. removing what an interrupted command wrote).
A lock makes sure that no temporary file is created once the cleanup has begun.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

__all__ = [
    "EXIT_CODES",
    "Interrupted",
    "stop_on_signals",
    "on_interrupt",
    "temp_file",
    "release_temp",
    "finish_interrupted",
    "exit_at_once",
]

# The shell's convention: 128 + signal number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

# Guards _TEMPS / _CLEANUPS; taken for good by whoever ends the process.
_LOCK = threading.RLock()
_TEMPS: set[str] = set()
_CLEANUPS: list[Callable[[], None]] = []


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives during :func:`stop_on_signals`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = EXIT_CODES.get(signum, 128 + signum)
        self.name = _NAMES.get(signum, f"signal {signum}")


def temp_file(dir, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """``tempfile.mkstemp`` whose file is removed if the process is stopped by a signal before
    :func:`release_temp` is called (after the file was renamed into place or deleted)."""
    import tempfile  # here: importing it costs the commands' first milliseconds

    with _LOCK:
        fd, tmp = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        _TEMPS.add(tmp)
    return fd, tmp


def release_temp(tmp: str) -> None:
    """Forget a temporary file of :func:`temp_file` (it was renamed into place or removed)."""
    with _LOCK:
        _TEMPS.discard(tmp)


@contextlib.contextmanager
def on_interrupt(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup()`` if a signal stops the command inside this block."""
    with _LOCK:
        _CLEANUPS.append(cleanup)
    try:
        yield
    except Interrupted:
        with _LOCK, contextlib.suppress(Exception):
            cleanup()
        raise
    finally:
        with _LOCK:
            if cleanup in _CLEANUPS:
                _CLEANUPS.remove(cleanup)


def _run_cleanups() -> None:
    """Remove pending temporary files and run the cleanups (newest first); errors are ignored:
    the process is about to end and must not print a traceback."""
    for tmp in list(_TEMPS):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _TEMPS.clear()
    for fn in reversed(_CLEANUPS):
        with contextlib.suppress(Exception):
            fn()
    _CLEANUPS.clear()


def _message(prog: str, name: str) -> bytes:
    return f"{prog}: interrupted by {name}, stopped\n".encode()


def finish_interrupted(prog: str, exc: Interrupted) -> None:
    """Clean up, print the one-line message and end the process with ``exc.exit_code``.

    ``os._exit`` rather than ``sys.exit``: the interpreter's teardown while XLA may still hold
    threads is what crashed, and nothing is left to flush but stdout / stderr (done here).
    """
    _LOCK.acquire()  # never released: from here on, no new temporary file is created
    _run_cleanups()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        os.write(2, _message(prog, exc.name))
    os._exit(exc.exit_code)


@contextlib.contextmanager
def exit_at_once(prog: str) -> Iterator[None]:
    """SIGINT / SIGTERM end the process at once: cleanups, one line, exit status 130 / 143.

    For phases with nothing to unwind in which raising would be worse than exiting: importing
    JAX, whose extension turns an exception raised inside its initialisation into an
    ``ImportError``. Outside the main thread this does nothing; the previous handlers are
    restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        finish_interrupted(prog, Interrupted(signum))

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Guard:
    """What :func:`stop_on_signals` yields; set ``prog`` to change the message's program name."""

    def __init__(self, prog: str):
        self.prog = prog


@contextlib.contextmanager
def stop_on_signals(prog: str, *, grace: float = 1.0) -> Iterator[Guard]:
    """Turn SIGINT / SIGTERM into :class:`Interrupted` and guarantee an exit within ``grace``.

    Outside the main thread (where Python cannot install handlers) this does nothing. The
    previous handlers and wakeup fd are restored on exit.

    Args:
      prog: program name of the one-line message (``guard.prog`` may change it later).
      grace: seconds the main thread gets to unwind before the watcher ends the process.
    """
    guard = Guard(prog)
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    stop = threading.Event()
    state: dict[str, int] = {}

    def handler(signum, frame):
        if "signum" in state:  # a second signal while unwinding: the watcher is on it
            return
        state["signum"] = signum
        raise Interrupted(signum)

    def watch():
        # The wakeup fd carries one byte per signal that has a Python handler; wait for ours.
        signum = None
        while signum is None:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if stop.is_set() or not data:
                return
            signum = next((b for b in data if b in EXIT_CODES), None)
        if stop.wait(grace):
            return
        finish_interrupted(guard.prog, Interrupted(state.get("signum", signum)))

    def unraisable(info):
        # The exception was raised inside a gc callback or __del__, where Python only prints
        # it ("Exception ignored in ...", with a traceback): end the process here instead.
        if isinstance(info.exc_value, Interrupted):
            finish_interrupted(guard.prog, info.exc_value)
        old_hook(info)

    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    old = {s: signal.getsignal(s) for s in EXIT_CODES}
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for s in EXIT_CODES:
        signal.signal(s, handler)
    watcher = threading.Thread(target=watch, name="hso_jax-signal-watcher", daemon=True)
    watcher.start()
    try:
        yield guard
    finally:
        stop.set()
        sys.unraisablehook = old_hook
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(old_fd)
        with contextlib.suppress(OSError):
            os.write(w, b"\0")  # wake the watcher so it ends
        watcher.join(timeout=1.0)
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)
