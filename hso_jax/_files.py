"""Atomic file writes and checksums: the one copy every writer of the package uses.

A file is written to a temporary file in its own directory, flushed to disk, given its mode and
renamed over the target (``os.replace``, atomic on POSIX and Windows): a reader sees the old
file or the new one, never a partial one, and a failure (or SIGINT / SIGTERM under the command
line, :mod:`hso_jax._signals`) leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from ._signals import release_temp, temp_file

__all__ = ["atomic_write", "file_kind", "read_regular", "sha256_bytes", "sha256_file"]

_CHUNK = 1 << 20


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int | None = None) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically.

    Args:
      path: the file to write; its directory must exist.
      data: the content.
      mode: permission bits of the file (default: an existing file's, else 0o644).

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      TypeError: ``data`` is neither bytes nor str.
      OSError: the directory is missing or not writable, the disk is full, ...
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes or str, got {type(data).__name__}")
    path = Path(path)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        release_temp(tmp)
    return path


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a named pipe (FIFO)", ...)."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, read without blocking.

    A named pipe, a device (``/dev/zero``), a socket or a directory is refused before anything
    is read (``O_NONBLOCK``: opening a FIFO does not wait for a writer), and a file larger than
    ``max_bytes`` is refused after reading one byte more, so no input can hang or exhaust
    memory.

    Raises:
      ValueError: not a regular file, or too large (the message says which).
      OSError: the file cannot be opened (missing, no permission).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"it is {file_kind(st.st_mode)}, not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return data
