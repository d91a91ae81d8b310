"""A node's checkpoint directory, listed and pruned without following a symbolic link.

The directory may hold anything a user (or an attacker with a foothold in a
pod's files) put there. It is opened once with ``O_DIRECTORY | O_NOFOLLOW``
(a symlink in its place is refused) and every entry is read and removed
relative to that descriptor: ``lstat`` tells regular files from everything
else, and ``unlinkat`` never follows the last component, so a symlink named
like an archive is skipped at listing and could only ever remove itself.
Between the listing and the removal the entry must still be the same inode;
one swapped in the meantime is left alone.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from migrate.errors import InputError, NotFoundError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """One name in the directory, as ``lstat`` saw it."""

    name: str
    regular: bool  # a regular file (never a symlink, directory, FIFO, device...)
    kind: str  # "file", "symlink", "directory", "special file"
    size: int
    mtime: float
    inode: tuple[int, int]  # (st_dev, st_ino)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "directory" if stat.S_ISDIR(mode) else "special file"


@contextmanager
def opened(directory: Path) -> Iterator[int]:
    """A descriptor of ``directory``; a symlink, a file or nothing there is an error."""
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except FileNotFoundError:
        raise NotFoundError(f"checkpoint directory {directory} does not exist",
                            hint="the kubelet makes it at its first checkpoint") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InputError(f"checkpoint directory {directory} is a symlink or not a "
                             "directory: refusing to prune through it",
                             hint="point at the real directory") from None
        raise InputError(f"cannot open checkpoint directory {directory}: {e.strerror}",
                         hint="run as a user who can read it (the kubelet's files are "
                         "root's)") from None
    try:
        yield fd
    finally:
        os.close(fd)


def entries(fd: int) -> list[Entry]:
    """Every name directly in the directory ``fd``, unsorted."""
    out = []
    for name in os.listdir(fd):
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we listed
        out.append(Entry(name, stat.S_ISREG(st.st_mode), _kind(st.st_mode), st.st_size,
                         st.st_mtime, (st.st_dev, st.st_ino)))
    return out


def tighten_if_empty(fd: int) -> None:
    """Make an empty directory 0700, the mode the kubelet creates it with: a hostPath
    ``DirectoryOrCreate`` mount makes it 0755, and archives are named after pods."""
    if not os.listdir(fd) and os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, 0o700)


def remove(fd: int, entry: Entry) -> str:
    """Remove ``entry`` if it is still the regular file listed; "" when removed, else why
    not ("gone", "replaced", or the error)."""
    if not entry.regular:
        return "not a regular file"
    try:
        st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return "gone"
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != entry.inode:
        return "replaced since it was listed"
    try:
        os.unlink(entry.name, dir_fd=fd)  # unlinkat: the last component is never followed
    except FileNotFoundError:
        return "gone"
    except OSError as e:
        return e.strerror or str(e)
    return ""
