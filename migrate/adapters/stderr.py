"""What a failed tool said, in one line: the part of its stderr an error message carries."""

from __future__ import annotations

TAIL_CHARS = 500


def tail(stderr: str, chars: int = TAIL_CHARS) -> str:
    """The last lines of ``stderr`` that fit in about ``chars`` characters, joined by `` | ``.

    Tools end with their error; the progress and warnings before it are dropped
    first. A last line longer than that is cut to its end.
    """
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    kept: list[str] = []
    while lines and sum(map(len, kept)) + len(lines[-1]) <= chars:
        kept.insert(0, lines.pop())
    return " | ".join(kept) if kept else (lines[-1][-chars:] if lines else "")
