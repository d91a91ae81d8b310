"""Compressed checkpoint archives: gzip and zstd, known by their magic bytes.

Podman exports checkpoints zstd-compressed by default (``--compress
gzip|zstd|none``) under any name, so the kind is read from the first bytes,
never from the file name. A compressed archive is decompressed once, as a
stream, into an anonymous private temporary file (``O_TMPFILE``, mode 0600,
never visible in a directory; created and unlinked at once where the file
system lacks ``O_TMPFILE``); the archive reader then reads that file in place
with ``pread`` as it reads an uncompressed archive. The data of big members a
command will not read (the memory pages for `show`) is not written: the copy
seeks over it, leaving holes (`migrate.adapters.tarstream`).

Compressed input is untrusted like the rest: a stream that is cut short, has
garbage where a frame or member should start, or fails its checksum is an
`ArchiveError`; the decompressed size is bounded by
`ArchiveSettings.max_uncompressed_bytes` and by the free space of the
temporary directory (`ArchiveSettings.min_free_bytes` stays free), checked as
the data comes, so a decompression bomb is refused before the disk fills.
Memory stays bounded: output is produced one block at a time whatever the
compression ratio, and zstd frames may not ask for a window larger than
`MAX_ZSTD_WINDOW`.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from migrate.errors import ArchiveError, UsageError
from migrate.settings import ArchiveSettings
from migrate.units import human_size

if TYPE_CHECKING:
    from migrate.adapters.tarstream import TarHoles

log = logging.getLogger(__name__)

GZIP, ZSTD = "gzip", "zstd"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_FIRST, _SKIPPABLE_LAST = 0x184D2A50, 0x184D2A5F
_ZSTD_MAX_BLOCK = 128 * 1024  # RFC 8878: Block_Maximum_Size is at most 128 KiB
MAX_ZSTD_WINDOW = 1 << 27
"""The largest zstd window accepted (bytes): libzstd's own default limit; the
decoder holds one window, so this bounds its memory (zstd -19 uses 8 MiB)."""
_INPUT_BYTES = 1024 * 1024  # compressed bytes read at a time
_CHECK_EVERY = 64 * 1024 * 1024  # bytes written between two looks at the free space

_CORRUPT_HINT = "the archive is damaged; copy it again, or export the checkpoint again"
_TRUNCATED_HINT = "the archive was cut short; copy it again from where it was made"


def sniff(head: bytes) -> str | None:
    """The compression of a file starting with ``head`` (4 bytes), or None for none."""
    if head[:2] == _GZIP_MAGIC:
        return GZIP
    if len(head) >= 4:
        magic = int.from_bytes(head[:4], "little")
        if magic == _ZSTD_MAGIC or _SKIPPABLE_FIRST <= magic <= _SKIPPABLE_LAST:
            return ZSTD
    return None


class _Input:
    """The compressed bytes of a file descriptor, read in order with ``pread``.

    With ``frames``, every byte read also goes through that zstd frame walker.
    """

    def __init__(self, fd: int, size: int, frames: _ZstdFrames | None = None) -> None:
        self.fd, self.size, self.pos, self.frames = fd, size, 0, frames

    def read(self, n: int = -1) -> bytes:
        want = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        data = os.pread(self.fd, want, self.pos) if want > 0 else b""
        self.pos += len(data)
        if self.frames is not None:
            self.frames.feed(data)
        return data


class _ZstdFrames:
    """Follows the frame and block headers of a zstd stream as its bytes go by.

    libzstd's streaming decoder returns what it could decode when its input
    ends, without saying whether the frame was complete; walking the headers
    (a few bytes per block of up to 128 KiB, never the data) tells a cut
    stream from a whole one, and trailing garbage from another frame.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.offset = 0  # of the next byte fed
        self.frames = 0
        self._state = "magic"
        self._head = bytearray()
        self._skip = 0
        self._checksum = False
        self._header_rest = 0  # frame header bytes after the descriptor

    @property
    def complete(self) -> bool:
        """Whether the bytes so far end exactly after a whole frame."""
        return (self.frames > 0 and self._state == "magic" and not self._head
                and not self._skip)

    def _want(self) -> int:
        return {"magic": 4, "descriptor": 1, "skippable": 4, "block": 3}.get(
            self._state, self._header_rest)

    def feed(self, data: bytes) -> None:
        view, i = memoryview(data), 0
        while i < len(view):
            if self._skip:
                step = min(self._skip, len(view) - i)
                self._skip -= step
                i += step
                continue
            take = min(self._want() - len(self._head), len(view) - i)
            self._head += view[i:i + take]
            i += take
            if len(self._head) == self._want():
                at = self.offset + i - len(self._head)
                self._advance(bytes(self._head), at)
                self._head.clear()
        self.offset += len(view)

    def _advance(self, head: bytes, at: int) -> None:
        value = int.from_bytes(head, "little")
        if self._state == "magic":
            if value == _ZSTD_MAGIC:
                self._state = "descriptor"
            elif _SKIPPABLE_FIRST <= value <= _SKIPPABLE_LAST:
                self._state = "skippable"
            else:
                what = ("is not zstd data" if at == 0
                        else "has data after the end of the zstd stream")
                raise ArchiveError(self.label, f"{what} (byte {at})", hint=_CORRUPT_HINT)
        elif self._state == "skippable":
            self._skip, self._state = value, "magic"
        elif self._state == "descriptor":
            self._frame_header(value, at)
        elif self._state == "header":
            self._state = "block"
        else:
            self._block(value, at)

    def _frame_header(self, descriptor: int, at: int) -> None:
        if descriptor & 0x08:
            raise ArchiveError(self.label, f"has a corrupt zstd frame header (byte {at})",
                               hint=_CORRUPT_HINT)
        single = bool(descriptor & 0x20)
        self._checksum = bool(descriptor & 0x04)
        fcs = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
        self._header_rest = (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3] + fcs
        self._state = "header" if self._header_rest else "block"

    def _block(self, header: int, at: int) -> None:
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3 or size > _ZSTD_MAX_BLOCK:
            raise ArchiveError(self.label, f"has a corrupt zstd block (byte {at})",
                               hint=_CORRUPT_HINT)
        self._skip = 1 if kind == 1 else size  # an RLE block stores its one byte
        if last:
            self.frames += 1
            self._skip += 4 if self._checksum else 0
            self._state = "magic"


class Decompressor(io.RawIOBase):
    """A readable stream of the decompressed bytes of ``size`` bytes of ``fd``.

    Every ``readinto`` returns at most the buffer's length, so memory does not
    grow with the compression ratio. A damaged or truncated stream raises
    `ArchiveError` naming ``label``.
    """

    def __init__(self, fd: int, size: int, kind: str, label: str) -> None:
        super().__init__()
        self.kind, self.label = kind, label
        self._frames = _ZstdFrames(label) if kind == ZSTD else None
        self._input = _Input(fd, size, self._frames)
        self._zstd: Any = None  # zstandard's stream reader over _input
        self._z: Any = None  # the current gzip member's zlib decompressor
        self._pending = b""  # gzip: compressed bytes not yet given to a member
        self._members = 0
        if kind == ZSTD:
            import zstandard  # only zstd archives pay for importing it

            self._zstd_error = zstandard.ZstdError
            dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
            # zstandard only calls read() on its source, which _Input has.
            self._zstd = dctx.stream_reader(cast("IO[bytes]", self._input), read_size=_INPUT_BYTES,
                                            read_across_frames=True, closefd=False)
        elif kind != GZIP:
            raise ValueError(f"unknown compression {kind!r}")

    @property
    def consumed(self) -> int:
        """Compressed bytes read so far."""
        return self._input.pos

    @property
    def size(self) -> int:
        """Compressed bytes in all."""
        return self._input.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        return self._zstd_into(view) if self._zstd is not None else self._gzip_into(view)

    def _zstd_into(self, view: memoryview) -> int:
        assert self._frames is not None
        try:
            n: int = self._zstd.readinto(view)
        except self._zstd_error as e:
            raise ArchiveError(self.label, f"corrupt zstd data ({_zstd_reason(e)})",
                               hint=_CORRUPT_HINT) from e
        if n == 0 and not self._frames.complete:
            raise ArchiveError(self.label, f"truncated: the zstd stream ends in the middle "
                               f"of a frame (after {self.consumed} bytes)", hint=_TRUNCATED_HINT)
        return n

    def _gzip_into(self, view: memoryview) -> int:
        while True:
            if (self._z is None or self._z.eof) and not self._next_member():
                return 0
            data = self._z.unconsumed_tail or self._pending or self._input.read(_INPUT_BYTES)
            self._pending = b""
            try:
                # With no input left, zlib may still hold output back from input it
                # has taken (a full buffer stopped it); an empty call drains it.
                out = self._z.decompress(data, len(view))
            except zlib.error as e:
                raise ArchiveError(self.label, f"corrupt gzip data ({e})",
                                   hint=_CORRUPT_HINT) from e
            if self._z.eof:
                self._pending = self._z.unused_data
            if out:
                view[:len(out)] = out
                return len(out)
            if not data and not self._z.eof:
                raise ArchiveError(self.label, f"truncated: the gzip stream ends in the "
                                   f"middle of a member (after {self.consumed} bytes)",
                                   hint=_TRUNCATED_HINT)

    def _next_member(self) -> bool:
        """Start the next gzip member, if more bytes follow (gzip streams may be
        concatenated); False at the clean end of the stream."""
        head = self._pending
        while len(head) < 2:
            more = self._input.read(_INPUT_BYTES)
            if not more:
                break
            head += more
        self._pending = head
        if not head and self._members:
            return False
        if head[:2] != _GZIP_MAGIC:
            at = self.consumed - len(head)
            what = "is not gzip data" if not self._members else \
                "has data after the end of the gzip stream"
            raise ArchiveError(self.label, f"{what} (byte {at})", hint=_CORRUPT_HINT)
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._members += 1
        return True


def _zstd_reason(e: Exception) -> str:
    text = str(e)
    return text.split(": ", 1)[-1] if ": " in text else text


def private_tempfile(directory: Path, label: str) -> int:
    """A new, empty, anonymous file in ``directory``, mode 0600; its descriptor.

    ``O_TMPFILE`` files never have a name; where the file system cannot make
    one, the file is created with a random name (``O_EXCL``, no symlink
    followed) and unlinked before anything is written to it.
    """
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        try:
            return os.open(directory, flags | os.O_TMPFILE, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        for _ in range(100):
            path = directory / f".migrate-{os.urandom(8).hex()}"
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            os.unlink(path)
            return fd
        raise FileExistsError(errno.EEXIST, "no free temporary name")
    except OSError as e:
        raise UsageError(
            f"{directory}: cannot create a temporary file to decompress {label}: {e.strerror}",
            hint="give --tmp-dir (or TMPDIR) a writable directory with room for the "
            "uncompressed archive") from e


Hole = tuple[int, int, str]  # (offset, length, member name) of data left out


def decompress_to_file(fd: int, size: int, kind: str, label: str, settings: ArchiveSettings,
                       skip: Callable[[str], bool] | None = None) -> tuple[int, list[Hole]]:
    """Decompress ``size`` bytes of ``fd`` into a private temporary file.

    Returns its descriptor and the holes left in it: with ``skip``, the data of
    regular-file members it names (of 1 MiB or more) is not written (see
    `migrate.adapters.tarstream`). The caller owns (and closes) the descriptor;
    on any failure the temporary file is closed, and so gone.
    """
    start = time.perf_counter()
    out = private_tempfile(settings.tmp_dir, label)
    holes = None
    if skip is not None:
        from migrate.adapters.tarstream import TarHoles

        holes = TarHoles(skip)
    try:
        total, kept = _copy(Decompressor(fd, size, kind, label), out, label, settings, holes)
    except BaseException:
        os.close(out)
        raise
    log.info("%s: %s, %s decompressed to %s in %.3f s (%s of it written, into %s)", label,
             kind, human_size(size), human_size(total), time.perf_counter() - start,
             human_size(kept), settings.tmp_dir)
    return out, holes.holes if holes is not None else []


def _copy(source: Decompressor, out: int, label: str, settings: ArchiveSettings,
          holes: TarHoles | None) -> tuple[int, int]:
    """Decompressed bytes in all, and bytes written (the rest left as holes)."""
    buf = bytearray(settings.read_chunk_bytes)
    view = memoryview(buf)
    total = kept = check_at = 0
    while n := source.readinto(view):
        if total + n > settings.max_uncompressed_bytes:
            raise ArchiveError(
                label, f"decompresses to more than {human_size(settings.max_uncompressed_bytes)}"
                f" (the limit for compressed archives; {human_size(source.consumed)} of "
                f"{human_size(source.size)} read)",
                hint="if the archive is genuine, raise MIGRATE_MAX_UNCOMPRESSED; a small "
                "archive that decompresses to this much is probably crafted")
        if kept >= check_at:
            _check_room(out, kept, label, settings)
            check_at = kept + _CHECK_EVERY
        pos = 0
        for gap_start, gap_end in holes.feed(view[:n]) if holes is not None else ():
            kept += _write_all(out, view[pos:gap_start], total + pos, label, settings)
            pos = gap_end
        kept += _write_all(out, view[pos:n], total + pos, label, settings)
        total += n
    os.ftruncate(out, total)  # a hole may end the file
    return total, kept


def _check_room(out: int, written: int, label: str, settings: ArchiveSettings) -> None:
    """Refuse to go on when the next stretch could eat into the space kept free."""
    st = os.fstatvfs(out)
    free = st.f_bavail * st.f_frsize
    if free < settings.min_free_bytes + _CHECK_EVERY:
        raise ArchiveError(
            label, f"decompressing needs more room than {settings.tmp_dir} has: "
            f"{human_size(written)} written, {human_size(free)} left, "
            f"{human_size(settings.min_free_bytes)} kept free",
            hint="give --tmp-dir (or TMPDIR) a file system with room for the uncompressed "
            "archive; a small archive that decompresses to this much is probably crafted")


def _write_all(out: int, data: memoryview, offset: int, label: str,
               settings: ArchiveSettings) -> int:
    """Write ``data`` at ``offset`` of ``out``; returns its length."""
    done = 0
    while done < len(data):
        try:
            done += os.pwrite(out, data[done:], offset + done)
        except OSError as e:
            raise ArchiveError(
                label, f"cannot decompress into {settings.tmp_dir}: {e.strerror}",
                hint="give --tmp-dir (or TMPDIR) a file system with room for the "
                "uncompressed archive") from e
    return done
