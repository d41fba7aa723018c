"""Ahead-of-time compiled searches, cached per process, so cold and warm calls are known exactly.

A model-free search (HSO's whole bi-level loop, or one lower-level solve) is one XLA program
per (function, static configuration, argument shapes and dtypes). :func:`run_compiled` lowers
and compiles it once per process and reports in ``timings`` whether this call traced and
compiled (``cold``) or reused the executable.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["anonymous", "clear", "run_compiled"]

_CACHE: dict = {}


def _compiled(fn: Callable, static: Hashable, *args):
    """``(executable, timings)``; timings are zero when the executable was cached."""
    leaves, treedef = jax.tree.flatten(args)
    sig = tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves)
    k = (fn.__name__, static, treedef, sig)
    hit = _CACHE.get(k)
    if hit is not None:
        return hit, {"trace_s": 0.0, "compile_s": 0.0, "compile_cpu_s": 0.0}
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = jax.jit(fn, static_argnums=(len(args),)).lower(*args, static)
    t1 = time.perf_counter()
    exe = lowered.compile()
    _CACHE[k] = exe
    t2, c2 = time.perf_counter(), time.process_time()
    return exe, {"trace_s": t1 - t0, "compile_s": t2 - t1, "compile_cpu_s": c2 - c0}


def clear() -> None:
    """Forget this process's executables (the next call of each search is cold again)."""
    _CACHE.clear()


def anonymous(noise):
    """The process without its (static) name, so that processes differing only by name (sd15,
    sd21, sdxl; or sd21 and ddpm, which differ only in their arrays) share compiled code."""
    if dataclasses.is_dataclass(noise) and "name" in {f.name for f in dataclasses.fields(noise)}:
        return dataclasses.replace(noise, name="")
    return noise


def run_compiled(fn: Callable, static: Hashable, noise, *args) -> tuple[Any, dict]:
    """Run ``fn(anonymous(noise), *args, static)`` from its cached (or fresh) executable.

    Returns ``(out, timings)``: ``cold`` is true when this call traced and compiled
    (``trace_s``, ``compile_s`` wall; ``compile_cpu_s`` process CPU time of both), ``run_s`` is
    the execution alone and ``total_s`` their sum.
    """
    args = (anonymous(noise),) + args
    exe, timings = _compiled(fn, static, *args)
    t0 = time.perf_counter()
    out = jax.block_until_ready(exe(*args))
    run_s = time.perf_counter() - t0
    cold_s = timings["trace_s"] + timings["compile_s"]
    timings.update(cold=cold_s > 0, run_s=run_s, total_s=cold_s + run_s)
    return out, timings
