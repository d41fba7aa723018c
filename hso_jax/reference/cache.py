"""On-disk cache of reference (teacher) solutions, keyed by the problem they solve.

A tight reference solve costs hundreds of network evaluations per sample, while every schedule
comparison reuses the same ones; :func:`cached_reference` computes them once per problem

    (key_id, x_T bytes / dtype / shape, t_start, t_end, rtol, atol)

and stores them as ``.npz``. ``key_id`` is the caller's identity string for everything else that
changes the answer -- the model (``"gm2d-v1"``, a checkpoint hash) and a non-default ``solve``.
The sha256 of that description names the file.

Integrity: each file embeds its metadata (as JSON) and a sha256 checksum of the metadata plus
the array's dtype, shape and bytes; files are written to a temporary file in the same directory
and moved into place with ``os.replace`` (atomic on POSIX and Windows), so a reader never sees
a half-written file and concurrent writers of the same entry are harmless. On read, a file that
cannot be parsed, fails its checksum, or describes another problem is reported with a
``UserWarning``, recomputed and rewritten -- never used.

An unwritable cache (read-only or full disk, a file where the folder should be) never loses a
finished solve: the result is returned with a ``UserWarning`` that it could not be cached.

Cache directory: ``cache_dir`` if given, else ``$HSO_JAX_CACHE/references`` or
``~/.cache/hso_jax/references``. Bump ``CACHE_VERSION`` to invalidate every entry when the
reference computation itself changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._files import atomic_write, sha256_bytes

__all__ = ["cached_reference", "reference_cache_path", "default_cache_dir", "CACHE_VERSION"]

Array = Any

CACHE_VERSION = 1
_FORMAT = "hso_jax.reference"


def default_cache_dir() -> Path:
    """``$HSO_JAX_CACHE`` if set (and non-empty), else ``~/.cache/hso_jax``."""
    env = os.environ.get("HSO_JAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hso_jax"


def _host_array(x_T) -> np.ndarray:
    if isinstance(x_T, jax.core.Tracer):
        raise TypeError("x_T must be a concrete array (cached_reference cannot run under jit)")
    if not hasattr(x_T, "shape") or not hasattr(x_T, "dtype"):
        raise TypeError(f"x_T must be a floating-point array, got {type(x_T).__name__}")
    v = np.asarray(x_T)
    if not np.issubdtype(v.dtype, np.floating):
        raise TypeError(f"x_T must be a floating-point array, got dtype {v.dtype}")
    if not np.all(np.isfinite(v)):
        raise ValueError("x_T must be finite; it contains NaN or inf")
    # Canonical little-endian C-order bytes: the same values always hash the same.
    return np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<"))


def _as_float(name: str, v) -> float:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    try:
        f = float(np.asarray(v))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return f


def _problem(x: np.ndarray, t_start, t_end, key_id, rtol, atol) -> tuple[dict, str]:
    """The metadata of a problem and its sha256 key (over the metadata and the x_T bytes)."""
    if not isinstance(key_id, str) or not key_id:
        raise TypeError(
            f"key_id must be a non-empty string identifying the model (e.g. 'gm2d-v1' or a "
            f"checkpoint hash), got {key_id!r}"
        )
    meta = {
        "format": _FORMAT,
        "version": CACHE_VERSION,
        "key_id": key_id,
        # float.hex is exact and platform independent (repr would do too, hex is explicit).
        "t_start": _as_float("t_start", t_start).hex(),
        "t_end": _as_float("t_end", t_end).hex(),
        "rtol": _as_float("rtol", rtol).hex(),
        "atol": _as_float("atol", atol).hex(),
        "x_T_dtype": x.dtype.str,
        "x_T_shape": list(x.shape),
        "x_T_sha256": sha256_bytes(x.tobytes()),
    }
    key = sha256_bytes(_canonical(meta))
    return meta, key


def _canonical(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def _checksum(meta_json: bytes, arr: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(meta_json)
    h.update(arr.dtype.str.encode())
    h.update(repr(tuple(arr.shape)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _safe(key_id: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_." else "_" for c in key_id)
    return s[:40] or "ref"


def _resolve_dir(cache_dir) -> Path:
    if cache_dir is None:
        return default_cache_dir() / "references"
    return Path(cache_dir).expanduser()


def reference_cache_path(
    x_T: Array,
    t_start: float,
    t_end: float,
    *,
    key_id: str,
    rtol: float,
    atol: float,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The file :func:`cached_reference` reads and writes for this problem (it may not exist)."""
    _, key = _problem(_host_array(x_T), t_start, t_end, key_id, rtol, atol)
    return _resolve_dir(cache_dir) / f"{_safe(key_id)}-{key[:32]}.npz"


def _load(path: Path, meta: dict, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, ``None`` if missing; warns and returns ``None`` if unusable."""
    try:
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_ref", "meta", "checksum"} - set(f.files)
            if missing:
                raise ValueError(f"missing entries {sorted(missing)}")
            arr = np.array(f["x_ref"])
            meta_json = str(f["meta"][()]).encode()
            checksum = str(f["checksum"][()])
        if _checksum(meta_json, arr) != checksum:
            raise ValueError("checksum mismatch (corrupted file)")
        stored = json.loads(meta_json)
        if stored.get("key") != key or stored.get("problem") != meta:
            raise ValueError("the file describes a different problem (key mismatch)")
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"stored shape {arr.shape} differs from x_T's shape {shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("stored array has NaN/inf entries")
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported and recomputed
        warnings.warn(
            f"ignoring cached reference {path}: {type(e).__name__}: {e}; recomputing it",
            UserWarning,
            stacklevel=3,
        )
        return None
    return arr


def _save(path: Path, arr: np.ndarray, meta: dict, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_json = _canonical({"key": key, "problem": meta})
    buf = io.BytesIO()
    np.savez(
        buf,
        x_ref=arr,
        meta=np.array(meta_json.decode()),
        checksum=np.array(_checksum(meta_json, arr)),
    )
    atomic_write(path, buf.getvalue())


def cached_reference(
    model,
    x_T: Array,
    t_start: float,
    t_end: float,
    *,
    key_id: str,
    cache_dir: str | os.PathLike | None = None,
    rtol: float,
    atol: float,
    solve: Callable | None = None,
) -> Array:
    """Reference PF-ODE solution from ``x_T`` (at ``t_start``) to ``t_end``, cached on disk.

    On a hit the stored array is returned after its checksum and metadata are verified; on a
    miss (or an unusable file, with a warning) ``solve(model, x_T, t_start, t_end, rtol=rtol,
    atol=atol)`` is called and its result written atomically.

    Args:
      model: the :class:`~hso_jax.Denoiser` (passed to ``solve`` only; it is identified by
        ``key_id``, not hashed).
      x_T: initial noise, any float array; its dtype, shape and exact bytes are part of the key.
      t_start, t_end: model times of the solve.
      key_id: identity of the model (e.g. ``"gm2d-v1"``, a checkpoint hash) and of ``solve`` if
        it is not the default; two different models must never share a ``key_id``.
      cache_dir: directory of the ``.npz`` files (default: ``$HSO_JAX_CACHE/references`` or
        ``~/.cache/hso_jax/references``).
      rtol, atol: solver tolerances (part of the key).
      solve: ``solve(model, x_T, t_start, t_end, *, rtol, atol) -> x``; default
        :func:`hso_jax.reference.reference_solve`.

    Returns:
      The reference state at ``t_end``, a JAX array with the shape of ``x_T`` (dtype as
      ``solve`` returned it).

    Warns:
      UserWarning: an unusable cached file (recomputed), or a result that could not be written
        to the cache (returned uncached).

    Raises:
      TypeError / ValueError: bad ``key_id``, non-float or non-finite ``x_T``, non-finite times
      or tolerances, or a ``solve`` result with the wrong shape or NaN/inf (never cached).
    """
    x = _host_array(x_T)
    meta, key = _problem(x, t_start, t_end, key_id, rtol, atol)
    path = _resolve_dir(cache_dir) / f"{_safe(key_id)}-{key[:32]}.npz"
    arr = _load(path, meta, key, x.shape)
    if arr is not None:
        return jnp.asarray(arr)
    if solve is None:
        from .solve import reference_solve as solve
    if not callable(solve):
        raise TypeError(f"solve must be callable, got {type(solve).__name__}")
    out = np.asarray(solve(model, x_T, t_start, t_end, rtol=rtol, atol=atol))
    if out.shape != x.shape:
        raise ValueError(
            f"solve returned shape {out.shape}, expected x_T's shape {x.shape}; nothing cached"
        )
    if not np.all(np.isfinite(out)):
        raise ValueError("solve returned NaN/inf values; nothing cached")
    try:
        _save(path, out, meta, key)
    except OSError as e:  # read-only / full / missing cache: the finished solve is not lost
        warnings.warn(
            f"could not cache the reference solution at {path}: {type(e).__name__}: {e}; "
            "returning it uncached (set cache_dir or $HSO_JAX_CACHE to a writable folder)",
            UserWarning,
            stacklevel=2,
        )
    return jnp.asarray(out)
