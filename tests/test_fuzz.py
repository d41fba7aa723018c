"""Fuzzing the public loaders and validators: every rejection is the documented exception.

Random file contents, JSON values, mutated records, schedules and beta arrays go into
``io.load_schedule`` / ``io.validate_record``, ``schedules.check_schedule`` and
``noise.VPDiscrete.from_betas``. Allowed outcomes: the documented exception
(``ScheduleFileError`` for schedule files, ``ValueError`` / ``TypeError`` for arrays), or a
result that satisfies the documented invariants; never another exception type, a crash, or a
silently wrong value. Derandomised (the same examples in every run) and kept to a few seconds.
"""

import json
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from hso_jax import io as hio  # noqa: E402
from hso_jax import noise as hnoise  # noqa: E402
from hso_jax import schedules as S  # noqa: E402

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SD15 = hnoise.preset("sd15")
VALID = hio.schedule_record(S.karras(SD15, 4), SD15, method="karras", solver="unipc")
VALID_TEXT = hio.dumps_record(VALID)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=25,
)


def _check_accepted(rec):
    """What a record that passed validation must satisfy."""
    t = rec["t"]
    assert len(t) >= 2 and all(math.isfinite(x) for x in t)
    assert all(a > b for a, b in zip(t, t[1:], strict=False))
    assert len(rec["sigmas"]) == len(rec["lambdas"]) == len(t)
    for s, lam in zip(rec["sigmas"], rec["lambdas"], strict=True):
        assert s > 0 and abs(math.log(s) + lam) <= 1e-6 * max(1.0, abs(lam))


def _load_text(tmp_path, data: bytes):
    path = tmp_path / "f.json"
    path.write_bytes(data)
    try:
        rec = hio.load_schedule(path)
    except hio.ScheduleFileError:
        return None
    _check_accepted(rec)
    return rec


@FAST
@given(st.binary(max_size=300))
def test_random_bytes(tmp_path_factory, data):
    _load_text(tmp_path_factory.mktemp("b"), data)


@FAST
@given(st.integers(0, len(VALID_TEXT) - 1), st.integers(1, 40), st.binary(max_size=8))
def test_damaged_valid_file(tmp_path_factory, at, cut, junk):
    """Truncate / overwrite a valid file anywhere: rejected, or still a consistent record."""
    raw = VALID_TEXT.encode()
    for data in (raw[:at], raw[:at] + junk + raw[at + cut:]):
        _load_text(tmp_path_factory.mktemp("d"), data)


@FAST
@given(st.sampled_from(["[", "{\"a\":", "[{\"t\":"]), st.integers(500, 200_000))
def test_deep_nesting(tmp_path_factory, opener, depth):
    assert _load_text(tmp_path_factory.mktemp("n"), (opener * depth).encode()) is None


@FAST
@given(json_values)
def test_random_json_values(value):
    with pytest.raises(hio.ScheduleFileError):
        hio.validate_record(value)  # never a schedule: no valid 'schema' + fields by chance


@FAST
@given(st.sampled_from(sorted(VALID)), json_values)
def test_one_field_replaced(key, value):
    rec = dict(VALID, **{key: value})
    try:
        hio.validate_record(rec)
    except hio.ScheduleFileError:
        return
    _check_accepted(rec)
    # the fields that are checked against t are unchanged (or equal) when accepted
    for k in ("t", "sigmas", "lambdas", "timesteps", "schema"):
        assert rec[k] == VALID[k] or k == key and value == VALID[k]


@FAST
@given(st.sampled_from(["t", "sigmas", "lambdas", "timesteps"]), st.integers(0, 4),
       st.floats(-1e-3, 1e-3).filter(lambda e: abs(e) > 1e-5))
def test_perturbed_redundant_field_is_caught(field, i, eps):
    """A relative change far above the tolerance in one entry of one field is never accepted
    (t's end points excepted: check_schedule allows them 1e-5 outside [t_min, t_max])."""
    if field == "t":
        i = min(max(i, 1), 3)
    rec = json.loads(VALID_TEXT)
    if field == "timesteps":
        rec[field][i] += 1 if eps > 0 else -1
    else:
        rec[field][i] *= 1 + 10 * eps if field != "lambdas" else 1
        if field == "lambdas":
            rec[field][i] += 10 * eps * max(1.0, abs(rec[field][i]))
    with pytest.raises(hio.ScheduleFileError):
        hio.validate_record(rec)


arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.complex128, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=6),
)


@FAST
@given(arrays)
def test_check_schedule_arrays(ts):
    try:
        out = S.check_schedule(ts, SD15)
    except (ValueError, TypeError):
        return
    v = np.asarray(out, np.float64)
    assert v.ndim == 1 and v.size >= 2 and np.all(np.isfinite(v)) and np.all(np.diff(v) < 0)
    assert v[0] <= SD15.t_max * (1 + 1e-5) and v[-1] >= SD15.t_min * (1 - 1e-5)


@FAST
@given(hnp.arrays(np.float64, st.integers(0, 12),
                  elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_schedule_arrays_with_nan_inf(values):
    try:
        S.check_schedule(values, SD15)
    except ValueError:
        return
    assert np.all(np.isfinite(values)) and np.all(np.diff(values) < 0)


@FAST
@given(st.lists(st.floats(1e-3, 1.0), min_size=2, max_size=12, unique=True))
def test_round_trip_of_random_valid_schedules(tmp_path_factory, values):
    ts = np.sort(np.asarray(values))[::-1]
    path = tmp_path_factory.mktemp("r") / "s.json"
    hio.save_schedule(path, hio.schedule_record(ts, SD15, method="random"))
    rec = hio.load_schedule(path)
    assert rec["t"] == ts.tolist() and rec["timesteps"] == SD15.index_from_t(ts).tolist()


@FAST
@given(hnp.arrays(st.sampled_from([np.float64, np.float32]), st.integers(0, 20),
                  elements=st.one_of(st.floats(-2, 2, width=32), st.just(math.nan))))
def test_betas_arrays(betas):
    try:
        ns = hnoise.VPDiscrete.from_betas(betas)
    except (ValueError, TypeError):
        return
    b = np.asarray(betas, np.float64)
    assert np.all((b > 0) & (b < 1)) and ns.num_steps == b.size
