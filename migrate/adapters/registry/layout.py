"""An OCI image layout on disk (``--oci-layout DIR``): the same blobs a push would send.

Blobs are written under ``blobs/sha256/`` (mode 0600: a checkpoint holds
process memory), then ``index.json`` names the manifest with the tag as
``org.opencontainers.image.ref.name``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from migrate.errors import UsageError

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
# O_NOFOLLOW: a symlink planted at a temporary name must not redirect the write.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


@contextmanager
def _writing(root: Path, path: Path) -> Iterator[None]:
    """A write into the layout failing: the user's directory, not a bug (exit 2)."""
    try:
        yield
    except OSError as e:
        raise UsageError(f"{path}: cannot write the OCI layout: {e.strerror or e}",
                         hint=f"check that {root} is a directory you may write, with room "
                         "for the image") from e


def _write_private(root: Path, path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with _writing(root, tmp):
        fd = os.open(tmp, _TMP_FLAGS, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            # Only the writes are wrapped: an error reading `chunks` (the archive) is
            # not the layout's.
            with _writing(root, tmp):
                os.fchmod(fd, 0o600)  # a .partial left by an earlier run keeps its mode
            for chunk in chunks:
                with _writing(root, tmp):
                    f.write(chunk)
            with _writing(root, tmp):
                f.flush()
        with _writing(root, path):
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` making every directory it creates 0700: ``parents=True`` gives all
    but the last the umask's mode (0755), and the layout root is one of them."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)  # exist_ok: another build may make it first


class OciLayout:
    """Writes one image into an OCI layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        with _writing(root, root):
            _make_dirs(self.blobs)
        _write_private(root, root / "oci-layout", [b'{"imageLayoutVersion": "1.0.0"}'])

    def blob_path(self, digest: str) -> Path:
        """Where a blob of that digest lives."""
        return self.blobs / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is already there."""
        return self.blob_path(digest).is_file()

    def put_stream(self, chunks: Iterable[bytes | memoryview]) -> Path:
        """Write a stream to a temporary blob file; ``commit_blob`` names it once hashed."""
        tmp = self.blobs / f"upload-{os.getpid()}"
        _write_private(self.root, tmp, chunks)
        return tmp

    def commit_blob(self, tmp: Path, digest: str) -> None:
        """Give a streamed blob its digest name."""
        with _writing(self.root, self.blob_path(digest)):
            os.replace(tmp, self.blob_path(digest))

    def put_blob(self, data: bytes) -> str:
        """Write a small blob; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _write_private(self.root, self.blob_path(digest), [data])
        return digest

    def tag(self, manifest: dict[str, object], tag: str | None) -> None:
        """Point index.json at the manifest (replacing an earlier entry with the same tag)."""
        index_path = self.root / "index.json"
        index: dict[str, Any] = (
            json.loads(index_path.read_text()) if index_path.exists()
            else {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []})
        entry = dict(manifest)
        manifests: list[dict[str, Any]] = index["manifests"]
        if tag:
            entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
            manifests = [m for m in manifests if m.get("annotations", {}).get(
                "org.opencontainers.image.ref.name") != tag]
        index["manifests"] = [*manifests, entry]
        _write_private(self.root, index_path, [json.dumps(index, indent=2).encode()])
