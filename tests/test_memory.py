"""Process memory: address translation, argv/env from memory, and the streaming search."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate.adapters.archive import RangeReader
from migrate.adapters.checkpoint import Checkpoint
from migrate.adapters.criu.images import (
    PE_LAZY,
    PE_PARENT,
    PE_PRESENT,
    ImageError,
    PagemapEntry,
)
from migrate.adapters.criu.memory import PAGE_SIZE, ProcessMemory
from migrate.forensics import memsearch
from migrate.forensics.memsearch import Pattern, compile_pattern
from migrate.settings import ArchiveSettings

ENTRIES = [
    PagemapEntry(0x10000, 2, PE_PRESENT),
    PagemapEntry(0x50000, 3, PE_PARENT),  # in a parent dump: not in this pages file
    PagemapEntry(0x30000, 1, PE_PRESENT),
]


def test_runs_are_laid_out_in_pagemap_order_skipping_parent_runs() -> None:
    mem = ProcessMemory(2, ENTRIES, 3 * PAGE_SIZE)
    assert mem.stored_bytes == 3 * PAGE_SIZE
    assert mem.mapped_bytes == 6 * PAGE_SIZE
    assert mem.file_ranges(0x10010, 16) == [(0x10, 16)]
    assert mem.file_ranges(0x30000, 8) == [(2 * PAGE_SIZE, 8)]
    assert mem.address_of(2 * PAGE_SIZE + 5) == 0x30005
    assert mem.address_of(PAGE_SIZE + 1) == 0x11001
    assert mem.address_of(3 * PAGE_SIZE) is None


def test_ranges_spanning_runs_and_holes() -> None:
    mem = ProcessMemory(1, [PagemapEntry(0x1000, 1, PE_PRESENT),
                            PagemapEntry(0x2000, 1, PE_PRESENT)], 2 * PAGE_SIZE)
    assert mem.file_ranges(0x1FF0, 32) == [(PAGE_SIZE - 16, 16), (PAGE_SIZE, 16)]
    assert mem.file_ranges(0x2FF0, 32) is None  # runs off the dumped memory
    assert mem.file_ranges(0x500, 4) is None
    assert mem.file_ranges(0x50000, 4) is None  # in the parent run: not here


def test_present_decides_lazy_alone_is_absent_parent_is_elsewhere() -> None:
    """PE_PRESENT decides whether a run is in the pages file, as in CRIU's reader."""
    mem = ProcessMemory(1, [
        PagemapEntry(0x10000, 1, PE_LAZY | PE_PRESENT),  # anonymous memory, as CRIU dumps it
        PagemapEntry(0x20000, 2, PE_LAZY),  # left to a lazy-pages server: nothing stored
        PagemapEntry(0x30000, 1, PE_PRESENT),
        # Never written by CRIU; a crafted image gets CRIU's reading: the pages
        # come from the parent, and the run still takes its space here.
        PagemapEntry(0x40000, 1, PE_PARENT | PE_PRESENT),
        PagemapEntry(0x50000, 1, PE_PRESENT),
    ], 4 * PAGE_SIZE)
    assert mem.stored_bytes == 4 * PAGE_SIZE
    assert mem.mapped_bytes == 6 * PAGE_SIZE
    assert mem.file_ranges(0x10008, 8) == [(8, 8)]
    assert mem.file_ranges(0x20000, 1) is None
    assert mem.file_ranges(0x30000, 4) == [(PAGE_SIZE, 4)]
    assert mem.file_ranges(0x40000, 4) is None
    assert mem.file_ranges(0x50000, 4) == [(3 * PAGE_SIZE, 4)]
    assert mem.address_of(5) == 0x10005
    assert mem.address_of(2 * PAGE_SIZE + 1) is None  # the parent run's space
    assert mem.address_of(3 * PAGE_SIZE + 2) == 0x50002


def test_pagemap_longer_than_pages_file_is_refused() -> None:
    with pytest.raises(ImageError, match=r"points past the end of pages-2.img \(its runs need "
                                         r"12288 bytes, the file holds 8192\)"):
        ProcessMemory(2, ENTRIES, 2 * PAGE_SIZE)


def test_argv_and_environment_come_from_memory(counters_archive: Path) -> None:
    with Checkpoint(counters_archive, ArchiveSettings()) as ckpt:
        mm = ckpt.mm(7)
        assert mm is not None
        argv = ckpt.read_memory(ckpt.memory(7), mm.arg_start, mm.arg_end - mm.arg_start)
    assert argv == b"/usr/bin/python3\0/home/counter/counter.py\0"


def _pages_bytes(archive: Path, member: str) -> bytes:
    with tarfile.open(archive) as tf:
        f = tf.extractfile(member)
        assert f is not None
        return f.read()


def test_search_reports_address_file_and_offset(counters_archive: Path) -> None:
    with Checkpoint(counters_archive, ArchiveSettings()) as ckpt:
        matches = list(memsearch.search(ckpt, compile_pattern("RANDOM_1432_KEY", None),
                                        ArchiveSettings(), context=7))
    assert len(matches) == 1
    m = matches[0]
    assert (m.pid, m.command, m.file) == (7, "counter.py", "pages-2.img")
    data = _pages_bytes(counters_archive, "checkpoint/pages-2.img")
    assert data[m.offset:m.offset + 15] == b"RANDOM_1432_KEY"
    # The heap run follows one stack page in pages-2.img (the parent run is not stored).
    assert m.address == 0x5600_0000_0000 + m.offset - PAGE_SIZE
    # 7 bytes each side, apart from the match: its start is where offset says.
    assert (m.before, m.match, m.after) == ("secret=", "RANDOM_1432_KEY", "\\x00counte")
    assert m.text == "secret=RANDOM_1432_KEY\\x00counte"


def _scan_all(data: bytes, pattern: Pattern, chunk: int, window: int) -> list[tuple[int, int]]:
    path = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    f = path / f"migrate-scan-{id(data)}"
    f.write_bytes(data)
    try:
        import os
        fd = os.open(f, os.O_RDONLY)
        try:
            reader = RangeReader(fd, 0, len(data))
            s = ArchiveSettings(read_chunk_bytes=chunk, regex_window_bytes=window)
            return list(memsearch._scan(reader, pattern, s))
        finally:
            os.close(fd)
    finally:
        f.unlink()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300).map(lambda b: b.replace(b"x", b"ab")),
       needle=st.sampled_from([b"a", b"ab", b"aba", b"abab", b"bb"]),
       chunk=st.integers(1, 17))
def test_literal_scan_equals_naive_search_across_block_boundaries(
        data: bytes, needle: bytes, chunk: int) -> None:
    expected = [(m.start(), len(needle)) for m in re.finditer(b"(?=" + re.escape(needle) + b")",
                                                              data)]
    got = _scan_all(data, Pattern(re.compile(re.escape(needle)), needle), chunk, 8)
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(1, 40))
def test_regex_scan_equals_whole_buffer_regex(data: bytes, chunk: int) -> None:
    rx = re.compile(rb"[a-f]{2,5}")
    expected = [(m.start(), m.end() - m.start()) for m in rx.finditer(data)]
    # With a window at least as long as any match, blocks change nothing.
    assert _scan_all(data, Pattern(rx), chunk, 5) == expected


def test_compile_pattern_errors() -> None:
    from migrate.errors import UsageError
    with pytest.raises(UsageError, match="exactly one of --search and --search-regex"):
        compile_pattern("a", "b")
    with pytest.raises(UsageError, match="not a valid regular expression"):
        compile_pattern(None, "(")
    with pytest.raises(UsageError, match="non-empty"):
        compile_pattern("", None)


def test_regex_match_running_into_the_next_block_is_not_found_again() -> None:
    """'abcde' starts in the first block and runs into the second: re.finditer over the
    whole member resumes after it, and so must the block-wise scan (not at 'bcdef')."""
    rx = re.compile(rb"[a-f]{2,5}")
    data = b"zzzzzabcdefzzz"
    assert _scan_all(data, Pattern(rx), 3, 5) == [(5, 5)]


@settings(max_examples=150, deadline=None)
@given(data=st.lists(st.sampled_from([b"a", b"b", b"c", b"z", b"zz"]), max_size=120)
       .map(b"".join), chunk=st.integers(1, 20))
def test_regex_scan_equals_whole_buffer_regex_on_dense_matches(data: bytes, chunk: int) -> None:
    rx = re.compile(rb"[a-c]{2,4}")
    expected = [(m.start(), m.end() - m.start()) for m in rx.finditer(data)]
    assert _scan_all(data, Pattern(rx), chunk, 4) == expected
