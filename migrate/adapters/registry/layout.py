"""An OCI image layout on disk (``--oci-layout DIR``): the same blobs a push would send.

Blobs are written under ``blobs/sha256/`` (mode 0600: a checkpoint holds
process memory), then ``index.json`` names the manifest with the tag as
``org.opencontainers.image.ref.name``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from migrate.errors import MigrateError

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


def _write_private(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OciLayout:
    """Writes one image into an OCI layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        try:
            self.blobs.mkdir(parents=True, exist_ok=True, mode=0o700)
            (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        except OSError as e:
            raise MigrateError(f"{root}: cannot create an OCI layout: {e.strerror}",
                               hint="check the directory is writable") from e

    def blob_path(self, digest: str) -> Path:
        """Where a blob of that digest lives."""
        return self.blobs / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is already there."""
        return self.blob_path(digest).is_file()

    def put_stream(self, chunks: Iterable[bytes | memoryview]) -> Path:
        """Write a stream to a temporary blob file; ``commit_blob`` names it once hashed."""
        tmp = self.blobs / f"upload-{os.getpid()}"
        _write_private(tmp, chunks)
        return tmp

    def commit_blob(self, tmp: Path, digest: str) -> None:
        """Give a streamed blob its digest name."""
        os.replace(tmp, self.blob_path(digest))

    def put_blob(self, data: bytes) -> str:
        """Write a small blob; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _write_private(self.blob_path(digest), [data])
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
        _write_private(index_path, [json.dumps(index, indent=2).encode()])
