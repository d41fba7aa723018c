"""The ``hso-jax`` command line.

Subcommands::

    hso-jax demo                                   # the main job on the shipped MNIST model
    hso-jax optimize --noise sd21 --nfe 5 --solver unipc --format diffusers
    hso-jax optimize --model DIR --method direct --nfe 5 --cond emb.npy --uncond null.npy \
        --guidance 7.5
    hso-jax schedules --noise sd15 --nfe 10 --kind ays --format diffusers
    hso-jax schedules --noise flux-dev --resolution 1024 --nfe 28 --kind default
    hso-jax optimize --noise sd15 --nfe 5 --target diffusers:unipc --out sched.json
    hso-jax export sched.json --to diffusers:unipc [--check]   # what to paste; run it there
    hso-jax convert --diffusers DIR --out DIR          # needs the [convert] extra

Each subcommand is one pair of functions, ``_add_<name>_parser(sub)`` (declares its arguments
and binds ``_cmd_<name>``) and ``_cmd_<name>(args) -> int``; :func:`build_parser` lists the
``_add_*`` functions. Exit status: 0 on success, 2 for bad arguments (argparse's own errors and
the library's validation errors, printed as one line on stderr without a traceback), 1 when the
output cannot be written. Commands run with float64 enabled, so exported schedules carry full
precision.

Every subcommand turns on the package's persistent compilation cache at start-up
(``$HSO_JAX_CACHE/xla`` or ``~/.cache/hso_jax/xla``, and the traced searches in ``programs``
beside it; see :mod:`hso_jax._xla_cache`), so a repeated ``hso-jax optimize`` with the same
shapes neither traces nor compiles its search again.
``HSO_JAX_COMPILE_CACHE=0`` turns it off; a ``jax_compilation_cache_dir`` of the user's
(``JAX_COMPILATION_CACHE_DIR``) is used as it is; an unwritable cache folder gives one warning
line on stderr and the command runs without it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import json
import numbers
import os
import re
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from . import _argtypes, _progress, _signals, _validate, _xla_cache, schedules
from . import io as hio
from . import noise as hnoise
from ._files import read_regular

__all__ = ["main", "build_parser"]


MAX_INPUT_BYTES = 4 << 30
"""The largest array file the command line reads (4 GiB: conditions, data); a larger one, a
named pipe or a device (``/dev/zero``) is refused before it is read."""
MAX_TABLE_BYTES = 64 << 20
"""The largest betas / alphas_cumprod file (64 MiB; a table of 1000 steps takes kilobytes)."""


class _UsageError(Exception):
    """A bad combination of arguments; the message names the argument."""


# --------------------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------------------


_seed = _argtypes.integer(0, _validate.MAX_SEED)
_RHO_BOUNDS = (
    min(lo for lo, _ in schedules.RHO_RANGE.values()),
    max(hi for _, hi in schedules.RHO_RANGE.values()),
)
MAX_SAMPLES = 65536
"""The most initial noises a search or the demo draws (each is one sample of the model)."""


def _emit(text: str, out: str | None) -> None:
    """Write command output to stdout (``out`` None or ``"-"``), or atomically to ``out``
    (through a symbolic link to its target)."""
    if out is None or out == "-":
        if sys.stdout is None:  # started with file descriptor 1 closed
            raise OSError("standard output is closed")
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except OSError:  # a closed pipe, a full disk: keep the exit's flush from failing again
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise
    else:
        hio.atomic_write_text(out, text)


def _check_out_file(out: str | None) -> None:
    """Refuse an --out target that cannot be replaced atomically before any work is done."""
    if out is None or out == "-":
        return
    try:
        hio.writable_target(out)
    except ValueError as e:
        raise _UsageError(f"argument --out: {e} (use --out - for standard output)") from None
    except OSError as e:
        raise _UsageError(f"argument --out: cannot resolve {out!r}: {e}") from None


# --------------------------------------------------------------------------------------
# hso-jax schedules
# --------------------------------------------------------------------------------------

# --kind names are the library's (hso_jax.schedules.BASELINES); "uniform" = "time" (its
# earlier CLI name).
_SCHEDULE_KINDS = {**schedules.BASELINES, "uniform": schedules.BASELINES["time"]}
# CLI option (attribute name) -> (library keyword, kinds that take it).
_KIND_OPTIONS = {
    "rho": ("rho", ("karras", "polyexponential")),
    "c": ("c", ("kl-optimal",)),
    "table": ("model", ("ays",)),
    "variant": ("variant", ("beta",)),
    "oss_table": ("model", ("oss",)),
}
_LIBRARY_TO_OPTION = {
    "nfe": "--nfe",
    "rho": "--rho",
    "c": "--c",
    "model": "--table",
    "t_start": "--t-start",
    "t_end": "--t-end",
}
# AYS table used when --table is not given.
_DEFAULT_AYS_TABLE = {"sd15": "sd15", "sdxl": "sdxl", "cosine": "deepfloyd-if"}


def _add_schedules_parser(sub) -> None:
    p = sub.add_parser(
        "schedules",
        help="baseline and published schedules, exported as JSON / diffusers / ComfyUI",
        description=(
            "Print a baseline or published sampling schedule. --nfe is the number of "
            "intervals: the schedule has nfe + 1 times, on which a multistep solver (DDIM, "
            "DPM-Solver++, UniPC) spends nfe network evaluations."
        ),
    )
    _add_noise_source(p)
    p.add_argument(
        "--nfe",
        type=_argtypes.integer(1, _validate.MAX_NFE),
        required=True,
        help=f"number of intervals (1 to {_validate.MAX_NFE})",
    )
    p.add_argument("--kind", choices=list(_SCHEDULE_KINDS), required=True, help="spacing")
    p.add_argument(
        "--rho",
        type=_argtypes.real(*_RHO_BOUNDS),
        help="exponent for karras (default 7; {:g} to {:g}) / polyexponential (1; {:g} to "
        "{:g})".format(*schedules.RHO_RANGE["karras"], *schedules.RHO_RANGE["polyexponential"]),
    )
    p.add_argument(
        "--c",
        type=_argtypes.real(*schedules.C_RANGE),
        help="data std for kl-optimal (default 1; {:g} to {:g})".format(*schedules.C_RANGE),
    )
    p.add_argument(
        "--table",
        choices=sorted(schedules.AYS_TABLES),
        help="AYS table for --kind ays (default: the one matching --noise, if any)",
    )
    p.add_argument(
        "--variant",
        choices=schedules.BETA_VARIANTS,
        help="rule of --kind beta (flow models): comfyui (default) or diffusers",
    )
    p.add_argument(
        "--oss-table",
        choices=sorted(schedules.OSS_TABLES),
        help="Optimal-Steps table for --kind oss (default: the one matching --noise, if any)",
    )
    p.add_argument("--t-start", type=_argtypes.finite, help="start time (default: noise t_max)")
    p.add_argument("--t-end", type=_argtypes.finite, help="end time (default: noise t_min)")
    _add_export_options(p)
    p.set_defaults(func=_cmd_schedules, parser=p)


_NPY_MAGIC = b"\x93NUMPY"


def _read_vector(path: str, option: str) -> np.ndarray:
    try:
        raw = read_regular(path, MAX_TABLE_BYTES)
        if Path(path).suffix == ".npy":
            if raw[: len(_NPY_MAGIC)] != _NPY_MAGIC:
                # np.load would try it as a pickle and advise loading it unsafely.
                raise ValueError("not a NumPy .npy file (no .npy header)")
            v = np.load(io.BytesIO(raw), allow_pickle=False)
            if v.dtype.kind not in "fiu":
                raise ValueError(
                    f"expected real numbers (a float or integer array), got dtype {v.dtype}"
                )
        else:
            v = np.loadtxt(io.StringIO(raw.decode("utf-8")), dtype=np.float64, comments="#",
                           ndmin=1)  # fmt: skip
        v = np.asarray(v, dtype=np.float64)
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise _UsageError(f"argument {option}: cannot read {path!r}: {e}") from None
    if v.ndim != 1:
        raise _UsageError(
            f"argument {option}: expected one value per line (a 1-D array), got shape {v.shape}"
        )
    return v


# Options of the flow-model presets (the CLI attribute is the preset's keyword).
_PRESET_OPTIONS = ("resolution", "image_seq_len", "shift")


def _preset_options(args) -> dict:
    """The preset options given on the command line, checked against the preset."""
    given = {k: getattr(args, k) for k in _PRESET_OPTIONS if getattr(args, k) is not None}
    for attr in given:
        option = "--" + attr.replace("_", "-")
        takers = [n for n in sorted(hnoise.PRESETS) if attr in hnoise.preset_options(n)]
        if args.noise is None or attr not in hnoise.preset_options(args.noise):
            used = f"--noise {args.noise}" if args.noise is not None else "this source"
            raise _UsageError(
                f"argument {option}: only applies to --noise {' / '.join(takers)}, not {used}"
            )
    return given


def _noise_from_args(args) -> tuple[hnoise.NoiseSchedule, dict]:
    options = _preset_options(args)
    if args.noise is not None:
        try:
            return hnoise.preset(args.noise, **options), options
        except (TypeError, ValueError) as e:
            option = "--" + next(iter(options)).replace("_", "-") if options else "--noise"
            raise _UsageError(f"argument {option}: {e}") from None
    if args.betas_file is not None:
        option, path, build = "--betas-file", args.betas_file, hnoise.VPDiscrete.from_betas
    else:
        option, path = "--alphas-cumprod-file", args.alphas_cumprod_file
        build = hnoise.VPDiscrete.from_alphas_cumprod
    values = _read_vector(path, option)
    try:
        noise = build(values, name=f"custom:{Path(path).name}")
    except ValueError as e:
        raise _UsageError(f"argument {option}: {e}") from None
    return noise, {option.lstrip("-").replace("-", "_"): str(path)}


def _cmd_schedules(args) -> int:
    for option, (_, kinds) in _KIND_OPTIONS.items():
        if getattr(args, option) is not None and args.kind not in kinds:
            raise _UsageError(
                f"argument --{option.replace('_', '-')}: only applies to --kind "
                f"{' / '.join(kinds)}, not --kind {args.kind}"
            )
    fn = _SCHEDULE_KINDS[args.kind]
    ends = {"t_start": args.t_start, "t_end": args.t_end}
    if "t_start" not in inspect.signature(fn).parameters:
        for keyword, value in ends.items():
            if value is not None:
                raise _UsageError(
                    f"argument {_LIBRARY_TO_OPTION[keyword]}: does not apply to --kind "
                    f"{args.kind} (its schedule runs over the model's own range, to 0)"
                )
        ends = {}
    _check_export_args(args)
    noise, source = _noise_from_args(args)
    tgt = _target_from_args(args, noise, None)
    if tgt is None and args.end is not None:
        raise _UsageError(
            "argument --end: applies to a target (--format diffusers / comfyui or --target); "
            "a baseline's own end is --t-end"
        )

    params = {}
    to_option = dict(_LIBRARY_TO_OPTION)
    for option, (keyword, kinds) in _KIND_OPTIONS.items():
        if args.kind in kinds:
            value = getattr(args, option)
            params[keyword] = value if value is not None else _default(fn, keyword)
            to_option[keyword] = "--" + option.replace("_", "-")
    if args.kind == "ays" and args.table is None:
        table = _DEFAULT_AYS_TABLE.get(noise.name)
        if table is None:
            raise _UsageError(
                f"argument --table: required with --kind ays for noise {noise.name!r} "
                f"(no matching table); choose from {sorted(schedules.AYS_TABLES)}"
            )
        params["model"] = table
    try:
        ts = fn(noise, args.nfe, **params, **ends)
    except ValueError as e:
        # Library messages start with the keyword they reject; name the CLI option instead.
        first = re.match(r"\w*", str(e)).group(0)
        option = to_option.get(first)
        if option is None:
            raise
        raise _UsageError(f"argument {option}: {e}") from None

    nfe = args.nfe
    if tgt is not None:
        from .export import for_target

        try:
            ts = for_target(ts, tgt, noise)
        except ValueError as e:
            raise _UsageError(f"argument --nfe: {e}") from None
        nfe = tgt.solver().nfe(len(ts) - 1, to_data=tgt.end == "zero")

    def record():
        options = {"kind": args.kind, **params, **ends}
        if tgt is not None:
            options["target"] = tgt.name
        return hio.schedule_record(
            ts, noise, method=args.kind, nfe=nfe, options={**options, **source}
        )

    _emit(_export(ts, noise, args, record, tgt), args.out)
    return 0


def _default(fn, keyword: str):
    return inspect.signature(fn).parameters[keyword].default


# --------------------------------------------------------------------------------------
# hso-jax optimize
# --------------------------------------------------------------------------------------


def _resolution(text: str):
    """--resolution: PX (square) or HEIGHTxWIDTH, in pixels."""
    parts = text.lower().split("x")
    top = hnoise.MAX_FLUX_RESOLUTION
    try:
        sizes = [int(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be pixels, PX or HEIGHTxWIDTH (e.g. 1024 or 768x1360), got {text!r}"
        ) from None
    if len(sizes) > 2:
        raise argparse.ArgumentTypeError(f"must be PX or HEIGHTxWIDTH, got {text!r}")
    if not all(1 <= x <= top for x in sizes):
        raise argparse.ArgumentTypeError(f"each side must lie in [1, {top}] pixels, got {text!r}")
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def _add_noise_source(p, required: bool = True) -> None:
    """--noise / --betas-file / --alphas-cumprod-file (exactly one when required), and the
    options of the flow-model presets."""
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--noise", choices=sorted(hnoise.PRESETS), help="noise process preset")
    src.add_argument(
        "--betas-file",
        metavar="FILE",
        help="discrete schedule from betas: text (one value per line) or .npy",
    )
    src.add_argument(
        "--alphas-cumprod-file",
        metavar="FILE",
        help="discrete schedule from alphas_cumprod: text (one value per line) or .npy",
    )
    flow = p.add_argument_group("flow-model presets")
    flow.add_argument(
        "--resolution",
        type=_resolution,
        metavar="PX",
        help="image size for --noise flux-dev (its dynamic shift): PX or HEIGHTxWIDTH, "
        "multiples of 16 (default 1024)",
    )
    flow.add_argument(
        "--image-seq-len",
        type=_argtypes.integer(1, hnoise.MAX_IMAGE_SEQ_LEN),
        metavar="N",
        help="--noise flux-dev: latent tokens, (height // 16) * (width // 16), instead of "
        "--resolution",
    )
    flow.add_argument(
        "--shift",
        type=_argtypes.real(*hnoise.SHIFT_RANGE),
        metavar="S",
        help="static shift for --noise wan (default 5) / flow (1 = none; without it, flow is "
        "the bare process on [0.001, 0.999])",
    )


def _add_export_options(p) -> None:
    p.add_argument(
        "--format",
        choices=("json", "diffusers", "comfyui"),
        default="json",
        help="json: hso_jax schedule record (schema hso_jax.schedule/1); diffusers: the values "
        "a diffusers scheduler runs (target diffusers:<--solver> unless --target): network "
        "timesteps, sigmas, scheduler config; comfyui: the SIGMAS list (target "
        "comfyui:dpmpp_2m, or euler for --solver ddim and flow models)",
    )
    p.add_argument(
        "--target",
        metavar="RUNTIME:SCHEDULER",
        help="the runtime and scheduler that will run the schedule, e.g. "
        "diffusers:UniPCMultistepScheduler, diffusers:dpm-solver-pp, comfyui:euler, "
        "k-diffusion:sample_heun: the schedule is made under its conventions (solver, end, "
        "training steps) so that it runs there exactly as optimised; see 'hso-jax export'",
    )
    p.add_argument(
        "--end",
        choices=schedules.ENDS,
        help="where the last step lands: zero (the data, t = 0: diffusers' default "
        "final_sigmas_type and ComfyUI's SIGMAS ending in 0), t_min (final_sigmas_type "
        "sigma_min), free (the last point is optimised: HSO's multistep flavour). Default: "
        "the target's; without one, the method's",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write here (atomically; through a symbolic link to its target) instead of "
        "stdout; '-' is stdout",
    )


def _check_export_args(args) -> None:
    _check_out_file(args.out)


# --solver -> the ComfyUI sampler (k-diffusion's code) that is the same update
_COMFYUI_SAMPLER = {"dpm-solver-pp": "dpmpp_2m", "ddim": "euler"}


def _target_from_args(args, noise, solver: str | None):
    """The export target of --target / --format (None for a plain JSON record)."""
    from .export import target

    if args.target is not None:
        runtime = args.target.partition(":")[0]
        if args.format in ("diffusers", "comfyui") and not (
            runtime == args.format or (args.format == "comfyui" and runtime == "k-diffusion")
        ):
            raise _UsageError(
                f"argument --target: {args.target} is not a {args.format} target (--format "
                f"{args.format})"
            )
        name, option = args.target, "--target"
    elif args.format == "diffusers":
        # default: UniPC (--solver's default); a flow pipeline's own FlowMatchEuler for flows
        default = "euler" if isinstance(noise, hnoise.RectifiedFlow) else "unipc"
        name, option = f"diffusers:{solver or default}", "--format"
    elif args.format == "comfyui":
        if solver == "unipc":
            raise _UsageError(
                "argument --solver: ComfyUI's uni_pc sampler is its own port, not k-diffusion's "
                "code, and is not a checked target; use --solver dpm-solver-pp (dpmpp_2m) or "
                "ddim (euler), or --target comfyui:heun"
            )
        flow = isinstance(noise, hnoise.RectifiedFlow)
        default = "euler" if flow else "dpmpp_2m"
        name, option = f"comfyui:{_COMFYUI_SAMPLER.get(solver, default)}", "--format"
    else:
        return None
    try:
        return target(name, noise, end=args.end)
    except ValueError as e:
        raise _UsageError(f"argument {option}: {e}") from None


def _export(ts, noise, args, record, tgt) -> str:
    """Render ``ts`` in ``args.format``; ``record()`` builds the JSON record lazily."""
    if args.format == "json":
        return hio.dumps_record(record())
    from .export import export

    e = export(ts, tgt, noise)
    if args.format == "diffusers":
        return json.dumps(e.to_dict(), indent=2) + "\n"
    return json.dumps(e.sigmas) + "\n"


def _model_based() -> tuple[str, ...]:
    """The registered methods that evaluate a model (hso_jax.optimizers.REGISTRY)."""
    from .optimizers.base import names

    return names(needs_model=True)


CONDITION_KEYS = ("encoder_hidden_states", "text_embeds", "time_ids")
"""Names of the arrays of a dict condition in an ``.npz`` file (SDXL's UNet: prompt embeddings,
pooled text embeddings, micro-conditioning time ids)."""


def _read_condition(path: str, option: str):
    """An array (.npy) or a dict of arrays (.npz, keys among ``CONDITION_KEYS``)."""
    suffix = Path(path).suffix
    if suffix not in (".npy", ".npz"):
        raise _UsageError(f"argument {option}: expected a .npy or .npz file, got {path!r}")
    try:
        raw = read_regular(path, MAX_INPUT_BYTES)
        if suffix == ".npy":
            if raw[: len(_NPY_MAGIC)] != _NPY_MAGIC:
                raise ValueError("not a NumPy .npy file (no .npy header)")
            tree = np.load(io.BytesIO(raw), allow_pickle=False)
        else:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                tree = {k: z[k] for k in z.files}
    except (OSError, ValueError, TypeError) as e:
        raise _UsageError(f"argument {option}: cannot read {path!r}: {e}") from None
    if isinstance(tree, dict):
        unknown = sorted(set(tree) - set(CONDITION_KEYS))
        if not tree or unknown:
            raise _UsageError(
                f"argument {option}: {path!r} holds arrays {sorted(tree)}; a dict condition "
                f"takes arrays named among {list(CONDITION_KEYS)}"
            )
    for key, v in tree.items() if isinstance(tree, dict) else [("", tree)]:
        where = f"{path!r}" + (f"[{key!r}]" if key else "")
        if v.dtype.kind not in "fiu" or v.ndim < 1:
            raise _UsageError(
                f"argument {option}: {where} must be a real array with a leading sample axis, "
                f"got dtype {v.dtype} and shape {v.shape}"
            )
    # float conditions in the models' precision (float32); integer labels as they are
    as_model = lambda v: v.astype(np.float32) if v.dtype.kind == "f" else v  # noqa: E731
    return jax.tree_util.tree_map(as_model, tree)


def _read_samples(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """--data: a .npy array of samples of the model's sample shape, as float32."""
    try:
        if Path(path).suffix != ".npy":
            raise ValueError("expected a .npy file")
        raw = read_regular(path, MAX_INPUT_BYTES)
        if raw[: len(_NPY_MAGIC)] != _NPY_MAGIC:
            raise ValueError("not a NumPy .npy file (no .npy header)")
        v = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError, TypeError) as e:
        raise _UsageError(f"argument --data: cannot read {path!r}: {e}") from None
    if v.dtype.kind not in "fiu" or tuple(v.shape[1:]) != tuple(shape) or v.shape[0] < 2:
        raise _UsageError(
            f"argument --data: {path!r} must hold real samples of shape (N, "
            f"{', '.join(map(str, shape))}) with N >= 2, got dtype {v.dtype} and shape {v.shape}"
        )
    return v.astype(np.float32)


def _condition_rows(tree) -> dict[str, tuple[int, ...]]:
    items = tree.items() if isinstance(tree, dict) else [("array", tree)]
    return {k: tuple(v.shape) for k, v in items}


def _conditions_from_args(args) -> tuple[dict, dict]:
    """The Denoiser changes (cond, uncond, guidance_scale) of --cond / --uncond / --guidance,
    checked against each other and --num-samples, and their record for the output."""
    if args.cond is None:
        for option, value in (("--uncond", args.uncond), ("--guidance", args.guidance)):
            if value is not None:
                raise _UsageError(f"argument {option}: needs --cond (the conditions)")
        return {}, {}
    if args.guidance is not None and args.uncond is None:
        raise _UsageError(
            "argument --guidance: needs --uncond (classifier-free guidance calls the network "
            "with --cond and with --uncond)"
        )
    cond = _read_condition(args.cond, "--cond")
    shapes = {"--cond": _condition_rows(cond)}
    changes = {"cond": cond}
    if args.uncond is not None:
        uncond = _read_condition(args.uncond, "--uncond")
        shapes["--uncond"] = _condition_rows(uncond)
        a, b = shapes["--cond"], shapes["--uncond"]
        if set(a) != set(b) or any(a[k][1:] != b[k][1:] for k in a):
            raise _UsageError(
                f"argument --uncond: its arrays {b} do not match those of --cond {a} (same "
                "names, same shape after the leading sample axis)"
            )
        changes["uncond"] = uncond
    rows = {s[0] for shape in shapes.values() for s in shape.values()} - {1}
    if len(rows) > 1:
        raise _UsageError(
            f"arguments --cond / --uncond: leading (sample) sizes differ, {shapes}; use one row "
            "per prompt or one shared row (size 1)"
        )
    if rows:
        n = rows.pop()
        if args.num_samples is None:  # at least the default, the same number per prompt
            args.num_samples = n * -(-_default_noises(args.method) // n)
        if args.num_samples % n:
            raise _UsageError(
                f"arguments --cond / --uncond have {n} rows (prompts) but --num-samples is "
                f"{args.num_samples}: pass a multiple of {n} (each prompt gets the same number "
                "of noises) or one shared row (size 1)"
            )
        reps = args.num_samples // n

        def tile(v):  # prompt i conditions noises i, i + n, i + 2n, ...
            return np.tile(v, (reps,) + (1,) * (v.ndim - 1)) if v.shape[0] == n else v

        changes = {k: jax.tree_util.tree_map(tile, v) for k, v in changes.items()}
    if args.guidance is not None:
        changes["guidance_scale"] = args.guidance
    record = {"cond": str(args.cond), "uncond": args.uncond, "guidance": args.guidance}
    return changes, record


def _add_optimize_parser(sub) -> None:
    from .optimization import SOLVERS
    from .optimizers.base import REGISTRY, names

    p = sub.add_parser(
        "optimize",
        help="optimise a schedule: HSO / DM-NonUniform (model-free, seconds) or direct / GITS / "
        "model-aware MEP (--model)",
        description=(
            "Optimise a sampling schedule for --nfe network evaluations: from the noise process "
            "alone (HSO, DM-NonUniform and their single-level variants; --noise or a schedule "
            "file), or from a model (direct, gits, mep-model; --model, which also gives the "
            "noise process; --cond / --uncond / --guidance for a conditional model: one "
            "schedule for all prompts). Warnings of the search go to stderr."
        ),
    )
    _add_noise_source(p, required=False)
    p.add_argument(
        "--model",
        metavar="NAME_OR_DIR",
        help="model of the model-based methods: 'mnist' (shipped) or a converted model directory",
    )
    p.add_argument(
        "--nfe",
        type=_argtypes.integer(2, _validate.MAX_NFE),
        required=True,
        help=f"network evaluations (2 to {_validate.MAX_NFE})",
    )
    p.add_argument(
        "--solver",
        choices=SOLVERS,
        help="solver flavour (default unipc; with --target, the target's solver)",
    )
    p.add_argument(
        "--method",
        choices=names(),
        default="hso",
        help="optimiser: " + "; ".join(f"{n}: {REGISTRY[n].summary}" for n in names()),
    )
    p.add_argument(
        "--t-start",
        type=_argtypes.finite,
        help="--method dmn / mep-local / direct: start time (default: the process's t_max)",
    )
    p.add_argument(
        "--t-end",
        type=_argtypes.finite,
        help="--method dmn / mep-local: last optimised time (default: t_min, or normalised "
        "time 0.02 before a fixed final step); direct: end of its initial schedules",
    )
    p.add_argument(
        "--seed", type=_seed, default=66, help="seed of the search (0 to 2**32 - 1, default 66)"
    )
    p.add_argument(
        "--num-samples",
        type=_argtypes.integer(1, MAX_SAMPLES),
        help="model-based methods: initial noises (direct: half trains, half is held out; "
        "default 16, gits 256 as its official code, or the smallest multiple of the --cond "
        "rows above it, each prompt repeated over its share of the noises)",
    )
    p.add_argument(
        "--cond",
        metavar="FILE",
        help="model-based methods: conditions, e.g. prompt embeddings: a .npy array (B, ...) "
        "with one row per noise or one shared row (B = 1), or a .npz of named arrays for a "
        f"dict condition (SDXL: {', '.join(CONDITION_KEYS)})",
    )
    p.add_argument(
        "--uncond",
        metavar="FILE",
        help="unconditional (null-prompt) condition for classifier-free guidance, same kind "
        "of file as --cond (usually one shared row)",
    )
    p.add_argument(
        "--guidance",
        type=_argtypes.finite,
        metavar="W",
        help="classifier-free guidance scale (needs --cond and --uncond), e.g. 7.5",
    )
    p.add_argument(
        "--sample-seed",
        type=_seed,
        default=0,
        help="model-based methods: seed of the noises (AYS: of its Monte-Carlo samples)",
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="--method ays: data samples (.npy, (N, *sample shape)); default: --num-samples "
        "samples drawn from the model by a tight ODE solve",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="model-based methods: no progress lines on stderr (by default one every few "
        "seconds: the phase, the teacher or reference solves, then direct's iterations or "
        "AYS's sweeps)",
    )
    _add_export_options(p)
    p.set_defaults(func=_cmd_optimize, parser=p)


def _time_options() -> tuple[str, ...]:
    """The methods that take t_start / t_end (from their options in the registry)."""
    from .optimizers.base import REGISTRY, names, option_names

    return tuple(n for n in names() if "t_start" in option_names(REGISTRY[n]))


def _cmd_optimize(args) -> int:
    from .optimization import optimize

    _check_export_args(args)
    ends = {k: getattr(args, k) for k in ("t_start", "t_end") if getattr(args, k) is not None}
    if ends and args.method not in _time_options():
        option = _LIBRARY_TO_OPTION[next(iter(ends))]
        raise _UsageError(
            f"argument {option}: only applies to --method {' / '.join(_time_options())} (the "
            f"bi-level {args.method} searches its ends in HSO's box)"
        )
    if args.target is not None and args.solver is not None:
        raise _UsageError(
            f"argument --solver: the target {args.target} fixes the solver; leave --solver out"
        )
    has_noise = any(v is not None for v in (args.noise, args.betas_file, args.alphas_cumprod_file))
    if args.method in _model_based():
        if args.model is None:
            raise _UsageError(f"argument --model: required by --method {args.method}")
        if has_noise:
            raise _UsageError(
                f"--noise / --betas-file / --alphas-cumprod-file do not apply to --method "
                f"{args.method}: the noise process is the model's"
            )
        _preset_options(args)  # preset options need --noise
        res, noise, source, tgt = _optimize_with_model(args, ends)
    else:
        for option in ("model", "cond", "uncond", "guidance", "data"):
            if getattr(args, option) is not None:
                raise _UsageError(
                    f"argument --{option}: only applies to --method {' / '.join(_model_based())}"
                )
        if not has_noise:
            raise _UsageError(
                "one of the arguments --noise --betas-file --alphas-cumprod-file is required"
            )
        noise, source = _noise_from_args(args)
        tgt = _target_from_args(args, noise, args.solver)
        try:
            res = optimize(
                noise, args.nfe, method=args.method, seed=args.seed, **_conventions(args, tgt),
                **ends,
            )  # fmt: skip
        except ValueError as e:
            if "needs finite log-SNR" not in str(e):
                raise
            raise _UsageError(
                f"argument --t-start: --method {args.method} needs finite log-SNR at both ends, "
                f"but this range reaches t = 1 or t = 0 of {noise!r}; pass --t-start 0.999 "
                "(and --t-end, default: the last network point at normalised time 0.02, or "
                "t_min with --end free)"
            ) from None
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)

    def record():
        plain = res.to_dict()
        options = {k: plain[k] for k in ("penalty", "params", "warnings")}
        options = {"seed": args.seed, **options, **source, "end": schedules.end_of(res.t, noise)}
        if tgt is not None:
            options["target"] = tgt.name
        return hio.schedule_record(
            res.t,
            noise,
            method=res.method,
            solver=res.solver,
            nfe=res.nfe,
            objective=res.objective,
            options=options,
        )

    _emit(_export(res.t, noise, args, record, tgt), args.out)
    return 0


def _conventions(args, tgt) -> dict:
    """The keywords of hso_jax.optimize for the target (or the solver and end)."""
    if tgt is not None:
        return {"target": tgt}
    return {"solver": args.solver or "unipc", "end": args.end}


# callback keys of a fraction done (a teacher / reference solve, AYS's scoring in a sweep)
_SOLVED = ("teacher", "reference", "reference_val", "scored")


def _reporting(name: str, say, given: dict) -> dict:
    """The progress options of a model-based method (its ``callback``, no bar of its own) and
    its first line. A callback's dict is printed field by field, its arrays left out."""
    from .optimizers.base import method

    options = {f.name for f in dataclasses.fields(method(name).options)}
    if "x_T" in given:
        say(f"{name}: solves from {given['x_T'].shape[0]} noises, then the search")
    else:
        say(f"{name}: started")
    out = {"progress": False} if "progress" in options else {}
    if "callback" in options:

        def report(d: dict) -> None:
            fields = [
                f"{k} {v}"
                if isinstance(v, numbers.Integral)
                else f"{k} {100 * v:.0f} %"
                if k in _SOLVED
                else f"{k} {float(v):.4g}"
                for k, v in d.items()
                if isinstance(v, numbers.Real) and not isinstance(v, bool)
            ]
            say(f"{name}: " + ", ".join(fields), every=True)

        out["callback"] = report
    return out


def _default_noises(method: str) -> int:
    """``--num-samples`` when not given: GITS's official 256 warm-up noises, else 16."""
    from .optimizers.gits import OFFICIAL_WARMUP

    return OFFICIAL_WARMUP if method == "gits" else 16


def _optimize_with_model(args, ends: dict):
    """Model-based methods: load the model, draw the noises, optimise in float32 (the model's
    precision); the export that follows runs in float64 again."""
    from .models import zoo
    from .optimization import optimize

    changes, cond_record = _conditions_from_args(args)
    if args.num_samples is None:
        args.num_samples = _default_noises(args.method)
    say = _progress.lines(f"{args.parser.prog}: ", not args.quiet)
    say(f"{args.method}: loading {args.model}")
    try:
        model = zoo.load(args.model)
        shape = zoo.sample_shape(args.model)
        conditional = zoo.is_conditional(args.model)
    except FileNotFoundError as e:
        raise _UsageError(f"argument --model: {e}") from None
    if conditional and args.cond is None:
        raise _UsageError(
            f"argument --cond: {args.model} is a conditional UNet (UNet2DConditionModel): pass "
            "its prompt embeddings, --cond EMB.npy (one row per prompt, or one shared row), "
            "and for classifier-free guidance --uncond NULL.npy --guidance W"
        )
    if not conditional and args.cond is not None:
        raise _UsageError(
            f"argument --cond: {args.model} is an unconditional model (it takes no condition); "
            "drop --cond / --uncond / --guidance"
        )
    tgt = _target_from_args(args, model.noise, args.solver)
    from .optimizers.base import method

    inputs = method(args.method).inputs
    if args.data is not None and "data" not in inputs:
        raise _UsageError(f"argument --data: does not apply to --method {args.method}")
    with jax.enable_x64(False):
        model = model.replace(**changes)
        given = {}
        key = jax.random.key(args.sample_seed)
        if "x_T" in inputs:
            given["x_T"] = model.noise.prior(key, (args.num_samples, *shape))
        if "data" in inputs:  # AYS: data samples, or samples the model draws itself
            data = None if args.data is None else _read_samples(args.data, shape)
            given.update(data=data, key=key, shape=shape, num_samples=args.num_samples)
        res = optimize(
            model, args.nfe, method=args.method, seed=args.seed, **given,
            **_reporting(args.method, say, given), **_conventions(args, tgt), **ends,
        )  # fmt: skip
    source = {"model": str(args.model), "num_samples": args.num_samples}
    source["sample_seed"] = args.sample_seed
    source.update({k: v for k, v in cond_record.items() if v is not None})
    return res, model.noise, source, tgt


# --------------------------------------------------------------------------------------
# hso-jax demo
# --------------------------------------------------------------------------------------


def _add_demo_parser(sub) -> None:
    from .demo import DEFAULT_OUT

    p = sub.add_parser(
        "demo",
        help="the main job: compare schedules on the shipped MNIST model (about 3 minutes)",
        description=(
            "Optimise schedules (HSO, DM-NonUniform, the model-aware direct; AYS with --full) "
            "for the shipped MNIST UNet, sample every (schedule, solver) from the same noise, "
            "compare with the exact PF-ODE solution, print the table and the schedule to use "
            "per solver; writes results.md, results.json, samples.png and schedules.png."
        ),
    )
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="output folder")
    p.add_argument(
        "--nfe",
        type=_argtypes.integer(2, _validate.MAX_NFE),
        default=5,
        help=f"network evaluations (2 to {_validate.MAX_NFE}, default 5)",
    )
    p.add_argument(
        "--num-samples",
        type=_argtypes.integer(2, MAX_SAMPLES),
        default=64,
        help=f"initial noises (2 to {MAX_SAMPLES}, default 64)",
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="seed of the initial noise (0 to 2**32 - 1)"
    )
    p.add_argument(
        "--full", action="store_true", help="also run Align Your Steps and GITS (minutes)"
    )
    p.add_argument(
        "--no-direct", action="store_true", help="skip the model-aware direct (most of the time)"
    )
    p.add_argument("--no-fd", action="store_true", help="skip FD-MNIST")
    p.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr (the table still prints)"
    )
    # The model runs in its own precision (float32), not under the CLI's float64 default.
    p.set_defaults(func=_cmd_demo, parser=p, x64=False)


def _check_out_dir(out: str) -> None:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise _UsageError(f"argument --out: {out!r} exists and is not a folder")


def _cmd_demo(args) -> int:
    from .demo import run_demo

    _check_out_dir(args.out)
    with _undo_on_interrupt(args.out):
        run_demo(
            args.out,
            nfe=args.nfe,
            num_samples=args.num_samples,
            seed=args.seed,
            full=args.full,
            direct=not args.no_direct,
            fd=not args.no_fd,
            progress=not args.quiet,
        )
    return 0


def _entries(folder: Path) -> dict[str, tuple]:
    """Identity of each top-level entry of ``folder`` (empty if it does not exist)."""
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError:
        return {}
    out = {}
    for name in names:
        with contextlib.suppress(OSError):
            st = os.lstat(folder / name)
            out[name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


@contextlib.contextmanager
def _undo_on_interrupt(out: str):
    """If SIGINT / SIGTERM stops the command, remove what it wrote into the folder ``out``:
    the top-level entries it created or replaced (a half-written file among them), and the
    folder itself if it created it. Entries that were there and untouched stay."""
    folder = Path(out).absolute()
    existed = folder.is_dir()
    before = _entries(folder)

    def undo() -> None:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
            return
        for name, ident in _entries(folder).items():
            if before.get(name) != ident:
                path = folder / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()

    with _signals.on_interrupt(undo):
        yield


# --------------------------------------------------------------------------------------
# hso-jax convert
# --------------------------------------------------------------------------------------


def _add_convert_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a diffusers UNet folder to a model directory for models.load",
        description=(
            "Convert a diffusers UNet2DModel or UNet2DConditionModel (Stable Diffusion) folder "
            "(or a pipeline folder with unet/ and scheduler/) to Flax parameters saved with "
            "Orbax; load it with hso_jax.models.load(OUT). Needs the [convert] extra (torch, "
            "safetensors)."
        ),
    )
    p.add_argument("--diffusers", required=True, metavar="DIR", help="diffusers model folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    p.add_argument(
        "--data-format",
        default=None,
        choices=("NCHW", "NHWC"),
        help="layout the converted model takes (default NCHW, as diffusers, for a UNet2DModel; "
        "NHWC latents for a UNet2DConditionModel)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr (reading, converting)"
    )
    p.set_defaults(func=_cmd_convert, parser=p, x64=False)


def _cmd_convert(args) -> int:
    from .models.convert import convert

    _check_out_dir(args.out)
    try:
        with _undo_on_interrupt(args.out):
            say = _progress.lines(f"{args.parser.prog}: ", not args.quiet)
            out = convert(args.diffusers, args.out, data_format=args.data_format, progress=say)
    except FileNotFoundError as e:  # a file the diffusers folder must have is missing
        raise _UsageError(f"argument --diffusers: {e}") from None
    print(out)
    return 0


# --------------------------------------------------------------------------------------
# hso-jax export
# --------------------------------------------------------------------------------------


def _add_export_parser(sub) -> None:
    from .export import TARGETS

    p = sub.add_parser(
        "export",
        help="what to paste into diffusers / k-diffusion / ComfyUI for a schedule file; "
        "--check runs it there",
        description=(
            "Print the code (or values) that makes a runtime run a schedule file exactly as "
            "optimised: the same network calls, times, end and update. A schedule the target "
            "cannot run as it is is refused with what to do instead. --check runs the "
            "target's own code (diffusers, k-diffusion) on an analytic Gaussian mixture and "
            "prints the network calls, the times the network received and the largest "
            "deviation from hso_jax's sampler (exit 1 if they differ). Targets: "
            + ", ".join(sorted(TARGETS))
        ),
    )
    p.add_argument("schedule", metavar="FILE", help="schedule file (hso-jax ... --format json)")
    p.add_argument(
        "--to",
        required=True,
        metavar="RUNTIME:SCHEDULER",
        help="the target, e.g. diffusers:UniPCMultistepScheduler, diffusers:unipc, comfyui:euler",
    )
    p.add_argument("--end", choices=schedules.ENDS, help="the target's end (default: the file's)")
    p.add_argument("--variant", choices=("bh2", "bh1"), help="UniPC's solver_type (default bh2)")
    p.add_argument(
        "--format",
        choices=("snippet", "json"),
        default="snippet",
        help="snippet: code / settings to paste (default); json: the exported values",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="run the target's own code on an analytic Gaussian mixture and compare "
        "(needs the convert extra; k-diffusion targets also k-diffusion itself)",
    )
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    src = p.add_argument_group("noise process of a file that names no preset")
    src.add_argument("--betas-file", metavar="FILE", help="betas: text or .npy")
    src.add_argument("--alphas-cumprod-file", metavar="FILE", help="alphas_cumprod: text or .npy")
    p.set_defaults(func=_cmd_export, parser=p)


def _cmd_export(args) -> int:
    from .export import check, export, target

    _check_out_file(args.out)
    try:
        record = hio.load_schedule(args.schedule)
    except ValueError as e:
        raise _UsageError(f"argument FILE: {e}") from None
    except OSError as e:  # missing, no permission: an input, not the output
        raise _UsageError(f"argument FILE: cannot read {args.schedule!r}: {e.strerror}") from None
    if args.betas_file is not None or args.alphas_cumprod_file is not None:
        args.noise = None
        for attr in _PRESET_OPTIONS:
            setattr(args, attr, None)
        noise, _ = _noise_from_args(args)
    elif record["noise"] in hnoise.PRESETS:
        noise = hnoise.preset(record["noise"])
    else:
        raise _UsageError(
            f"argument --betas-file: the file's noise process {record['noise']!r} is no "
            "preset; give it with --betas-file or --alphas-cumprod-file"
        )
    try:
        e = export(np.asarray(record["t"]), args.to, noise, end=args.end, variant=args.variant)
    except ValueError as err:
        raise _UsageError(f"argument --to: {err}") from None
    made_for = record["options"].get("target")
    if made_for is not None and target(made_for, noise).solver() != e.target.solver():
        print(
            f"warning: the schedule was optimised for {made_for}; {e.target.name} runs "
            f"{e.target.solver()!r} on it ({e.nfe} network calls), another sampler",
            file=sys.stderr,
        )
    if args.check:
        try:
            report = check(e)
        except ImportError as err:
            raise _UsageError(f"argument --check: {err}") from None
        _emit(report.summary() + "\n", args.out)
        return 0 if report.passed else 1
    if args.format == "snippet":
        text = e.snippet(source=args.schedule)
    else:
        text = json.dumps(e.to_dict(), indent=2) + "\n"
    _emit(text, args.out)
    return 0


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``hso-jax`` argument parser with all subcommands."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hso-jax", description="Optimised sampling schedules for diffusion models."
    )
    parser.add_argument("--version", action="version", version=f"hso-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert_parser(sub)
    _add_demo_parser(sub)
    _add_export_parser(sub)
    _add_optimize_parser(sub)
    _add_schedules_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hso-jax`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0: success; 2: bad arguments or input rejected by the library (one-line message on
    stderr); 1: the output could not be written. SIGINT (Ctrl-C) / SIGTERM end the process
    within about a second, even during an XLA compilation: one line on stderr, exit status
    130 / 143, no traceback, and no partial output (temporary files are removed; ``demo`` and
    ``convert`` remove what they had written into ``--out``).
    """
    try:
        with _signals.stop_on_signals("hso-jax") as guard:
            parser = build_parser()  # imports the optimisers: may take a moment
            try:
                args = parser.parse_args(argv)
            except SystemExit as e:  # argparse: --help (0) or a usage error (2), printed
                return e.code if isinstance(e.code, int) else 2
            guard.prog = args.parser.prog
            return _run(args, guard.prog)
    except _signals.Interrupted as e:
        _signals.finish_interrupted(guard.prog, e)  # does not return
        raise  # pragma: no cover


def _start_compile_cache(prog: str) -> None:
    """Turn the persistent compilation cache on; its warning (an unwritable folder) becomes one
    line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _xla_cache.enable()
    for w in caught:
        print(f"{prog}: warning: {w.message}", file=sys.stderr)


def _warning_lines(prog: str):
    """Warnings as one line each, ``PROG: warning: MESSAGE`` (not Python's two lines with the
    library's file and source)."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=sys.stderr)

    return show


def _run(args, prog: str) -> int:
    try:
        _start_compile_cache(prog)
        # Exported schedules carry full float64 precision, whatever the caller's JAX config.
        with (
            warnings.catch_warnings(),
            _xla_cache.cache_everything(),
            jax.enable_x64(getattr(args, "x64", True)),
        ):
            warnings.showwarning = _warning_lines(prog)
            return args.func(args)
    except _UsageError as e:
        args.parser.print_usage(sys.stderr)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:  # library validation: names argument and value
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: error: cannot write output: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
