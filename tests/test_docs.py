"""The documentation builds with warnings as errors, its Python runs, and its links hold.

Every ``python`` block of ``docs/`` runs, page by page in one namespace, with what a user
brings (a network ``fn``, a noise batch) on tiny shapes; a block that starts with
``# needs ...`` (a pipeline's weights) is compiled, not run. The site is built with
``mkdocs build --strict`` (the generated parts, ``docs/hooks.py``, included).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def _blocks(path: Path) -> list[str]:
    return [textwrap.dedent(m.group(2)) for m in _BLOCK.finditer(path.read_text("utf-8"))]


PAGES = sorted(p for p in DOCS.rglob("*.md") if _blocks(p))


def _inputs() -> dict:
    def fn(x, t):  # the eps of a standard Gaussian's process: a network stand-in
        return 0.5 * x

    return {"fn": fn}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_python_blocks_run(page):
    ns = _inputs()
    for i, code in enumerate(_blocks(page)):
        compiled = compile(code, f"{page.name}[{i}]", "exec")
        if code.startswith("# needs"):
            continue
        exec(compiled, ns)


def test_readme_and_docs_links_point_at_files():
    link = re.compile(r"\]\(([^)#:]+\.md)(#[^)]*)?\)")
    bad = []
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for m in link.finditer(page.read_text("utf-8")):
            if not (page.parent / m.group(1)).is_file():
                bad.append(f"{page.relative_to(ROOT)}: {m.group(1)}")
    assert not bad, bad


def test_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "s")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    methods = (tmp_path / "s" / "methods" / "index.html").read_text("utf-8")
    from hso_jax.optimizers import REGISTRY

    assert all(f"<code>{name}</code>" in methods for name in REGISTRY)  # generated table
    results = (tmp_path / "s" / "results" / "index.html").read_text("utf-8")
    assert "bench_hso.md" in results  # the benchmarks' own tables
