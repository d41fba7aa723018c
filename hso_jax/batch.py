"""Sample batches: per-sample conditions, chunks of samples and sharding over devices.

Conditions. A :class:`~hso_jax.Denoiser`'s ``cond`` and ``uncond`` are pytrees (an array; for
SDXL a dict such as ``{"encoder_hidden_states": (B, L, D), "text_embeds": (B, 1280),
"time_ids": (B, 6)}``). Every leaf with ``ndim >= 1`` has the **sample axis first**:

* leading size ``B``, the batch of states ``x`` (``x_T``, data rows): **one condition per
  sample**, row ``b`` conditions sample ``b`` (a batch of prompts and seeds);
* leading size ``1``: **one condition shared** by all samples (broadcast to the batch by the
  Denoiser before the network call);
* ``ndim == 0`` (a scalar): shared, passed unchanged.

Every leaf of ``cond`` and ``uncond`` with a leading size other than 1 must have the same
leading size (the *condition batch*). Wherever samples are split, chunked, gathered or sharded
(held-out splits, teacher chunks, KLUB data rows, devices), the per-sample condition rows go
with them (:func:`take_conditions`, :func:`shard_model`), so every sample keeps its own
condition and one schedule is optimised for the whole batch of conditions.

Sharding. A 1-D :class:`jax.sharding.Mesh` with axis ``"batch"`` splits arrays along their
sample axis (``NamedSharding(mesh, PartitionSpec("batch"))``); the model's parameters and
shared conditions are replicated and its per-sample condition rows are split like the samples.
Samples never interact, so results equal the single-device ones up to round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .denoiser import Denoiser

__all__ = [
    "condition_batch",
    "check_conditions",
    "take_conditions",
    "make_batch_mesh",
    "resolve_mesh",
    "shard_batch",
    "shard_model",
    "replicate",
    "check_chunk",
    "vmap_samples",
]

Array = Any


def _leaves(model: Denoiser) -> list[tuple[str, Any]]:
    out = []
    for name in ("cond", "uncond"):
        tree = getattr(model, name)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            out.append((name + jax.tree_util.keystr(path), leaf))
    return out


def condition_batch(model: Denoiser) -> int | None:
    """The condition batch ``B`` of ``model`` (per-sample conditions), or ``None`` when every
    condition is shared (leading size 1, scalars) or there is none.

    Raises:
      ValueError: leaves of ``cond`` / ``uncond`` disagree on their leading (sample) size.
    """
    sizes = {}
    for name, leaf in _leaves(model):
        shape = np.shape(leaf)
        if len(shape) >= 1 and shape[0] != 1:
            sizes.setdefault(int(shape[0]), name)
    if len(sizes) > 1:
        detail = ", ".join(f"{n} has {b}" for b, n in sizes.items())
        raise ValueError(
            "cond / uncond leaves must share one leading (sample) size, or have size 1 to be "
            f"shared by all samples; got {detail}"
        )
    return next(iter(sizes), None)


def check_conditions(model: Denoiser, batch: int, name: str = "x_T") -> int | None:
    """Check that ``model``'s per-sample conditions align with a batch of ``batch`` samples.

    Returns:
      The condition batch (``batch``), or ``None`` for shared conditions.

    Raises:
      ValueError naming ``name``, both sizes and what is allowed.
    """
    b = condition_batch(model)
    if b is not None and b != batch:
        raise ValueError(
            f"the model's conditions hold {b} rows (one per sample) but {name} holds {batch} "
            f"samples; pass one condition row per sample of {name} (leading size {batch}) or "
            "one shared condition (leading size 1)"
        )
    return b


def take_conditions(model: Denoiser, rows: Array | slice) -> Denoiser:
    """``model`` with its per-sample condition rows ``rows`` (an index array or a slice);
    shared conditions are kept. Pure (works on traced indices)."""
    b = condition_batch(model)
    if b is None:
        return model

    def take(leaf):
        return leaf[rows] if _is_row(leaf, b) else leaf

    return model.replace(
        cond=jax.tree_util.tree_map(take, model.cond),
        uncond=jax.tree_util.tree_map(take, model.uncond),
    )


def _is_row(leaf, b) -> bool:
    return b is not None and np.ndim(leaf) >= 1 and np.shape(leaf)[0] == b


def vmap_samples(f):
    """``jax.vmap`` of ``f(model, *xs)`` over the leading axis of every ``xs`` and of the
    model's per-sample condition rows together.

    Inside ``f`` the model holds one sample's condition row as a batch of one (leading size 1),
    so ``f`` may call it on ``x[None]``; shared conditions and parameters are not mapped.
    """

    def g(model: Denoiser, *xs):
        b = condition_batch(model)
        trees = [jax.tree_util.tree_flatten(getattr(model, n)) for n in ("cond", "uncond")]
        rows = [[leaf for leaf in leaves if _is_row(leaf, b)] for leaves, _ in trees]

        def one(rows, *x):
            new = []
            for (leaves, treedef), r in zip(trees, rows, strict=True):
                it = iter(r)
                full = [next(it)[None] if _is_row(leaf, b) else leaf for leaf in leaves]
                new.append(jax.tree_util.tree_unflatten(treedef, full))
            return f(model.replace(cond=new[0], uncond=new[1]), *x)

        return jax.vmap(one)(rows, *xs)

    return g


def check_chunk(name: str, value) -> int | None:
    """``None`` or a positive integer (a number of samples per chunk)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------


def make_batch_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: all of ``jax.devices()``)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices must not be empty")
    return Mesh(np.array(devs), ("batch",))


def resolve_mesh(mesh) -> Mesh | None:
    """``None``, ``"auto"`` (all devices) or a Mesh with a ``"batch"`` axis -> Mesh or None."""
    if mesh is None:
        return None
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be None, 'auto' or a jax.sharding.Mesh, got {mesh!r}")
        return make_batch_mesh()
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be None, 'auto' or a jax.sharding.Mesh, got {type(mesh).__name__}"
        )
    if "batch" not in mesh.axis_names:
        raise ValueError(
            f"mesh must have an axis named 'batch' (the sample axis is split along it), got axes "
            f"{tuple(mesh.axis_names)}"
        )
    return mesh


def _check_divisible(size, mesh: Mesh, what: str = "batch size") -> None:
    n = mesh.shape["batch"]
    if size is None or size % n:
        raise ValueError(
            f"the {what} ({'no batch axis' if size is None else size}) must be divisible by "
            f"the number of devices on the mesh's 'batch' axis ({n}); pad or trim the batch "
            f"to a multiple of {n}"
        )


def shard_batch(x: Array, mesh: Mesh) -> Array:
    """Place ``x`` on ``mesh`` split along its first (sample) axis over the ``"batch"`` axis.

    Raises:
      ValueError: ``x.shape[0]`` is not divisible by the number of devices on ``"batch"``.
    """
    mesh = resolve_mesh(mesh)
    _check_divisible(np.shape(x)[0] if np.ndim(x) else None, mesh)
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))


def replicate(tree, mesh: Mesh):
    """A pytree with every leaf replicated on ``mesh`` (``None`` mesh: unchanged)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_model(model: Denoiser, mesh: Mesh | None) -> Denoiser:
    """``model`` on ``mesh``: per-sample condition rows split along ``"batch"`` like the samples,
    everything else (parameters, noise process, shared conditions) replicated."""
    if mesh is None:
        return model
    b = condition_batch(model)
    if b is not None:
        _check_divisible(b, mesh, "condition batch")
    split = NamedSharding(mesh, PartitionSpec("batch"))
    placed = replicate(model, mesh)

    def put(leaf):
        return jax.device_put(jnp.asarray(leaf), split) if _is_row(leaf, b) else leaf

    return placed.replace(
        cond=jax.tree_util.tree_map(put, placed.cond),
        uncond=jax.tree_util.tree_map(put, placed.uncond),
    )
