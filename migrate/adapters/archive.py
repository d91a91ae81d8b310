"""Read checkpoint archives (tar) without extracting them.

The archive is opened once: tar headers are scanned to build an index of
members (name -> offset, size); members are then read by name with ``pread``,
so nothing is extracted and reading one member never touches the others.

Archives are untrusted. Every read is bounded by what the file holds, so a
size field in a header cannot make us allocate more than the file's bytes;
a member whose header claims more data than the file has is reported as
truncated, naming the member. tarfile reads the headers, through `_TarFile`,
which bounds what a crafted header can make it do (see `_TarInfo`).
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from migrate.adapters import compressed, jsondoc
from migrate.adapters.tarstream import normalize
from migrate.errors import ArchiveError, MigrateError, MissingMemberError, NotFoundError
from migrate.settings import ArchiveSettings

if TYPE_CHECKING:
    from migrate.adapters.safe_extract import Rewrite, Target


@dataclass(frozen=True, slots=True)
class Member:
    """One entry of a tar archive, as its header describes it."""

    name: str
    size: int
    offset: int
    kind: str  # file, dir, symlink, hardlink, char, block, fifo
    linkname: str = ""
    mode: int = 0o644
    mtime: int = 0


class RangeReader(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes at ``offset`` of a file descriptor.

    Reads go through ``os.pread`` so that several readers can share one
    descriptor, and never ask for more than the range holds.
    """

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self._fd, self._offset, self._size, self._pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        remaining = max(0, self._size - self._pos)
        want = remaining if n is None or n < 0 else min(n, remaining)
        data = os.pread(self._fd, want, self._offset + self._pos) if want else b""
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        if want == 0:
            return 0
        got = os.preadv(self._fd, [view[:want]], self._offset + self._pos)
        self._pos += got
        return got

    @property
    def size(self) -> int:
        """Bytes in the range."""
        return self._size

    def pread_into(self, buffer: bytearray, pos: int) -> int:
        """Fill ``buffer`` from ``pos`` in the range (fewer bytes where it ends); bytes read.

        Independent of the read position, and safe to call from several threads.
        """
        view, got = memoryview(buffer), 0
        want = min(len(buffer), max(0, self._size - pos))
        while got < want:
            n = os.preadv(self._fd, [view[got:want]], self._offset + pos + got)
            if n == 0:
                break
            got += n
        return got

    def advise_sequential(self) -> None:
        """Tell the kernel the range will be read once, in order (read-ahead, no reuse)."""
        os.posix_fadvise(self._fd, self._offset, self._size, os.POSIX_FADV_SEQUENTIAL)


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr():
        return "char"
    if info.isblk():
        return "block"
    if info.isfifo():
        return "fifo"
    return "other"


_TRUNCATED_HINT = "the archive was cut short; copy it again from the node"


def _truncated(label: str, info: tarfile.TarInfo, total: int) -> ArchiveError:
    return ArchiveError(
        label,
        f"truncated: its header declares {info.size} bytes but the archive ends "
        f"{max(0, total - info.offset_data)} bytes into it",
        hint=_TRUNCATED_HINT,
        member=info.name,
    )


def _check_end(reader: RangeReader, offset: int, total: int, last: str, label: str) -> None:
    """tarfile stops quietly at a cut or garbled header; the end marker must follow instead.

    Every tar writer the engines use (Go's archive/tar, GNU tar, Python) ends an
    archive with zero blocks, so anything else where the headers stop means the
    archive was cut or damaged.
    """
    reader.seek(offset)
    block = reader.read(512)
    if len(block) == 512 and not any(block):
        return
    after = f" after {last}" if last else ""
    if not block:
        raise ArchiveError(label, f"truncated: the archive ends{after} without the "
                           "end-of-archive marker", hint=_TRUNCATED_HINT)
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    what = "is cut short" if len(block) < 512 else "is not a valid tar header"
    raise ArchiveError(label, f"truncated or corrupt: the header at offset {offset}{after} "
                       f"{what}", hint=_TRUNCATED_HINT, member=name or None)


_CRAFTED_HINT = "no container engine writes such a tar header: the archive is damaged or crafted"
MAX_TAR_META = 1024 * 1024
"""Largest GNU long name/link or pax extended header followed, and the most bytes of pax
global headers: the engines write a path of at most PATH_MAX and a few xattrs."""
_MAX_META_CHAIN = 16  # extended headers in a row (the engines write one or two)
_MAX_GLOBAL_KEYS = 64
_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
               tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")


class _Refused(Exception):
    """A tar header this reader will not follow; the caller names the archive."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.message, self.member = message, member


def _sparse(name: str) -> _Refused:
    # tarfile gives a sparse member the size it claims once expanded, larger than
    # its data in the archive: reading that many bytes would read the next members'.
    return _Refused("is a sparse file, which checkpoint archives never hold "
                    "(the engines' tar writers cannot write one)", normalize(name))


def _pax_records(buf: bytes, offset: int) -> list[tuple[bytes, bytes]]:
    """The ``LEN keyword=value\\n`` records of a pax extended header, in linear time.

    Python before 3.11.10 parses them with regular expressions that take
    quadratic time on runs of digits (CVE-2024-6232) and skips what they do not
    match; this is the framing of its fixed parser, a malformed record refused.
    """
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(buf) and buf[pos] != 0:  # the header's padding is NULs
        match = _PAX_LENGTH.match(buf, pos)
        length = int(match.group(1)) if match else 0
        end = pos + length - 1  # the record's newline
        key, equals, value = (buf[match.end():end].partition(b"=") if match and length >= 5
                              else (b"", b"", b""))
        if not key or not equals or end >= len(buf) or buf[end] != 0x0A:
            raise _Refused(f"the pax extended header at offset {offset} is malformed")
        records.append((key, value))
        pos += length
    return records


def _decode(raw: bytes, encoding: str, fallback: str, errors: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return raw.decode(fallback, errors)


class _TarInfo(tarfile.TarInfo):
    """tarfile's header reader, bounded for untrusted archives.

    tarfile itself follows extended headers by recursion and reads them
    whatever their size, takes a base-256 negative size as a step back, parses
    pax records in quadratic time (before Python 3.11.10), and gives sparse
    members their expanded size. Its `_proc_member` is the hook it documents
    for subclasses; `_proc_pax` replaces its parser, as the fixed Pythons do.
    """

    def _proc_member(self, tf: _TarFile) -> tarfile.TarInfo:
        if self.size < 0:
            raise _Refused(f"declares a negative size ({self.size})", normalize(self.name))
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _sparse(self.name)
        if self.type not in _META_TYPES:
            return super()._proc_member(tf)  # type: ignore[misc,no-any-return]
        if self.size > MAX_TAR_META and _left(tf) > MAX_TAR_META:
            # Refused only where the archive holds that much; a header claiming more than
            # the archive has left is a cut archive, which tarfile reports as such.
            raise _Refused(f"the extended header at offset {self.offset} declares "
                           f"{self.size} bytes, more than the {MAX_TAR_META}-byte limit")
        if tf.meta_depth >= _MAX_META_CHAIN:
            # tarfile recurses once per header in a row: a long chain would exhaust the stack.
            raise _Refused(f"holds more than {_MAX_META_CHAIN} extended headers in a row "
                           f"(at offset {self.offset})")
        tf.meta_depth += 1
        try:
            return super()._proc_member(tf)  # type: ignore[misc,no-any-return]
        finally:
            tf.meta_depth -= 1

    def _proc_pax(self, tf: _TarFile) -> tarfile.TarInfo:
        """tarfile's, with a linear parser, the sparse formats refused and global headers
        bounded (their records are copied into every later member)."""
        buf = tf.fileobj.read(-(-self.size // 512) * 512)[:self.size]
        records = _pax_records(buf, self.offset)
        headers: dict[str, str] = dict(tf.pax_headers)
        for raw_key, raw_value in records:
            if raw_key == b"hdrcharset":
                headers["hdrcharset"] = raw_value.decode("utf-8", tf.errors)
                break
        encoding = tf.encoding if headers.get("hdrcharset") == "BINARY" else "utf-8"
        for raw_key, raw_value in records:
            key = _decode(raw_key, "utf-8", "utf-8", tf.errors)
            names = key in tarfile.PAX_NAME_FIELDS
            headers[key] = _decode(raw_value, encoding if names else "utf-8",
                                   tf.encoding if names else "utf-8", tf.errors)
        if self.type == tarfile.XGLTYPE:
            tf.global_bytes += len(buf)
            if tf.global_bytes > MAX_TAR_META or len(headers) > _MAX_GLOBAL_KEYS:
                raise _Refused(f"the pax global headers up to offset {self.offset} hold "
                               f"more than {MAX_TAR_META} bytes or {_MAX_GLOBAL_KEYS} records")
            tf.pax_headers = headers
        try:
            after = self.fromtarfile(tf)
        except tarfile.HeaderError as e:
            raise tarfile.ReadError(str(e)) from None  # what tarfile makes of it
        if any(key.startswith("GNU.sparse.") for key in headers):
            raise _sparse(headers.get("GNU.sparse.name") or headers.get("path") or after.name)
        if self.type != tarfile.XGLTYPE:
            after._apply_pax_info(headers, tf.encoding, tf.errors)  # type: ignore[attr-defined]
            after.offset = self.offset
            if after.size < 0:
                raise _Refused(f"declares a negative size ({after.size})",
                               normalize(after.name))
            if "size" in headers:
                # The record replaces the header's size: the next header is found from it.
                tf.offset = after.offset_data
                if after.isreg() or after.type not in tarfile.SUPPORTED_TYPES:
                    tf.offset += -(-after.size // 512) * 512
        return after


def _left(tf: tarfile.TarFile) -> int:
    """Bytes the archive holds past the current header (a stream's are unknown: any)."""
    f = tf.fileobj
    return f.size - f.tell() if isinstance(f, RangeReader) else MAX_TAR_META + 1


class _TarFile(tarfile.TarFile):
    """A TarFile that reads headers with `_TarInfo`; its errors are `_Refused`."""

    tarinfo = _TarInfo
    meta_depth = 0  # extended headers being followed
    global_bytes = 0  # bytes of pax global headers so far


def _mtime(info: tarfile.TarInfo, label: str) -> int:
    # A pax record holds a decimal number, which tarfile parses as a float: "nan"
    # and "inf" are valid to it, and have no integer value.
    if isinstance(info.mtime, float) and not math.isfinite(info.mtime):
        raise ArchiveError(label, f"has an invalid modification time ({info.mtime})",
                           hint=_CRAFTED_HINT, member=normalize(info.name))
    return int(info.mtime)


def _member(info: tarfile.TarInfo, label: str) -> Member:
    return Member(
        name=normalize(info.name),
        size=info.size if info.isreg() else 0,
        offset=info.offset_data,
        kind=_kind(info),
        linkname=info.linkname,
        mode=info.mode,
        mtime=_mtime(info, label),
    )


def _refused(label: str, e: _Refused) -> ArchiveError:
    return ArchiveError(label, e.message, hint=_CRAFTED_HINT, member=e.member)


def scan_tar(reader: RangeReader, label: str, max_members: int) -> list[Member]:
    """Index a tar stream's headers, checking each member's data lies inside the stream.

    ``label`` names the archive (or nested member) in errors. Headers are read
    one at a time and only our compact `Member` is kept (tarfile's own list of
    TarInfo objects is dropped as it grows), and more than ``max_members``
    entries are refused: a file of empty entries holds one per 512 bytes.
    """
    total = reader.seek(0, os.SEEK_END)
    reader.seek(0)
    try:
        # tarfile seeks over member data, so this reads headers only. It gets the
        # raw range reader, never a BufferedReader: the latter allocates whatever
        # a (GNU long name) header claims before reading it.
        tf = _TarFile.open(fileobj=reader, mode="r:")  # closed by `with tf` below
    except _Refused as e:
        raise _refused(label, e) from e
    except (tarfile.TarError, ValueError, OverflowError) as e:
        raise ArchiveError(
            label, f"not a readable tar archive ({e})", hint="is this a checkpoint archive?"
        ) from e
    members: list[Member] = []
    last: tarfile.TarInfo | None = None
    with tf:
        while True:
            try:
                info = tf.next()
            except _Refused as e:
                raise _refused(label, e) from e
            except (tarfile.TarError, ValueError, OverflowError) as e:
                # tarfile notices a cut in a member's data only when it looks for
                # the next header; the member it read last is the one cut short.
                if last is not None and last.offset_data + last.size > total:
                    raise _truncated(label, last, total) from e
                raise ArchiveError(label, f"not a readable tar archive ({e})",
                                   hint=_TRUNCATED_HINT) from e
            # tarfile lists every TarInfo it reads (~600 bytes each); we need none.
            tf.members.clear()  # type: ignore[attr-defined]
            if info is None:
                break
            if len(members) >= max_members:
                raise ArchiveError(label, f"holds more than {max_members} entries",
                                   hint="a checkpoint has far fewer; this archive is "
                                   "probably crafted")
            if info.isreg() and info.offset_data + info.size > total:
                raise _truncated(label, info, total)
            if info.isreg() and not 0 <= info.size <= tf.offset - info.offset_data:
                # A size that is not the data tarfile stepped over (a pax global "size")
                # would make reading the member read the next ones.
                raise ArchiveError(label, f"declares {info.size} bytes but holds "
                                   f"{tf.offset - info.offset_data}", hint=_CRAFTED_HINT,
                                   member=normalize(info.name))
            members.append(_member(info, label))
            last = info
        _check_end(reader, tf.offset, total, last.name if last else "", label)
    return members


def _open_archive(path: Path, label: str) -> int:
    try:
        # Checked before opening: opening a FIFO would block, and a directory
        # opens fine on Linux only to fail on the first read.
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ArchiveError(label, "is a directory, not an archive",
                               hint="give the path of a checkpoint archive; "
                               "`migrate list DIR` finds them")
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError(label, "is not a regular file",
                               hint="copy the archive to a file first")
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NotFoundError(
            f"{path}: no such file", hint="check the archive path (see `migrate list`)"
        ) from e
    except OSError as e:
        raise ArchiveError(label, f"cannot open: {e.strerror}",
                           hint="check the file's permissions") from e


# Top-level names only checkpoint archives use (CRI-O's, Podman's and containerd's).
_CHECKPOINT_NAMES = frozenset({
    "config.dump", "spec.dump", "checkpoint", "stats-dump", "dump.log", "rootfs-diff.tar",
    "deleted.files", "bind.mounts", "network.status", "devshm-checkpoint.tar", "status.dump",
})
PROBE_ENTRIES = 32
"""Entries `looks_like_checkpoint` reads before it gives up."""
PROBE_BYTES = 64 * 1024 * 1024
"""Decompressed bytes `looks_like_checkpoint` reads at most from a compressed file (Podman
puts devshm-checkpoint.tar, up to /dev/shm's 64 MiB, before its config.dump)."""


class _ProbeDone(Exception):
    """The probe read as much as it may."""


class _Budgeted(io.RawIOBase):
    """At most ``budget`` bytes of ``source``; reading past them raises `_ProbeDone`."""

    def __init__(self, source: io.RawIOBase, budget: int) -> None:
        super().__init__()
        self._source, self._left = source, budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            raise _ProbeDone
        view = memoryview(buffer).cast("B")[:self._left]
        n = self._source.readinto(view) or 0
        self._left -= n
        return n


def looks_like_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a tar, plain or gzip/zstd-compressed, that starts like a checkpoint.

    That is: one of its first `PROBE_ENTRIES` entries is a member only
    checkpoints have (``config.dump``, ``spec.dump``, ``checkpoint/``, ...).
    Only headers are read (a compressed file is decompressed up to
    `PROBE_BYTES`), never a whole file; anything unreadable is simply not one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        size = st.st_size
        kind = compressed.sniff(os.pread(fd, 4, 0))
        if kind is None:
            # A plain tar: tarfile seeks over member data and reads headers only.
            tf = _TarFile.open(fileobj=RangeReader(fd, 0, size), mode="r:")
        else:
            stream = _Budgeted(compressed.Decompressor(fd, size, kind, str(path)), PROBE_BYTES)
            tf = _TarFile.open(fileobj=stream, mode="r|")
        with tf:
            for _ in range(PROBE_ENTRIES):
                info = tf.next()
                tf.members.clear()  # type: ignore[attr-defined]
                if info is None:
                    return False
                name = normalize(info.name)
                if name in _CHECKPOINT_NAMES or name.startswith("checkpoint/"):
                    return True
        return False
    except (_ProbeDone, _Refused, tarfile.TarError, ValueError, OverflowError, EOFError,
            OSError, MigrateError):
        return False
    finally:
        os.close(fd)


def _holes_match(members: list[Member], holes: list[compressed.Hole]) -> bool:
    """Whether every hole is exactly the data of a regular file of that name in the index."""
    files = {(m.offset, m.size, m.name) for m in members if m.kind == "file"}
    return all(hole in files for hole in holes)


class CheckpointArchive:
    """An opened checkpoint archive; use as a context manager.

    A gzip or zstd archive (known by its first bytes) is decompressed once into
    a private temporary file (see `migrate.adapters.compressed`), read from
    then on like an uncompressed one; ``compression`` says which it was.
    """

    def __init__(self, path: Path, settings: ArchiveSettings,
                 skip: Callable[[str], bool] | None = None) -> None:
        """``skip``: members the caller will not read; a compressed archive's decompressed
        copy leaves out the data of the big ones it names (see `skipped`)."""
        self.path = path
        self.label = str(path)
        self.settings = settings
        self._fd = _open_archive(path, self.label)
        self.compression: str | None = None
        self.skipped: frozenset[str] = frozenset()
        """Members whose data was left out of the decompressed copy; reading one is a bug."""
        try:
            self.stored_size = os.fstat(self._fd).st_size
            self.compression = compressed.sniff(os.pread(self._fd, 4, 0))
            members = (self._index(self._fd) if self.compression is None
                       else self._decompress(skip))
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            raise
        # Later entries win, as they would when the tar is unpacked.
        self.members: dict[str, Member] = {m.name: m for m in members}

    def _index(self, fd: int) -> list[Member]:
        self.file_size = os.fstat(fd).st_size
        return scan_tar(RangeReader(fd, 0, self.file_size), self.label, self.settings.max_members)

    def _decompress(self, skip: Callable[[str], bool] | None) -> list[Member]:
        """Replace the archive's descriptor by its decompressed copy's, and index that."""
        assert self.compression is not None
        source, self._fd, tar = self._fd, -1, -1
        try:
            tar, holes = compressed.decompress_to_file(source, self.stored_size, self.compression,
                                                       self.label, self.settings, skip)
            members = self._index(tar)
            if holes and not _holes_match(members, holes):
                # The header walk and tarfile read the headers differently (a crafted or
                # exotic archive): decompress again, whole, rather than trust either.
                os.close(tar)
                tar = -1
                tar, holes = compressed.decompress_to_file(
                    source, self.stored_size, self.compression, self.label, self.settings)
                members = self._index(tar)
        except BaseException:
            if tar >= 0:
                os.close(tar)
            raise
        finally:
            os.close(source)
        self._fd = tar
        self.skipped = frozenset(name for _offset, _size, name in holes)
        return members

    @property
    def fd(self) -> int:
        """The descriptor of the tar itself (for a compressed archive, the decompressed copy)."""
        return self._fd

    def __enter__(self) -> CheckpointArchive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def has(self, name: str) -> bool:
        """Whether a regular-file member of that name exists."""
        m = self.members.get(name)
        return m is not None and m.kind == "file"

    def member(self, name: str) -> Member:
        """The regular-file member ``name``, or a clear error naming it."""
        m = self.members.get(name)
        if m is None or m.kind != "file":
            raise MissingMemberError(
                self.label,
                "missing from the archive",
                hint="this does not look like a complete container checkpoint",
                member=name,
            )
        return m

    def files_under(self, prefix: str) -> Iterator[Member]:
        """Regular-file members below the directory ``prefix``."""
        pre = prefix.rstrip("/") + "/"
        return (m for m in self.members.values() if m.kind == "file" and m.name.startswith(pre))

    def _readable(self, name: str) -> Member:
        m = self.member(name)
        if name in self.skipped:
            raise RuntimeError(f"{name} was left out of the decompressed copy "
                               "(the command said it would not read it)")
        return m

    def open_member(self, name: str) -> RangeReader:
        """A seekable reader over the member's bytes (nothing is read yet)."""
        m = self._readable(name)
        return RangeReader(self._fd, m.offset, m.size)

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        """The whole member, refused when larger than ``limit`` (default: the metadata limit)."""
        m = self._readable(name)
        limit = self.settings.max_metadata_bytes if limit is None else limit
        if m.size > limit:
            raise ArchiveError(
                self.label,
                f"is {m.size} bytes, more than the {limit}-byte limit for metadata",
                hint="a checkpoint's metadata is small; this archive is probably crafted",
                member=name,
            )
        return self.open_member(name).read()

    def read_json(self, name: str) -> Any:
        """Parse a JSON member (size and nesting bounded), with errors that name it."""
        data = self.read_bytes(name, self.settings.max_json_bytes)
        try:
            return jsondoc.loads(data, self.settings.max_json_depth, self.settings.max_json_values)
        except jsondoc.JsonError as e:
            raise ArchiveError(
                self.label, str(e),
                hint="the archive's metadata is damaged; take a new checkpoint", member=name
            ) from e

    def nested_tar(self, name: str) -> NestedTar:
        """Open a tar stored inside the archive (``rootfs-diff.tar``) without copying it."""
        m = self._readable(name)
        return NestedTar(RangeReader(self._fd, m.offset, m.size), f"{self.label}: {name}",
                         self.settings.max_members)


class NestedTar:
    """A tar archive held inside another one; headers indexed, data read in place."""

    def __init__(self, reader: RangeReader, label: str, max_members: int) -> None:
        self.reader = reader
        self.label = label
        self.members = scan_tar(reader, label, max_members)

    def extract(self, target: Target) -> tuple[list[Member], list[Rewrite]]:
        """Unpack every member into the new directory ``target`` (see `safe_extract`).

        All members are checked before anything is written, and the tree is
        moved into place only once complete: an unsafe entry, or any failure,
        leaves the target as it was. Returns the entries written (all but
        directories) and the symlinks whose absolute target was written relative.
        """
        from migrate.adapters.safe_extract import extract  # only --extract needs it

        rewrites = extract(self.reader, self.members, target, self.label)
        return [m for m in self.members if m.kind != "dir"], rewrites
