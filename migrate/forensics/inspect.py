"""Everything a checkpoint records, for `migrate inspect`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from migrate.adapters.checkpoint import STATS_DUMP, Checkpoint
from migrate.adapters.criu.images import PstreeEntry
from migrate.forensics.rootfs import rootfs_changes
from migrate.forensics.summary import Summary, summarize
from migrate.settings import ArchiveSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InspectOptions:
    """Which parts to read; the summary is always included."""

    ps_tree: bool = False
    ps_tree_cmd: bool = False
    ps_tree_env: bool = False
    stats: bool = False
    mounts: bool = False
    rootfs_diff: bool = False
    require_stats: bool = True
    """With ``stats``: a missing stats-dump is an error (False: the part is left out)."""

    @classmethod
    def everything(cls) -> InspectOptions:
        """What ``--all`` asks for: every part the archive has."""
        return cls(True, True, True, True, True, True, require_stats=False)


@dataclass
class ProcessNode:
    """One process and its children, PIDs as seen inside the container."""

    pid: int
    command: str
    cmdline: str | None = None
    environment: list[str] | None = None
    children: list[ProcessNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: pid, command, cmdline and environment when read, children."""
        out: dict[str, Any] = {"pid": self.pid, "command": self.command}
        if self.cmdline is not None:
            out["cmdline"] = self.cmdline
        if self.environment is not None:
            out["environment"] = self.environment
        out["children"] = [c.to_dict() for c in self.children]
        return out


@dataclass
class Inspection:
    """The summary plus whichever details were asked for."""

    summary: Summary
    hostname: str | None = None
    process_tree: ProcessNode | None = None
    mounts: list[dict[str, str]] | None = None
    rootfs_diff: list[dict[str, Any]] | None = None
    deleted_files: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (schemas/inspect.schema.json)."""
        out = self.summary.to_dict()
        out["hostname"] = self.hostname
        if self.process_tree is not None:
            out["process_tree"] = self.process_tree.to_dict()
        for key in ("mounts", "rootfs_diff", "deleted_files"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _strings(data: bytes) -> list[str]:
    """NUL-separated strings as argv and environ keep them in memory."""
    return [s.decode("utf-8", "backslashreplace") for s in data.split(b"\0") if s]


def _read_blocks(ckpt: Checkpoint, pid: int, opts: InspectOptions, limit: int
                 ) -> tuple[list[str] | None, list[str] | None]:
    """(argv, environment) from memory, each only if asked; None where not dumped.

    The mm image and the pagemap are read once for both blocks.
    """
    mm = ckpt.mm(pid)
    if mm is None:
        return None, None
    memory = None

    def block(which: str, start: int, end: int) -> list[str] | None:
        nonlocal memory
        if end <= start:
            return []
        if end - start > limit:
            log.warning("pid %d: %s block of %d bytes cut to %d", pid, which, end - start, limit)
        memory = memory or ckpt.memory(pid)
        data = ckpt.read_memory(memory, start, min(end - start, limit))
        return None if data is None else _strings(data)

    argv = block("args", mm.arg_start, mm.arg_end) if opts.ps_tree_cmd else None
    env = block("env", mm.env_start, mm.env_end) if opts.ps_tree_env else None
    return argv, env


def process_tree(
    ckpt: Checkpoint, opts: InspectOptions, settings: ArchiveSettings
) -> ProcessNode | None:
    """Build the tree from pstree.img; command names from each core image."""
    entries: dict[int, PstreeEntry] = {}
    for e in ckpt.pstree():
        entries.setdefault(e.pid, e)
    if not entries:
        return None
    nodes: dict[int, ProcessNode] = {}
    for pid in entries:
        node = ProcessNode(pid, ckpt.core(pid).comm)
        if opts.ps_tree_cmd or opts.ps_tree_env:
            argv, node.environment = _read_blocks(ckpt, pid, opts, settings.max_string_bytes)
            if opts.ps_tree_cmd:
                node.cmdline = None if argv is None else " ".join(argv)
        nodes[pid] = node
    roots = [n for pid, n in nodes.items() if entries[pid].ppid not in nodes]
    for pid, node in nodes.items():
        parent = nodes.get(entries[pid].ppid)
        if parent is not None and parent is not node:
            parent.children.append(node)
    if len(roots) != 1:
        log.warning("process tree has %d roots; showing pid %d", len(roots), roots[0].pid)
    return roots[0] if roots else None


def mounts(ckpt: Checkpoint) -> list[dict[str, str]]:
    """The container's mounts from spec.dump."""
    return [
        {
            "destination": m.get("destination", ""),
            "type": m.get("type", ""),
            "source": m.get("source", ""),
        }
        for m in ckpt.spec.get("mounts", [])
    ]


def inspect(ckpt: Checkpoint, opts: InspectOptions, settings: ArchiveSettings) -> Inspection:
    """Read the parts of the checkpoint ``opts`` asks for."""
    want_stats = opts.stats and (opts.require_stats or ckpt.archive.has(STATS_DUMP))
    result = Inspection(summary=summarize(ckpt, with_stats=want_stats), hostname=ckpt.hostname())
    if opts.ps_tree or opts.ps_tree_cmd or opts.ps_tree_env:
        result.process_tree = process_tree(ckpt, opts, settings)
    if opts.mounts:
        result.mounts = mounts(ckpt)
    if opts.rootfs_diff:
        result.rootfs_diff, result.deleted_files = rootfs_changes(ckpt)
    return result
