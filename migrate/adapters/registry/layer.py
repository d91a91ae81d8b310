"""The checkpoint archive as an OCI layer, produced in one pass.

An uncompressed checkpoint tar is already a valid layer. While it is read
once, block by block, the stream hashes the uncompressed bytes (the config's
``diff_id``), compresses them if asked, and hashes what it yields (the blob
digest): by the time the upload finishes, both digests are known.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zstandard

from migrate.errors import InputError

MEDIA_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
GZIP_LEVEL = 1  # checkpoint layers are pulled once, soon: speed over ratio
ZSTD_LEVEL = 3


ZSTD_MAX_THREADS = 4
"""zstd workers at most: each holds a job's input and output, so memory grows with them
(measured: 2 workers ~110 MB, 8 ~190 MB, 16 ~320 MB of peak RSS); 4 keep zstd well
ahead of the network and the tool under 200 MB."""


class _Compressor(Protocol):
    def compress(self, data: bytes | memoryview, /) -> Iterable[bytes]: ...

    def finish(self) -> Iterable[bytes]: ...


class _Gzip:
    def __init__(self) -> None:
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def compress(self, data: bytes | memoryview) -> Iterable[bytes]:
        out = self._z.compress(data)
        return (out,) if out else ()

    def finish(self) -> Iterable[bytes]:
        return (self._z.flush(),)


class _Zstd:
    def __init__(self, chunk_bytes: int) -> None:
        threads = min(ZSTD_MAX_THREADS, len(os.sched_getaffinity(0)))
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=threads,
                                        write_content_size=False)
        # The chunker hands output back in blocks of chunk_bytes, where compressobj
        # would return a whole multi-threaded job (16 MiB and more) at once.
        self._chunker = cctx.chunker(size=-1, chunk_size=chunk_bytes)

    def compress(self, data: bytes | memoryview) -> Iterable[bytes]:
        out: Iterable[bytes] = self._chunker.compress(data)
        return out

    def finish(self) -> Iterable[bytes]:
        out: Iterable[bytes] = self._chunker.finish()  # type: ignore[no-untyped-call]
        return out


def _compressor(kind: str, chunk_bytes: int) -> _Compressor | None:
    if kind == "none":
        return None
    if kind == "gzip":
        return _Gzip()
    if kind == "zstd":
        return _Zstd(chunk_bytes)
    raise InputError(f"unknown compression {kind!r}", hint="use none, gzip or zstd")


@dataclass(frozen=True)
class LayerDigests:
    """What the finished stream measured."""

    diff_id: str  # sha256 of the uncompressed tar
    digest: str  # sha256 of the blob as uploaded
    size: int  # blob bytes
    uncompressed_size: int
    media_type: str


class LayerStream:
    """Iterate to get the blob's blocks; ``result`` once exhausted. Iterable once per read."""

    def __init__(self, path: Path, compression: str, chunk_bytes: int,
                 on_progress: Callable[[int], None] | None = None,
                 fd: int | None = None) -> None:
        """``fd``: read the tar from this open descriptor (from its start, with
        ``pread``; it stays open) instead of opening ``path``, which then only
        names the archive (the digest cache's key): a compressed archive's
        decompressed copy has no path."""
        self.path, self.compression, self.chunk, self.fd = path, compression, chunk_bytes, fd
        self.media_type = MEDIA_TYPES[compression]
        self.on_progress = on_progress
        self._result: LayerDigests | None = None

    @property
    def result(self) -> LayerDigests:
        """The digests; only after the stream was read to its end."""
        if self._result is None:
            raise RuntimeError("the layer stream was not read to its end")
        return self._result

    def __iter__(self) -> Iterator[bytes | memoryview]:
        comp = _compressor(self.compression, self.chunk)
        diff = hashlib.sha256()
        blob = diff if comp is None else hashlib.sha256()
        buf = bytearray(self.chunk)
        view = memoryview(buf)
        read = size = 0
        fd = os.open(self.path, os.O_RDONLY) if self.fd is None else self.fd
        try:
            while n := os.preadv(fd, [buf], read):
                block = view[:n]
                diff.update(block)
                read += n
                if comp is None:
                    size += n
                    # The consumer sends the block before asking for the next one,
                    # so the buffer can be reused.
                    yield block
                else:
                    for out in comp.compress(block):
                        blob.update(out)
                        size += len(out)
                        yield out
                if self.on_progress:
                    self.on_progress(read)
            if comp is not None:
                for out in comp.finish():
                    blob.update(out)
                    size += len(out)
                    yield out
        finally:
            if self.fd is None:
                os.close(fd)
        self._result = LayerDigests(f"sha256:{diff.hexdigest()}", f"sha256:{blob.hexdigest()}",
                                    size, read, self.media_type)
