"""The checkpoint archive as an OCI layer, produced in one pass.

An uncompressed checkpoint tar is already a valid layer. While it is read
once, block by block, the stream hashes the uncompressed bytes (the config's
``diff_id``), compresses them if asked, and hashes what it yields (the blob
digest): by the time the upload finishes, both digests are known.

With an encryption (ocicrypt's format, migrate.adapters.ocicrypt) the blob is
encrypted as well, in the same pass: compressed blocks are hashed (the
digest a decrypting client checks), encrypted, and hashed again (the blob
digest); the wrapped key goes in the descriptor's annotations.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import zstandard

from migrate.errors import InputError

if TYPE_CHECKING:
    from hashlib import _Hash

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
    annotations: dict[str, str] | None = None  # the descriptor's (an encrypted layer's keys)


class LayerCipher(Protocol):
    """One encryption pass (migrate.adapters.ocicrypt.LayerCipher)."""

    def update(self, data: bytes | memoryview, /) -> bytes | memoryview: ...

    def finish(self, plain_digest: str, /) -> dict[str, str]: ...


class Encryption(Protocol):
    """Starts a cipher per pass (migrate.adapters.ocicrypt.LayerEncryption)."""

    def start(self) -> LayerCipher: ...


class LayerStream:
    """Iterate to get the blob's blocks; ``result`` once exhausted. Iterable once per read."""

    def __init__(self, path: Path, compression: str, chunk_bytes: int,
                 on_progress: Callable[[int], None] | None = None,
                 fd: int | None = None, encryption: Encryption | None = None) -> None:
        """``fd``: read the tar from this open descriptor (from its start, with
        ``pread``; it stays open) instead of opening ``path``, which then only
        names the archive (the digest cache's key): a compressed archive's
        decompressed copy has no path. ``encryption``: encrypt the blob (each
        pass under a new key)."""
        self.path, self.compression, self.chunk, self.fd = path, compression, chunk_bytes, fd
        self.encryption = encryption
        self.media_type = MEDIA_TYPES[compression] + ("+encrypted" if encryption else "")
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
        cipher = self.encryption.start() if self.encryption else None
        diff = hashlib.sha256()
        plain = diff if comp is None else hashlib.sha256()  # the blob before encryption
        blob = plain if cipher is None else hashlib.sha256()
        # Blocks the loop has not hashed yet: a compressor's output, and ciphertext.
        hash_plain = None if plain is diff else plain
        hash_blob = None if blob is plain else blob
        buf = bytearray(self.chunk)
        view = memoryview(buf)
        read = size = 0
        fd = os.open(self.path, os.O_RDONLY) if self.fd is None else self.fd
        try:
            while n := os.preadv(fd, [buf], read):
                block = view[:n]
                diff.update(block)
                read += n
                # The consumer sends a block before asking for the next one, so the
                # buffers (ours and the cipher's) can be reused.
                for out in (block,) if comp is None else comp.compress(block):
                    size += len(out)
                    yield _seal(out, hash_plain, cipher, hash_blob)
                if self.on_progress:
                    self.on_progress(read)
            for out in comp.finish() if comp is not None else ():
                size += len(out)
                yield _seal(out, hash_plain, cipher, hash_blob)
        finally:
            if self.fd is None:
                os.close(fd)
        plain_digest = f"sha256:{plain.hexdigest()}"
        self._result = LayerDigests(
            f"sha256:{diff.hexdigest()}", f"sha256:{blob.hexdigest()}", size, read,
            self.media_type, cipher.finish(plain_digest) if cipher else None)


def _seal(out: bytes | memoryview, plain: _Hash | None, cipher: LayerCipher | None,
          blob: _Hash | None) -> bytes | memoryview:
    """Hash the plain block, then encrypt it and hash that (CTR keeps the size)."""
    if plain is not None:
        plain.update(out)
    if cipher is None:
        return out
    sealed = cipher.update(out)
    if blob is not None:
        blob.update(sealed)
    return sealed
