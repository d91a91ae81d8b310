"""The process tree ``pstree.img`` describes, checked as CRIU's restore checks it.

CRIU dumps one tree, rooted at the task it was asked to dump: the root is
the one entry with ppid 0, and every other entry's parent is another entry
(criu/pstree.c refuses anything else as "image corruption"). An image that
breaks this was damaged or edited, and no tree drawn from it would be true,
so it is refused with the first inconsistency named, rather than shown with
processes silently dropped or invented. Nothing here recurses: a chain of
processes as long as the archive allows is walked with an explicit stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from migrate.adapters.criu.images import ImageError, PstreeEntry

_SHOWN = 10  # pids named in one error line before "..."


class TreeError(ImageError):
    """The entries do not form one tree; the message names the first inconsistency."""


@dataclass(frozen=True)
class ProcessTree:
    """The checked tree: its root and each process's children in image order."""

    root: PstreeEntry
    children: dict[int, list[PstreeEntry]]

    def walk(self) -> Iterator[tuple[PstreeEntry, int]]:
        """Every process once with its depth (root 0), parents first, children in order."""
        stack = [(self.root, 0)]
        while stack:
            entry, depth = stack.pop()
            yield entry, depth
            stack.extend((c, depth + 1) for c in reversed(self.children.get(entry.pid, ())))


def _pids(pids: Sequence[int], sep: str = ", ") -> str:
    shown = sep.join(map(str, pids[:_SHOWN]))
    return shown if len(pids) <= _SHOWN else f"{shown}{sep}... ({len(pids)} pids)"


def _cycle(start: int, parent: dict[int, int]) -> list[int]:
    """The parent cycle reached from ``start`` (which no root reaches, so one exists)."""
    path: dict[int, int] = {}  # pid -> position on the walk up
    pid = start
    while pid not in path:
        path[pid] = len(path)
        pid = parent[pid]
    return list(path)[path[pid]:]


def build_tree(entries: Sequence[PstreeEntry]) -> ProcessTree | None:
    """Check ``entries`` form one tree rooted at the entry with ppid 0, and index it.

    None when there are no entries at all: nothing to draw, nothing hidden.
    """
    if not entries:
        return None
    parent: dict[int, int] = {}
    children: dict[int, list[PstreeEntry]] = {}
    for e in entries:
        if e.pid == 0:
            raise TreeError("lists pid 0, which no process has")
        if e.pid in parent:
            raise TreeError(f"lists pid {e.pid} twice")
        if e.pid == e.ppid:
            raise TreeError(f"pid {e.pid} is its own parent")
        parent[e.pid] = e.ppid
        if e.ppid:
            children.setdefault(e.ppid, []).append(e)
    roots = [e for e in entries if e.ppid == 0]
    if len(roots) > 1:
        raise TreeError(f"has {len(roots)} root processes (ppid 0: pids "
                        f"{_pids([r.pid for r in roots])}); CRIU writes one")
    orphan = next((e for e in entries if e.ppid and e.ppid not in parent), None)
    if orphan is not None:
        raise TreeError(f"the parent of pid {orphan.pid}, {orphan.ppid}, is not in the dump")
    tree = ProcessTree(roots[0], children) if roots else None
    reached = {e.pid for e, _ in tree.walk()} if tree else set()
    if tree is None or len(reached) < len(parent):
        # Every process has a parent in the dump, yet some are not below the
        # root (or there is none): following parents from one of them must go
        # round in a circle.
        cycle = _cycle(min(set(parent) - reached), parent)
        raise TreeError(f"has a cycle of parents: {_pids([*cycle, cycle[0]], ' -> ')}")
    return tree
