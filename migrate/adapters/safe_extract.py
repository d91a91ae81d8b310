"""Extract an untrusted tar into a new directory, with no way for an entry to escape it.

Two independent guards:

1. Before anything is written, every member is checked against a model of the
   tree the extraction builds: names (absolute, ``..``), kinds (devices, FIFOs),
   writing through a symlink, an entry replacing an earlier one, hard links to
   anything but a file extracted before, symlinks resolving out of the tree
   (followed through the other symlinks, once more when all are known, since a
   later link can redirect an earlier one). An unsafe archive writes nothing.
   A symlink's absolute target names a path in the container's root, never the
   host's: it is written relative, to the same path inside DIR (`Rewrite`), and
   checked as such.
2. The writer (`migrate.adapters.nofollow`) never follows a link: every path is
   walked from a directory descriptor one component at a time with
   ``O_NOFOLLOW``, so even an entry the model got wrong cannot reach outside.

The tree is built in a private staging directory beside DIR and renamed into
place only once everything was written, so a failure at any point leaves DIR
as it was. Directories are 0700 and files 0600 (a container's files can hold
its secrets); file and directory modification times are kept.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import secrets
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from migrate.adapters.nofollow import DIR_MODE, ShortRead, TreeWriter, Unsafe, split_name
from migrate.errors import ArchiveError, NotFoundError, UnsafeArchiveError, UsageError

if TYPE_CHECKING:
    from migrate.adapters.archive import Member, RangeReader

log = logging.getLogger(__name__)

UNSAFE_HINT = "the archive may be crafted; nothing was extracted"
# Device nodes are refused. A FIFO is not: containers make them (Podman records
# them in rootfs-diff.tar); it holds no data, is made 0600 and gets a file's checks.
_SPECIAL = {"char", "block", "other"}
_WORD = {"dir": "directory", "file": "file", "symlink": "symlink", "fifo": "FIFO"}
_MAX_LINK_HOPS = 40  # the kernel's limit on symlinks followed in one lookup
_MAX_SECONDS = 1 << 63  # os.utime cannot pass a time_t this large (file systems clamp the rest)


@dataclass(frozen=True)
class Rewrite:
    """A symlink whose absolute ``target`` was written as the relative ``written`` inside DIR."""

    path: str
    target: str
    written: str

    def to_dict(self) -> dict[str, str]:
        """The JSON form (rootfs-diff.schema.json's ``rewritten_links``)."""
        return {"path": self.path, "target": self.target, "written": self.written}


@dataclass(frozen=True)
class Target:
    """Where an extraction goes: ``path`` (absolute, links resolved) as the user named it."""

    path: Path
    shown: str

    @property
    def parent(self) -> Path:
        """The existing directory that receives the staging directory, then DIR."""
        return self.path.parent


def extraction_target(dest: Path) -> Target:
    """Check that ``dest`` is absent or an empty directory with an existing parent.

    Called before the archive is read: forensic extraction never mixes into, or
    overwrites, existing files. Raises UsageError or NotFoundError.
    """
    target = Target(Path(os.path.realpath(dest)), str(dest))
    try:
        st = os.stat(target.path)
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise NotFoundError(f"{target.parent}: no such directory",
                                hint="create it first: --extract creates only DIR itself") from None
        return target
    except OSError as e:
        raise UsageError(f"{dest}: cannot extract there: {e.strerror}",
                         hint="give a new or empty directory to --extract") from e
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{dest} exists and is not a directory",
                         hint="give a new or empty directory to --extract")
    try:
        empty = not os.listdir(target.path)
    except OSError as e:
        raise UsageError(f"{dest}: cannot extract there: {e.strerror}",
                         hint="give a new or empty directory to --extract") from e
    if not empty:
        raise _not_empty(target)
    return target


def _not_empty(target: Target) -> UsageError:
    return UsageError(f"{target.shown} exists and is not an empty directory",
                      hint="give a new or empty directory to --extract: extraction never "
                      "mixes into or overwrites existing files")


# --- the static check ---------------------------------------------------------------------


class _Escape(Exception):
    """A path resolves outside the extraction directory."""


def _resolve(parts: list[str], links: dict[str, str]) -> None:
    """Follow ``parts`` (relative to DIR) through ``links``; raise `_Escape` if it leaves DIR.

    ``links`` maps each symlink's path to its text. Resolution is physical, as
    the kernel's: ``..`` after a link leaves the link's target, not its name. A
    path needing more than the kernel's 40 links cannot be followed at all, so
    it cannot lead out either.
    """
    todo = [p for p in parts if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not done:
                raise _Escape
            done.pop()
            continue
        target = links.get("/".join([*done, part]))
        if target is None:
            done.append(part)
            continue
        hops += 1
        if posixpath.isabs(target):  # never: the model holds absolute targets made relative
            raise _Escape
        if hops > _MAX_LINK_HOPS:
            return
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo


def _text(m: Member, parts: list[str]) -> str:
    """The text the symlink ``m`` (at ``parts``) is written with: its own, or made relative."""
    return chroot_relative(parts[:-1], m.linkname) if posixpath.isabs(m.linkname) else m.linkname


def chroot_relative(parent: list[str], text: str) -> str:
    """The absolute symlink target ``text`` of a link in ``parent``, relative to that link.

    As in a chroot, ``..`` at the root stays at the root (``/a/../../x`` is
    ``/x``), so the result never climbs above DIR by itself. The normalisation
    is by name (``realpath -s``): a ``..`` after a component that is itself a
    symlink undoes that name, not its target. A trailing ``/`` is kept.
    """
    inside: list[str] = []
    for part in text.split("/"):
        if part == "..":
            if inside:
                inside.pop()
        elif part not in ("", "."):
            inside.append(part)
    # The link's parent components are real directories (the model refuses writing
    # through a link), so climbing them with ".." is exact.
    rel = posixpath.relpath("/" + "/".join(inside), "/" + "/".join(parent))
    return rel + "/" if text.endswith("/") and inside else rel


class _Model:
    """The tree extraction would build: path -> "dir" | "file" | "symlink"."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.links: dict[str, str] = {}  # symlink path -> the text it is written with
        self.link_members: dict[str, Member] = {}
        # member name -> its absolute target, rewritten (the writer looks them up by name)
        self.rewrites: dict[str, Rewrite] = {}

    def reason(self, m: Member) -> str | None:
        """Why ``m`` is unsafe after the members added so far, or None (then it is added)."""
        try:
            parts = split_name(m.name)
        except Unsafe as e:
            return str(e)
        if m.kind in _SPECIAL:
            return f"is a {m.kind} special file"
        if not parts:
            return None if m.kind == "dir" else "has an empty name"
        if not -_MAX_SECONDS < m.mtime < _MAX_SECONDS:
            return f"has a modification time out of range ({m.mtime})"
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            kind = self.kinds.setdefault(prefix, "dir")
            if kind != "dir":
                return f"would be written through the {_WORD[kind]} {prefix!r}"
        path, kind = "/".join(parts), "file" if m.kind == "hardlink" else m.kind
        old = self.kinds.get(path)
        if old is not None and not old == kind == "dir":
            return f"replaces an earlier {_WORD[old]} of the same name"
        why = self._link_reason(m, parts)
        if why is None:
            self.kinds[path] = kind
            if m.kind == "symlink":
                self.links[path], self.link_members[path] = _text(m, parts), m
                if posixpath.isabs(m.linkname):
                    self.rewrites[m.name] = Rewrite(m.name, m.linkname, self.links[path])
        return why

    def _link_reason(self, m: Member, parts: list[str]) -> str | None:
        if m.kind == "hardlink":
            try:
                target = "/".join(split_name(m.linkname))
            except Unsafe:
                return f"is a hard link to {m.linkname!r}, outside the target"
            if self.kinds.get(target) != "file":
                return f"is a hard link to {m.linkname!r}, which is not a file extracted before it"
        if m.kind == "symlink":
            if not m.linkname or "\0" in m.linkname:
                return f"is a symlink to an impossible target {m.linkname!r}"
            return self.escapes(parts[:-1], _text(m, parts), m.linkname)
        return None

    def escapes(self, parent: list[str], text: str, original: str) -> str | None:
        """The reason a symlink in ``parent`` written with ``text`` points out of DIR, if it does.

        ``original`` is the archive's text (``text`` unless an absolute target was rewritten).
        """
        try:
            _resolve([*parent, *text.split("/")], self.links)
        except _Escape:
            shown = repr(text) if text == original else f"{original!r}, written as {text!r}"
            return f"is a symlink pointing out of the target ({shown})"
        return None

    def final_check(self) -> tuple[Member, str] | None:
        """A symlink that, with every link now known, resolves out of DIR."""
        for path, text in self.links.items():
            m = self.link_members[path]
            why = self.escapes(path.split("/")[:-1], text, m.linkname)
            if why:
                return m, why
        return None


def check_members(members: Iterable[Member], label: str) -> dict[str, Rewrite]:
    """Raise UnsafeArchiveError on the first member that could escape; nothing is written.

    Returns the symlinks with an absolute target, by member name, and the
    relative text each must be written with.
    """
    model = _Model()
    for m in members:
        reason = model.reason(m)
        if reason:
            raise _unsafe(label, m.name, reason)
    late = model.final_check()
    if late:
        raise _unsafe(label, late[0].name, late[1])
    return model.rewrites


def _unsafe(label: str, member: str, reason: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(label, f"refusing to extract: {reason}", hint=UNSAFE_HINT,
                              member=member)


# --- writing --------------------------------------------------------------------------------


def extract(reader: RangeReader, members: list[Member], target: Target,
            label: str) -> list[Rewrite]:
    """Check ``members``, write them into a staging directory, then rename it to DIR.

    ``target`` comes from `extraction_target`. On any failure (an unsafe or
    truncated entry, a full disk, Ctrl-C) the staging directory is removed and
    DIR is as it was. Returns the symlinks written relative instead of absolute.
    """
    rewrites = check_members(members, label)
    parent, staging = _staging(target, label)
    try:
        _fill(parent, staging, reader, members, rewrites, label, target)
        _move(parent, staging, target, label)
    except BaseException:
        _remove(parent, staging, target)
        raise
    finally:
        os.close(parent)
    return list(rewrites.values())


def _staging(target: Target, label: str) -> tuple[int, str]:
    """(a descriptor of DIR's parent, a new private directory in it, by name).

    Beside DIR, so that the final rename stays on one file system; the random
    name never collides with what is there.
    """
    try:
        parent = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _write_failure(e, label, None, target) from e
    staging = f".migrate-extract-{secrets.token_hex(8)}"
    try:
        os.mkdir(staging, DIR_MODE, dir_fd=parent)
    except OSError as e:
        os.close(parent)
        raise _write_failure(e, label, None, target) from e
    return parent, staging


def _fill(parent: int, staging: str, reader: RangeReader, members: list[Member],
          rewrites: dict[str, Rewrite], label: str, target: Target) -> None:
    current: Member | None = None
    try:
        root = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=parent)
        try:
            os.fchmod(root, DIR_MODE)
            writer = TreeWriter(root)
            for current in members:
                _write(writer, current, reader, rewrites)
            # Writing into a directory changes its time: set them once all is in.
            for current in members:
                if current.kind == "dir" and split_name(current.name):
                    writer.set_dir_time(current.name, current.mtime)
        finally:
            os.close(root)
    except Unsafe as e:
        raise _unsafe(label, current.name if current else "", str(e)) from e
    except ShortRead as e:
        assert current is not None
        raise ArchiveError(label, f"truncated: its header declares {current.size} bytes but "
                           f"the archive ends {e.got} bytes into it", member=current.name,
                           hint="the archive was cut short; copy it again from the node; "
                           "nothing was extracted") from e
    except OSError as e:
        raise _write_failure(e, label, current, target) from e


def _write(writer: TreeWriter, m: Member, reader: RangeReader,
           rewrites: dict[str, Rewrite]) -> None:
    if m.kind == "dir":
        writer.directory(m.name)
    elif m.kind == "file":
        reader.seek(m.offset)
        writer.file(m.name, m.mtime, m.size, reader)
    elif m.kind == "symlink":
        rewrite = rewrites.get(m.name)
        writer.symlink(m.name, rewrite.written if rewrite else m.linkname)
    elif m.kind == "hardlink":
        writer.hardlink(m.name, m.linkname)
    elif m.kind == "fifo":
        writer.fifo(m.name, m.mtime)
    else:
        raise Unsafe(f"is a {m.kind} special file")


def _move(parent: int, staging: str, target: Target, label: str) -> None:
    """Rename the finished tree to DIR: atomic, and it never replaces a non-empty directory."""
    try:
        os.rename(staging, target.path.name, src_dir_fd=parent, dst_dir_fd=parent)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise _not_empty(target) from e  # something was put there since the check
        raise _write_failure(e, label, None, target) from e


def _remove(parent: int, staging: str, target: Target) -> None:
    """Delete the staging tree (descriptor-based, never following a link)."""

    def failed(_func: object, _path: object, exc: tuple[type, BaseException, object]) -> None:
        log.warning("could not remove the partial extraction %s: %s",
                    target.parent / staging, exc[1])

    shutil.rmtree(staging, dir_fd=parent, onerror=failed)


def _write_failure(e: OSError, label: str, m: Member | None, target: Target) -> ArchiveError:
    """An OSError met while writing, with a hint chosen by its errno."""
    where = target.parent
    why = {
        errno.ENOSPC: f"the file system holding {where} is full: free space or extract elsewhere",
        errno.EDQUOT: f"your quota on the file system holding {where} is used up: free space "
                      "or extract elsewhere",
        errno.EACCES: f"check that you may create files in {where}, or extract elsewhere",
        errno.ENAMETOOLONG: f"a name in this entry is too long for the file system holding "
                            f"{where}: extract to one that allows longer names",
    }
    why[errno.EPERM] = why[errno.EACCES]
    hint = why.get(e.errno or 0)
    return ArchiveError(label, f"cannot extract into {target.shown}: {e.strerror or e}",
                        hint=f"{hint}; nothing was extracted" if hint else "nothing was extracted",
                        member=m.name if m else None)
