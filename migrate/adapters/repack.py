"""A private copy of a checkpoint with some members replaced: what a sandbox restores.

Podman restores a container from the config.dump and spec.dump its archive
holds (networks, mounts, labels, restart policy...). A sandbox changes those
two, so Podman gets a copy of the checkpoint with them replaced; every other
member is copied byte for byte, in order.

A checkpoint comes from an archive (members read in place through its index)
or from a directory (a checkpoint image's root, mounted by Podman). Both are
untrusted: only regular files and directories are copied, names must be
relative and free of ``..``, a directory's entries are opened without
following links, and the two JSON members are read with the bounds of every
archive (`ArchiveSettings`) and checked against their schemas.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from migrate.adapters import jsondoc
from migrate.adapters.checkpoint import CONFIG_DUMP, INVENTORY, SPEC_DUMP, Checkpoint
from migrate.errors import ArchiveError, UsageError
from migrate.settings import ArchiveSettings
from migrate.validation import validate

_CRAFTED = "a checkpoint holds only files and directories; this one may be crafted"
#: How a member is opened: never through a link, and never waiting on a FIFO in its place
#: (its open would block until a writer came).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
_DIGEST_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One member to copy: a regular file (with a way to read it) or a directory."""

    name: str
    kind: str  # "file" or "dir"
    mode: int
    mtime: int
    size: int = 0
    open: Callable[[], io.IOBase] | None = None
    """Opens the file for reading (the caller closes it); None for a directory."""


class CheckpointSource(Protocol):
    """What a sandbox reads of a checkpoint, wherever it is."""

    label: str

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def spec(self) -> dict[str, Any]: ...

    def dump_time(self) -> str: ...

    def entries(self) -> Iterator[Entry]: ...


def _check_name(label: str, name: str) -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ArchiveError(label, f"member name {name!r} is not a plain relative path",
                           hint=_CRAFTED)


class ArchiveSource:
    """A checkpoint archive, opened (`Checkpoint`): its members in the order of its index."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.label = ckpt.label

    @property
    def config(self) -> dict[str, Any]:
        return self.ckpt.config

    @property
    def spec(self) -> dict[str, Any]:
        return self.ckpt.spec

    def dump_time(self) -> str:
        return self.ckpt.dump_time()

    def entries(self) -> Iterator[Entry]:
        archive = self.ckpt.archive
        for m in archive.members.values():
            _check_name(self.label, m.name)
            if m.kind not in ("file", "dir"):
                raise ArchiveError(self.label, f"is a {m.kind}", hint=_CRAFTED, member=m.name)
            opener = functools.partial(archive.open_member, m.name) if m.kind == "file" else None
            yield Entry(m.name, m.kind, m.mode, m.mtime, m.size, opener)


class DirectorySource:
    """A checkpoint unpacked in a directory: the root of a checkpoint image."""

    def __init__(self, root: Path, label: str, settings: ArchiveSettings) -> None:
        self.root = root
        self.label = label
        self.settings = settings

    def _json(self, name: str, schema: str) -> dict[str, Any]:
        where = f"{self.label}: {name}"
        try:
            fd = os.open(self.root / name, _READ_FLAGS)
        except FileNotFoundError as e:
            raise ArchiveError(self.label, "missing from the image", member=name,
                               hint="this does not look like a checkpoint image") from e
        except OSError as e:
            raise ArchiveError(self.label, f"cannot be read: {e.strerror}", member=name,
                               hint=_CRAFTED) from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses a directory
            os.close(fd)
            raise ArchiveError(self.label, "is not a regular file", member=name, hint=_CRAFTED)
        with os.fdopen(fd, "rb") as f:
            data = f.read(self.settings.max_json_bytes + 1)
        if len(data) > self.settings.max_json_bytes:
            raise ArchiveError(self.label, f"is more than {self.settings.max_json_bytes} bytes",
                               member=name, hint="a checkpoint's metadata is small; this image "
                               "is probably crafted")
        try:
            doc = jsondoc.loads(data, self.settings.max_json_depth, self.settings.max_json_values)
        except jsondoc.JsonError as e:
            raise ArchiveError(self.label, str(e), member=name,
                               hint="the image's metadata is damaged") from e
        validate(doc, schema, where)
        result: dict[str, Any] = doc
        return result

    @cached_property
    def config(self) -> dict[str, Any]:
        return self._json(CONFIG_DUMP, "config-dump.schema.json")

    @cached_property
    def spec(self) -> dict[str, Any]:
        return self._json(SPEC_DUMP, "spec-dump.schema.json")

    def dump_time(self) -> str:
        """When CRIU wrote its inventory (its modification time, kept by the image layer)."""
        try:
            st = os.lstat(self.root / INVENTORY)
        except OSError:
            return ""
        if not stat.S_ISREG(st.st_mode) or st.st_mtime <= 0:
            return ""
        return datetime.fromtimestamp(int(st.st_mtime), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def entries(self) -> Iterator[Entry]:
        # Depth first, names sorted: the same image always gives the same copy.
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(self.root / rel if rel else self.root) as it:
                found = sorted(it, key=lambda d: d.name, reverse=True)
            for d in found:
                name = f"{rel}/{d.name}" if rel else d.name
                st = d.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    yield Entry(name, "dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
                    stack.append(name)
                elif stat.S_ISREG(st.st_mode):
                    yield Entry(name, "file", stat.S_IMODE(st.st_mode), int(st.st_mtime),
                                st.st_size, functools.partial(_open_nofollow, self.root / name))
                else:
                    kind = "symlink" if stat.S_ISLNK(st.st_mode) else "special file"
                    raise ArchiveError(self.label, f"is a {kind}", hint=_CRAFTED, member=name)


def _open_nofollow(path: Path) -> io.IOBase:
    return os.fdopen(os.open(path, _READ_FLAGS), "rb")


def _info(entry: Entry, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.type = tarfile.DIRTYPE if entry.kind == "dir" else tarfile.REGTYPE
    info.mode, info.mtime, info.size = entry.mode & 0o7777, entry.mtime, size
    return info


def write_copy(source: CheckpointSource, dest: Path, replace: Mapping[str, bytes]) -> int:
    """Write ``source`` as an uncompressed tar at ``dest`` (created 0600), members named
    in ``replace`` holding those bytes instead; returns the bytes written.

    ``dest``'s directory should be private: the copy holds the checkpoint's memory.
    """
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w",
                                                      format=tarfile.PAX_FORMAT) as tf:
            for entry in source.entries():
                if entry.name in replace:
                    data = replace[entry.name]
                    tf.addfile(_info(entry, len(data)), io.BytesIO(data))
                elif entry.kind == "file" and entry.open is not None:
                    with entry.open() as f:
                        tf.addfile(_info(entry, entry.size), f)
                else:
                    tf.addfile(_info(entry, 0))
        # After the tar's close, which writes its end-of-archive blocks.
        return dest.stat().st_size
    except OSError as e:
        raise _write_failure(e, dest) from e


def _write_failure(e: OSError, dest: Path) -> UsageError:
    where = dest.parent
    hints = {errno.ENOSPC: "the file system is full", errno.EDQUOT: "your quota is used up"}
    why = hints.get(e.errno or 0, "")
    return UsageError(f"cannot write the sandbox's copy of the checkpoint in {where}: "
                      f"{e.strerror or e}",
                      hint=(f"{why}: " if why else "") + "TMPDIR chooses where the copy goes; "
                      "it needs as much free space as the checkpoint holds")


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of the file's bytes, as ``sha256sum`` computes it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_DIGEST_BLOCK):
            h.update(block)
    return f"sha256:{h.hexdigest()}"
