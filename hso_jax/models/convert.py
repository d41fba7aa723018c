"""Convert a diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` (PyTorch) into a Flax model
directory for :func:`load`.

Input: a diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``,
its sharded form with ``diffusion_pytorch_model.safetensors.index.json``, the ``.fp16``
variant, or ``diffusion_pytorch_model.bin``; a pipeline folder, e.g. a Stable Diffusion one, with
``unet/`` and ``scheduler/`` works too), or an in-memory state dict with its config. The
config's ``_class_name`` selects the port: :mod:`hso_jax.models.unet` or
:mod:`hso_jax.models.unet_cond`. Output: a directory with ``config.json``,
``scheduler_config.json``, ``hso_jax.json`` and the Orbax checkpoint ``params/``, which
:func:`hso_jax.models.load` turns into a :class:`hso_jax.Denoiser` whose noise process comes from
the scheduler config (``beta_schedule`` linear / scaled_linear / squaredcos_cap_v2,
``beta_start``, ``beta_end``, ``num_train_timesteps``) and whose prediction type from its
``prediction_type`` (epsilon / v_prediction / sample). Without a scheduler config the DDPM
defaults are used for a ``UNet2DModel`` and the Stable Diffusion ones (scaled-linear betas
0.00085..0.012, epsilon) for a ``UNet2DConditionModel``. The layout the loaded model takes is
NCHW for a ``UNet2DModel`` (as diffusers) and NHWC latents for a ``UNet2DConditionModel``, unless
``data_format`` says otherwise.

Weight mapping (one-to-one, names as in :mod:`hso_jax.models.unet`): ``a.0.b.weight`` ->
``params["a_0"]["b"]["kernel"]``; convolution kernels OIHW -> HWIO, linear weights (out, in) ->
(in, out), GroupNorm / LayerNorm ``weight`` -> ``scale``. The attention names of old checkpoints
(``query``, ``key``, ``value``, ``proj_attn``, e.g. google/ddpm-*) are accepted as well as the
current ``to_q``, ``to_k``, ``to_v``, ``to_out.0``.

Dependencies: ``.safetensors`` files are read with ``safetensors.numpy`` and ``.bin`` files with
``torch.load``; both are imported lazily here only (``pip install hso-jax[convert]``).

Command line::

    hso-jax convert --diffusers SRC_DIR --out OUT_DIR [--data-format NCHW|NHWC]

Reference: diffusers ``UNet2DModel`` / ``UNet2DConditionModel``
(src/diffusers/models/unets/unet_2d.py, unet_2d_condition.py) and their ``config.json`` /
``scheduler_config.json`` formats.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .unet import UNetConfig, abstract_params, as_config
from .unet_cond import UNetCondConfig
from .zoo import DEFAULT_SCHEDULER, SD_SCHEDULER, default_scheduler_config

__all__ = [
    "convert",
    "convert_state_dict",
    "state_dict_to_params",
    "params_to_state_dict",
    "load_diffusers_folder",
    "DEFAULT_SCHEDULER",
    "SD_SCHEDULER",
    "default_data_format",
]

_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
)
# Module names that contain "_<digit>" in diffusers itself (TimestepEmbedding's layers), so
# the inverse mapping must not turn them into list indices.
_NATIVE_NAMES = {"linear_1", "linear_2"}
_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out_0"}


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch tensor (bf16/fp16 included)
        v = v.detach().cpu().float().numpy()
    return np.asarray(v, dtype=np.float32)


def _flax_path(key: str) -> tuple[str, ...]:
    """``down_blocks.0.resnets.1.conv1.weight`` -> (down_blocks_0, resnets_1, conv1, weight)."""
    out: list[str] = []
    for part in key.split("."):
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(_DEPRECATED_ATTN.get(part, part))
    return tuple(out)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, (*prefix, k)))
        else:
            flat[(*prefix, k)] = v
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def state_dict_to_params(
    state_dict: Mapping[str, Any], config: UNetConfig | UNetCondConfig | Mapping[str, Any]
) -> dict[str, Any]:
    """Map a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` state dict to Flax parameters.

    Args:
      state_dict: name -> tensor (torch tensors or NumPy arrays).
      config: the model's config.json dict (or a :class:`UNetConfig` / :class:`UNetCondConfig`).

    Returns:
      A nested dict of float32 ``jax.Array`` matching ``as_config(config).module()``.

    Raises:
      ValueError: keys that map to no Flax parameter, Flax parameters with no tensor, or shape
        mismatches (the message lists them).
    """
    import jax.numpy as jnp

    cfg = as_config(config)
    target = _flatten(abstract_params(cfg))
    out: dict[tuple[str, ...], Any] = {}
    unused, bad = [], []
    for key, value in state_dict.items():
        path = _flax_path(key)
        leaf = path[-1]
        arr = _to_numpy(value)
        if leaf == "weight":
            kernel = (*path[:-1], "kernel")
            if kernel in target:
                path = kernel
                arr = arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr.T
                want = tuple(target[path].shape)
                if arr.ndim == 4 and len(want) == 2 and arr.size == int(np.prod(want)):
                    arr = arr.reshape(want)  # 1x1-conv q/k/v/proj of some old exports
            else:
                path = (*path[:-1], "scale")
        if path not in target:
            unused.append(key)
            continue
        if arr.shape != tuple(target[path].shape):
            bad.append(f"{key}: {arr.shape} vs expected {tuple(target[path].shape)}")
            continue
        out[path] = jnp.asarray(arr, jnp.float32)
    missing = ["/".join(p) for p in target if p not in out]
    if unused or missing or bad:
        raise ValueError(
            f"state dict does not match the {cfg.to_dict()['_class_name']} config: "
            f"unexpected keys {unused[:10]}{' ...' if len(unused) > 10 else ''}; "
            f"missing parameters {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"shape mismatches {bad[:10]}"
        )
    return _unflatten(out)


def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_dict_to_params` (current diffusers names), as NumPy arrays."""
    sd: dict[str, np.ndarray] = {}
    for path, v in _flatten(params).items():
        parts = []
        for p in path[:-1]:
            head, _, tail = p.rpartition("_")
            native = p in _NATIVE_NAMES
            parts.extend([head, tail] if tail.isdigit() and head and not native else [p])
        arr = np.asarray(v, np.float32)
        leaf = path[-1]
        if leaf == "kernel":
            arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T
            leaf = "weight"
        elif leaf == "scale":
            leaf = "weight"
        sd[".".join([*parts, leaf])] = np.ascontiguousarray(arr)
    return sd


def _find_dirs(src: Path) -> tuple[Path, Path | None]:
    """(unet dir, scheduler config path or None) for a model or pipeline folder."""
    if (src / "unet" / "config.json").is_file():
        sched = src / "scheduler" / "scheduler_config.json"
        return src / "unet", sched if sched.is_file() else None
    for name in ("scheduler_config.json", "scheduler/scheduler_config.json"):
        if (src / name).is_file():
            return src, src / name
    return src, None


def load_diffusers_folder(
    src: str | os.PathLike, progress: Callable[[str], None] | None = None
) -> tuple[dict, dict[str, np.ndarray], dict | None]:
    """Read ``(config, state_dict, scheduler_config or None)`` from a diffusers folder
    (``progress(line)`` before each weight file)."""
    say = progress or (lambda line: None)
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(
            f"{src} is not a directory; expected a diffusers UNet2DModel folder (or a "
            f"UNet2DConditionModel or pipeline folder) with config.json "
            f"and one of {list(_WEIGHT_FILES)}"
        )
    unet_dir, sched_path = _find_dirs(src)
    cfg_path = unet_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"missing {cfg_path} (the diffusers UNet config)")
    config = json.loads(cfg_path.read_text())
    weights = next((unet_dir / f for f in _WEIGHT_FILES if (unet_dir / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"no weights in {unet_dir}: expected one of {list(_WEIGHT_FILES)}")
    if weights.name.endswith(".index.json"):  # sharded: the index maps names to files
        from safetensors.numpy import load_file

        shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        state_dict = {}
        for i, shard in enumerate(shards, 1):
            say(f"reading {unet_dir / shard} ({i} of {len(shards)} files)")
            state_dict.update(load_file(str(unet_dir / shard)))
    elif weights.suffix == ".safetensors":
        from safetensors.numpy import load_file

        say(f"reading {weights}")
        state_dict = load_file(str(weights))
    else:
        import torch

        say(f"reading {weights}")
        state_dict = torch.load(str(weights), map_location="cpu", weights_only=True)
    sched = json.loads(sched_path.read_text()) if sched_path is not None else None
    return config, state_dict, sched


def convert_state_dict(
    state_dict: Mapping[str, Any],
    config: Mapping[str, Any],
    out: str | os.PathLike,
    scheduler_config: Mapping[str, Any] | None = None,
    data_format: str | None = None,
    source: str = "state dict",
) -> Path:
    """Write a model directory from a state dict + config (+ scheduler config).

    Args:
      state_dict: diffusers UNet2DModel / UNet2DConditionModel weights.
      config: its config.json dict.
      out: output directory (created).
      scheduler_config: diffusers scheduler config; when None, the DDPM defaults
        (:data:`DEFAULT_SCHEDULER`) for a UNet2DModel and Stable Diffusion's
        (:data:`SD_SCHEDULER`) for a UNet2DConditionModel.
      data_format: layout the loaded Denoiser expects, ``"NCHW"`` or ``"NHWC"``; None:
        :func:`default_data_format`.
      source: provenance string stored in ``hso_jax.json``.
    """
    from .zoo import (
        MODEL_FORMAT,
        PARAMS_SUBDIR,
        noise_from_scheduler_config,
        prediction_from_scheduler_config,
        save_model_dir,
    )

    cfg = as_config(config)
    data_format = default_data_format(config) if data_format is None else data_format
    if data_format not in ("NCHW", "NHWC"):
        raise ValueError(f"data_format must be 'NCHW' or 'NHWC', got {data_format!r}")
    sched = dict(default_scheduler_config(cfg) if scheduler_config is None else scheduler_config)
    noise_from_scheduler_config(sched)  # validate before writing anything
    prediction_from_scheduler_config(sched)
    params = state_dict_to_params(state_dict, cfg)
    meta = {
        "format": MODEL_FORMAT,
        "version": 1,
        "data_format": data_format,
        "checkpoint": PARAMS_SUBDIR,
        "source": source,
        "scheduler_config_defaulted": scheduler_config is None,
    }
    return save_model_dir(Path(out), params, dict(config), sched, meta)


def default_data_format(config: Mapping[str, Any]) -> str:
    """``"NHWC"`` (latents) for a UNet2DConditionModel config, ``"NCHW"`` (as diffusers) else."""
    return "NHWC" if config.get("_class_name") == "UNet2DConditionModel" else "NCHW"


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    data_format: str | None = None,
    scheduler_config: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Convert a diffusers UNet folder into a model directory for :func:`load`.

    Args:
      src: diffusers model folder (or pipeline folder with ``unet/`` and ``scheduler/``).
      out: output directory.
      data_format: ``"NCHW"`` or ``"NHWC"``; None: :func:`default_data_format` (NCHW for a
        UNet2DModel, NHWC for a UNet2DConditionModel).
      scheduler_config: overrides the folder's scheduler config (needed when it has none and
        the defaults, see :func:`convert_state_dict`, are wrong).
      progress: ``progress(line)`` is called with what is being done (reading each weight
        file, converting, writing), e.g. ``print``.

    Returns:
      The output directory.
    """
    say = progress or (lambda line: None)
    config, state_dict, sched = load_diffusers_folder(src, say)
    if scheduler_config is not None:
        sched = dict(scheduler_config)
    say(f"converting {len(state_dict)} tensors, then writing {out}")
    return convert_state_dict(
        state_dict, config, out, sched, data_format=data_format, source=str(Path(src).resolve())
    )
