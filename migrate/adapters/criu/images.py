"""CRIU image files: framing, magics and the messages the forensic commands read.

An image (v1.1) starts with a u32 "first" magic (common or service), then the
type magic, then entries, each a little-endian u32 size followed by that many
bytes of protobuf. ``inventory.img`` and v1.0 images have only the type magic.
Raw memory (``pages-N.img``) has no framing at all.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from migrate.adapters.criu.wire import Field, Schema, TooManyItems, WireError, decode

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
    "IDS": 0x54432030,
    "FS": 0x51403912,
    "REMAP_FPATH": 0x59133954,
    "CREDS": 0x54023547,
    "MNTS": 0x55563928,
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


def iter_entries(data: bytes, expected: str) -> Iterator[memoryview]:
    """Check the magic is ``expected`` and yield each entry's protobuf bytes, one at a time.

    Lazily: an image of 60 MiB can frame millions of entries, and a caller
    that needs one entry, or refuses past a bound, never pays for the rest.
    """
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
    index = 0
    while pos < len(view):
        if len(view) - pos < 4:
            raise ImageError(f"entry {index} has a truncated size field")
        (size,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if size > len(view) - pos:
            raise ImageError(
                f"entry {index} declares {size} bytes but only {len(view) - pos} remain"
            )
        yield view[pos : pos + size]
        pos += size
        index += 1


def decode_entries(data: bytes, expected: str, schema: Schema) -> Iterator[dict[str, Any]]:
    """Decode the entries of an image with one schema, lazily."""
    for raw in iter_entries(data, expected):
        try:
            yield decode(raw, schema)
        except WireError as e:
            raise ImageError(f"holds a malformed {expected} entry ({e})") from e


def _first(data: bytes, expected: str, schema: Schema, what: str, *,
           only: bool = True) -> dict[str, Any]:
    """The first entry of an image; with ``only``, the image must hold exactly one."""
    entries = decode_entries(data, expected, schema)
    first = next(entries, None)
    if first is None:
        raise ImageError(f"has no {what} entry")
    if only and next(entries, None) is not None:
        raise ImageError(f"has more than one {what} entry")
    return first


def _require(entry: dict[str, Any], what: str, *keys: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ImageError(f"{what} lacks required field(s) {', '.join(missing)}")


@dataclass(frozen=True, slots=True)
class PstreeEntry:
    """One process of the checkpointed tree (PIDs as seen inside its namespace)."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]


def _too_many(what: str, tasks: int) -> ImageError:
    return ImageError(f"lists more than {tasks} {what}, but the archive holds {tasks} core "
                      "images (CRIU writes one per task)")


def parse_pstree(data: bytes, max_tasks: int | None = None) -> list[PstreeEntry]:
    """Decode ``pstree.img``.

    ``max_tasks`` is how many tasks the archive can describe: CRIU writes one
    ``core-<tid>.img`` per task (thread), so the processes, and the threads
    they list together, are at most that many. None bounds them by the image
    size only (for tests and tools reading a lone image).
    """
    out: list[PstreeEntry] = []
    threads = 0
    for raw in iter_entries(data, "PSTREE"):
        if max_tasks is not None and len(out) >= max_tasks:
            raise _too_many("processes", max_tasks)
        room = None if max_tasks is None else max_tasks - threads
        try:
            e = decode(raw, PSTREE, max_repeated=room)
        except TooManyItems:
            raise _too_many("threads", max_tasks or 0) from None
        except WireError as err:
            raise ImageError(f"holds a malformed PSTREE entry ({err})") from err
        _require(e, "a pstree entry", "pid", "ppid")
        threads += len(e.get("threads", ()))
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
    entry = _first(data, "CORE", CORE, "core")
    tc = entry.get("tc")
    if tc is None:
        raise ImageError("has no task_core (tc) entry")
    _require(tc, "task_core", "comm")
    return TaskCore(comm=tc["comm"], task_state=tc.get("task_state", 0),
                    mtype=entry.get("mtype", 0))


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


def iter_pagemap(data: bytes) -> tuple[int, Iterator[PagemapEntry]]:
    """Decode ``pagemap-<pid>.img``: (pages_id, entries in pages-file order, lazily).

    The head is checked at once; each entry is decoded only when the caller
    asks for it, so a huge pagemap never sits in memory as a list.
    """
    raw = iter_entries(data, "PAGEMAP")
    first = next(raw, None)
    if first is None:
        raise ImageError("has no pagemap_head entry")
    try:
        head = decode(first, PAGEMAP_HEAD)
    except WireError as e:
        raise ImageError(f"holds a malformed PAGEMAP entry ({e})") from e
    _require(head, "pagemap_head", "pages_id")
    return head["pages_id"], _pagemap_entries(raw)


def _pagemap_entries(raw: Iterator[memoryview]) -> Iterator[PagemapEntry]:
    for r in raw:
        try:
            entry = decode(r, PAGEMAP_ENTRY)
        except WireError as e:
            raise ImageError(f"holds a malformed PAGEMAP entry ({e})") from e
        _require(entry, "a pagemap entry", "vaddr")
        nr = entry.get("nr_pages", entry.get("compat_nr_pages"))
        if nr is None:
            raise ImageError("a pagemap entry lacks nr_pages")
        # Before the flags field existed, a run was present unless in_parent.
        flags = entry.get("flags", PE_PARENT if entry.get("in_parent") else PE_PRESENT)
        if entry.get("in_parent"):
            flags |= PE_PARENT
        yield PagemapEntry(entry["vaddr"], nr, flags)


def parse_pagemap(data: bytes) -> tuple[int, list[PagemapEntry]]:
    """Decode ``pagemap-<pid>.img`` whole: (pages_id, entries in pages-file order)."""
    pages_id, entries = iter_pagemap(data)
    return pages_id, list(entries)


@dataclass(frozen=True)
class MmRanges:
    """Where a process keeps its argv and environment in memory."""

    arg_start: int
    arg_end: int
    env_start: int
    env_end: int


def parse_mm(data: bytes) -> MmRanges:
    """Decode ``mm-<pid>.img`` (one entry)."""
    e = _first(data, "MM", MM, "mm")
    _require(e, "mm_entry", "mm_arg_start", "mm_arg_end", "mm_env_start", "mm_env_end")
    return MmRanges(e["mm_arg_start"], e["mm_arg_end"], e["mm_env_start"], e["mm_env_end"])


def parse_utsns(data: bytes) -> tuple[str, str]:
    """Decode ``utsns-<id>.img``: (nodename, domainname)."""
    entry = _first(data, "UTSNS", UTSNS, "utsns", only=False)
    return entry.get("nodename", ""), entry.get("domainname", "")


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
    entry = next(decode_entries(data, "STATS", STATS), None)
    if entry is None or "dump" not in entry:
        raise ImageError("holds no dump statistics")
    dump: dict[str, int] = entry["dump"]
    _require(dump, "dump statistics", *DUMP_STAT_KEYS)
    return dump
