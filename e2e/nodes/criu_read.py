"""Read back what a checkpoint's CRIU images hold, as a restore would bring it back:
each process's pid, parent, command name, argv, environment and heap, and how
much other memory was dumped.

A small protobuf reader with the field numbers of CRIU's images/*.proto (the
same ones e2e/archives/criu_encode.py writes), independent of the `migrate` package so
that the node agents never check the tool with the tool's own code. Framing:
a u32 magic (two for "common" and "service" images), then entries of a
little-endian u32 size and that many bytes of protobuf.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

__all__ = ["PAGE", "CriuError", "DumpedProcess", "read_processes"]

PAGE = 4096
_FIRST_MAGICS = (0x54564319, 0x55105940)  # images v1.1: common, service
_PE_PARENT, _PE_PRESENT = 1, 4
Fields = dict[int, list[int | bytes]]


class CriuError(ValueError):
    """A CRIU image is missing or cannot be decoded."""


@dataclass
class DumpedProcess:
    """One process as its images describe it."""

    pid: int
    ppid: int
    comm: str
    state: int
    argv: list[str]
    env: list[str]
    heap: bytes
    """The heap (brk area) without its trailing zero bytes."""
    heap_pages: int
    other_pages: int
    """Dumped pages outside the heap and the argv/environment area."""
    dumped_bytes: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CriuError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode(payload: bytes) -> Fields:
    """Field number -> values (varints as ints, length-delimited as bytes)."""
    out: Fields = {}
    pos = 0
    while pos < len(payload):
        key, pos = _varint(payload, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(payload, pos)
        elif wire == 2:
            size, pos = _varint(payload, pos)
            value, pos = payload[pos:pos + size], pos + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value = int.from_bytes(payload[pos:pos + width], "little")
            pos += width
        else:
            raise CriuError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def entries(image: bytes) -> list[Fields]:
    """The decoded entries of one image file."""
    if len(image) < 4:
        raise CriuError("image too short")
    pos = 8 if struct.unpack_from("<I", image)[0] in _FIRST_MAGICS else 4
    out: list[Fields] = []
    while pos + 4 <= len(image):
        (size,) = struct.unpack_from("<I", image, pos)
        pos += 4
        if pos + size > len(image):
            raise CriuError("truncated image entry")
        out.append(decode(image[pos:pos + size]))
        pos += size
    return out


def _int(fields: Fields, number: int, default: int = 0) -> int:
    value = fields.get(number, [default])[-1]
    return value if isinstance(value, int) else default


def _bytes(fields: Fields, number: int) -> bytes:
    value = fields.get(number, [b""])[-1]
    return value if isinstance(value, bytes) else b""


@dataclass
class _Run:
    vaddr: int
    pages: int
    offset: int | None  # in the pages file; None when not dumped here


class _Memory:
    """A process's dumped memory: runs of pages and where their bytes are."""

    def __init__(self, pagemap: list[Fields], pages: IO[bytes] | None) -> None:
        self.runs: list[_Run] = []
        self.pages = pages
        offset = 0
        for entry in pagemap[1:]:
            count = _int(entry, 5) or _int(entry, 2)
            flags = _int(entry, 4, -1)
            present = bool(flags & _PE_PRESENT) if flags >= 0 else not _int(entry, 3)
            if flags >= 0 and flags & _PE_PARENT:
                present = False
            self.runs.append(_Run(_int(entry, 1), count, offset if present else None))
            if present:
                offset += count * PAGE

    @property
    def dumped_pages(self) -> int:
        return sum(r.pages for r in self.runs if r.offset is not None)

    def pages_within(self, start: int, end: int) -> int:
        """Dumped pages overlapping [start, end)."""
        total = 0
        for run in self.runs:
            if run.offset is None or end <= start:
                continue
            first = max(0, (start - run.vaddr) // PAGE)
            last = min(run.pages, -(-(end - run.vaddr) // PAGE))
            total += max(0, last - first)
        return total

    def read(self, start: int, end: int) -> bytes:
        """Bytes of [start, end): zeros where nothing was dumped."""
        out = bytearray(max(0, end - start))
        for run in self.runs:
            lo, hi = max(start, run.vaddr), min(end, run.vaddr + run.pages * PAGE)
            if run.offset is None or lo >= hi or self.pages is None:
                continue
            self.pages.seek(run.offset + lo - run.vaddr)
            out[lo - start:hi - start] = self.pages.read(hi - lo).ljust(hi - lo, b"\0")
        return bytes(out)


def _strings(blob: bytes) -> list[str]:
    parts = blob.rstrip(b"\0").split(b"\0") if blob.strip(b"\0") else []
    return [p.decode("utf-8", "replace") for p in parts]


def _process(pid: int, ppid: int, member: Callable[[str], bytes | None],
             open_pages: Callable[[str], IO[bytes] | None]) -> DumpedProcess:
    def image(name: str) -> list[Fields]:
        data = member(f"checkpoint/{name}")
        if data is None:
            raise CriuError(f"checkpoint/{name}: missing")
        return entries(data)

    core = image(f"core-{pid}.img")[0]
    tc = decode(_bytes(core, 3))
    mm = image(f"mm-{pid}.img")[0]
    pagemap = image(f"pagemap-{pid}.img")
    pages = open_pages(f"checkpoint/pages-{_int(pagemap[0], 1)}.img") if pagemap else None
    memory = _Memory(pagemap, pages)
    heap_start, heap_end = _int(mm, 6), _int(mm, 7)
    arg_start, env_end = _int(mm, 8), _int(mm, 11)
    stack_pages = memory.pages_within(arg_start - arg_start % PAGE, env_end)
    heap_pages = memory.pages_within(heap_start, heap_end)
    return DumpedProcess(
        pid=pid, ppid=ppid, comm=_bytes(tc, 6).decode("utf-8", "replace"),
        state=_int(tc, 1, 1),
        argv=_strings(memory.read(arg_start, _int(mm, 9))),
        env=_strings(memory.read(_int(mm, 10), env_end)),
        heap=memory.read(heap_start, heap_end).rstrip(b"\0"), heap_pages=heap_pages,
        other_pages=max(0, memory.dumped_pages - heap_pages - stack_pages),
        dumped_bytes=memory.dumped_pages * PAGE,
    )


def read_processes(member: Callable[[str], bytes | None],
                   open_pages: Callable[[str], IO[bytes] | None]) -> list[DumpedProcess]:
    """Every process of the dump, in pstree order.

    member(name): the bytes of an archive member (None if absent);
    open_pages(name): a seekable reader of a pages file (None if absent).
    CriuError when an image is missing or malformed.
    """
    tree = member("checkpoint/pstree.img")
    if tree is None:
        raise CriuError("checkpoint/pstree.img: missing")
    out = []
    for entry in entries(tree):
        out.append(_process(_int(entry, 1), _int(entry, 2), member, open_pages))
    if not out:
        raise CriuError("checkpoint/pstree.img: no processes")
    return out
