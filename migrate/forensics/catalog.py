"""Find checkpoint archives in directories (`migrate list`)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.adapters.archive import looks_like_checkpoint
from migrate.adapters.checkpoint import Checkpoint, unread
from migrate.errors import InputError, MigrateError, NotFoundError
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
    """Checkpoint archives directly in each directory, sorted by name.

    An archive is found by its content (`looks_like_checkpoint`: a tar, maybe
    gzip- or zstd-compressed, starting with checkpoint members), whatever its
    name; files named as the kubelet names them (``checkpoint-*.tar``, with any
    suffix) are taken too, so that a damaged one is reported rather than missed.
    Hidden files are skipped.
    """
    found: list[Path] = []
    for d in dirs:
        if not d.is_dir():
            raise NotFoundError(
                f"{d}: no such directory",
                hint="pass the directory holding checkpoint archives "
                "(the kubelet writes them to /var/lib/kubelet/checkpoints)",
            )
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            raise InputError(f"{d}: cannot list the directory: {e.strerror}",
                             hint="check the directory's permissions") from e
        for name in names:
            p = d / name
            if name.startswith(".") or not p.is_file():
                continue
            if fnmatch.fnmatchcase(name, "checkpoint-*.tar*") or looks_like_checkpoint(p):
                found.append(p)
    return found


def catalog(dirs: Iterable[Path], settings: ArchiveSettings) -> Catalog:
    """Summarize every archive; one unreadable archive does not hide the others."""
    entries, bad = [], []
    for path in find_archives(dirs):
        try:
            with Checkpoint(path, settings, unread()) as ckpt:
                s = summarize(ckpt)
        except MigrateError as e:
            bad.append((str(path), e.message))
            continue
        entries.append(
            Entry(s.namespace, s.pod_name, s.container_name, s.engine, s.checkpointed, str(path))
        )
    return Catalog(entries, bad)
