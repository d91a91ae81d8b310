"""Render results: human tables and trees, or JSON/YAML with stable keys."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import typer


class Format(StrEnum):
    """Output formats of listing commands."""

    table = "table"
    json = "json"
    yaml = "yaml"


class TreeFormat(StrEnum):
    """Output formats of tree views."""

    tree = "tree"
    json = "json"


OUTPUT_HELP = "Output format."


def to_json(data: Any) -> str:
    """Indented JSON, keys in the order the code builds them."""
    return json.dumps(data, indent=2, ensure_ascii=False)


def emit(data: Any, fmt: str, human: Callable[[], str]) -> None:
    """Print ``data`` as JSON/YAML, or call ``human`` for the table/tree text."""
    if fmt == "json":
        typer.echo(to_json(data))
    elif fmt == "yaml":
        import yaml  # only -o yaml pays for it

        typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
    else:
        typer.echo(human(), nl=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """kubectl-style columns: upper-case headers, left aligned, three spaces apart.

    No rows, no output: the caller says "nothing found" on stderr instead.
    """
    if not rows:
        return ""
    cells = [[str(h).upper() for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines) + "\n"


Node = tuple[str, list[Any]]


def tree(root: Node) -> str:
    """Draw ``(label, [children...])`` with box-drawing branches."""
    lines = [root[0]]

    def walk(children: list[Node], prefix: str) -> None:
        for i, (label, kids) in enumerate(children):
            last = i == len(children) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label}")
            walk(kids, prefix + ("    " if last else "│   "))

    walk(root[1], "")
    return "\n".join(lines) + "\n"
