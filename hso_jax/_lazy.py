"""Lazy attributes of a package (PEP 562): submodules and names load on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def attributes(
    package: str, namespace: dict, submodules: tuple[str, ...], objects: dict[str, str]
) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose module globals are ``namespace``:
    ``submodules`` import on access, and each of ``objects`` (name -> submodule) is taken from
    its submodule and then kept in ``namespace``."""

    def __getattr__(name: str):
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        if name in objects:
            value = getattr(importlib.import_module(f".{objects[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
