"""Persistent cache of compiled searches (JAX's compilation cache), on by default.

A model-free search runs in a fraction of a second but takes seconds to compile, and without a
persistent cache every new process compiles it again. JAX can
store compiled XLA executables on disk and load them in a later process
(``jax_compilation_cache_dir``); this module turns that on in the package's cache folder, so a
repeated ``hso-jax optimize`` with the same shapes skips XLA compilation. Together with it, the
traced searches are kept (:mod:`hso_jax.optimizers.programs`: no tracing either), so
a repeated search costs about the import time.

Where: ``$HSO_JAX_CACHE/xla`` (executables) and ``$HSO_JAX_CACHE/programs`` (traced searches)
if ``HSO_JAX_CACHE`` is set, else the same folders under ``~/.cache/hso_jax`` (the package's
cache root, shared with the reference cache of :mod:`hso_jax.evaluation.cache`). Delete them
to empty the cache. As with any JAX compilation cache, their files are executable code: do not
let people you do not trust write to them.

When it is turned on:

* **the command line**: every ``hso-jax`` subcommand, at start-up, caching every executable
  (``jax_persistent_cache_min_compile_time_secs = 0`` for the duration of the command: a run's
  small executables add up to about a second);
* **the library**: the first call of :func:`hso_jax.optimize`, with a threshold of
  ``LIBRARY_MIN_COMPILE_TIME_S`` (0.5 s) so that the compiled searches (1-15 s) are kept and
  small executables are not. ``import hso_jax`` changes no JAX setting. JAX has one persistent
  cache per process, so after that first call the process's other compilations that take at
  least 0.5 s are cached in the same folder too; set ``HSO_JAX_COMPILE_CACHE=0`` (or your own
  ``jax_compilation_cache_dir``) to avoid that.

It is left alone (nothing here changes any JAX setting) when:

* ``HSO_JAX_COMPILE_CACHE`` is ``0``, ``false``, ``no`` or ``off`` (``1``, ``true``, ``yes``,
  ``on`` or empty keep it on; any other value raises ``ValueError``);
* the user has set ``jax_compilation_cache_dir`` (``jax.config.update`` or
  ``JAX_COMPILATION_CACHE_DIR``) -- their folder and thresholds are used as they are, and no
  traced search is kept;
* ``jax_enable_compilation_cache`` is false.

An unwritable folder (read-only, a file where the folder should be, no space) is reported once
per process with a ``UserWarning`` and the program continues without the persistent cache;
nothing is lost but the compilation time. Should a write fail later, JAX itself warns and goes
on. A damaged entry (say, from a process killed while writing it) fails JAX's decompression
check: JAX warns, compiles again and gives the same result, but does not replace the entry, so
the warning comes back on every run until the folder is deleted. A damaged traced search is
reported, traced again and replaced.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import jax

from .optimizers import programs
from .reference.cache import default_cache_dir

__all__ = [
    "ENV_VAR",
    "LIBRARY_MIN_COMPILE_TIME_S",
    "cache_everything",
    "compile_cache_dir",
    "enable",
    "program_store_dir",
]

ENV_VAR = "HSO_JAX_COMPILE_CACHE"
LIBRARY_MIN_COMPILE_TIME_S = 0.5
_JAX_DEFAULT_MIN_COMPILE_TIME_S = 1.0
_OFF = ("0", "false", "no", "off")
_ON = ("", "1", "true", "yes", "on")

_LOCK = threading.Lock()
_OURS: str | None = None  # the folder this module gave to JAX, once it has
_WARNED: set[str] = set()  # unwritable folders already reported


def compile_cache_dir() -> Path:
    """The folder of the package's compilation cache: ``<cache root>/xla`` (absolute)."""
    return (default_cache_dir() / "xla").absolute()


def program_store_dir() -> Path:
    """The folder of the traced searches (:mod:`hso_jax.optimizers.programs`):
    ``<cache root>/programs`` (absolute)."""
    return (default_cache_dir() / "programs").absolute()


def _opted_out() -> bool:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in _OFF:
        return True
    if value in _ON:
        return False
    raise ValueError(
        f"environment variable {ENV_VAR} must be one of {_ON[1:] + _OFF} (or empty), got "
        f"{os.environ[ENV_VAR]!r}"
    )


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot hold cache entries, or None when a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def enable() -> Path | None:
    """Turn JAX's persistent compilation cache on in :func:`compile_cache_dir`, unless the
    user opted out or configured their own; idempotent and cheap after the first call.

    Returns:
      the folder compiled executables are kept in (the user's own if they set one), or None
      when there is no persistent cache (opted out, disabled in JAX, or unwritable -- the
      latter with one ``UserWarning`` per process and folder).

    Raises:
      ValueError: ``HSO_JAX_COMPILE_CACHE`` has a value that is neither on nor off.
    """
    global _OURS
    with _LOCK:
        current = jax.config.jax_compilation_cache_dir
        if not jax.config.jax_enable_compilation_cache:
            return None
        if current:  # ours (an earlier call) or the user's: use it as it is
            return Path(current)
        if _opted_out():
            return None
        folder = compile_cache_dir()
        key = str(folder)
        if key in _WARNED:
            return None
        reason = _unwritable(folder)
        if reason is not None:
            _WARNED.add(key)
            warnings.warn(
                f"the compilation cache folder {key} is not writable ({reason}); continuing "
                f"without a persistent compilation cache (each new process compiles again). "
                f"Set HSO_JAX_CACHE to a writable folder, or {ENV_VAR}=0 to turn it off.",
                UserWarning,
                stacklevel=2,
            )
            return None
        threshold = "jax_persistent_cache_min_compile_time_secs"
        if getattr(jax.config, threshold) == _JAX_DEFAULT_MIN_COMPILE_TIME_S:
            # JAX's default (1 s) would skip the smaller searches on a fast machine; a value
            # the user chose is kept.
            jax.config.update(threshold, LIBRARY_MIN_COMPILE_TIME_S)
        jax.config.update("jax_compilation_cache_dir", key)
        programs.use_store(program_store_dir())
        _OURS = key
        return folder


@contextlib.contextmanager
def cache_everything() -> Iterator[None]:
    """Within the block, cache every executable (minimum compile time 0) when the cache in use
    is this module's; the user's own cache settings are left alone. For the command line, whose
    small executables together cost about a second per run."""
    if _OURS is None or jax.config.jax_compilation_cache_dir != _OURS:
        yield
        return
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
