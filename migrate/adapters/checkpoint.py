"""Typed access to what a checkpoint archive records.

Wraps a `CheckpointArchive` with the CRIU image parsers: each accessor reads
only the members it needs, and every format error comes back as an
`ArchiveError` naming the archive and the member at fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

from migrate.adapters import jsondoc
from migrate.adapters.archive import CheckpointArchive, NestedTar
from migrate.adapters.criu import files as criu_files
from migrate.adapters.criu import images
from migrate.adapters.criu.memory import ProcessMemory
from migrate.adapters.criu.pstree import ProcessTree, TreeError, build_tree
from migrate.errors import ArchiveError
from migrate.settings import ArchiveSettings
from migrate.validation import validate

T = TypeVar("T")

CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
STATS_DUMP = "stats-dump"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
BIND_MOUNTS = "bind.mounts"
NETWORK_STATUS = "network.status"
CRIU_DIR = "checkpoint"
INVENTORY = f"{CRIU_DIR}/inventory.img"

_UTSNS = re.compile(r"^checkpoint/utsns-\d+\.img$")
_CORE = re.compile(r"^checkpoint/core-\d+\.img$")
PSTREE = f"{CRIU_DIR}/pstree.img"
FILES_IMG = f"{CRIU_DIR}/files.img"
REMAP_FPATH = f"{CRIU_DIR}/remap-fpath.img"
_TREE_HINT = ("CRIU dumps one tree of processes, rooted at the task with ppid 0; this "
              "pstree.img was damaged or edited")

ENGINE_CRIO, ENGINE_PODMAN, ENGINE_CONTAINERD = "CRI-O", "Podman", "containerd"
CRIO_ANNOTATIONS = "io.kubernetes.cri-o.Annotations"


@dataclass(frozen=True)
class Identity:
    """Which container this is, read the way checkpointctl reads each engine's archive."""

    engine: str
    container: str
    pod: str
    namespace: str
    pod_uid: str
    created: str
    ip: str


def engine_of(annotations: dict[str, str]) -> str:
    """Which engine wrote the archive: spec.dump's io.container.manager, else containerd."""
    manager = annotations.get("io.container.manager")
    if manager == "cri-o":
        return ENGINE_CRIO
    if manager == "libpod":
        return ENGINE_PODMAN
    return ENGINE_CONTAINERD


_PAGES = re.compile(r"^checkpoint/pages-\d+\.img$")
# Big members no command reads: container logs, Podman's /dev/shm.
_NEVER_READ = frozenset({"ctr.log", "container.log", "io.kubernetes.cri-o.LogPath",
                         "devshm-checkpoint.tar"})


def unread(*, pages: bool = False, rootfs_diff: bool = False) -> Callable[[str], bool]:
    """Which members a command leaves unread, given whether it reads the memory pages and
    rootfs-diff.tar: a compressed archive's decompressed copy need not hold their data."""

    def skip(name: str) -> bool:
        return (name in _NEVER_READ or (not pages and _PAGES.match(name) is not None)
                or (not rootfs_diff and name == ROOTFS_DIFF))

    return skip


class Checkpoint:
    """An opened checkpoint archive; use as a context manager."""

    def __init__(self, path: Path, settings: ArchiveSettings,
                 skip: Callable[[str], bool] | None = None) -> None:
        """``skip``: members the caller will not read (`unread`); None: it may read any."""
        self.archive = CheckpointArchive(path, settings, skip)
        self.label = self.archive.label

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.archive.close()

    def _parse(self, member: str, parser: Callable[[bytes], T]) -> T:
        data = self.archive.read_bytes(member)
        try:
            return parser(data)
        except images.ImageError as e:
            raise ArchiveError(
                self.label, str(e), hint="the CRIU image is corrupt or truncated", member=member
            ) from e

    def _json_member(self, member: str, schema: str) -> dict[str, Any]:
        data = self.archive.read_json(member)
        validate(data, schema, f"{self.label}: {member}")
        result: dict[str, Any] = data
        return result

    @cached_property
    def config(self) -> dict[str, Any]:
        """``config.dump``: the engine's container record."""
        return self._json_member(CONFIG_DUMP, "config-dump.schema.json")

    @cached_property
    def spec(self) -> dict[str, Any]:
        """``spec.dump``: the container's OCI runtime spec."""
        return self._json_member(SPEC_DUMP, "spec-dump.schema.json")

    @property
    def annotations(self) -> dict[str, str]:
        """The OCI spec annotations (engine metadata lives there)."""
        annotations: dict[str, str] = self.spec.get("annotations") or {}
        return annotations

    def annotation_json(self, key: str) -> Any:
        """An annotation whose value is itself JSON; None when absent."""
        raw = self.annotations.get(key)
        if raw is None:
            return None
        try:
            return jsondoc.loads(raw, self.archive.settings.max_json_depth)
        except jsondoc.JsonError as e:
            raise ArchiveError(
                self.label, f"annotation {key} {e}",
                hint="the archive's metadata is damaged; take a new checkpoint", member=SPEC_DUMP
            ) from e

    def identity(self) -> Identity:
        """Container, pod and engine, from each engine's own annotations."""
        a, config = self.annotations, self.config
        engine = engine_of(a)
        created = config.get("createdTime", "")
        uid = a.get("io.kubernetes.pod.uid", "")
        if engine == ENGINE_CRIO:
            meta = self.annotation_json("io.kubernetes.cri-o.Metadata")
            name = meta.get("name", "") if isinstance(meta, dict) else ""
            name = name or a.get("io.kubernetes.container.name", "") or config.get("name", "")
            return Identity(engine, name, a.get("io.kubernetes.pod.name", ""),
                            a.get("io.kubernetes.pod.namespace", ""), uid,
                            a.get("io.kubernetes.cri-o.Created", created),
                            a.get("io.kubernetes.cri-o.IP.0", ""))
        if engine == ENGINE_CONTAINERD:
            return Identity(engine,
                            a.get("io.kubernetes.cri.container-name", "") or config.get("name", ""),
                            a.get("io.kubernetes.cri.sandbox-name", ""),
                            a.get("io.kubernetes.cri.sandbox-namespace", ""), uid, created, "")
        return Identity(engine, config.get("name", ""), "", "", uid, created, self.podman_ips())

    def podman_ips(self) -> str:
        """The container's addresses from Podman's ``network.status``, joined by ", ".

        In checkpointctl's order: networks by name, interfaces by name, subnets
        as listed, prefix lengths dropped. Empty without networks (``null``
        under --network none or host) or without the member.
        """
        if not self.archive.has(NETWORK_STATUS):
            return ""
        data = self.archive.read_json(NETWORK_STATUS)
        validate(data, "network-status.schema.json", f"{self.label}: {NETWORK_STATUS}")
        found: list[str] = []
        if isinstance(data, dict):
            for net in sorted(data):
                interfaces = data[net].get("interfaces") or {}
                for name in sorted(interfaces):
                    subnets = interfaces[name].get("subnets") or []
                    found += [s.get("ipnet", "") for s in subnets]
        elif isinstance(data, list):  # Podman 3: CNI results
            found = [ip.get("address", "") for r in data for ip in r.get("ips") or []]
        return ", ".join(ip.split("/", 1)[0] for ip in found if ip)

    def dump_time(self) -> str:
        """When CRIU dumped, as the tar header of ``inventory.img`` records it (RFC 3339).

        For archives whose config.dump has no ``checkpointedTime`` (Podman's):
        CRIU writes the inventory when the dump starts and the engine keeps its
        time when it packs the archive. Empty when the member is missing or its time
        is not one a dump could have (none, or past what a date can hold).
        """
        m = self.archive.members.get(INVENTORY)
        if m is None or m.kind != "file" or m.mtime <= 0:
            return ""
        try:
            when = datetime.fromtimestamp(m.mtime, UTC)
        except (OverflowError, ValueError, OSError):
            # Past year 9999 (or the platform's time_t): a header's number, not a time.
            return ""
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    def sizes(self) -> tuple[int, int, int]:
        """(CRIU image bytes, of which memory pages, rootfs-diff.tar bytes), from headers."""
        files = list(self.archive.files_under(CRIU_DIR))
        pages = sum(m.size for m in files if m.name.rsplit("/", 1)[-1].startswith("pages-"))
        diff = self.archive.members.get(ROOTFS_DIFF)
        return sum(m.size for m in files), pages, diff.size if diff else 0

    def stats(self) -> dict[str, int] | None:
        """CRIU dump statistics, or None when the archive has no stats-dump."""
        if not self.archive.has(STATS_DUMP):
            return None
        return self._parse(STATS_DUMP, images.parse_stats)

    @cached_property
    def task_images(self) -> int:
        """How many ``core-<tid>.img`` the archive holds: CRIU writes one per task (thread)."""
        return sum(1 for name, m in self.archive.members.items()
                   if m.kind == "file" and _CORE.match(name))

    def pstree(self) -> list[images.PstreeEntry]:
        """The checkpointed processes, at most one per core image (threads likewise)."""
        return self._parse(PSTREE, lambda data: images.parse_pstree(data, self.task_images))

    def process_tree(self) -> ProcessTree | None:
        """The processes as the one tree CRIU dumped; None when pstree.img lists none.

        A pstree.img that is not one tree (a self-parent, a cycle, several
        roots, a parent missing) is refused, naming the first inconsistency.
        """
        try:
            return build_tree(self.pstree())
        except TreeError as e:
            raise ArchiveError(self.label, str(e), hint=_TREE_HINT, member=PSTREE) from e

    def core(self, pid: int) -> images.TaskCore:
        """The task core (command name, state) of ``pid``."""
        return self._parse(f"{CRIU_DIR}/core-{pid}.img", images.parse_core)

    def mm(self, pid: int) -> images.MmRanges | None:
        """argv/env ranges of ``pid``; None for processes without an mm image."""
        member = f"{CRIU_DIR}/mm-{pid}.img"
        return self._parse(member, images.parse_mm) if self.archive.has(member) else None

    def hostname(self) -> str | None:
        """The UTS namespace's host name, when the dump has a UTS image."""
        for name in sorted(self.archive.members):
            if _UTSNS.match(name) and self.archive.has(name):
                return self._parse(name, images.parse_utsns)[0]
        return None

    def memory(self, pid: int) -> ProcessMemory:
        """Address translation for ``pid``'s dumped memory."""
        member = f"{CRIU_DIR}/pagemap-{pid}.img"
        data = self.archive.read_bytes(member)
        try:
            # Entries are decoded while the runs are built, never listed whole:
            # memory follows the runs stored, which the pages file bounds.
            pages_id, entries = images.iter_pagemap(data)
            size = self.archive.member(f"{CRIU_DIR}/pages-{pages_id}.img").size
            return ProcessMemory(pages_id, entries, size)
        except images.ImageError as e:
            raise ArchiveError(
                self.label, str(e), hint="the memory dump is incomplete or corrupt", member=member
            ) from e

    def read_memory(self, mem: ProcessMemory, vaddr: int, length: int) -> bytes | None:
        """Bytes of memory at ``vaddr``, or None when the range was not dumped here."""
        pieces = mem.file_ranges(vaddr, length)
        if pieces is None:
            return None
        reader = self.archive.open_member(mem.pages_member)
        out = bytearray()
        for offset, size in pieces:
            reader.seek(offset)
            out += reader.read(size)
        return bytes(out)

    def rootfs_diff(self) -> NestedTar | None:
        """The tar of changed files, when the archive has one."""
        if not self.archive.has(ROOTFS_DIFF):
            return None
        return self.archive.nested_tar(ROOTFS_DIFF)

    def deleted_files(self) -> list[str]:
        """Paths the container deleted from its image's file system."""
        if not self.archive.has(DELETED_FILES):
            return []
        data = self.archive.read_json(DELETED_FILES)
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ArchiveError(self.label, "is not a JSON list of paths",
                               hint="the archive's metadata is damaged", member=DELETED_FILES)
        return data

    # --- open files (inspect --files / --sockets) ---------------------------------------

    def has_files(self) -> bool:
        """Whether the dump records open files (CRIU >= 3 writes them all to files.img)."""
        return self.archive.has(FILES_IMG)

    def files_id(self, pid: int) -> int:
        """The id of ``pid``'s fd table: ``ids-<pid>.img``, else (older CRIU) the core's ids."""
        member = f"{CRIU_DIR}/ids-{pid}.img"
        if self.archive.has(member):
            return self._parse(member, criu_files.parse_ids_files_id)
        found = self._parse(f"{CRIU_DIR}/core-{pid}.img", criu_files.parse_core_files_id)
        if found is None:
            raise ArchiveError(self.label, f"missing from the archive, and core-{pid}.img "
                               "holds no ids either", hint="the dump is incomplete: CRIU "
                               "records the fd table of every live task", member=member)
        return found

    def fd_table(self, files_id: int, limit: int) -> list[criu_files.FdEntry]:
        """The descriptors of fd table ``files_id``; more than ``limit`` is refused."""
        return self._parse(f"{CRIU_DIR}/fdinfo-{files_id}.img",
                           lambda data: list(criu_files.iter_fdinfo(data, limit)))

    def fs(self, pid: int) -> tuple[int, int]:
        """File ids of ``pid``'s working and root directories."""
        return self._parse(f"{CRIU_DIR}/fs-{pid}.img", criu_files.parse_fs)

    def files(self, wanted: set[int], byteorder: Literal["little", "big"]
              ) -> dict[int, criu_files.FileEntry]:
        """The files.img entries of the ``wanted`` ids, and the path entries of their FIFOs.

        A FIFO's path is a REG entry of its own (``regf_id``), which may come
        before or after it: a second pass reads those not found in the first.
        """
        found = self._parse(FILES_IMG, lambda d: criu_files.collect_files(
            d, wanted, byteorder=byteorder))
        paths = {f.regf_id for f in found.values()
                 if isinstance(f, criu_files.Fifo) and f.regf_id is not None} - found.keys()
        if paths:
            found.update(self._parse(FILES_IMG, lambda d: criu_files.collect_files(
                d, paths, byteorder=byteorder)))
        return found

    def deleted_file_ids(self, wanted: set[int]) -> set[int]:
        """Which ``wanted`` files were open under a name deleted before the dump."""
        if not self.archive.has(REMAP_FPATH):
            return set()
        return self._parse(REMAP_FPATH, lambda d: criu_files.deleted_ids(d, wanted))
