"""CRIU image files: framing, magics and the messages the forensic commands read.

An image (v1.1) starts with a u32 "first" magic (common or service), then the
type magic, then entries, each a little-endian u32 size followed by that many
bytes of protobuf. ``inventory.img`` and v1.0 images have only the type magic.
Raw memory (``pages-N.img``) has no framing at all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from migrate.adapters.criu.wire import Field, Schema, WireError, decode

IMG_COMMON = 0x54564319
IMG_SERVICE = 0x55105940

MAGICS: dict[str, int] = {
    "INVENTORY": 0x58313116,
    "PSTREE": 0x50273030,
    "CORE": 0x55053847,
    "PAGEMAP": 0x56084025,
    "MM": 0x57492820,
    "STATS": 0x57093306,
    "UTSNS": 0x54473203,
    "FDINFO": 0x56213732,
    "FILES": 0x56303138,
    "INETSK": 0x56443851,
    "UNIXSK": 0x54373943,
}
_NAMES = {v: k for k, v in MAGICS.items()}


class ImageError(ValueError):
    """An image file is malformed; the message says how (the caller names the file)."""


PSTREE: Schema = {
    1: Field("pid", "uint"),
    2: Field("ppid", "uint"),
    3: Field("pgid", "uint"),
    4: Field("sid", "uint"),
    5: Field("threads", "uint", repeated=True),
}
TASK_CORE: Schema = {
    1: Field("task_state", "uint"),
    2: Field("exit_code", "uint"),
    3: Field("personality", "uint"),
    4: Field("flags", "uint"),
    6: Field("comm", "string"),
}
CORE: Schema = {1: Field("mtype", "uint"), 3: Field("tc", "message", message=TASK_CORE)}
PAGEMAP_HEAD: Schema = {1: Field("pages_id", "uint")}
# CRIU 4.2 turned field 2 into compat_nr_pages (u32, still required, written as
# 0) and added a u64 nr_pages as field 5; 4.1.1 and older write only field 2.
PAGEMAP_ENTRY: Schema = {
    1: Field("vaddr", "uint"),
    2: Field("compat_nr_pages", "uint"),
    3: Field("in_parent", "bool"),
    4: Field("flags", "uint"),
    5: Field("nr_pages", "uint"),
}
MM: Schema = {
    8: Field("mm_arg_start", "uint"),
    9: Field("mm_arg_end", "uint"),
    10: Field("mm_env_start", "uint"),
    11: Field("mm_env_end", "uint"),
}
UTSNS: Schema = {1: Field("nodename", "string"), 2: Field("domainname", "string")}
DUMP_STATS: Schema = {
    n: Field(name, "uint")
    for n, name in enumerate(
        (
            "freezing_time",
            "frozen_time",
            "memdump_time",
            "memwrite_time",
            "pages_scanned",
            "pages_skipped_parent",
            "pages_written",
            "irmap_resolve",
            "pages_lazy",
            "page_pipes",
            "page_pipe_bufs",
            "shpages_scanned",
            "shpages_skipped_parent",
            "shpages_written",
        ),
        start=1,
    )
}
STATS: Schema = {1: Field("dump", "message", message=DUMP_STATS)}

TASK_STATES = {1: "alive", 2: "dead", 3: "stopped", 6: "zombie"}
PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4


def split_entries(data: bytes, expected: str) -> list[memoryview]:
    """Check the magic is ``expected`` and return each entry's protobuf bytes."""
    view = memoryview(data)
    if len(view) < 4:
        raise ImageError("too short to hold a CRIU image magic")
    (magic,) = struct.unpack_from("<I", view, 0)
    pos = 4
    if magic in (IMG_COMMON, IMG_SERVICE):
        if len(view) < 8:
            raise ImageError("ends after its first magic")
        (magic,) = struct.unpack_from("<I", view, 4)
        pos = 8
    if magic != MAGICS[expected]:
        found = _NAMES.get(magic, f"unknown magic 0x{magic:08x}")
        raise ImageError(f"is not a {expected} image ({found})")
    entries: list[memoryview] = []
    while pos < len(view):
        if len(view) - pos < 4:
            raise ImageError(f"entry {len(entries)} has a truncated size field")
        (size,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if size > len(view) - pos:
            raise ImageError(
                f"entry {len(entries)} declares {size} bytes but only {len(view) - pos} remain"
            )
        entries.append(view[pos : pos + size])
        pos += size
    return entries


def decode_entries(data: bytes, expected: str, schema: Schema) -> list[dict[str, Any]]:
    """Decode every entry of an image with one schema."""
    try:
        return [decode(e, schema) for e in split_entries(data, expected)]
    except WireError as e:
        raise ImageError(f"holds a malformed {expected} entry ({e})") from e


def _require(entry: dict[str, Any], what: str, *keys: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ImageError(f"{what} lacks required field(s) {', '.join(missing)}")


@dataclass(frozen=True)
class PstreeEntry:
    """One process of the checkpointed tree (PIDs as seen inside its namespace)."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]


def parse_pstree(data: bytes) -> list[PstreeEntry]:
    """Decode ``pstree.img``."""
    out = []
    for e in decode_entries(data, "PSTREE", PSTREE):
        _require(e, "a pstree entry", "pid", "ppid")
        out.append(
            PstreeEntry(
                e["pid"], e["ppid"], e.get("pgid", 0), e.get("sid", 0), tuple(e.get("threads", ()))
            )
        )
    return out


@dataclass(frozen=True)
class TaskCore:
    """The per-task part of ``core-<tid>.img`` the analysis needs."""

    comm: str
    task_state: int
    mtype: int = 0  # machine type: 1 x86_64, 3 aarch64, ... (0: unknown)

    @property
    def state(self) -> str:
        """Task state as a word (alive, dead, stopped, zombie)."""
        return TASK_STATES.get(self.task_state, f"state {self.task_state}")


def parse_core(data: bytes) -> TaskCore:
    """Decode ``core-<tid>.img`` (one entry)."""
    entries = decode_entries(data, "CORE", CORE)
    if len(entries) != 1:
        raise ImageError(f"has {len(entries)} core entries, expected 1")
    tc = entries[0].get("tc")
    if tc is None:
        raise ImageError("has no task_core (tc) entry")
    _require(tc, "task_core", "comm")
    return TaskCore(comm=tc["comm"], task_state=tc.get("task_state", 0),
                    mtype=entries[0].get("mtype", 0))


@dataclass(frozen=True)
class PagemapEntry:
    """A run of ``nr_pages`` pages from ``vaddr``."""

    vaddr: int
    nr_pages: int
    flags: int

    @property
    def occupies_pages_file(self) -> bool:
        """Whether this run takes its ``nr_pages`` pages in the pages file (PE_PRESENT).

        PE_PRESENT alone decides, as in CRIU's own reader: CRIU flags all
        anonymous private memory PE_LAZY and adds PE_PRESENT when it writes the
        pages (always, unless dumped with --lazy-pages, when lazy runs are left
        to the page server): PE_LAZY alone is absent, PE_LAZY|PE_PRESENT is here.
        """
        return bool(self.flags & PE_PRESENT)

    @property
    def in_pages_file(self) -> bool:
        """Whether this run's data can be read from this dump's pages file.

        A PE_PARENT (or legacy ``in_parent``) run is in the parent image of an
        incremental dump; CRIU never also marks it PE_PRESENT, and where a
        crafted image does, CRIU reads the parent and skips the space here.
        """
        return self.occupies_pages_file and not self.flags & PE_PARENT


def parse_pagemap(data: bytes) -> tuple[int, list[PagemapEntry]]:
    """Decode ``pagemap-<pid>.img``: (pages_id, entries in pages-file order)."""
    raw = split_entries(data, "PAGEMAP")
    if not raw:
        raise ImageError("has no pagemap_head entry")
    try:
        head = decode(raw[0], PAGEMAP_HEAD)
        entries = [decode(r, PAGEMAP_ENTRY) for r in raw[1:]]
    except WireError as e:
        raise ImageError(f"holds a malformed PAGEMAP entry ({e})") from e
    _require(head, "pagemap_head", "pages_id")
    out = []
    for entry in entries:
        _require(entry, "a pagemap entry", "vaddr")
        nr = entry.get("nr_pages", entry.get("compat_nr_pages"))
        if nr is None:
            raise ImageError("a pagemap entry lacks nr_pages")
        # Before the flags field existed, a run was present unless in_parent.
        flags = entry.get("flags", PE_PARENT if entry.get("in_parent") else PE_PRESENT)
        if entry.get("in_parent"):
            flags |= PE_PARENT
        out.append(PagemapEntry(entry["vaddr"], nr, flags))
    return head["pages_id"], out


@dataclass(frozen=True)
class MmRanges:
    """Where a process keeps its argv and environment in memory."""

    arg_start: int
    arg_end: int
    env_start: int
    env_end: int


def parse_mm(data: bytes) -> MmRanges:
    """Decode ``mm-<pid>.img`` (one entry)."""
    entries = decode_entries(data, "MM", MM)
    if len(entries) != 1:
        raise ImageError(f"has {len(entries)} mm entries, expected 1")
    e = entries[0]
    _require(e, "mm_entry", "mm_arg_start", "mm_arg_end", "mm_env_start", "mm_env_end")
    return MmRanges(e["mm_arg_start"], e["mm_arg_end"], e["mm_env_start"], e["mm_env_end"])


def parse_utsns(data: bytes) -> tuple[str, str]:
    """Decode ``utsns-<id>.img``: (nodename, domainname)."""
    entries = decode_entries(data, "UTSNS", UTSNS)
    if not entries:
        raise ImageError("has no utsns entry")
    return entries[0].get("nodename", ""), entries[0].get("domainname", "")


DUMP_STAT_KEYS = (
    "freezing_time",
    "frozen_time",
    "memdump_time",
    "memwrite_time",
    "pages_scanned",
    "pages_written",
)


def parse_stats(data: bytes) -> dict[str, int]:
    """Decode ``stats-dump``: the dump statistics (microseconds and page counts)."""
    entries = decode_entries(data, "STATS", STATS)
    if not entries or "dump" not in entries[0]:
        raise ImageError("holds no dump statistics")
    dump: dict[str, int] = entries[0]["dump"]
    _require(dump, "dump statistics", *DUMP_STAT_KEYS)
    return dump
