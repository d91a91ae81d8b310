"""Find checkpoint archives in directories (`migrate list`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.adapters.checkpoint import Checkpoint
from migrate.errors import MigrateError, NotFoundError
from migrate.forensics.summary import summarize
from migrate.settings import ArchiveSettings


@dataclass(frozen=True)
class Entry:
    """One archive found on disk."""

    namespace: str
    pod_name: str
    container_name: str
    engine: str
    checkpointed: str
    archive: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Catalog:
    """Archives found, and those that could not be read (with the reason)."""

    entries: list[Entry]
    unreadable: list[tuple[str, str]]


def find_archives(dirs: Iterable[Path]) -> list[Path]:
    """``checkpoint-*.tar`` files (maybe compressed: ``.tar.gz``, ...) directly in each
    directory, sorted by name."""
    found: list[Path] = []
    for d in dirs:
        if not d.is_dir():
            raise NotFoundError(
                f"{d}: no such directory",
                hint="pass the directory holding checkpoint-*.tar archives "
                "(the kubelet writes them to /var/lib/kubelet/checkpoints)",
            )
        found.extend(sorted(p for p in d.glob("checkpoint-*.tar*") if p.is_file()))
    return found


def catalog(dirs: Iterable[Path], settings: ArchiveSettings) -> Catalog:
    """Summarize every archive; one unreadable archive does not hide the others."""
    entries, bad = [], []
    for path in find_archives(dirs):
        try:
            with Checkpoint(path, settings) as ckpt:
                s = summarize(ckpt)
        except MigrateError as e:
            bad.append((str(path), e.message))
            continue
        entries.append(
            Entry(s.namespace, s.pod_name, s.container_name, s.engine, s.checkpointed, str(path))
        )
    return Catalog(entries, bad)
