"""Remember the digests of layers already streamed, so a repeat push can skip the upload.

A layer's digest is known only after reading the whole archive; re-reading a
1 GiB archive just to ask the registry whether it has it would double the
cost. The cache maps an archive's identity (device, inode, size, mtime) and
the compression settings to the digests measured last time; a hit is then
confirmed with a HEAD on the registry before anything is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict
from pathlib import Path

import zstandard

from migrate.adapters.registry.layer import GZIP_LEVEL, ZSTD_LEVEL, LayerDigests

log = logging.getLogger(__name__)
MAX_ENTRIES = 256


def _key(archive: Path, compression: str) -> str:
    st = os.stat(archive)
    # Compressed output depends on the compressor and its level: part of the key.
    codec = {"none": "none", "gzip": f"gzip-{GZIP_LEVEL}",
             "zstd": f"zstd-{ZSTD_LEVEL}-{zstandard.__version__}"}[compression]
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{codec}"


class DigestCache:
    """A small JSON file (mode 0600) of archive identity -> layer digests."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # a missing or damaged cache only costs an upload

    def get(self, archive: Path, compression: str) -> LayerDigests | None:
        """Digests measured for this very archive file before, if any."""
        entry = self._load().get(_key(archive, compression))
        try:
            return LayerDigests(**entry) if isinstance(entry, dict) else None  # type: ignore[arg-type]
        except TypeError:
            return None

    def put(self, archive: Path, compression: str, digests: LayerDigests) -> None:
        """Record digests; failures to write are logged, never fatal."""
        entries = self._load()
        entries[_key(archive, compression)] = asdict(digests)
        entries = dict(list(entries.items())[-MAX_ENTRIES:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Per thread, not only per process: a drain builds several images at once.
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}")
            # O_NOFOLLOW: a link planted at the temporary name is not written through.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("could not update the layer digest cache %s: %s", self.path, e)
