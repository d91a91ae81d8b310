"""Extract untrusted tar members without letting any of them escape the target.

Two independent guards: a static check of every member before anything is
written (names, link targets, device nodes), then tarfile's ``data`` filter
during extraction, which also resolves symlinks already present in the target.
Extracted files (and fifos) are private (0600, directories 0700): a
container's files can hold its secrets.
"""

from __future__ import annotations

import copy
import os
import posixpath
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from migrate.errors import ArchiveError, UnsafeArchiveError

if TYPE_CHECKING:
    from migrate.adapters.archive import Member, RangeReader

# Device nodes are refused. A fifo is not: containers make them (Podman records
# them in rootfs-diff.tar), it holds no data and is recreated 0600 at a path
# checked like a regular file's.
_SPECIAL = {"char", "block", "other"}


_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit


class _Escape(Exception):
    """A path resolves outside the extraction directory."""


def _resolve(path: str, links: dict[str, str]) -> str:
    """Where ``path`` (relative to the target) lands once earlier symlinks are followed.

    ``links`` maps symlinks already extracted (resolved location -> link text).
    Raises `_Escape` when the path leaves the target at any step.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not done:
                raise _Escape
            done.pop()
            continue
        here = "/".join([*done, part])
        target = links.get(here)
        if target is None:
            done.append(part)
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS or posixpath.isabs(target):
            raise _Escape
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return "/".join(done)


def _reason(m: Member, links: dict[str, str]) -> str | None:
    """Why extracting ``m`` after the links so far could escape, or None if it cannot."""
    if not m.name or m.name.startswith("/"):
        return "has an absolute path"
    if ".." in m.name.split("/"):
        return "has a '..' path component"
    if m.kind in _SPECIAL:
        return f"is a {m.kind} special file"
    try:
        if m.kind == "symlink":
            # The link itself replaces whatever is at its path; its parent and its
            # target must both stay inside, following the links made before it.
            if posixpath.isabs(m.linkname):
                return f"is a symlink to the absolute path {m.linkname!r}"
            parent = _resolve(posixpath.dirname(m.name), links)
            _resolve(posixpath.join(parent, m.linkname), links)
            links[posixpath.join(parent, posixpath.basename(m.name))] = m.linkname
            return None
        if m.kind == "hardlink":
            _resolve(m.linkname, links)
        _resolve(m.name, links)
    except _Escape:
        if m.kind == "symlink":
            return f"is a symlink pointing out of the target ({m.linkname!r})"
        if m.kind == "hardlink":
            return f"is a hard link to {m.linkname!r}, outside the target"
        return "would be written through a symlink pointing out of the target"
    return None


def check_members(members: Iterable[Member], label: str) -> None:
    """Raise on the first member that could escape; nothing is written.

    Members are checked in order against a model of the tree extraction would
    build, so chains of individually harmless links (``a -> .``, ``b -> a/..``)
    are caught as well.
    """
    links: dict[str, str] = {}
    for m in members:
        reason = _reason(m, links)
        if reason:
            raise UnsafeArchiveError(
                label,
                f"refusing to extract: {reason}",
                hint="the archive may be crafted; nothing was extracted",
                member=m.name,
            )


def _private(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    if member.isfifo():
        # The data filter refuses every special file: check the path as a file's.
        as_file = copy.copy(member)
        as_file.type = tarfile.REGTYPE
        fifo = tarfile.data_filter(as_file, dest).replace(mode=0o600)
        fifo.type = tarfile.FIFOTYPE
        return fifo
    checked = tarfile.data_filter(member, dest)
    if checked.isdir():
        return checked.replace(mode=0o700, deep=False)
    if checked.isreg():
        return checked.replace(mode=0o600, deep=False)
    return checked


def extract_checked(reader: RangeReader, dest: Path, label: str) -> None:
    """Extract the tar behind ``reader`` into ``dest`` (created 0700 if missing)."""
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    reader.seek(0)
    # Parents the tar has no entry for (Podman's rootfs-diff.tar has none) are
    # made by tarfile with the umask's mode: 0700 needs the umask. Extraction
    # runs on the CLI's only thread, so the process-wide change is contained.
    umask = os.umask(0o077)
    try:
        with tarfile.open(fileobj=reader, mode="r:") as tf:
            tf.extractall(dest, filter=_private)
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(
            label,
            f"refusing to extract: {e}",
            hint="a link in the target directory or the archive points outside it",
        ) from e
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(
            label, f"extraction into {dest} failed: {e}",
            hint="check that the directory is writable and the disk has space",
        ) from e
    finally:
        os.umask(umask)
