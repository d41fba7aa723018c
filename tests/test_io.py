"""Schedule files: records, atomic writes, validation of corrupt / foreign / newer files."""

import json
import os
import stat

import numpy as np
import pytest

import hso_jax as hj
from hso_jax import io as hio
from hso_jax import schedules as S
from hso_jax.noise import preset
from hso_jax.optimizers import OptimizeResult


@pytest.fixture(scope="module")
def record():
    ns = preset("sd15")
    return hio.schedule_record(
        S.karras(ns, 5), ns, method="karras", solver="unipc", objective=0.25, options={"rho": 7.0}
    )


def _files(path):
    return sorted(p.name for p in path.iterdir())


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


# --------------------------------------------------------------------------------------
# Records and round trips
# --------------------------------------------------------------------------------------


def test_schedule_record_fields(record):
    ns = preset("sd15")
    ts = np.asarray(S.karras(ns, 5), np.float64)
    assert record["schema"] == "hso_jax.schedule/1" == hio.SCHEMA
    assert set(hio._REQUIRED) <= set(record)
    assert record["t"] == ts.tolist()
    assert record["timesteps"] == (np.rint(1000 * ts).astype(int) - 1).tolist()
    np.testing.assert_allclose(record["sigmas"], S.eval_float64(ns, "sigma_edm", ts), rtol=1e-12)
    np.testing.assert_allclose(record["lambdas"], -np.log(record["sigmas"]), rtol=1e-12)
    assert record["noise"] == "sd15" and record["method"] == "karras"
    assert record["solver"] == "unipc" and record["nfe"] == 5 and record["objective"] == 0.25
    assert record["hso_jax_version"] == hj.__version__
    assert record["options"] == {"rho": 7.0}
    json.dumps(record, allow_nan=False)  # plain JSON types only


def test_schedule_record_continuous_has_no_timesteps():
    ns = preset("edm")
    rec = hio.schedule_record(S.karras(ns, 3), ns, method="karras", nfe=3)
    assert rec["timesteps"] is None and rec["solver"] is None and rec["objective"] is None
    assert rec["options"] == {}


def test_round_trip(tmp_path, record):
    path = hio.save_schedule(tmp_path / "s.json", record)
    assert path == tmp_path / "s.json"
    assert hio.load_schedule(path) == record
    assert path.read_text() == hio.dumps_record(record)
    assert _files(tmp_path) == ["s.json"]  # no temporary left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_round_trip_optimize_result(tmp_path):
    ns = preset("sd15")
    t = np.asarray(S.logsnr_uniform(ns, 4), np.float64)
    res = OptimizeResult(
        t=t,
        timesteps=ns.index_from_t(t),
        sigmas=S.eval_float64(ns, "sigma_edm", t),
        lambdas=S.eval_float64(ns, "lam", t),
        objective=np.float64(1.5),
        penalty=None,
        method="hso",
        solver="unipc",
        nfe=4,
        noise="sd15",
        params={"rho": np.float64(7.0)},
        info={"history": np.array([3.0, 2.0, 1.5]), "converged": True},
        warnings=("penalty dominates",),
        options={"seed": 66},
    )
    rec = hio.load_schedule(hio.save_schedule(tmp_path / "r.json", res))
    assert rec["schema"] == hio.SCHEMA and rec["hso_jax_version"] == hj.__version__
    assert rec["t"] == t.tolist() and rec["timesteps"] == ns.index_from_t(t).tolist()
    assert rec["objective"] == 1.5 and rec["method"] == "hso" and rec["nfe"] == 4
    assert rec["params"] == {"rho": 7.0} and rec["info"]["history"] == [3.0, 2.0, 1.5]
    assert rec["warnings"] == ["penalty dominates"] and rec["options"] == {"seed": 66}


def test_plain_dict_with_arrays_is_accepted(tmp_path, record):
    d = dict(record, t=np.asarray(record["t"]), extra={"a": np.arange(2)})
    d.pop("schema")
    d.pop("hso_jax_version")
    rec = hio.load_schedule(hio.save_schedule(tmp_path / "d.json", d))
    assert rec["t"] == record["t"] and rec["extra"] == {"a": [0, 1]}
    assert rec["schema"] == hio.SCHEMA


def test_load_accepts_loaded_schedule_for_sampling(tmp_path, record):
    ns = preset("sd15")
    rec = hio.load_schedule(hio.save_schedule(tmp_path / "s.json", record))
    S.check_schedule(np.asarray(rec["t"]), ns)


# --------------------------------------------------------------------------------------
# Atomicity
# --------------------------------------------------------------------------------------


def test_invalid_record_writes_nothing(tmp_path, record):
    path = tmp_path / "s.json"
    path.write_text("previous")
    bad = dict(record, t=list(reversed(record["t"])))
    with pytest.raises(hio.ScheduleFileError, match="strictly decreasing"):
        hio.save_schedule(path, bad)
    with pytest.raises(TypeError, match=r"\['options'\]\['f'\] is not JSON-serialisable"):
        hio.save_schedule(path, dict(record, options={"f": object()}))
    assert path.read_text() == "previous" and _files(tmp_path) == ["s.json"]


def test_failure_during_write_leaves_old_file_and_no_temp(tmp_path, record, monkeypatch):
    path = tmp_path / "s.json"
    hio.save_schedule(path, record)
    before = path.read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(hio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        hio.save_schedule(path, dict(record, method="other"))
    assert path.read_text() == before and _files(tmp_path) == ["s.json"]


def test_new_file_not_created_on_failure(tmp_path, record, monkeypatch):
    monkeypatch.setattr(hio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("io error")))
    with pytest.raises(OSError, match="io error"):
        hio.save_schedule(tmp_path / "new.json", record)
    assert _files(tmp_path) == []


def test_atomic_write_keeps_mode_and_rejects_bad_input(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("a")
    os.chmod(path, 0o600)
    hio.atomic_write_text(path, "b")
    assert path.read_text() == "b" and stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(TypeError, match="text must be a str"):
        hio.atomic_write_text(path, b"bytes")
    with pytest.raises(FileNotFoundError):
        hio.atomic_write_text(tmp_path / "missing-dir" / "x.txt", "c")


# --------------------------------------------------------------------------------------
# Corrupt, foreign, newer, incomplete files
# --------------------------------------------------------------------------------------


def test_truncated_and_corrupt_files(tmp_path, record):
    text = hio.dumps_record(record)
    (tmp_path / "trunc.json").write_text(text[: len(text) // 2])
    with pytest.raises(hio.ScheduleFileError, match="not valid JSON.*truncated"):
        hio.load_schedule(tmp_path / "trunc.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(hio.ScheduleFileError, match="not valid JSON"):
        hio.load_schedule(tmp_path / "empty.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(hio.ScheduleFileError, match="UTF-8"):
        hio.load_schedule(tmp_path / "bin.json")
    with pytest.raises(FileNotFoundError):
        hio.load_schedule(tmp_path / "absent.json")
    assert issubclass(hio.ScheduleFileError, ValueError)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: [1, 2, 3], "expected a JSON object, got list"),
        (lambda r: {"t": r["t"]}, "no 'schema' key"),
        (lambda r: {k: v for k, v in r.items() if k != "schema"}, "no 'schema' key"),
        (lambda r: dict(r, schema="other.lib/1"), "not a hso_jax schedule file: schema is"),
        (lambda r: dict(r, schema=1), "not a hso_jax schedule file"),
        (lambda r: dict(r, schema="hso_jax.schedule/2"), "newer schema.*upgrade"),
        (lambda r: dict(r, schema="hso_jax.schedule/0"), "invalid schema version"),
        (lambda r: {k: v for k, v in r.items() if k not in ("sigmas", "nfe")},
         r"missing field\(s\) \['sigmas', 'nfe'\]"),
        (lambda r: dict(r, t=r["t"][::-1]), "strictly decreasing"),
        (lambda r: dict(r, t=[r["t"][0]] * len(r["t"])), "strictly decreasing"),
        (lambda r: dict(r, t=[1.0]), "at least 2 points"),
        (lambda r: dict(r, t="1.0, 0.5"), "'t' must be a list of numbers"),
        (lambda r: dict(r, t=[1.0, True] + r["t"][2:]), "'t' must be a list of numbers"),
        (lambda r: dict(r, sigmas=r["sigmas"][:-1]), "'sigmas' has 5 entries, 't' has 6"),
        (lambda r: dict(r, sigmas=[-1.0] * 6), "'sigmas' must be > 0"),
        (lambda r: dict(r, lambdas=None), "'lambdas' must be a list"),
        (lambda r: dict(r, timesteps=[1.5] * 6), "'timesteps' must be null or a list of integers"),
        (lambda r: dict(r, timesteps=[3, 2, 1]), "'timesteps' has 3 entries"),
        (lambda r: dict(r, noise=""), "'noise' must be a non-empty string"),
        (lambda r: dict(r, method=None), "'method' must be a non-empty string"),
        (lambda r: dict(r, solver=3), "'solver' must be a string or null"),
        (lambda r: dict(r, nfe=0), "'nfe' must be an integer >= 1"),
        (lambda r: dict(r, nfe=5.0), "'nfe' must be an integer >= 1"),
        (lambda r: dict(r, objective="low"), "'objective' must be a number or null"),
        (lambda r: dict(r, options=[]), "'options' must be an object"),
    ],
)
def test_invalid_files_raise(tmp_path, record, mutate, match):
    path = _write(tmp_path / "bad.json", mutate(dict(record)))
    with pytest.raises(hio.ScheduleFileError, match=match):
        hio.load_schedule(path)


def test_nan_in_t_is_rejected(tmp_path, record):
    path = tmp_path / "nan.json"
    path.write_text(hio.dumps_record(record).replace(str(record["t"][2]), "NaN", 1))
    with pytest.raises(hio.ScheduleFileError, match="'t' must be finite"):
        hio.load_schedule(path)


def test_unknown_fields_are_kept(tmp_path, record):
    path = _write(tmp_path / "x.json", dict(record, future_field={"k": 1}))
    assert hio.load_schedule(path)["future_field"] == {"k": 1}


# --------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------


def test_schedule_record_rejects():
    ns = preset("sd15")
    ts = S.karras(ns, 3)
    with pytest.raises(TypeError, match="noise must be a hso_jax.noise.NoiseSchedule"):
        hio.schedule_record(ts, "sd15", method="karras")
    with pytest.raises(ValueError, match="strictly decreasing"):
        hio.schedule_record(ts[::-1], ns, method="karras")
    with pytest.raises(ValueError, match="'method' must be a non-empty string"):
        hio.schedule_record(ts, ns, method="")
    with pytest.raises(ValueError, match="'nfe' must be an integer >= 1"):
        hio.schedule_record(ts, ns, method="karras", nfe=0)
    with pytest.raises(TypeError, match="objective must be a real number"):
        hio.schedule_record(ts, ns, method="karras", objective="0.1")
    with pytest.raises(TypeError, match="options must be a dict"):
        hio.schedule_record(ts, ns, method="karras", options=[("rho", 7)])
    with pytest.raises(TypeError, match="is not JSON-serialisable"):
        hio.schedule_record(ts, ns, method="karras", options={"fn": len})


def test_save_rejects_other_types(tmp_path):
    with pytest.raises(TypeError, match="must be an OptimizeResult or a schedule record dict"):
        hio.save_schedule(tmp_path / "x.json", [1.0, 0.5])
    with pytest.raises(TypeError, match="must be an OptimizeResult"):
        hio.dumps_record("record")
    assert _files(tmp_path) == []


# --------------------------------------------------------------------------------------
# Hostile files and contradicting redundant fields
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, match",
    [
        ("[" * 100000, "nested too deeply"),
        ("{" * 50000, "not valid JSON|nested too deeply"),
        ('{"t": [' + "9" * 5000 + "]}", "invalid JSON value"),
        (json.dumps({"schema": "hso_jax.schedule/" + "1" * 5000}), "schema is"),
        (json.dumps({"schema": [[[[[[["deep"]]]]]]] * 1000}), "schema is"),
        ('"just a string"', "expected a JSON object, got str"),
    ],
)
def test_hostile_files_give_schedule_file_error(tmp_path, text, match):
    path = tmp_path / "hostile.json"
    path.write_text(text)
    with pytest.raises(hio.ScheduleFileError, match=match):
        hio.load_schedule(path)


def test_huge_numbers_and_non_regular_files(tmp_path, record):
    path = _write(tmp_path / "big.json", dict(record, t=[10**400] + record["t"][1:]))
    with pytest.raises(hio.ScheduleFileError, match="'t' must be finite"):
        hio.load_schedule(path)
    with pytest.raises(hio.ScheduleFileError, match="it is a directory"):
        hio.load_schedule(tmp_path)
    os.mkfifo(tmp_path / "fifo")  # opening must not block waiting for a writer
    with pytest.raises(hio.ScheduleFileError, match=r"it is a named pipe \(FIFO\)"):
        hio.load_schedule(tmp_path / "fifo")
    with pytest.raises(hio.ScheduleFileError, match="character device"):
        hio.load_schedule("/dev/zero")
    (tmp_path / "large.json").write_bytes(b" " * (hio.MAX_FILE_BYTES + 1))
    with pytest.raises(hio.ScheduleFileError, match="too large"):
        hio.load_schedule(tmp_path / "large.json")


def _scaled(r, key, factor):
    return dict(r, **{key: [x * factor for x in r[key]]})


@pytest.mark.parametrize(
    "mutate, match",
    [
        # sigmas alone changed: contradicts the lambdas (any process)
        (lambda r: _scaled(r, "sigmas", 1.01), "'sigmas' and 'lambdas' contradict each other"),
        # sigmas and lambdas changed together: consistent with each other, not with t
        (lambda r: dict(_scaled(r, "sigmas", 1.01),
                        lambdas=[x - np.log(1.01) for x in r["lambdas"]]),
         "'sigmas' contradicts 't' under noise 'sd15'"),
        (lambda r: dict(r, timesteps=[k + 3 for k in r["timesteps"]]),
         r"'timesteps' contradicts 't'.*timesteps\[0\] = 1002.*step 999"),
        (lambda r: dict(r, timesteps=r["timesteps"][::-1]), "'timesteps' must not increase"),
        (lambda r: dict(r, lambdas=r["lambdas"][::-1], sigmas=r["sigmas"][::-1]),
         "'lambdas' must not decrease"),
        (lambda r: dict(r, noise="edm"), "'sigmas' contradicts 't' under noise 'edm'"),
        # an unknown process is still checked for sigma = exp(-lambda)
        (lambda r: dict(_scaled(r, "sigmas", 1.01), noise="custom:betas.npy"),
         "'sigmas' and 'lambdas' contradict"),
    ],
)
def test_redundant_fields_must_agree_with_t(tmp_path, record, mutate, match):
    path = _write(tmp_path / "bad.json", mutate(dict(record)))
    with pytest.raises(hio.ScheduleFileError, match=match):
        hio.load_schedule(path)


def test_redundant_fields_checked_against_given_noise(record):
    from hso_jax.noise import EDM

    ns = EDM(t_max=120.0)  # parameterised process: checked when given, not from its name
    rec = hio.schedule_record(S.karras(ns, 4), ns, method="karras")
    hio.validate_record(rec)
    with pytest.raises(hio.ScheduleFileError, match="contradicts 't' under noise 'vp-linear'"):
        hio.validate_record(dict(record, timesteps=None), noise=hj.noise.VPLinear())
    with pytest.raises(hio.ScheduleFileError, match="must be null for the continuous-time"):
        hio.validate_record(dict(rec, timesteps=[3, 2, 1, 0, 0]), noise=ns)


# --------------------------------------------------------------------------------------
# Output targets: symbolic links, non-regular files
# --------------------------------------------------------------------------------------


def test_save_writes_through_symlink(tmp_path, record):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "target.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert hio.save_schedule(link, record) == target
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert hio.load_schedule(target)["t"] == record["t"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _files(tmp_path / "real") == ["target.json"]  # temp file made next to the target
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    hio.save_schedule(dangling, record)
    assert dangling.is_symlink() and (tmp_path / "real" / "new.json").is_file()


def test_save_refuses_non_regular_targets(tmp_path, record):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("/dev/null")
    for path, kind in ((tmp_path / "fifo", "is a named pipe"), (tmp_path, "is a directory"),
                       (tmp_path / "link", "link'.*a link to '/dev/null'.* is a character device")):
        with pytest.raises(ValueError, match=kind):
            hio.save_schedule(path, record)
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    assert (tmp_path / "link").is_symlink()
    assert _files(tmp_path) == ["fifo", "link"]
