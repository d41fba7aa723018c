"""Schedule files: versioned JSON records with the metadata needed to reuse a schedule.

A schedule file is one JSON object (UTF-8) with the schema tag ``"schema": "hso_jax.schedule/1"``
and these fields:

========================  ==============================================================
``schema``                ``"hso_jax.schedule/<version>"``; this library reads version <= 1
``t``                     model times, strictly decreasing (list of floats, >= 2 points)
``timesteps``             training-step indices ``round(N t) - 1`` (discrete-time processes;
                          nearest steps, may repeat for very fine schedules; -1 for a last
                          point at the data end t = 0), else ``null``
``sigmas``                EDM noise levels ``sigma / alpha`` at ``t`` (positive floats; see
                          below for the ends of a flow model's schedule)
``lambdas``               half log-SNR ``log(alpha / sigma)`` at ``t``
``noise``                 name of the noise process (e.g. ``"sd15"``)
``method``                how the schedule was made (``"hso"``, ``"ays"``, ``"karras"``, ...)
``solver``                solver it was made for, or ``null``
``nfe``                   network evaluations it was made for (integer >= 1)
``objective``             final objective value, or ``null``
``hso_jax_version``       version of hso_jax that wrote the file
``options``               the options used (object)
========================  ==============================================================

Records built from an :class:`~hso_jax.optimizers.OptimizeResult` also carry its other fields
(``penalty``, ``params``, ``info``, ``warnings``); unknown fields are kept on load. Floats are
written with full (round-trip) precision; non-finite values in ``objective`` / ``info`` use
Python's JSON extensions ``NaN`` / ``Infinity``. A flow model's schedule (t = sigma in
[0, 1]) may start at pure noise, t = 1, where ``sigmas`` is ``Infinity`` and ``lambdas`` is
``-Infinity``, and any schedule may end at the data, t = 0, where ``sigmas`` is 0 and
``lambdas`` ``Infinity``; these are the only non-finite values ``sigmas`` / ``lambdas`` may
hold. Files are written
atomically: to a temporary file in the same directory, then ``os.replace``, so a crash never
leaves a partial file.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._files import atomic_write, file_kind, read_regular
from .noise import NoiseSchedule
from .optimizers.result import OptimizeResult
from .schedules import check_schedule, eval_float64

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "ScheduleFileError",
    "schedule_record",
    "validate_record",
    "dumps_record",
    "save_schedule",
    "load_schedule",
    "atomic_write_text",
    "writable_target",
]

SCHEMA_VERSION = 1
SCHEMA = f"hso_jax.schedule/{SCHEMA_VERSION}"
_SCHEMA_RE = re.compile(r"hso_jax\.schedule/([0-9]{1,9})", re.ASCII)
_REQUIRED = (
    "schema",
    "t",
    "timesteps",
    "sigmas",
    "lambdas",
    "noise",
    "method",
    "solver",
    "nfe",
    "objective",
    "hso_jax_version",
    "options",
)


class ScheduleFileError(ValueError):
    """A schedule file or record is corrupt, foreign, too new or incomplete."""


def _version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------------------
# Building records
# --------------------------------------------------------------------------------------


def _plain(value: Any, where: str) -> Any:
    """Convert NumPy / JAX values to JSON-ready Python values (recursively)."""
    if isinstance(value, (jax.Array, np.ndarray)):
        return np.asarray(value).tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"{where} is not JSON-serialisable: {type(value).__name__} {value!r}")


def schedule_record(
    ts,
    noise: NoiseSchedule,
    *,
    method: str,
    solver: str | None = None,
    nfe: int | None = None,
    objective: float | None = None,
    options: dict | None = None,
) -> dict[str, Any]:
    """Build a schedule record (the JSON file's content) from a plain schedule.

    ``timesteps``, ``sigmas`` and ``lambdas`` are derived from ``ts`` in float64.

    Args:
      ts: strictly decreasing model times inside ``[noise.t_min, noise.t_max]``.
      noise: the noise process (its ``name`` is stored).
      method: how the schedule was made, e.g. ``"karras"`` or ``"ays"`` (non-empty string).
      solver: the solver it is meant for, or ``None``.
      nfe: network evaluations it is meant for; default ``len(ts) - 1`` (a multistep solver's
        count; DDIM-style schedules that end with an extra step to t = 0 differ).
      objective: objective value, or ``None``.
      options: JSON-serialisable options (dict), stored as given.

    Returns:
      A validated record dict (plain lists and floats).
    """
    if not isinstance(noise, NoiseSchedule):
        raise TypeError(f"noise must be a hso_jax.noise.NoiseSchedule, got {type(noise).__name__}")
    ts = check_schedule(ts, noise)
    if isinstance(ts, jax.core.Tracer):
        raise TypeError("schedule_record is eager: ts must be a concrete array, not a traced value")
    t = np.asarray(ts, np.float64)
    if nfe is None:
        nfe = t.shape[0] - 1
    if objective is not None:
        if isinstance(objective, (bool, str, bytes)) or np.ndim(objective) != 0:
            raise TypeError(f"objective must be a real number or None, got {objective!r}")
        objective = float(objective)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
    sigmas = eval_float64(noise, "sigma_edm", t)
    lambdas = eval_float64(noise, "lam", t)
    record = {
        "schema": SCHEMA,
        "t": t.tolist(),
        "timesteps": noise.index_from_t(t).tolist() if noise.is_discrete else None,
        "sigmas": sigmas.tolist(),
        "lambdas": lambdas.tolist(),
        "noise": getattr(noise, "name", type(noise).__name__),
        "method": method,
        "solver": solver,
        "nfe": nfe,
        "objective": objective,
        "hso_jax_version": _version(),
        "options": _plain(options or {}, "options"),
    }
    return validate_record(record, source="schedule_record", noise=noise)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 6, 80, 80
_REPR.maxlong = 40


def _short(value) -> str:
    """A bounded repr for messages (deeply nested or huge values stay short)."""
    return _REPR.repr(value)


def _finite(x) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


def _number_list(record, key, source, *, n=None, infinite_ends=None) -> list:
    """A list of finite numbers; ``infinite_ends = (first, last)`` also allows the value
    ``first`` at index 0 and ``last`` at the last index (a flow model's t = 1 and t = 0)."""
    v = record[key]
    if not isinstance(v, list) or not all(_is_number(x) for x in v):
        raise ScheduleFileError(f"{source}: {key!r} must be a list of numbers, got {_short(v)}")
    if n is not None and len(v) != n:
        raise ScheduleFileError(f"{source}: {key!r} has {len(v)} entries, 't' has {n}")
    allowed = {}
    if infinite_ends is not None:
        allowed = {0: infinite_ends[0], len(v) - 1: infinite_ends[1]}
    bad = [i for i, x in enumerate(v) if not _finite(x) and not (i in allowed and x == allowed[i])]
    if bad:
        raise ScheduleFileError(
            f"{source}: {key!r} must be finite, got {key}[{bad[0]}] = {_short(v[bad[0]])}"
        )
    return v


# Presets whose name fixes the process (VPDiscrete tables, parameter-free EDM / flow), so a
# record naming them can be checked against them. ``vp-linear`` / ``vp-cosine`` are the default
# names of parameterised classes: other parameters share the name, so they are not checked.
_CHECKED_PRESETS = (
    "sd15",
    "sd21",
    "sdxl",
    "ddpm",
    "cosine",
    "edm",
    "flow",
    "sd3",
    "flux-dev",
    "flux-schnell",
    "wan",
)
# Relative tolerance of the redundant fields (written with full float64 precision).
_RTOL = 1e-6


def _check_redundant(record, source, noise: NoiseSchedule | None) -> None:
    """``sigmas`` / ``lambdas`` / ``timesteps`` must agree with ``t`` (and each other)."""
    t, sig, lam = record["t"], record["sigmas"], record["lambdas"]
    # Any process: sigma_edm = sigma / alpha = exp(-lam), and lam grows as t falls.
    for i, (s, l) in enumerate(zip(sig, lam, strict=True)):
        if s in (0.0, math.inf) or not _finite(l):  # a flow model's t = 0 or t = 1
            if (s, l) not in ((0.0, math.inf), (math.inf, -math.inf)):
                raise ScheduleFileError(
                    f"{source}: 'sigmas' and 'lambdas' contradict each other: sigmas[{i}] = "
                    f"{s!r} but lambdas[{i}] = {l!r} (sigma_edm = exp(-lambda))"
                )
            continue
        if abs(math.log(s) + l) > _RTOL * max(1.0, abs(l)):
            raise ScheduleFileError(
                f"{source}: 'sigmas' and 'lambdas' contradict each other: sigmas[{i}] = {s!r} "
                f"but exp(-lambdas[{i}]) = {math.exp(-l) if l > -700 else math.inf!r} (sigma_edm "
                "= exp(-lambda))"
            )
    for i in range(len(lam) - 1):
        if lam[i] > lam[i + 1]:
            raise ScheduleFileError(
                f"{source}: 'lambdas' must not decrease while 't' decreases; lambdas[{i}] = "
                f"{lam[i]!r} > lambdas[{i + 1}] = {lam[i + 1]!r}"
            )
    ks = record["timesteps"]
    if ks is not None:
        for i in range(len(ks) - 1):
            if ks[i] < ks[i + 1]:
                raise ScheduleFileError(
                    f"{source}: 'timesteps' must not increase while 't' decreases; timesteps"
                    f"[{i}] = {ks[i]} < timesteps[{i + 1}] = {ks[i + 1]}"
                )
    from_name = noise is None
    if from_name:
        from .noise import preset

        if record["noise"] not in _CHECKED_PRESETS:
            return
        noise = preset(record["noise"])
    t64 = np.asarray(t, np.float64)
    # The time range: a discrete table fixes it (t in [1/N, 1]); EDM / flow share their names
    # with other ranges, so their range is checked only when the process is given.
    if not from_name or noise.is_discrete:
        try:
            check_schedule(t64, noise, name="'t'")
        except ValueError as e:
            raise ScheduleFileError(f"{source}: {e} (noise {noise.name!r})") from None
    for key, method, got in (("sigmas", "sigma_edm", sig), ("lambdas", "lam", lam)):
        want = eval_float64(noise, method, t64)
        got = np.asarray(got, np.float64)
        ok = np.isfinite(want)  # non-finite values (t = 0 or 1 of a flow) must be equal
        scale = np.maximum(1.0, np.abs(want)) if key == "lambdas" else np.abs(want)
        with np.errstate(invalid="ignore"):
            err = np.where(ok, np.abs(got - want) > _RTOL * scale, got != want)
        if np.any(np.isnan(want)) or np.any(err):
            i = int(np.argmax(err | np.isnan(want)))
            raise ScheduleFileError(
                f"{source}: {key!r} contradicts 't' under noise {noise.name!r}: {key}[{i}] = "
                f"{float(got[i])!r}, but t[{i}] = {t[i]!r} gives {float(want[i])!r}"
            )
    if ks is not None and not noise.is_discrete:
        raise ScheduleFileError(
            f"{source}: 'timesteps' must be null for the continuous-time noise {noise.name!r}, "
            f"got {_short(ks)}"
        )
    if ks is not None:
        n = noise.num_steps
        # The nearest training step of t: |k + 1 - N t| <= 1/2 (either neighbour on a tie).
        dist = np.abs(np.asarray(ks, np.float64) + 1.0 - n * t64)
        if np.any(dist > 0.5 + 1e-6):
            i = int(np.argmax(dist > 0.5 + 1e-6))
            raise ScheduleFileError(
                f"{source}: 'timesteps' contradicts 't' under noise {noise.name!r}: "
                f"timesteps[{i}] = {ks[i]}, but t[{i}] = {t[i]!r} is step "
                f"{int(noise.index_from_t(t64[i]))} (round({n} t) - 1)"
            )


def validate_record(
    record: Any, *, source: str = "record", noise: NoiseSchedule | None = None
) -> dict[str, Any]:
    """Check a schedule record against the schema; return it unchanged.

    The redundant fields must agree with ``t``: always ``sigmas = exp(-lambdas)`` (relative
    tolerance 1e-6), ``lambdas`` non-decreasing and ``timesteps`` non-increasing; and, when
    ``noise`` is given or ``record["noise"]`` names a preset that fixes the process (``sd15``,
    ``sd21``, ``sdxl``, ``ddpm``, ``cosine``, ``edm``, ``flow``, ``sd3``, ``flux-dev``,
    ``flux-schnell``, ``wan``), ``sigmas`` / ``lambdas`` equal that process's values at ``t``
    (a flow model's shift does not change them) and ``timesteps`` its nearest training steps
    (``null`` for continuous-time processes).

    Args:
      record: the parsed JSON object.
      source: name of the file or object in messages.
      noise: the process the record was made with, if known (overrides the preset lookup).

    Raises:
      ScheduleFileError (a ``ValueError``): not an object, no / foreign ``schema`` tag, a newer
        schema version, missing fields, fields of the wrong type or shape (``t`` must be
        finite and strictly decreasing with >= 2 points; ``sigmas`` / ``lambdas`` /
        ``timesteps`` must match its length), or redundant fields that contradict ``t``.
    """
    if not isinstance(record, dict):
        raise ScheduleFileError(
            f"{source}: not a hso_jax schedule (expected a JSON object, got "
            f"{type(record).__name__})"
        )
    if "schema" not in record:
        raise ScheduleFileError(
            f"{source}: not a hso_jax schedule file (no 'schema' key; expected {SCHEMA!r})"
        )
    schema = record["schema"]
    m = _SCHEMA_RE.fullmatch(schema) if isinstance(schema, str) else None
    if m is None:
        raise ScheduleFileError(
            f"{source}: not a hso_jax schedule file: schema is {_short(schema)}, expected "
            f"{SCHEMA!r}"
        )
    version = int(m.group(1))
    if version > SCHEMA_VERSION:
        raise ScheduleFileError(
            f"{source}: written with a newer schema ({schema!r}); this hso_jax "
            f"({_version()}) reads up to {SCHEMA!r}: upgrade hso_jax"
        )
    if version < 1:
        raise ScheduleFileError(f"{source}: invalid schema version {schema!r}")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise ScheduleFileError(f"{source}: missing field(s) {missing}")

    t = _number_list(record, "t", source)
    if len(t) < 2:
        raise ScheduleFileError(f"{source}: 't' must have at least 2 points, got {len(t)}")
    for i in range(len(t) - 1):
        if not t[i] > t[i + 1]:
            raise ScheduleFileError(
                f"{source}: 't' must be strictly decreasing; t[{i}] = {t[i]!r} <= "
                f"t[{i + 1}] = {t[i + 1]!r}"
            )
    sig = _number_list(record, "sigmas", source, n=len(t), infinite_ends=(math.inf, None))
    if any(s <= 0 for s in sig[:-1]) or sig[-1] < 0 or (sig[-1] == 0 and t[-1] != 0):
        raise ScheduleFileError(
            f"{source}: 'sigmas' must be > 0 (0 only at the data end of a schedule, t = 0), "
            f"got {_short(sig)}"
        )
    _number_list(record, "lambdas", source, n=len(t), infinite_ends=(-math.inf, math.inf))
    ks = record["timesteps"]
    if ks is not None:
        data_end = t[-1] == 0.0  # the data end's index is -1
        if not isinstance(ks, list) or not all(
            isinstance(k, int)
            and not isinstance(k, bool)
            and (0 <= k < 2**53 or (k == -1 and data_end and i == len(ks) - 1))
            for i, k in enumerate(ks)
        ):
            raise ScheduleFileError(
                f"{source}: 'timesteps' must be null or a list of integers >= 0 (-1 only for a "
                f"last t of 0, the data end), got {_short(ks)}"
            )
        if len(ks) != len(t):
            raise ScheduleFileError(
                f"{source}: 'timesteps' has {len(ks)} entries, 't' has {len(t)}"
            )
    for key in ("noise", "method", "hso_jax_version"):
        if not isinstance(record[key], str) or not record[key]:
            raise ScheduleFileError(
                f"{source}: {key!r} must be a non-empty string, got {_short(record[key])}"
            )
    if record["solver"] is not None and not isinstance(record["solver"], str):
        raise ScheduleFileError(
            f"{source}: 'solver' must be a string or null, got {_short(record['solver'])}"
        )
    nfe = record["nfe"]
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ScheduleFileError(f"{source}: 'nfe' must be an integer >= 1, got {_short(nfe)}")
    obj = record["objective"]
    if obj is not None and not _is_number(obj):
        raise ScheduleFileError(
            f"{source}: 'objective' must be a number or null, got {_short(obj)}"
        )
    if not isinstance(record["options"], dict):
        raise ScheduleFileError(
            f"{source}: 'options' must be an object, got {_short(record['options'])}"
        )
    _check_redundant(record, source, noise)
    return record


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def _as_record(result_or_dict, where: str) -> dict[str, Any]:
    if isinstance(result_or_dict, OptimizeResult):
        d = result_or_dict.to_dict()
    elif isinstance(result_or_dict, dict):
        d = dict(result_or_dict)
    else:
        raise TypeError(
            f"{where} must be an OptimizeResult or a schedule record dict, got "
            f"{type(result_or_dict).__name__}"
        )
    d = _plain(d, "record")
    # Results and hand-built dicts need not carry the file-level fields; fill them in.
    d.setdefault("schema", SCHEMA)
    d.setdefault("hso_jax_version", _version())
    d.setdefault("options", {})
    return d


def dumps_record(result_or_dict) -> str:
    """The JSON text of a schedule record (validated), as :func:`save_schedule` writes it.

    Args:
      result_or_dict: an :class:`~hso_jax.optimizers.OptimizeResult` or a record dict (e.g.
        from :func:`schedule_record`); missing ``schema`` / ``hso_jax_version`` / ``options``
        are filled in.

    Returns:
      Indented JSON text ending in a newline.
    """
    record = validate_record(_as_record(result_or_dict, "result_or_dict"), source="record")
    return json.dumps(record, indent=2) + "\n"


def writable_target(path) -> Path:
    """The file that :func:`atomic_write_text` would replace for ``path``.

    Symbolic links are followed (a link is written through, its target replaced, the link kept).
    A target that exists must be a regular file: directories, named pipes, devices and sockets
    cannot be replaced atomically and are refused.

    Raises:
      ValueError: the (resolved) target exists and is not a regular file.
      OSError: the link cannot be resolved (e.g. a loop).
    """
    path = Path(path)
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:  # a new file, or a link to one
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        via = f" (a link to {os.readlink(path)!r})" if path.is_symlink() else ""
        raise ValueError(
            f"path {str(path)!r}{via} is {file_kind(st.st_mode)}, not a regular file; "
            "output is written atomically (a new file renamed into place), so the target must "
            "be a regular file or not exist yet"
        )
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file in the same directory, fsync,
    ``os.replace``. On any error (or SIGINT / SIGTERM under the CLI) the temp file is removed and
    an existing ``path`` is left as it was. A new file gets mode 0o644; an existing file keeps its
    mode. A symbolic link is written through: its target is replaced (atomically, in the
    target's directory) and the link stays a link.

    Returns:
      The path written (the link's target for a link).

    Raises:
      TypeError: ``text`` is not a str.
      ValueError: the target exists and is not a regular file (directory, FIFO, device, socket).
      OSError: the directory does not exist or is not writable, the disk is full, ...
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write(writable_target(path), text)


def save_schedule(path, result_or_dict) -> Path:
    """Save a schedule as a versioned JSON file (atomically).

    Args:
      path: destination file (its directory must exist).
      result_or_dict: an :class:`~hso_jax.optimizers.OptimizeResult` (stored via
        ``to_dict()``) or a record dict (e.g. from :func:`schedule_record`).

    Returns:
      The path written.

    Raises:
      ScheduleFileError / TypeError: the record is invalid or not JSON-serialisable (nothing
        is written).
    """
    return atomic_write_text(path, dumps_record(result_or_dict))


# A schedule file is a few kilobytes; anything far larger is not one (and is not read whole).
MAX_FILE_BYTES = 16 * 2**20


def load_schedule(path) -> dict[str, Any]:
    """Load and validate a schedule file written by :func:`save_schedule`.

    Returns:
      The record dict (lists and floats as stored; ``jnp.asarray(rec["t"])`` is the schedule).

    Raises:
      ScheduleFileError (a ``ValueError``): the file is not a regular file (a directory, FIFO,
        device), larger than ``MAX_FILE_BYTES``, not UTF-8, not valid JSON (corrupt, truncated,
        nested too deeply, numbers beyond Python's limits), not a hso_jax schedule (no /
        foreign ``schema``), from a newer schema version, or fails :func:`validate_record`
        (including redundant fields that contradict ``t``).
      OSError: the file cannot be opened (missing, no permission).
    """
    path = Path(path)
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except ValueError as e:
        what = "too large for a schedule file" if "larger" in str(e) else "not a schedule file"
        raise ScheduleFileError(f"{path}: {what}: {e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScheduleFileError(f"{path}: not a text (UTF-8) JSON file: {e}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScheduleFileError(
            f"{path}: not valid JSON (corrupt or truncated file): {e.msg} at line {e.lineno} "
            f"column {e.colno}"
        ) from None
    except RecursionError:
        raise ScheduleFileError(
            f"{path}: not a schedule file: JSON nested too deeply to parse"
        ) from None
    except ValueError as e:  # e.g. an integer literal with more digits than Python converts
        raise ScheduleFileError(f"{path}: not a schedule file: invalid JSON value: {e}") from None
    return validate_record(record, source=str(path))
