"""MkDocs hooks: the parts of the site that are generated, so that they are never hand-edited.

* ``<!-- registry -->`` (methods.md): the method registry, ``hso_jax.optimizers.REGISTRY``;
* ``<!-- cli-help -->`` (guide/cli.md): every subcommand's ``--help``;
* ``<!-- benchmark-results -->`` (results.md): the benchmarks' Markdown output,
  ``benchmarks/results/*.md``, one section per file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _registry() -> str:
    from hso_jax.optimizers import REGISTRY
    from hso_jax.optimizers.base import names

    rows = ["| method | needs | options | what it is |", "|---|---|---|---|"]
    for name in names():
        m = REGISTRY[name]
        needs = "model, " + ", ".join(f"`{i}`" for i in m.inputs) if m.needs_model else "-"
        opts = ", ".join(f"`{f.name}`" for f in dataclasses.fields(m.options))
        rows.append(f"| `{name}` | {needs} | {opts} | {m.summary} |")
    return "\n".join(rows)


def _cli_help() -> str:
    from hso_jax.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            p.print_help()
        out += [f"## hso-jax {name}", "", "```text", buf.getvalue().rstrip(), "```", ""]
    return "\n".join(out)


def _benchmark_results() -> str:
    out = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        # one level down: the file's title is a section of this page
        lines = ["#" + line if line.startswith("#") else line for line in text.splitlines()]
        out += [*lines, "", f"*Source: `benchmarks/results/{path.name}`.*", ""]
    return "\n".join(out)


_PARTS = {
    "<!-- registry -->": _registry,
    "<!-- cli-help -->": _cli_help,
    "<!-- benchmark-results -->": _benchmark_results,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for mark, make in _PARTS.items():
        if mark in markdown:
            markdown = markdown.replace(mark, make())
    return markdown
