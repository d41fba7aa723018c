"""hso_jax.optimizers.programs: one executable per process and static configuration; the
program store (jax.export) keyed by everything that changes the program, read back exactly,
and never trusted when damaged or unwritable."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from hso_jax.optimizers import programs as compiled


class _Out(NamedTuple):
    total: object
    scaled: object


def _search(noise, x, scale):
    """A stand-in search: any pure function of (process, arrays, static configuration)."""
    return _Out(jnp.sum(x) * noise, x * scale)


@pytest.fixture
def store(tmp_path):
    compiled.clear()
    compiled.use_store(tmp_path / "programs")
    yield tmp_path / "programs"
    compiled.use_store(None)
    compiled.clear()


def _call(scale=2.0, n=3):
    x = np.arange(n, dtype=np.float32)
    return compiled.run_compiled(_search, scale, np.float32(1.5), x)


def test_process_cache_and_store_round_trip(store):
    out, t = _call()
    assert t["cold"] and not t["loaded"] and len(list(store.glob("*.jaxprog"))) == 1
    np.testing.assert_array_equal(out.scaled, [0.0, 2.0, 4.0])
    assert float(out.total) == 1.5 * 3.0
    again, t = _call()  # same process: no tracing, no compiling
    assert not t["cold"] and t["trace_s"] == t["compile_s"] == 0.0
    compiled.clear()  # as a new process would: the program comes from the store
    loaded, t = _call()
    assert t["cold"] and t["loaded"] and isinstance(loaded, _Out)
    np.testing.assert_array_equal(loaded.scaled, out.scaled)
    # another static configuration or other shapes are other programs
    _call(scale=3.0)
    _call(n=4)
    assert len(list(store.glob("*.jaxprog"))) == 3


def test_without_store_nothing_is_written(tmp_path):
    compiled.clear()
    compiled.use_store(None)
    out, t = _call()
    assert t["cold"] and not t["loaded"] and compiled.store() is None
    np.testing.assert_array_equal(out.scaled, [0.0, 2.0, 4.0])
    compiled.clear()


def test_static_without_stable_text_is_not_stored(store):
    class Opaque:  # its repr holds an address: no two processes would agree on the key
        def __mul__(self, x):
            return x

        __rmul__ = __mul__

    compiled.run_compiled(_search, Opaque(), np.float32(1.0), np.ones(2, np.float32))
    assert not store.exists() or list(store.glob("*.jaxprog")) == []


def _reported_replaced_and_clean(first):
    """The next call warns, traces again (same result), and replaces the entry: the call
    after it loads the new entry without a warning."""
    compiled.clear()
    with pytest.warns(UserWarning, match="damaged program cache entry"):
        out, t = _call()
    assert not t["loaded"]
    np.testing.assert_array_equal(out.scaled, first.scaled)
    compiled.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, t = _call()
    assert t["loaded"]


def test_damaged_entry_is_reported_traced_again_and_replaced(store):
    first, _ = _call()
    (entry,) = store.glob("*.jaxprog")
    entry.write_bytes(b"\x80\x05not a program")
    _reported_replaced_and_clean(first)


def _flip(path, offset_fraction=0.6, count=8):
    blob = bytearray(path.read_bytes())
    i = int(len(blob) * offset_fraction)
    blob[i : i + count] = bytes(b ^ 0xFF for b in blob[i : i + count])
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_flipped_bytes_are_caught_by_the_checksum(store, where):
    """8 bytes flipped anywhere in an entry (the serialised program included, where JAX's
    own deserialisation would fail later, inside compilation): reported, traced again,
    replaced; the next process loads the new entry."""
    first, _ = _call()
    (entry,) = store.glob("*.jaxprog")
    _flip(entry, where)
    _reported_replaced_and_clean(first)


def test_an_entry_of_another_search_is_not_run(store):
    """The entry of scale=3 copied over the entry of scale=2 (same shapes): the loader sees
    the key it was stored under, refuses it and computes scale=2's result."""
    _call(scale=2.0)
    _call(scale=3.0)
    a, b = sorted(store.glob("*.jaxprog"), key=lambda p: p.stat().st_mtime_ns)
    a.write_bytes(b.read_bytes())  # scale=3's program under scale=2's name
    compiled.clear()
    with pytest.warns(UserWarning, match="stored for another search"):
        out, t = _call(scale=2.0)
    np.testing.assert_array_equal(out.scaled, [0.0, 2.0, 4.0])  # not [0, 3, 6]
    assert not t["loaded"]


def test_unwritable_store_warns_and_keeps_the_result(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be")
    compiled.clear()
    compiled.use_store(blocker)
    try:
        with pytest.warns(UserWarning, match="cannot write the program cache entry"):
            out, t = _call()
        np.testing.assert_array_equal(out.scaled, [0.0, 2.0, 4.0])
    finally:
        compiled.use_store(None)
        compiled.clear()


def test_use_store_rejects_a_non_path():
    with pytest.raises(TypeError, match=r"folder must be a path .* got int"):
        compiled.use_store(5)
    assert compiled.store() is None  # unchanged
