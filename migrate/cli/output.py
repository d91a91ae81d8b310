"""Render results: human tables and trees, or JSON/YAML with stable keys.

Much of what is printed comes from untrusted archives or cluster objects: a
member name can hold a newline that forges an output line (``error: none``)
or an escape sequence that clears the screen. So control characters are
escaped here, once, at the output boundary: table cells, tree labels, human
text, one-line notes on stderr (and, in app.py, error lines and log records,
through `printable`). JSON and YAML stay valid and keep the values exact,
with the same characters escaped in their own syntax.

Nothing here recurses: a process tree is as deep as the archive makes it.
Past `MAX_DRAWN_DEPTH` levels, trees and JSON stop indenting further, so the
output grows with the number of nodes, not with their depth squared.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from typing import Any

import typer


class Format(StrEnum):
    """Output formats of listing commands."""

    table = "table"
    json = "json"
    yaml = "yaml"


class ListFormat(StrEnum):
    """Output formats of lists whose items have names (kubectl's ``-o name``)."""

    table = "table"
    json = "json"
    yaml = "yaml"
    name = "name"


class TreeFormat(StrEnum):
    """Output formats of tree views."""

    tree = "tree"
    json = "json"


MAX_DRAWN_DEPTH = 64
"""Levels a tree or JSON document is indented by at most; deeper levels are marked instead."""

# What a terminal would act on rather than show: C0 controls (newline, ESC...),
# DEL and C1 controls (0x9b is CSI on some terminals), the Unicode line and
# paragraph separators, the bidirectional marks, embeddings, overrides and
# isolates that reorder what follows them, and lone surrogates (undecodable
# file names), which cannot even be encoded for output.
_CONTROLS = "\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[\x00-\x1f{_CONTROLS}]")
_UNSAFE_IN_TEXT = re.compile(f"[\x00-\x09\x0b-\x1f{_CONTROLS}]")  # newline allowed
_UNSAFE_IN_JSON = re.compile(f"[{_CONTROLS}]")  # json.dumps escapes the C0 ones itself
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(m: re.Match[str]) -> str:
    ch = m.group()
    code = ord(ch)
    return _NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


#: How the user called the tool: ``migrate``, or ``kubectl migrate`` (the kubectl plugin).
#: Set once by the CLI boundary (app.run); the commands hints quote are written for it.
PROGRAM: contextvars.ContextVar[str] = contextvars.ContextVar("program", default="migrate")
_COMMAND = re.compile(r"(?<=[`'])migrate (?=[a-z-])")


def as_invoked(text: str) -> str:
    """``text`` with the commands it quotes (`` `migrate resume ID` ``, ``'migrate pod
    --help'``) spelled the way the user runs the tool."""
    program = PROGRAM.get()
    return text if program == "migrate" else _COMMAND.sub(program + " ", text)


def printable(text: str) -> str:
    """``text`` as one line safe for a terminal: control characters as ``\\n``, ``\\x1b``...

    Backslashes are left alone, so text already escaped (memparse matches)
    prints as it is.
    """
    return _UNSAFE.sub(_escaped, text)


def printable_text(text: str) -> str:
    """Like `printable`, for text of several lines: newlines are kept."""
    return _UNSAFE_IN_TEXT.sub(_escaped, text)


def say(line: str) -> None:
    """One line to stderr for a human (a note, a warning, a progress step), escaped."""
    typer.echo(printable(as_invoked(line)), err=True)


class EscapingFormatter(logging.Formatter):
    """Log records as one escaped line each (a traceback, with --debug, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


_LITERALS = {None: "null", True: "true", False: "false"}
# What json.dumps(text, ensure_ascii=False) writes for a string, without its
# per-call set-up: documents of a million values are written value by value.
_json_string = json.encoder.encode_basestring


def _escape_json(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def _json_scalar(value: Any) -> str:
    if type(value) is str:
        return _UNSAFE_IN_JSON.sub(_escape_json, _json_string(value))
    if type(value) is int:
        return str(value)
    if value is None or type(value) is bool:
        return _LITERALS[value]
    return _UNSAFE_IN_JSON.sub(_escape_json, json.dumps(value, ensure_ascii=False))


@functools.lru_cache(maxsize=1024)
def _json_key(key: Any) -> str:
    # As json.dumps: string keys as they are, numbers and literals as their JSON text.
    return _json_scalar(key if isinstance(key, str) else json.dumps(key))


def _json_items(value: dict[Any, Any] | list[Any] | tuple[Any, ...]
                ) -> Iterator[tuple[str | None, Any]]:
    if isinstance(value, dict):
        return ((_json_key(k), v) for k, v in value.items())
    return ((None, v) for v in value)


def to_json(data: Any) -> str:
    """Indented JSON, keys in the order the code builds them (what ``json.dumps(indent=2)``
    prints), control characters escaped, written without recursion.

    Levels deeper than `MAX_DRAWN_DEPTH` are written on the line of their
    parent: still the same JSON, but not quadratic in a deep tree's depth.
    """
    return "".join(json_pieces(data))


_SCALARS = (str, int, bool, type(None))


def _flat_object(value: dict[Any, Any], depth: int) -> str | None:
    """A drawn object of scalars written at once (the usual row of a listing), else None."""
    if not all(type(v) in _SCALARS for v in value.values()):
        return None
    pad = "\n" + "  " * (depth + 1)
    return "{" + ",".join(f"{pad}{_json_key(k)}: {_json_scalar(v)}" for k, v in value.items()
                          ) + "\n" + "  " * depth + "}"


def json_pieces(data: Any) -> Iterator[str]:
    """`to_json`'s text piece by piece, so a large document need never be held as text."""
    # One frame per open container: its remaining items, its closing bracket,
    # its depth, and whether an item was written yet.
    stack: list[tuple[Iterator[tuple[str | None, Any]], str, int, list[bool]]] = []

    def start(value: Any, depth: int) -> str:
        if isinstance(value, dict) and value and depth < MAX_DRAWN_DEPTH:
            flat = _flat_object(value, depth)
            if flat is not None:
                return flat
        if isinstance(value, dict | list | tuple) and value:
            closer = "}" if isinstance(value, dict) else "]"
            stack.append((_json_items(value), closer, depth + 1, [False]))
            return "{" if isinstance(value, dict) else "["
        if isinstance(value, dict):
            return "{}"
        if isinstance(value, list | tuple):
            return "[]"
        return _json_scalar(value)

    yield start(data, 0)
    while stack:
        items, closer, depth, written = stack[-1]
        drawn = depth <= MAX_DRAWN_DEPTH
        item = next(items, None)
        if item is None:
            stack.pop()
            yield ("\n" + "  " * (depth - 1) if drawn else "") + closer
            continue
        key, value = item
        lead = ("," if written[0] else "") + "\n" + "  " * depth if drawn else (
            ", " if written[0] else "")
        written[0] = True
        yield lead + ("" if key is None else key + ": ") + start(value, depth)


def echo_json(data: Any) -> None:
    """Print `to_json` of ``data`` a batch of pieces at a time (see `echo_tree`)."""
    batch: list[str] = []
    for piece in json_pieces(data):
        batch.append(piece)
        if len(batch) == 4096:
            typer.echo("".join(batch), nl=False)
            batch.clear()
    typer.echo("".join(batch))


def _yaml(data: Any) -> str:
    import yaml  # only -o yaml pays for it

    class Dumper(yaml.SafeDumper):
        """Double-quotes any string holding a control character, so YAML escapes it."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = '"' if _UNSAFE.search(value) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    # allow_unicode=False: in a double-quoted scalar PyYAML would otherwise write
    # bidi overrides as they are; escaped, they read back the same.
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=False)


def emit(data: Any, fmt: str, human: Callable[[], str]) -> None:
    """Print ``data`` as JSON/YAML, or call ``human`` for the table/tree text."""
    if fmt == "json":
        echo_json(data)
    elif fmt == "yaml":
        typer.echo(_yaml(data), nl=False)
    else:
        typer.echo(printable_text(as_invoked(human())), nl=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """kubectl-style columns: upper-case headers, left aligned, three spaces apart.

    No rows, no output: the caller says "nothing found" on stderr instead.
    Every cell is one line, control characters escaped.
    """
    if not rows:
        return ""
    cells = [[printable(str(h).upper()) for h in headers],
             *[[printable(str(c)) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines) + "\n"


Node = tuple[str, list[Any]]


def tree_lines(root: Node) -> Iterator[str]:
    """Draw ``(label, [children...])`` with box-drawing branches, labels escaped, line by line.

    Below `MAX_DRAWN_DEPTH` levels, a line keeps only the branches of the
    deepest levels, after ``(+N)`` saying how many are not drawn.
    """
    yield printable(root[0])
    width = 4 * MAX_DRAWN_DEPTH
    # (siblings, index of the next one to draw, branches drawn so far, levels cut)
    stack: list[tuple[list[Node], int, str, int]] = [(root[1], 0, "", 0)]
    while stack:
        siblings, i, prefix, hidden = stack.pop()
        if i >= len(siblings):
            continue
        label, kids = siblings[i]
        last = i == len(siblings) - 1
        mark = f"(+{hidden}) " if hidden else ""
        yield f"{mark}{prefix}{'└── ' if last else '├── '}{printable(label)}"
        stack.append((siblings, i + 1, prefix, hidden))
        below = prefix + ("    " if last else "│   ")
        if len(below) > width:
            below, hidden = below[4:], hidden + 1
        stack.append((kids, 0, below, hidden))


def tree(root: Node) -> str:
    """The whole of `tree_lines`, one string."""
    return "\n".join(tree_lines(root)) + "\n"


def echo_tree(root: Node) -> None:
    """Print a tree a batch of lines at a time: a big one is never held as one string."""
    batch: list[str] = []
    for line in tree_lines(root):
        batch.append(line)
        if len(batch) == 4096:
            typer.echo("\n".join(batch))
            batch.clear()
    if batch:
        typer.echo("\n".join(batch))
