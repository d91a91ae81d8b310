"""The container's file-system changes: list them, or extract them safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migrate.adapters.checkpoint import ROOTFS_DIFF, Checkpoint
from migrate.adapters.safe_extract import Rewrite, Target, extraction_target


def rootfs_changes(ckpt: Checkpoint) -> tuple[list[dict[str, Any]], list[str]]:
    """(entries of rootfs-diff.tar as {path, size, type}, deleted paths)."""
    diff = ckpt.rootfs_diff()
    changed = (
        [{"path": m.name, "size": m.size, "type": m.kind} for m in diff.members if m.name]
        if diff
        else []
    )
    return changed, ckpt.deleted_files()


def check_target(dest: Path) -> Target:
    """Refuse an extraction directory that exists and is not empty, before any reading."""
    return extraction_target(dest)


def extract_changes(ckpt: Checkpoint, target: Target) -> tuple[int, list[Rewrite]]:
    """Write the changed files into ``target``.

    Every entry is checked first; an unsafe one (``..``, absolute, a link out
    of the target, a device) stops the whole extraction before anything is
    written, and any later failure removes what was written. Returns how many
    entries were written and the symlinks whose absolute target (a path in the
    container's root) was written relative, to the same path inside ``target``.
    """
    diff = ckpt.rootfs_diff()
    if diff is None:
        ckpt.archive.member(ROOTFS_DIFF)  # raises the missing-member error
        return 0, []
    written, rewrites = diff.extract(target)
    return len(written), rewrites
