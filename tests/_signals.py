"""Start a command with SIGINT / SIGTERM at their defaults, read its stderr, signal it."""

import os
import re
import signal
import subprocess
import threading
import time

STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _default_signals():
    """In the child: SIGINT / SIGTERM at their defaults, whatever the test runner inherited (a
    shell's background job starts with SIGINT ignored, and the package keeps an ignored
    signal ignored while it starts)."""
    for s in STATUS:
        signal.signal(s, signal.SIG_DFL)


class Lines:
    """Collect a pipe's lines with their arrival time, in a thread (a child writing many lines,
    e.g. ``-X importtime``'s, never blocks on a full pipe before its handler runs)."""

    def __init__(self, pipe):
        self.lines = []
        self._t = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._t.start()

    def _read(self, pipe):
        for line in pipe:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def until(self, p, pattern, timeout=120.0):
        """Wait for a line matching ``pattern``; the child must still run meanwhile."""
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for _, line in self.lines):
            assert p.poll() is None and time.monotonic() < deadline, self.lines[-5:]
            time.sleep(0.005)

    def join(self):
        self._t.join(timeout=10)
        return [line for _, line in self.lines]


def spawn(argv, **env):
    """``(process, its stderr Lines)``; stdout is a pipe left unread."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
                         preexec_fn=_default_signals)
    return p, Lines(p.stderr)


def stop(p, signum):
    """Send ``signum``; return (exit status, seconds until the process ended)."""
    t0 = time.monotonic()
    p.send_signal(signum)
    try:
        rc = p.wait(timeout=60)
    finally:
        p.kill()
    return rc, time.monotonic() - t0


def assert_stopped(p, lines, signum, prog, timeout=5.0):
    """Signal ``p``: it must exit with the signal's status within ``timeout`` seconds, saying
    exactly ``{prog}: interrupted by {name}, stopped`` (besides ``-X importtime`` lines)."""
    rc, took = stop(p, signum)
    rest = [ln for ln in lines.join() if not ln.startswith("import time:")]
    assert rc == STATUS[signum], rest
    assert rest == [f"{prog}: interrupted by {signal.Signals(signum).name}, stopped"], rest
    assert took < timeout, took
