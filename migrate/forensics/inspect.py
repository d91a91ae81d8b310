"""Everything a checkpoint records, for `migrate inspect`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from migrate.adapters.checkpoint import STATS_DUMP, Checkpoint
from migrate.adapters.criu.pstree import ProcessTree
from migrate.forensics.openfiles import ProcessFiles, open_files
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
    files: bool = False
    sockets: bool = False
    require_files: bool = True
    """With ``files``/``sockets``: a dump without files.img is an error (False: left out)."""

    @classmethod
    def everything(cls) -> InspectOptions:
        """What ``--all`` asks for: every part the archive has."""
        return cls(True, True, True, True, True, True, require_stats=False, files=True,
                   sockets=True, require_files=False)

    @property
    def tree(self) -> bool:
        """Whether the process tree is shown: asked for, or carrying files or sockets."""
        return (self.ps_tree or self.ps_tree_cmd or self.ps_tree_env or self.files
                or self.sockets)


@dataclass
class ProcessNode:
    """One process and its children, PIDs as seen inside the container."""

    pid: int
    command: str
    cmdline: str | None = None
    environment: list[str] | None = None
    children: list[ProcessNode] = field(default_factory=list)

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": self.pid, "command": self.command}
        if self.cmdline is not None:
            out["cmdline"] = self.cmdline
        if self.environment is not None:
            out["environment"] = self.environment
        out["children"] = []
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form: pid, command, cmdline and environment when read, children.

        Built with an explicit stack: a chain of processes is as deep as the
        archive makes it, far past Python's recursion limit.
        """
        root = self._fields()
        stack = [(self, root)]
        while stack:
            node, out = stack.pop()
            for child in node.children:
                child_out = child._fields()
                out["children"].append(child_out)
                stack.append((child, child_out))
        return root


@dataclass
class Inspection:
    """The summary plus whichever details were asked for."""

    summary: Summary
    hostname: str | None = None
    process_tree: ProcessNode | None = None
    mounts: list[dict[str, str]] | None = None
    rootfs_diff: list[dict[str, Any]] | None = None
    deleted_files: list[str] | None = None
    open_files: list[ProcessFiles] | None = None
    """Per live process, with ``files`` and/or ``sockets`` filled as asked."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (schemas/inspect.schema.json)."""
        out = self.summary.to_dict()
        out["hostname"] = self.hostname
        if self.process_tree is not None:
            out["process_tree"] = self.process_tree.to_dict()
        for key in ("mounts", "rootfs_diff", "deleted_files"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        procs = self.open_files or []
        if any(p.files is not None for p in procs):
            out["files"] = [{"pid": p.pid, "command": p.command, "cwd": p.cwd, "root": p.root,
                             "open_files": [f.to_dict() for f in p.files or []]}
                            for p in procs]
        if any(p.sockets is not None for p in procs):
            out["sockets"] = [{"pid": p.pid, "command": p.command,
                               "open_sockets": [s.to_dict() for s in p.sockets or []]}
                              for p in procs]
        return out


class _StringBudget:
    """What the argv and environment strings of the whole tree may take (bytes, estimated).

    Each block is cut at ``max_string_bytes``, but a tree can hold as many
    processes as the archive has core images, and a block of one-letter
    strings takes ~30 times its size as Python strings; so every string is
    charged its length plus `OVERHEAD`, and what does not fit is left out.
    """

    OVERHEAD = 64

    def __init__(self, total: int) -> None:
        self.total, self.left, self.cut = total, total, False

    def take(self, pid: int, which: str, data: bytes) -> list[str]:
        out = []
        for raw in data.split(b"\0"):
            if not raw:
                continue
            cost = len(raw) + self.OVERHEAD
            if cost > self.left:
                if not self.cut:
                    log.warning("pid %d: %s and all later command lines and environments are "
                                "cut: their strings exceed the %d-byte budget", pid, which,
                                self.total)
                self.cut, self.left = True, 0
                break
            self.left -= cost
            out.append(raw.decode("utf-8", "backslashreplace"))
        return out


def _read_blocks(ckpt: Checkpoint, pid: int, opts: InspectOptions, settings: ArchiveSettings,
                 budget: _StringBudget) -> tuple[list[str] | None, list[str] | None]:
    """(argv, environment) from memory, each only if asked; None where not dumped.

    The mm image and the pagemap are read once for both blocks.
    """
    mm = ckpt.mm(pid)
    if mm is None:
        return None, None
    memory = None
    limit = settings.max_string_bytes

    def block(which: str, start: int, end: int) -> list[str] | None:
        nonlocal memory
        if end <= start:
            return []
        if end - start > limit:
            log.warning("pid %d: %s block of %d bytes cut to %d", pid, which, end - start, limit)
        memory = memory or ckpt.memory(pid)
        data = ckpt.read_memory(memory, start, min(end - start, limit))
        return None if data is None else budget.take(pid, which, data)

    argv = block("args", mm.arg_start, mm.arg_end) if opts.ps_tree_cmd else None
    env = block("env", mm.env_start, mm.env_end) if opts.ps_tree_env else None
    return argv, env


def process_tree(
    ckpt: Checkpoint, tree: ProcessTree | None, opts: InspectOptions, settings: ArchiveSettings
) -> ProcessNode | None:
    """Build the tree from pstree.img; command names from each core image.

    pstree.img must hold one consistent tree (`Checkpoint.process_tree`
    refuses anything else), so every process it lists is shown.
    """
    if tree is None:
        return None
    budget = _StringBudget(settings.max_strings_total_bytes)
    nodes: dict[int, ProcessNode] = {}
    for entry, _depth in tree.walk():  # parents before children
        node = ProcessNode(entry.pid, ckpt.core(entry.pid).comm)
        if opts.ps_tree_cmd or opts.ps_tree_env:
            argv, node.environment = _read_blocks(ckpt, entry.pid, opts, settings, budget)
            if opts.ps_tree_cmd:
                node.cmdline = None if argv is None else " ".join(argv)
        if entry.ppid in nodes:
            nodes[entry.ppid].children.append(node)
        nodes[entry.pid] = node
    return nodes[tree.root.pid]


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
    if opts.tree:
        tree = ckpt.process_tree()
        result.process_tree = process_tree(ckpt, tree, opts, settings)
        if (opts.files or opts.sockets) and tree is not None and (
                opts.require_files or ckpt.has_files()):
            result.open_files = open_files(ckpt, tree, settings, files=opts.files,
                                           sockets=opts.sockets)
    if opts.mounts:
        result.mounts = mounts(ckpt)
    if opts.rootfs_diff:
        result.rootfs_diff, result.deleted_files = rootfs_changes(ckpt)
    return result
