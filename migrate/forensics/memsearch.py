"""Process memory: per-process sizes, and streaming search of the pages files.

The search reads each pages file in fixed-size blocks, each with a small overlap
into the next so that matches across a block boundary are found once; memory
use stays bounded by the block size whatever the size of the dump. The next
block is read in a helper thread while one is searched.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

from migrate.adapters.archive import RangeReader
from migrate.adapters.checkpoint import Checkpoint
from migrate.errors import NotFoundError, UsageError
from migrate.settings import ArchiveSettings

log = logging.getLogger(__name__)
_PIDS_SHOWN = 20  # PIDs listed in a hint before "..."


@dataclass(frozen=True)
class ProcessMemoryInfo:
    """One row of the memparse table."""

    pid: int
    command: str
    memory_size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"pid": self.pid, "command": self.command, "memory_size": self.memory_size}


@dataclass(frozen=True)
class Match:
    """One occurrence of the pattern in a process's memory."""

    pid: int
    command: str
    address: int | None  # of the match's first byte
    file: str
    offset: int  # of the match's first byte in the pages file
    match: str  # the matched bytes alone, escaped
    # --context bytes before and after the match, escaped; None without --context (a
    # match at the very start or end of the pages file has "" there).
    before: str | None = None
    after: str | None = None

    @property
    def text(self) -> str:
        """The match with its context around it, as the table shows it."""
        return f"{self.before or ''}{self.match}{self.after or ''}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form; address in hex as memory addresses are read. The match and its
        context are separate fields, so the match's start stays where offset says."""
        return {
            "pid": self.pid,
            "command": self.command,
            "address": None if self.address is None else f"0x{self.address:x}",
            "file": self.file,
            "offset": self.offset,
            "match": self.match,
            "before": self.before,
            "after": self.after,
        }


def escape(data: bytes) -> str:
    """Printable ASCII as is, everything else as ``\\xNN``."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in data)


def _processes(ckpt: Checkpoint, pid: int | None) -> list[tuple[int, str]]:
    pids = sorted({e.pid for e in ckpt.pstree()})
    if pid is not None:
        if pid not in pids:
            shown = ", ".join(map(str, pids[:_PIDS_SHOWN])) or "none"
            more = f", ... ({len(pids)} in all)" if len(pids) > _PIDS_SHOWN else ""
            raise NotFoundError(
                f"{ckpt.label}: no process with PID {pid} in the checkpoint",
                hint=f"PIDs in this checkpoint: {shown}{more}",
            )
        pids = [pid]
    return [(p, ckpt.core(p).comm) for p in pids]


def memory_sizes(ckpt: Checkpoint, pid: int | None = None) -> list[ProcessMemoryInfo]:
    """Mapped memory per process (all pagemap runs, as checkpointctl counts it)."""
    return [
        ProcessMemoryInfo(p, comm, ckpt.memory(p).mapped_bytes) for p, comm in _processes(ckpt, pid)
    ]


@dataclass(frozen=True)
class Pattern:
    """What to look for: literal bytes (fast path) or a compiled bytes regex."""

    regex: re.Pattern[bytes]
    literal: bytes | None = None


def compile_pattern(literal: str | None, regex: str | None) -> Pattern:
    """One search pattern from --search or --search-regex (exactly one is given)."""
    if (literal is None) == (regex is None):
        raise UsageError("give exactly one of --search and --search-regex")
    if literal is not None:
        if not literal:
            raise UsageError("--search needs a non-empty string")
        raw = literal.encode()
        return Pattern(re.compile(re.escape(raw)), raw)
    assert regex is not None
    try:
        return Pattern(re.compile(regex.encode()))
    except re.error as e:
        raise UsageError(
            f"--search-regex {regex!r} is not a valid regular expression: {e}",
            hint="the pattern is Python `re` syntax, matched against raw bytes",
        ) from e


def _blocks(reader: RangeReader, chunk: int,
            overlap: int) -> Iterator[tuple[int, bytearray, int]]:
    """The member as consecutive blocks: (offset, a buffer holding the ``chunk`` bytes
    there and the ``overlap`` bytes after them, how many it holds: fewer at the end).

    While the caller searches one block a helper thread reads the next: the
    kernel's copy in ``pread`` runs without the GIL, so reading and searching
    overlap (they take about as long as each other). Two buffers, reused.
    """
    size = reader.size
    # One block only when nothing lies past the first chunk: `_scan` reports from each
    # block the matches starting in its chunk, so a tail in the overlap needs a block.
    if size <= chunk:
        buf = bytearray(size)
        yield 0, buf, reader.pread_into(buf, 0)
        return
    reader.advise_sequential()
    free: SimpleQueue[bytearray | None] = SimpleQueue()
    ready: SimpleQueue[tuple[int, bytearray, int] | BaseException] = SimpleQueue()
    for _ in range(2):
        free.put(bytearray(chunk + overlap))

    def read_ahead() -> None:
        for offset in range(0, size, chunk):
            buf = free.get()
            if buf is None:
                return
            try:
                ready.put((offset, buf, reader.pread_into(buf, offset)))
            except BaseException as e:  # handed to the searching thread, raised there
                ready.put(e)
                return

    thread = threading.Thread(target=read_ahead, name="memparse-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            offset, buf, n = item
            yield offset, buf, n
            if offset + chunk >= size:
                return
            free.put(buf)
    finally:
        free.put(None)
        thread.join()


def _scan(
    reader: RangeReader, pattern: Pattern, settings: ArchiveSettings
) -> Iterator[tuple[int, int]]:
    """(offset, length) of each match in the member behind ``reader``, in order, once each.

    Blocks overlap by ``len(literal) - 1`` bytes (or the regex window), so a
    match straddling two blocks is seen whole in the earlier one; a match is
    reported from the block where it starts before the overlap region (the
    next block starts there). A literal is found wherever it starts, overlapping
    occurrences included; regex matches do not overlap, as with ``re.finditer``
    over the whole member: the next block resumes after a match that ran into it.
    """
    plain = pattern.literal
    overlap = len(plain) - 1 if plain is not None else settings.regex_window_bytes
    chunk = max(settings.read_chunk_bytes, overlap + 1)
    resume = 0
    for base, block, valid in _blocks(reader, chunk, overlap):
        limit = valid if base + chunk >= reader.size else chunk
        if plain is not None:
            pos = block.find(plain, 0, valid)
            while 0 <= pos < limit:
                yield base + pos, len(plain)
                pos = block.find(plain, pos + 1, valid)
        else:
            view = memoryview(block)[:valid]
            for m in pattern.regex.finditer(view, max(0, resume - base)):
                if m.start() >= limit:
                    break
                if m.end() > m.start():
                    resume = base + m.end()
                    yield base + m.start(), m.end() - m.start()


def search(
    ckpt: Checkpoint,
    pattern: Pattern,
    settings: ArchiveSettings,
    *,
    pid: int | None = None,
    context: int = 0,
) -> Iterator[Match]:
    """Every match of ``pattern`` in the dumped memory, process by process.

    Stops, with a warning, after `ArchiveSettings.max_matches` matches or
    `ArchiveSettings.max_match_text_bytes` characters of match text: a
    one-byte pattern in a dump of zeros would otherwise match billions of times.
    """
    count = chars = 0
    for p, comm in _processes(ckpt, pid):
        mem = ckpt.memory(p)
        scanner = ckpt.archive.open_member(mem.pages_member)
        reader = ckpt.archive.open_member(mem.pages_member)
        name = mem.pages_member.rsplit("/", 1)[-1]
        for offset, length in _scan(scanner, pattern, settings):
            start = max(0, offset - context)
            reader.seek(start)
            raw = reader.read(offset - start + length + context)
            lead = offset - start
            before, after = ((escape(raw[:lead]), escape(raw[lead + length:])) if context
                             else (None, None))
            found = escape(raw[lead:lead + length])
            chars += len(found) + len(before or "") + len(after or "")
            count += 1
            if count > settings.max_matches or chars > settings.max_match_text_bytes:
                log.warning("stopped after %d matches: more would exceed the limit of %d "
                            "matches or %d characters of match text; narrow the search "
                            "(--pid, a longer pattern, less --context)", count - 1,
                            settings.max_matches, settings.max_match_text_bytes)
                return
            yield Match(p, comm, mem.address_of(offset), name, offset, found, before,
                        after)
