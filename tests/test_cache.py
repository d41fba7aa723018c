"""The reference cache: an unwritable cache returns the finished result with a warning."""

import os
import warnings

import numpy as np
import pytest

from hso_jax.evaluation import cache as C

X_T = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
WHERE = dict(key_id="toy-v1", rtol=1e-5, atol=1e-5)


def _solve(calls):
    def solve(model, x_T, t_start, t_end, *, rtol, atol):
        calls.append(1)
        return np.asarray(x_T) * 2.0

    return solve


def test_cache_in_place_of_a_file_returns_result_with_warning(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    calls = []
    with pytest.warns(UserWarning, match="could not cache the reference solution.*uncached"):
        out = C.cached_reference(None, X_T, 1.0, 0.0, cache_dir=tmp_path / "file" / "refs",
                                 solve=_solve(calls), **WHERE)
    np.testing.assert_array_equal(out, 2.0 * X_T)
    assert calls == [1] and (tmp_path / "file").read_text() == "not a folder"


def test_permission_denied_returns_result_with_warning_and_no_temp(tmp_path, monkeypatch):
    def denied(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(C.os, "replace", denied)  # as a read-only folder would (also as root)
    calls = []
    with pytest.warns(UserWarning, match="PermissionError.*returning it uncached"):
        out = C.cached_reference(None, X_T, 1.0, 0.0, cache_dir=tmp_path, solve=_solve(calls),
                                 **WHERE)
    np.testing.assert_array_equal(out, 2.0 * X_T)
    assert list(tmp_path.iterdir()) == []  # the temporary file was removed


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.warns(UserWarning, match="could not cache"):
            out = C.cached_reference(None, X_T, 1.0, 0.0, cache_dir=tmp_path, solve=_solve([]),
                                     **WHERE)
    finally:
        tmp_path.chmod(0o700)
    np.testing.assert_array_equal(out, 2.0 * X_T)


def test_writable_cache_still_hits_silently(tmp_path):
    calls = []
    kw = dict(cache_dir=tmp_path, solve=_solve(calls), **WHERE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = C.cached_reference(None, X_T, 1.0, 0.0, **kw)
        b = C.cached_reference(None, X_T, 1.0, 0.0, **kw)
    np.testing.assert_array_equal(a, b)
    assert calls == [1] and len(list(tmp_path.glob("*.npz"))) == 1
