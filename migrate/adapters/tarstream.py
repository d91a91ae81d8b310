"""Follow a tar's headers as its bytes stream past, to leave big members' data out.

A compressed archive is decompressed into a temporary file that the reader
then indexes like any tar. A command that never reads the memory pages (show,
list, memparse without --search, ...) need not have them written: `TarHoles`
reads each header as the decompressed bytes go by and names the byte ranges
that are the data of members to leave out; the copy seeks over them, leaving
holes (a sparse file: no disk, no page cache), so every offset stays as in
the tar and the reader's index and checks are unchanged.

Only headers are parsed, and only as far as needed to name a member: ustar
names and prefixes, GNU long names and pax ``path`` records. Anything
unexpected (a bad checksum, a huge metadata record) ends the walk and the
rest is kept whole. The reader afterwards checks every hole against its own
index (`CheckpointArchive`), so a walk misled by a crafted header is refused,
never trusted.
"""

from __future__ import annotations

from collections.abc import Callable

BLOCK = 512
_MAX_META = 1024 * 1024  # longest GNU long name or pax record followed
_REGULAR = (b"0", b"\0", b"7")
_META = (b"L", b"K", b"x", b"g")


def _number(field: bytes) -> int | None:
    """A tar numeric field: octal text, or base-256 when its first byte has 0x80 set."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return None


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == unsigned


def _pax(records: bytes) -> tuple[str | None, int | None]:
    """The ``path`` and ``size`` of a pax extended header's ``LEN key=value\\n`` records."""
    path, size, pos = None, None, 0
    while pos < len(records):
        space = records.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(records[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        key, _, value = records[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        elif key == b"size" and value.isdigit():
            size = int(value)
        pos += length
    return path, size


class TarHoles:
    """Byte ranges of a tar stream to leave out: data of regular files ``skip`` names.

    Feed the stream in order; each `feed` returns the ranges of that piece
    (relative to it) to leave out. ``holes`` lists every range left out, as
    (stream offset, length, member name), for the reader to check.
    """

    def __init__(self, skip: Callable[[str], bool], min_size: int = 1024 * 1024) -> None:
        self._skip, self._min = skip, min_size
        self._pos = 0  # stream offset of the next byte fed
        self._next = 0  # stream offset of the record being collected
        self._need = BLOCK  # bytes of that record: a header, or a header and its metadata
        self._buf = bytearray()
        self._hole_end = 0
        self._long_name: str | None = None
        self._long_size: int | None = None  # a pax size, for the next member
        self._done = False
        self.holes: list[tuple[int, int, str]] = []

    def feed(self, data: bytes | memoryview) -> list[tuple[int, int]]:
        view = memoryview(data).cast("B")
        start, end = self._pos, self._pos + len(view)
        out: list[tuple[int, int]] = []
        cur = start
        while cur < end and not self._done:
            if cur < self._hole_end:
                stop = min(self._hole_end, end)
                out.append((cur - start, stop - start))
                cur = stop
            elif cur < self._next:  # data of a member kept
                cur = min(self._next, end)
            else:
                take = min(self._need - len(self._buf), end - cur)
                self._buf += view[cur - start:cur - start + take]
                cur += take
                if len(self._buf) == self._need:
                    self._record(bytes(self._buf))
        self._pos = end
        return out

    def _record(self, record: bytes) -> None:
        header = record[:BLOCK]
        if len(record) > BLOCK:  # a header and its metadata payload, collected whole
            size = _number(header[124:136]) or 0
            payload = record[BLOCK:BLOCK + size]
            if header[156:157] == b"L":
                self._long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif header[156:157] == b"x":
                path, long_size = _pax(payload)
                self._long_name = path or self._long_name
                self._long_size = long_size if long_size is not None else self._long_size
            self._advance(len(record))
            return
        if not any(header) or not _checksum_ok(header):
            self._done = True  # the end marker, or something the reader will judge
            return
        field, kind = _number(header[124:136]), header[156:157]
        if field is None:
            self._done = True
            return
        size = field
        padded = -(-size // BLOCK) * BLOCK
        if kind in _META:
            if padded > _MAX_META:
                self._done = True
            elif padded:
                self._need = BLOCK + padded
            else:
                # An empty record names nothing; collecting "its payload" would be the
                # same header again, forever.
                self._advance(BLOCK)
            return
        name, self._long_name = self._long_name or _ustar_name(header), None
        if self._long_size is not None:
            size, self._long_size = self._long_size, None
            padded = -(-size // BLOCK) * BLOCK
        data = self._next + BLOCK
        if kind in _REGULAR and size >= self._min and self._skip(normalize(name)):
            self._hole_end = data + size
            self.holes.append((data, size, normalize(name)))
        self._advance(BLOCK + padded)

    def _advance(self, length: int) -> None:
        self._next += length
        self._need = BLOCK
        self._buf.clear()


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar has a prefix field; GNU does not
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def normalize(name: str) -> str:
    """Tar writers differ on ``./`` prefixes and trailing slashes; names without them."""
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")
