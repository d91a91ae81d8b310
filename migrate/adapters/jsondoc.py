"""The one JSON loader for what archives hold: metadata members and JSON-valued annotations.

Archives are untrusted, and JSON nesting is recursion: the standard decoder
fails deep inside itself (RecursionError) on ``[`` repeated 100,000 times,
and every later consumer that walks the document (jsonschema, our own
accessors, YAML output) recurses again. So nesting is bounded here, once:
the decoder's own failure becomes a `JsonError`, and an iterative walk of the
result refuses anything nested deeper than the limit, so code after this
point may recurse freely.
"""

from __future__ import annotations

import json
from typing import Any


class JsonError(ValueError):
    """The text is not JSON, or nests deeper than allowed; the message says which.

    It reads as the tail of a sentence (``is not valid JSON (...)``); the caller
    names the member or annotation in front of it.
    """


def nesting_error(max_depth: int) -> JsonError:
    """The error for a document nested deeper than ``max_depth``."""
    return JsonError(f"is nested more than {max_depth} levels deep")


def check_depth(doc: Any, max_depth: int) -> None:
    """Refuse ``doc`` if arrays/objects nest deeper than ``max_depth`` (iteratively)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            raise nesting_error(max_depth)
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))


def count_values(data: bytes) -> int:
    """At least how many values a JSON text holds: its commas and opening brackets.

    Counted before parsing, at C speed; brackets and commas inside strings
    count too, so it over-estimates, never under-estimates (but for the one
    top-level scalar).
    """
    return data.count(b",") + data.count(b"[") + data.count(b"{")


def loads(data: bytes | str, max_depth: int, max_values: int | None = None) -> Any:
    """Parse ``data`` as JSON nested at most ``max_depth`` levels, or raise `JsonError`.

    With ``max_values``, a text that may hold more values is refused before
    parsing: parsed, ``[[],[],...]`` takes ~30 times its size.
    """
    if max_values is not None:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        if count_values(raw) > max_values:
            raise JsonError(f"holds more than {max_values} JSON values")
    try:
        doc = json.loads(data)
    except RecursionError:
        # The C decoder gives up near the interpreter's recursion limit (~1000),
        # far past max_depth: the same refusal as the walk below.
        raise nesting_error(max_depth) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise JsonError(f"is not valid JSON ({e})") from e
    check_depth(doc, max_depth)
    return doc
