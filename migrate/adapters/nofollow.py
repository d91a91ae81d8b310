"""Write a tree under a directory descriptor without ever following a symbolic link.

Every path is walked from the root descriptor one component at a time, each
opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to the one before, so no
symlink, whether the archive made it or anything else did, and no ``..`` can
take a write outside the root. Files are created with ``O_EXCL | O_NOFOLLOW``
(never opened if something is already there), their mode and times set through
their own descriptor; hard links only ever point at a regular file this writer
created. Nothing here needs a path longer than one component, so PATH_MAX
never truncates a check.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_MODE, FILE_MODE = 0o700, 0o600


class Unsafe(Exception):
    """An entry that must not be written; the text says why (``is a ...``, ``has a ...``)."""


class ShortRead(Exception):
    """The source ended ``got`` bytes into a file whose header promised more."""

    def __init__(self, got: int) -> None:
        super().__init__(got)
        self.got = got


def split_name(name: str) -> list[str]:
    """A member name's components (empty and ``.`` dropped); Unsafe if it could leave the root."""
    if "\0" in name:
        raise Unsafe("has a NUL byte in its name")
    if name.startswith("/"):
        raise Unsafe("has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Unsafe("has a '..' path component")
    return parts


def _leaf(name: str) -> list[str]:
    parts = split_name(name)
    if not parts:
        raise Unsafe("has an empty name")
    return parts


class TreeWriter:
    """Creates directories (0700), files and FIFOs (0600), symlinks and hard links
    below ``root_fd``."""

    def __init__(self, root_fd: int, chunk_bytes: int = 1 << 20) -> None:
        self._root = root_fd
        self._written: set[tuple[int, int]] = set()  # (st_dev, st_ino) of files created here
        self._buf = bytearray(chunk_bytes)

    @contextmanager
    def _dir(self, parts: list[str], create: bool) -> Iterator[int]:
        """A descriptor of the directory ``parts``, walked without following links."""
        fd = os.dup(self._root)
        try:
            for i, part in enumerate(parts):
                step = self._step(fd, part, parts[: i + 1], create)
                os.close(fd)
                fd = step
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _step(fd: int, part: str, where: list[str], create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as e:
            # O_NOFOLLOW|O_DIRECTORY refuses a symlink (ENOTDIR, or ELOOP) as it refuses a file.
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            kind = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
            what = "symlink" if stat.S_ISLNK(kind) else "file"
            raise Unsafe(f"would be written through the {what} {'/'.join(where)!r}") from None
        os.mkdir(part, DIR_MODE, dir_fd=fd)
        new = os.open(part, _DIR_FLAGS, dir_fd=fd)
        os.fchmod(new, DIR_MODE)  # mkdir's mode went through the umask; be exact
        return new

    def directory(self, name: str) -> None:
        """Create ``name`` and any missing parent (0700); an existing directory is kept."""
        with self._dir(split_name(name), create=True):
            pass

    def file(self, name: str, mtime: int, size: int, source: io.RawIOBase) -> None:
        """Create ``name`` (0600, never replacing anything) with ``size`` bytes of ``source``."""
        parts = _leaf(name)
        with self._dir(parts[:-1], create=True) as parent:
            fd = os.open(parts[-1], _FILE_FLAGS, FILE_MODE, dir_fd=parent)
        try:
            os.fchmod(fd, FILE_MODE)
            self._copy(source, fd, size)
            os.utime(fd, ns=(mtime * 10**9, mtime * 10**9))
            st = os.fstat(fd)
            self._written.add((st.st_dev, st.st_ino))
        finally:
            os.close(fd)

    def _copy(self, source: io.RawIOBase, fd: int, size: int) -> None:
        view, done = memoryview(self._buf), 0
        while done < size:
            got = source.readinto(view[: min(len(view), size - done)]) or 0
            if got == 0:
                raise ShortRead(done)
            out = 0
            while out < got:
                out += os.write(fd, view[out:got])
            done += got

    def fifo(self, name: str, mtime: int) -> None:
        """Create the FIFO ``name`` (0600, never replacing anything); it is never opened."""
        parts = _leaf(name)
        with self._dir(parts[:-1], create=True) as parent:
            os.mkfifo(parts[-1], FILE_MODE, dir_fd=parent)
            # mkfifo's mode went through the umask. fchmodat cannot refuse to follow
            # a link on Linux, but the parent is this extraction's private (0700)
            # directory, held by descriptor: the name is the FIFO just made.
            os.chmod(parts[-1], FILE_MODE, dir_fd=parent, follow_symlinks=True)
            os.utime(parts[-1], ns=(mtime * 10**9, mtime * 10**9), dir_fd=parent,
                     follow_symlinks=False)

    def symlink(self, name: str, text: str) -> None:
        """Create the symlink ``name`` -> ``text`` (the link itself; nothing is followed)."""
        parts = _leaf(name)
        with self._dir(parts[:-1], create=True) as parent:
            os.symlink(text, parts[-1], dir_fd=parent)

    def hardlink(self, name: str, target: str) -> None:
        """Link ``name`` to ``target``, which must be a regular file this writer created."""
        parts = _leaf(name)
        refused = Unsafe(f"is a hard link to {target!r}, which is not a file extracted before it")
        try:
            src = _leaf(target)
        except Unsafe:
            raise Unsafe(f"is a hard link to {target!r}, outside the target") from None
        try:
            with self._dir(src[:-1], create=False) as sdir, \
                    self._dir(parts[:-1], create=True) as ddir:
                st = os.stat(src[-1], dir_fd=sdir, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) not in self._written:
                    raise refused
                os.link(src[-1], parts[-1], src_dir_fd=sdir, dst_dir_fd=ddir,
                        follow_symlinks=False)
        except FileNotFoundError:
            raise refused from None

    def set_dir_time(self, name: str, mtime: int) -> None:
        """Set a directory's times through its own descriptor (after its contents are in)."""
        with self._dir(split_name(name), create=False) as fd:
            os.utime(fd, ns=(mtime * 10**9, mtime * 10**9))
