"""k-diffusion's sampling code, as installed, for the checks of the k-diffusion / ComfyUI
targets (ComfyUI vendors the same ``sample_*`` functions).

The ``k-diffusion`` package's ``__init__`` imports its training utilities (torchvision, CLIP,
wandb), which its samplers never use. Where the package imports, its ``sampling`` module is
used as it is; otherwise ``k_diffusion/sampling.py`` of the installed distribution is loaded
on its own, with its one helper from ``k_diffusion.utils`` (``append_dims``, which adds
trailing axes) supplied here. Install with ``pip install --no-deps k-diffusion==0.1.1`` beside
the ``convert`` extra (which brings torch, scipy, torchsde and torchdiffeq).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import types

__all__ = ["sampling"]

_SHIM = "hso_jax_kdiffusion"


def _append_dims(x, target_dims: int):
    """``x`` with trailing singleton axes up to ``target_dims`` dimensions."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


@functools.cache
def sampling() -> types.ModuleType:
    """The ``k_diffusion.sampling`` module (ImportError with the install line if missing)."""
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        pass
    try:
        dist = importlib.metadata.distribution("k-diffusion")
    except importlib.metadata.PackageNotFoundError as e:
        raise ImportError(
            "the k-diffusion / ComfyUI checks need k-diffusion's samplers: pip install "
            "'hso-jax[convert]' && pip install --no-deps k-diffusion==0.1.1"
        ) from e
    path = dist.locate_file("k_diffusion/sampling.py")
    package = types.ModuleType(_SHIM)
    package.__path__ = []
    utils = types.ModuleType(f"{_SHIM}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.setdefault(_SHIM, package)
    sys.modules.setdefault(f"{_SHIM}.utils", utils)
    spec = importlib.util.spec_from_file_location(f"{_SHIM}.sampling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[f"{_SHIM}.sampling"] = module
    return module
