"""Ahead-of-time compiled searches: cached per process, and their traced programs kept on disk.

A model-free search (HSO's whole bi-level loop, or one lower-level solve) is one XLA program
per (function, static configuration, argument shapes and dtypes). :func:`run_compiled` lowers
and compiles it once per process and reports in ``timings`` whether this call compiled
(``cold``) or reused the executable.

A new process would trace the search again (seconds of Python for HSO: the DE loop, every
lower-level L-BFGS solve and the objective) before JAX's persistent compilation cache can
even be asked for the executable. With a *program store* (:func:`use_store`, turned on together
with the package's persistent compilation cache, :mod:`hso_jax._xla_cache`) the traced and
lowered program is serialised with :mod:`jax.export` on the first call and read back by later
processes: they skip tracing, and the compilation of the read program is a hit in the
persistent cache, so a repeated search costs about the import time.

An entry is found under a hash of the function, its static configuration, the argument
structure, shapes and dtypes, the backend, ``jax_enable_x64``, the JAX version and a
fingerprint of the package's source, so an edited or upgraded package never reads a program
traced by another version. Entries are written atomically (a temporary file, then a rename);
an entry that cannot be read is reported (``UserWarning``), traced again and replaced. Like
JAX's cache, the store holds code: do not let people you do not trust write to it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import time
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._files import atomic_write, sha256_bytes

__all__ = ["anonymous", "clear", "run_compiled", "store", "use_store"]

_FORMAT = 2  # bump when the layout of a stored entry changes (2: key and checksum)
_SUFFIX = ".jaxprog"
_CACHE: dict = {}
_STORE: Path | None = None
_PACKAGE = Path(__file__).resolve().parents[1]


def use_store(folder: str | Path | None) -> None:
    """Keep traced programs in ``folder`` (created on first write); ``None`` turns it off."""
    global _STORE
    if folder is not None and not isinstance(folder, (str, os.PathLike)):
        raise TypeError(
            f"folder must be a path (str or os.PathLike) or None, got {type(folder).__name__}"
        )
    _STORE = None if folder is None else Path(folder).absolute()


def store() -> Path | None:
    """The folder of the program store in use, or None."""
    return _STORE


def clear() -> None:
    """Forget this process's executables (the next call of each search is cold again)."""
    _CACHE.clear()


def anonymous(noise):
    """The process without its (static) name, so that processes differing only by name (sd15,
    sd21, sdxl; or sd21 and ddpm, which differ only in their arrays) share compiled code."""
    if dataclasses.is_dataclass(noise) and "name" in {f.name for f in dataclasses.fields(noise)}:
        return dataclasses.replace(noise, name="")
    return noise


@functools.cache
def _source_fingerprint() -> str:
    """Hash of every Python file of the package: a changed package never reuses a program."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _entry_key(fn: Callable, static: Hashable, treedef, sig) -> str | None:
    """The entry's full key (the search, its static configuration, the argument structure,
    shapes and dtypes, JAX, the backend, the x64 flag and the package's source), or None when
    ``static`` has no stable text (an object address)."""
    text = repr(static)
    if " at 0x" in text:
        return None
    parts = (
        _FORMAT, fn.__module__, fn.__qualname__, text, str(treedef), sig, jax.__version__,
        jax.default_backend(), jax.config.jax_enable_x64, _source_fingerprint(),
    )  # fmt: skip
    return repr(parts)


def _entry_name(key: str) -> str:
    """The entry's file name: a hash of its key (the key itself is stored inside)."""
    return hashlib.sha256(key.encode()).hexdigest() + _SUFFIX


def _flattened(fn, static, treedef):
    """``fn`` over flat argument leaves, returning flat output leaves; the output treedef is
    appended to the returned list when the function is traced."""
    out_tree = []

    def flat(*xs):
        out, tree = jax.tree.flatten(fn(*jax.tree.unflatten(treedef, xs), static))
        out_tree.append(tree)
        return out

    flat.__name__ = flat.__qualname__ = fn.__name__  # names the executable (logs, XLA cache)
    return flat, out_tree


def _damaged(path: Path, why: str) -> None:
    warnings.warn(
        f"ignoring the damaged program cache entry {path} ({why}); tracing again and replacing it",
        UserWarning,
        stacklevel=5,
    )


def _read(path: Path, sig, key: str):
    """``(Exported, output treedef)`` from a stored entry, or None (absent, unreadable, damaged
    or stored under another key: the last three are reported)."""
    try:
        blob = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # absent (the write will say if it fails)
        return None
    except OSError as e:
        warnings.warn(f"cannot read the program cache entry {path} ({e}); tracing again",
                      UserWarning, stacklevel=4)  # fmt: skip
        return None
    try:
        entry = pickle.loads(blob)
        if entry["format"] != _FORMAT:
            raise ValueError(f"format {entry['format']!r}, this library writes {_FORMAT}")
        if entry["key"] != key:
            raise ValueError("it was stored for another search or configuration")
        if sha256_bytes(entry["exported"]) != entry["sha256"]:
            raise ValueError("its checksum does not match its content")
        exported = jax.export.deserialize(bytearray(entry["exported"]))
        avals = tuple((tuple(a.shape), str(a.dtype)) for a in exported.in_avals)
        if avals != sig:
            raise ValueError("its argument shapes differ from this call's")
        return exported, entry["out_tree"]
    except Exception as e:  # a damaged or foreign file: say so, trace again and replace it
        _damaged(path, f"{type(e).__name__}: {e}")
        return None


def _write(path: Path, key: str, exported, out_tree) -> None:
    """Store an entry (its key, content and the content's checksum) atomically; a failure is
    reported and otherwise ignored (the search's result does not depend on the store)."""
    data = bytes(exported.serialize())
    entry = {"format": _FORMAT, "key": key, "exported": data, "sha256": sha256_bytes(data),
             "out_tree": out_tree}  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError as e:
        warnings.warn(f"cannot write the program cache entry {path} ({e}); the next process "
                      "traces this search again", UserWarning, stacklevel=4)  # fmt: skip


def _executable(fn, static, treedef, leaves, sig, key: str | None):
    """``(compiled program over leaves -> output leaves, output treedef, loaded, trace_s,
    compile_s)``. A program read from the store that fails to lower or compile (a damage the
    checksum cannot see, e.g. a JAX that reads it differently) is reported, traced again and
    replaced."""
    t0 = time.perf_counter()
    flat, out_tree = _flattened(fn, static, treedef)
    if _STORE is None or key is None:  # no store: plain lowering, nothing to serialise
        lowered = jax.jit(flat).lower(*leaves)
        t1 = time.perf_counter()
        return lowered.compile(), out_tree[0], False, t1 - t0, time.perf_counter() - t1
    path = _STORE / _entry_name(key)
    found = _read(path, sig, key)
    if found is not None:
        try:
            lowered = _call_lowered(fn, found[0], leaves)
            t1 = time.perf_counter()
            return lowered.compile(), found[1], True, t1 - t0, time.perf_counter() - t1
        except Exception as e:  # noqa: BLE001 - whatever the stored program did, trace again
            _damaged(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    exported, tree = jax.export.export(jax.jit(flat))(*leaves), out_tree[0]
    _write(path, key, exported, tree)
    lowered = _call_lowered(fn, exported, leaves)
    t1 = time.perf_counter()
    return lowered.compile(), tree, False, t1 - t0, time.perf_counter() - t1


def _call_lowered(fn, exported, leaves):
    def call(*xs):
        return exported.call(*xs)

    call.__name__ = call.__qualname__ = fn.__name__
    return jax.jit(call).lower(*leaves)


def _compiled(fn: Callable, static: Hashable, args: tuple):
    """``(run(args) -> output, timings)``; timings are zero when the executable was cached."""
    leaves, treedef = jax.tree.flatten(args)
    sig = tuple((np.shape(x), str(jnp.result_type(x))) for x in leaves)
    k = (fn.__name__, static, treedef, sig)
    hit = _CACHE.get(k)
    if hit is not None:
        return hit, {"trace_s": 0.0, "compile_s": 0.0, "compile_cpu_s": 0.0, "loaded": False}
    c0 = time.process_time()
    key = _entry_key(fn, static, treedef, sig)
    exe, out_tree, loaded, trace_s, compile_s = _executable(fn, static, treedef, leaves, sig, key)
    cpu_s = time.process_time() - c0

    def run(a):
        return jax.tree.unflatten(out_tree, exe(*jax.tree.leaves(a)))

    _CACHE[k] = run
    return run, {"trace_s": trace_s, "compile_s": compile_s, "compile_cpu_s": cpu_s,
                 "loaded": loaded}  # fmt: skip


def run_compiled(fn: Callable, static: Hashable, noise, *args) -> tuple[Any, dict]:
    """Run ``fn(anonymous(noise), *args, static)`` from its cached (or fresh) executable.

    Returns ``(out, timings)``: ``cold`` is true when this call compiled (``trace_s``: tracing,
    or reading the stored program; ``compile_s``: compilation, possibly a hit in the persistent
    cache; both wall time, ``compile_cpu_s`` the process CPU time of both), ``loaded`` when the
    traced program came from the program store, ``run_s`` is the execution alone and
    ``total_s`` their sum.
    """
    args = (anonymous(noise),) + args
    run, timings = _compiled(fn, static, args)
    t0 = time.perf_counter()
    out = jax.block_until_ready(run(args))
    run_s = time.perf_counter() - t0
    cold_s = timings["trace_s"] + timings["compile_s"]
    timings.update(cold=cold_s > 0, run_s=run_s, total_s=cold_s + run_s)
    return out, timings
