"""Process memory from a dump: pagemap runs mapped onto a pages-N.img file.

Runs flagged PE_PRESENT are laid out back to back in the pages file, in
pagemap order, whatever else they are flagged (CRIU writes anonymous memory as
PE_LAZY|PE_PRESENT); runs without it (PE_PARENT: in a parent dump, PE_LAZY
alone: left to a lazy-pages server) take no space there. That gives every run
a file offset, which lets us read memory by virtual address and translate a
file offset (found by scanning the file) back to an address.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from migrate.adapters.criu.images import ImageError, PagemapEntry

PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Run:
    """``length`` bytes of memory at ``vaddr``, stored at ``offset`` in the pages file."""

    vaddr: int
    length: int
    offset: int


class ProcessMemory:
    """Address <-> pages-file offset translation for one process."""

    def __init__(self, pages_id: int, entries: Iterable[PagemapEntry], pages_size: int) -> None:
        """Lay ``entries`` (read once, lazily if an iterator) onto a pages file of ``pages_size``.

        Runs are kept only while they fit in the pages file, so however many
        entries a pagemap frames, memory follows the pages file's size; past
        it, offsets are only summed, to say how much the runs need.
        """
        self.pages_id = pages_id
        runs: list[Run] = []
        offset = mapped_pages = 0
        for e in entries:
            mapped_pages += e.nr_pages
            if not e.occupies_pages_file:
                continue
            length = e.nr_pages * PAGE_SIZE
            # An empty run holds no byte; kept, it would shadow the run sharing its offset.
            if e.in_pages_file and length and offset + length <= pages_size:
                runs.append(Run(e.vaddr, length, offset))
            offset += length
        self.mapped_bytes = mapped_pages * PAGE_SIZE
        if offset > pages_size:
            raise ImageError(
                f"points past the end of pages-{pages_id}.img "
                f"(its runs need {offset} bytes, the file holds {pages_size})"
            )
        self.stored_bytes = offset
        self._by_offset = runs
        self._by_addr = sorted(runs, key=lambda r: r.vaddr)
        self._addr_keys = [r.vaddr for r in self._by_addr]
        self._offset_keys = [r.offset for r in runs]

    @property
    def pages_member(self) -> str:
        """Archive member holding this process's pages."""
        return f"checkpoint/pages-{self.pages_id}.img"

    def file_ranges(self, vaddr: int, length: int) -> list[tuple[int, int]] | None:
        """(offset, length) pieces of the pages file holding [vaddr, vaddr+length).

        None when any byte of the range is not stored in this dump.
        """
        pieces: list[tuple[int, int]] = []
        addr, end = vaddr, vaddr + length
        while addr < end:
            i = bisect.bisect_right(self._addr_keys, addr) - 1
            if i < 0:
                return None
            run = self._by_addr[i]
            if addr >= run.vaddr + run.length:
                return None
            take = min(end, run.vaddr + run.length) - addr
            pieces.append((run.offset + addr - run.vaddr, take))
            addr += take
        return pieces

    def address_of(self, offset: int) -> int | None:
        """Virtual address of a byte at ``offset`` in the pages file."""
        i = bisect.bisect_right(self._offset_keys, offset) - 1
        if i < 0:
            return None
        run = self._by_offset[i]
        if offset >= run.offset + run.length:
            return None
        return run.vaddr + offset - run.offset
