"""The package's layers (docs/development.md): a module imports only from its own layer or below.

noise -> denoiser -> batch -> schedules -> solvers -> models -> reference -> objectives ->
optimizers -> evaluation -> optimization / io / export -> demo / cli. Imports inside functions count
too, and no module imports a private name of another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hso_jax"

LAYERS = [
    # __init__ holds __version__ and loads the rest lazily
    ("_startup", "_validate", "_argtypes", "_progress", "_signals", "_lazy", "_files", "__init__"),
    ("noise",),
    ("denoiser",),
    ("batch",),
    ("schedules",),
    ("solvers",),
    ("models",),
    ("reference",),
    ("objectives",),
    ("optimizers",),
    ("evaluation",),
    ("optimization", "io", "_xla_cache", "export"),
    # applications: the command line, the demo and the training script (which lives in models/
    # so that `python -m hso_jax.models.train` reads naturally)
    ("demo", "cli", "__main__", "models.train"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _rank(module: str) -> int:
    """The layer of ``module`` (dotted, relative to the package): its longest listed prefix."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        if name in RANK:
            return RANK[name]
    if parts[-1] == "__init__" and len(parts) > 1:
        return _rank(".".join(parts[:-1]))
    raise AssertionError(f"hso_jax.{module} is in no layer of this test's LAYERS")


def _imports(path: Path):
    """(line, imported module relative to the package, imported names) of every hso_jax import."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    if path.name == "__init__.py":
        package = here[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").split(".")[0] == "hso_jax":
                target = node.module.partition(".")[2]
            else:
                continue
            names = [a.name for a in node.names]
            if not node.module:  # "from . import x": the module x, or a name of the package
                for n in names:
                    sub = ".".join(filter(None, [target, n]))
                    is_module = (PACKAGE / sub.replace(".", "/")).with_suffix(".py").is_file() or (
                        PACKAGE / sub.replace(".", "/")
                    ).is_dir()
                    yield node.lineno, sub if is_module else (target or "__init__"), []
            else:
                yield node.lineno, target, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "hso_jax":
                    yield node.lineno, a.name.partition(".")[2], []


def test_no_module_imports_a_layer_above_it():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _rank(_module(path))
        for line, target, _ in _imports(path):
            if target and _rank(target) > own:
                bad.append(f"hso_jax/{path.relative_to(PACKAGE)}:{line} imports hso_jax.{target}")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    shared = {"_validate", "_signals", "_files", "_xla_cache", "__version__"}
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, target, names in _imports(path):
            for n in names:
                if n.startswith("_") and n not in shared:
                    bad.append(f"hso_jax/{path.relative_to(PACKAGE)}:{line} imports {target}.{n}")
    assert not bad, "\n".join(bad)


def _method_names() -> set[str]:
    from hso_jax.optimizers import REGISTRY

    return set(REGISTRY)


def test_optimizers_are_imported_only_from_above():
    """No module below optimizers/ imports it (the registry, the methods and their results
    live there and nowhere lower)."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module(path)
        if _rank(here) >= RANK["optimizers"]:
            continue
        for line, target, _ in _imports(path):
            if target.split(".")[0] == "optimizers":
                bad.append(f"hso_jax/{path.relative_to(PACKAGE)}:{line} imports hso_jax.{target}")
    assert not bad, "\n".join(bad)


def test_the_registry_is_the_one_list_of_methods():
    """No source keeps its own list of methods: a tuple / list / set literal of two or more
    method names anywhere in the package, the benchmarks or the command line is a second list
    that the registry (hso_jax.optimizers.REGISTRY) would not update."""
    names = _method_names()
    roots = [PACKAGE, PACKAGE.parent / "benchmarks"]
    stray = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                    continue
                values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if len(values) >= 2 and len(values) == len(node.elts) and set(values) <= names:
                    stray.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {values}")
    assert not stray, "method lists outside the registry:\n" + "\n".join(stray)
