"""Schedule files: versioned JSON records with the metadata needed to reuse a schedule.

A schedule file is one JSON object (UTF-8) with the schema tag ``"schema": "hso_jax.schedule/1"``
and these fields:

========================  ==============================================================
``schema``                ``"hso_jax.schedule/<version>"``; this library reads version <= 1
``t``                     model times, strictly decreasing (list of floats, >= 2 points)
``timesteps``             training-step indices ``round(N t) - 1`` (discrete-time processes;
                          nearest steps, may repeat for very fine schedules), else ``null``
``sigmas``                EDM noise levels ``sigma / alpha`` at ``t`` (positive floats)
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
Python's JSON extensions ``NaN`` / ``Infinity``. Files are written atomically: to a temporary
file in the same directory, then ``os.replace``, so a crash never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .noise import NoiseSchedule
from .optimizers.result import OptimizeResult
from .schedules import _eval64, check_schedule

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
]

SCHEMA_VERSION = 1
SCHEMA = f"hso_jax.schedule/{SCHEMA_VERSION}"
_SCHEMA_RE = re.compile(r"^hso_jax\.schedule/(\d+)$")
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
    sigmas = _eval64(noise, "sigma_edm", t)
    lambdas = _eval64(noise, "lam", t)
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
    return validate_record(record, source="schedule_record")


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _number_list(record, key, source, *, n=None) -> list:
    v = record[key]
    if not isinstance(v, list) or not all(_is_number(x) for x in v):
        raise ScheduleFileError(f"{source}: {key!r} must be a list of numbers, got {v!r:.200}")
    if n is not None and len(v) != n:
        raise ScheduleFileError(f"{source}: {key!r} has {len(v)} entries, 't' has {n}")
    if not all(math.isfinite(x) for x in v):
        raise ScheduleFileError(f"{source}: {key!r} must be finite, got {v}")
    return v


def validate_record(record: Any, *, source: str = "record") -> dict[str, Any]:
    """Check a schedule record against the schema; return it unchanged.

    Raises:
      ScheduleFileError (a ``ValueError``): not an object, no / foreign ``schema`` tag, a newer
        schema version, missing fields, or fields of the wrong type or shape (``t`` must be
        finite and strictly decreasing with >= 2 points; ``sigmas`` / ``lambdas`` /
        ``timesteps`` must match its length).
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
    m = _SCHEMA_RE.match(str(record["schema"]))
    if not isinstance(record["schema"], str) or m is None:
        raise ScheduleFileError(
            f"{source}: not a hso_jax schedule file: schema is {record['schema']!r}, expected "
            f"{SCHEMA!r}"
        )
    version = int(m.group(1))
    if version > SCHEMA_VERSION:
        raise ScheduleFileError(
            f"{source}: written with a newer schema ({record['schema']!r}); this hso_jax "
            f"({_version()}) reads up to {SCHEMA!r}: upgrade hso_jax"
        )
    if version < 1:
        raise ScheduleFileError(f"{source}: invalid schema version {record['schema']!r}")
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
    sig = _number_list(record, "sigmas", source, n=len(t))
    if any(s <= 0 for s in sig):
        raise ScheduleFileError(f"{source}: 'sigmas' must be > 0, got {sig}")
    _number_list(record, "lambdas", source, n=len(t))
    ks = record["timesteps"]
    if ks is not None:
        if not isinstance(ks, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in ks
        ):
            raise ScheduleFileError(
                f"{source}: 'timesteps' must be null or a list of integers >= 0, got {ks!r:.200}"
            )
        if len(ks) != len(t):
            raise ScheduleFileError(
                f"{source}: 'timesteps' has {len(ks)} entries, 't' has {len(t)}"
            )
    for key in ("noise", "method", "hso_jax_version"):
        if not isinstance(record[key], str) or not record[key]:
            raise ScheduleFileError(
                f"{source}: {key!r} must be a non-empty string, got {record[key]!r}"
            )
    if record["solver"] is not None and not isinstance(record["solver"], str):
        raise ScheduleFileError(
            f"{source}: 'solver' must be a string or null, got {record['solver']!r}"
        )
    nfe = record["nfe"]
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ScheduleFileError(f"{source}: 'nfe' must be an integer >= 1, got {nfe!r}")
    obj = record["objective"]
    if obj is not None and not _is_number(obj):
        raise ScheduleFileError(f"{source}: 'objective' must be a number or null, got {obj!r}")
    if not isinstance(record["options"], dict):
        raise ScheduleFileError(f"{source}: 'options' must be an object, got {record['options']!r}")
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


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file in the same directory, fsync,
    ``os.replace``. On any error the temp file is removed and an existing ``path`` is left as it
    was. A new file gets mode 0o644; an existing file keeps its mode."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


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


def load_schedule(path) -> dict[str, Any]:
    """Load and validate a schedule file written by :func:`save_schedule`.

    Returns:
      The record dict (lists and floats as stored; ``jnp.asarray(rec["t"])`` is the schedule).

    Raises:
      ScheduleFileError (a ``ValueError``): the file is not valid JSON (corrupt or truncated),
        not a hso_jax schedule (no / foreign ``schema``), from a newer schema version, or
        fails :func:`validate_record`.
      OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ScheduleFileError(f"{path}: not a text (UTF-8) JSON file: {e}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScheduleFileError(
            f"{path}: not valid JSON (corrupt or truncated file): {e.msg} at line {e.lineno} "
            f"column {e.colno}"
        ) from None
    return validate_record(record, source=str(path))
