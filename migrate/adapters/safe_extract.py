"""Extract untrusted tar members without letting any of them escape the target.

Two independent guards: a static check of every member before anything is
written (names, link targets, special files), then tarfile's ``data`` filter
during extraction, which also resolves symlinks already present in the target.
Extracted files are private (0600, directories 0700): a container's files can
hold its secrets.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from migrate.errors import ArchiveError, UnsafeArchiveError

if TYPE_CHECKING:
    from migrate.adapters.archive import Member, RangeReader

_SPECIAL = {"char", "block", "fifo", "other"}


def _escapes(path: str) -> bool:
    norm = posixpath.normpath(path)
    return norm == ".." or norm.startswith("../") or posixpath.isabs(path)


def unsafe_reason(m: Member) -> str | None:
    """Why extracting ``m`` could write outside the target, or None if it cannot."""
    if not m.name or m.name.startswith("/"):
        return "has an absolute path"
    if ".." in m.name.split("/"):
        return "has a '..' path component"
    if m.kind in _SPECIAL:
        return f"is a {m.kind} special file"
    if m.kind == "symlink":
        if posixpath.isabs(m.linkname):
            return f"is a symlink to the absolute path {m.linkname!r}"
        if _escapes(posixpath.join(posixpath.dirname(m.name), m.linkname)):
            return f"is a symlink pointing out of the target ({m.linkname!r})"
    if m.kind == "hardlink" and _escapes(m.linkname):
        return f"is a hard link to {m.linkname!r}, outside the target"
    return None


def check_members(members: Iterable[Member], label: str) -> None:
    """Raise on the first member that could escape; nothing is written."""
    for m in members:
        reason = unsafe_reason(m)
        if reason:
            raise UnsafeArchiveError(
                label,
                f"refusing to extract: {reason}",
                hint="the archive may be crafted; nothing was extracted",
                member=m.name,
            )


def _private(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
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
        raise ArchiveError(label, f"extraction into {dest} failed: {e}") from e
