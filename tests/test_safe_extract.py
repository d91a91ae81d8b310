"""`rootfs-diff --extract`: untrusted rootfs-diff.tar entries never reach outside DIR.

Each hostile archive is run through the CLI boundary and checked for the exact
``error:`` and ``hint:`` lines and exit code, and for its effects: the whole
tree around DIR (every entry, link targets, file bytes, modes) and the modes
of every directory above DIR are snapshotted before and compared after, so a
file written beside DIR or a chmod two levels up is caught; a failed extraction
leaves DIR as it was (absent, or the same empty directory). The writer
(`migrate.adapters.nofollow`) is also tested on its own, as the second guard.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import stat
import string
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrate.adapters import nofollow
from migrate.adapters.archive import NestedTar
from migrate.adapters.safe_extract import Target, _write_failure
from migrate.validation import validate
from tests.conftest import REPO, Result, deadline
from tests.test_untrusted_input import Entry, assert_clean_error, inner_tar, read_members

USAGE, INVALID_INPUT, NOT_FOUND = 2, 3, 4  # documented exit codes (migrate.errors.ExitCode)
UNSAFE_HINT = "hint: the archive may be crafted; nothing was extracted"
MTIME = 1677737263  # what inner_tar stamps on every entry
OUT = "{OUT}"  # replaced by a directory outside the extraction target
LONG = ["d" * 250] * 18  # 18 components: 4,517 characters, past PATH_MAX (4,096)

Cli = Callable[..., Result]
Snapshot = dict[str, tuple[Any, ...]]


# --- helpers -------------------------------------------------------------------------------


def snapshot(root: Path) -> Snapshot:
    """``root`` and everything below it, links never followed: kind, mode, bytes or target.

    Walked with directory descriptors (os.fwalk), so paths past PATH_MAX are seen too.
    """
    out: Snapshot = {".": ("dir", stat.S_IMODE(os.lstat(root).st_mode))}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            key = os.path.normpath(os.path.join(rel, name))
            if stat.S_ISLNK(st.st_mode):
                out[key] = ("link", os.readlink(name, dir_fd=dirfd))
            elif stat.S_ISDIR(st.st_mode):
                out[key] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
                with os.fdopen(fd, "rb") as f:
                    out[key] = ("file", stat.S_IMODE(st.st_mode), f.read(), st.st_nlink)
    return out


def above(dest: Path) -> list[tuple[str, int]]:
    """The mode of every existing directory above ``dest``, up to /."""
    return [(str(p), stat.S_IMODE(os.lstat(p).st_mode)) for p in dest.parents if p.exists()]


@pytest.fixture
def rootfs_archive(make_archive: Callable[..., Path]) -> Callable[[list[Entry]], Path]:
    """An archive whose rootfs-diff.tar holds exactly ``entries`` (in that order).

    ArchiveSpec.extra_members come after the generated members, so the archive
    holds two rootfs-diff.tar entries; the later (ours) wins, as when unpacked.
    """

    def make(entries: list[Entry]) -> Path:
        path = make_archive(extra_members={"rootfs-diff.tar": inner_tar(entries)})
        names = [i.name for i, _ in read_members(path)]
        assert names.count("rootfs-diff.tar") == 2 and names[-1] == "rootfs-diff.tar"
        return path

    return make


def failed_extract(cli: Cli, tmp_path: Path, arch: Path, dest: Path, code: int,
                   line: str, hint: str) -> None:
    """Extract ``arch`` into ``dest``: exactly ``line`` and ``hint``, and nothing changed."""
    before, modes = snapshot(tmp_path), above(dest)
    r = cli("rootfs-diff", arch, "--extract", dest)
    assert_clean_error(r, code, line)
    assert r.err.splitlines()[1] == hint
    assert snapshot(tmp_path) == before  # no file beside DIR, no leftover staging, DIR as it was
    assert above(dest) == modes  # no chmod through a link, however far up


# --- hostile entries: refused before anything is written ---------------------------------

Q = "a/b/q"  # the probe's symlink, two levels down, pointing back at DIR: ../..
DEEP = "/".join(LONG)

UNSAFE: list[tuple[str, list[Entry], str, str]] = [
    # (id, entries, member at fault, reason)
    ("dotdot", [("../escape", "file", b"x")], "../escape", "has a '..' path component"),
    ("dotdot-inner", [("a/../../escape", "file", b"x")], "a/../../escape",
     "has a '..' path component"),
    ("absolute", [(f"{OUT}/abs-escape", "file", b"x")], f"{OUT}/abs-escape",
     "has an absolute path"),
    ("symlink-out", [("link", "symlink", "../../outside")], "link",
     "is a symlink pointing out of the target ('../../outside')"),
    ("symlink-out-to-shadow", [("etc/passwd-", "symlink", "../../etc/shadow")], "etc/passwd-",
     "is a symlink pointing out of the target ('../../etc/shadow')"),
    # An absolute target is written relative (see test_absolute_symlinks_written_inside),
    # then checked as any link: here through a link that leads out of DIR by itself...
    ("absolute-into-a-link-out", [("etc/mtab", "symlink", "/proc/mounts"),
                                  ("proc", "symlink", "../..")], "proc",
     "is a symlink pointing out of the target ('../..')"),
    # ... and through one that leads out only once a later link redirects it.
    ("absolute-into-a-redirected-link", [("y", "symlink", "/p/q/z"),
                                         ("p/q", "symlink", "r/../.."),
                                         ("p/r", "symlink", "..")], "y",
     "is a symlink pointing out of the target ('/p/q/z', written as 'p/q/z')"),
    ("through-an-absolute-link", [("x", "symlink", "/d/l"), ("d/l", "symlink", ".."),
                                  ("y", "symlink", "x/..")], "y",
     "is a symlink pointing out of the target ('x/..')"),
    ("symlink-dotdot-then-write", [("link", "symlink", ".."), ("link/file", "file", b"x")],
     "link", "is a symlink pointing out of the target ('..')"),
    ("hardlink-out", [("hl", "hardlink", "../x")], "hl",
     "is a hard link to '../x', outside the target"),
    ("char-device", [("dev", "char", None)], "dev", "is a char special file"),
    ("block-device", [("dev", "block", None)], "dev", "is a block special file"),
    ("fifo-through-link-out", [("link", "symlink", ".."), ("link/f", "fifo", None)], "link",
     "is a symlink pointing out of the target ('..')"),
    ("hardlink-to-fifo", [("p", "fifo", None), ("h", "hardlink", "p")], "h",
     "is a hard link to 'p', which is not a file extracted before it"),
    ("write-through-fifo", [("p", "fifo", None), ("p/x", "file", b"x")], "p/x",
     "would be written through the FIFO 'p'"),
    ("benign-then-dotdot", [("ok.txt", "file", b"fine"), ("../escape", "file", b"x")],
     "../escape", "has a '..' path component"),
    # Breach 1: a symlink that stays inside (a/b/q -> DIR itself), then a HARD link to it,
    # which would make DIR/h a second symlink, one level higher: ../.. out of DIR.
    ("probe-hardlink-to-symlink",
     [("a", "dir", None), ("a/b", "dir", None), (Q, "symlink", "../.."), ("h", "hardlink", Q),
      ("h/escape", "file", b"x")],
     "h", f"is a hard link to '{Q}', which is not a file extracted before it"),
    ("hardlink-to-symlink-long-names",
     [(DEEP, "dir", None), (f"{DEEP}/q", "symlink", "/".join([".."] * len(LONG))),
      ("h", "hardlink", f"{DEEP}/q"), ("h/escape", "file", b"x")],
     "h", f"is a hard link to '{DEEP}/q', which is not a file extracted before it"),
    # The variant that chmods DIR/../.. : a directory entry over the link, mode 0644.
    ("probe-dir-over-symlink", [(Q, "symlink", "../.."), (Q, "dir", None)], Q,
     "replaces an earlier symlink of the same name"),
    ("links-chained-through-hardlinks",
     [(Q, "symlink", "../.."), ("h1", "hardlink", Q), ("h2", "hardlink", "h1"),
      ("h2/escape", "file", b"x")],
     "h1", f"is a hard link to '{Q}', which is not a file extracted before it"),
    ("hardlink-to-later-file", [("h", "hardlink", "f"), ("f", "file", b"x")], "h",
     "is a hard link to 'f', which is not a file extracted before it"),
    ("hardlink-to-dir", [("d", "dir", None), ("h", "hardlink", "d")], "h",
     "is a hard link to 'd', which is not a file extracted before it"),
    ("symlink-replaces-dir", [("d", "dir", None), ("d", "symlink", ".")], "d",
     "replaces an earlier directory of the same name"),
    ("dir-replaces-file", [("x", "file", b"x"), ("x", "dir", None)], "x",
     "replaces an earlier file of the same name"),
    ("file-replaces-file", [("x", "file", b"1"), ("x", "file", b"2")], "x",
     "replaces an earlier file of the same name"),
    ("write-through-inside-symlink", [("d", "dir", None), ("l", "symlink", "d"),
                                      ("l/x", "file", b"x")], "l/x",
     "would be written through the symlink 'l'"),
    ("write-under-file", [("x", "file", b"x"), ("x/y", "file", b"y")], "x/y",
     "would be written through the file 'x'"),
    # Each link stays inside when it comes; the last one redirects the first out of DIR.
    ("chain", [("a", "symlink", "."), ("b", "symlink", "a/.."), ("b/escape", "file", b"x")],
     "b", "is a symlink pointing out of the target ('a/..')"),
    ("later-link-redirects", [("x", "symlink", "a/b"), ("y", "symlink", "x/../.."),
                              ("a", "symlink", ".")], "y",
     "is a symlink pointing out of the target ('x/../..')"),
    ("symlink-without-target", [("ok.txt", "file", b"x"), ("empty", "symlink", "")], "empty",
     "is a symlink to an impossible target ''"),
]


@pytest.mark.parametrize(("entries", "bad", "reason"), [u[1:] for u in UNSAFE],
                         ids=[u[0] for u in UNSAFE])
def test_unsafe_entry_writes_nothing(cli: Cli, tmp_path: Path,
                                     rootfs_archive: Callable[[list[Entry]], Path],
                                     entries: list[Entry], bad: str, reason: str) -> None:
    """A crafted entry (or chain of entries) is refused before anything is written."""
    outside = tmp_path / "outside"
    outside.mkdir()

    def fill(s: str) -> str:
        return s.replace(OUT, str(outside))

    arch = rootfs_archive([(fill(n), k, fill(d) if isinstance(d, str) else d)
                           for n, k, d in entries])
    dest = tmp_path / "parent" / "dest"
    dest.parent.mkdir()
    failed_extract(cli, tmp_path, arch, dest, INVALID_INPUT,
                   f"error: {arch}: rootfs-diff.tar: {fill(bad)}: refusing to extract: "
                   f"{fill(reason)}", UNSAFE_HINT)
    assert not dest.exists()


def probe_chain(dest: Path, up: int, last: str) -> tuple[list[Entry], str]:
    """The probe's archive that defeated tarfile's ``data`` filter (exit 0, escaped).

    Short step symlinks ``a``, ``b``, ... each lead to a 247-character directory,
    so member names stay short while the real paths run past PATH_MAX, where
    os.path.realpath stops resolving and the filter takes links for plain names.
    ``q`` at the bottom points back at DIR; a hard link to it ``up`` levels
    higher is a copy of that symlink leading ``up`` levels above DIR; ``last``
    then writes a file through it ("file") or chmods where it leads ("dir").
    Returns (entries, the first entry written through a symlink).
    """
    comp = "d" * 247
    depth = (4200 - len(str(dest))) // 248 + 1  # from here the real path is past PATH_MAX
    short: list[str] = []
    entries: list[Entry] = []
    for step in string.ascii_lowercase[: depth + up]:
        parent = "/".join(short)
        entries += [(os.path.join(parent, comp), "dir", None),
                    (os.path.join(parent, step), "symlink", comp)]
        short.append(step)
    q = "/".join(short) + "/q"
    h = "/".join(short[:depth]) + "/h"
    entries += [(q, "symlink", "/".join([".."] * len(short))), (h, "hardlink", q),
                (f"{h}/escape", "file", b"x") if last == "file" else (h, "dir", None)]
    return entries, f"a/{comp}"


@pytest.mark.parametrize(("up", "last"), [(1, "file"), (2, "dir")],
                         ids=["file-beside-dir", "chmod-two-levels-up"])
def test_probe_long_paths(cli: Cli, tmp_path: Path,
                          rootfs_archive: Callable[[list[Entry]], Path], up: int,
                          last: str) -> None:
    """Breach 1 as the probe built it (before this routine: exit 0 and an escape)."""
    dest = tmp_path / "parent" / "dest"
    dest.parent.mkdir()
    entries, bad = probe_chain(dest, up, last)
    arch = rootfs_archive(entries)
    failed_extract(cli, tmp_path, arch, dest, INVALID_INPUT,
                   f"error: {arch}: rootfs-diff.tar: {bad}: refusing to extract: would be "
                   "written through the symlink 'a'", UNSAFE_HINT)
    assert not dest.exists()


def test_impossible_mtime(cli: Cli, tmp_path: Path, make_archive: Callable[..., Path]) -> None:
    """A pax mtime no time_t can hold (os.utime would raise) is refused like other hostile input."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("old")
        info.size, info.mtime = 1, 1 << 70
        tf.addfile(info, io.BytesIO(b"x"))
    arch = make_archive(extra_members={"rootfs-diff.tar": buf.getvalue()})
    dest = tmp_path / "dest"
    failed_extract(cli, tmp_path, arch, dest, INVALID_INPUT,
                   f"error: {arch}: rootfs-diff.tar: old: refusing to extract: has a "
                   f"modification time out of range ({1 << 70})", UNSAFE_HINT)


# --- failures part-way: the staging directory goes, DIR stays as it was -----------------

NAME_300 = "n" * 300


@pytest.mark.parametrize("dest_exists", [False, True], ids=["new-dir", "empty-dir"])
def test_name_too_long_part_way(cli: Cli, tmp_path: Path,
                                rootfs_archive: Callable[[list[Entry]], Path],
                                dest_exists: bool) -> None:
    """A 300-character component (NAME_MAX is 255) after entries already written."""
    arch = rootfs_archive([("ok", "dir", None), ("ok/file", "file", b"written first"),
                           (f"ok/{NAME_300}", "file", b"x")])
    dest = tmp_path / "dest"
    if dest_exists:
        dest.mkdir(mode=0o755)
    failed_extract(cli, tmp_path, arch, dest, INVALID_INPUT,
                   f"error: {arch}: rootfs-diff.tar: ok/{NAME_300}: cannot extract into {dest}: "
                   "File name too long",
                   f"hint: a name in this entry is too long for the file system holding "
                   f"{tmp_path}: extract to one that allows longer names; nothing was extracted")
    assert dest.exists() == dest_exists


def test_archive_cut_during_extraction(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       rootfs_archive: Callable[[list[Entry]], Path]) -> None:
    """The archive shrinks after its index was read: the copy stops part-way, at the cut."""
    big = 3 << 20
    entries: list[Entry] = [("etc", "dir", None), ("etc/first", "file", b"first"),
                            ("big", "file", b"b" * big)]
    arch = rootfs_archive(entries)
    with tarfile.open(arch) as tf:
        outer_at = [i for i in tf.getmembers() if i.name == "rootfs-diff.tar"][-1].offset_data
    with tarfile.open(fileobj=io.BytesIO(inner_tar(entries))) as tf:
        data_at = tf.getmember("big").offset_data
    kept = (1 << 20) + 1234  # more than one copy chunk, so some of it was written
    real = NestedTar.extract

    def cut_then_extract(self: NestedTar, target: Target) -> Any:
        os.truncate(arch, outer_at + data_at + kept)
        return real(self, target)

    monkeypatch.setattr(NestedTar, "extract", cut_then_extract)
    dest = tmp_path / "dest"
    before = snapshot(tmp_path)
    r = cli("rootfs-diff", arch, "--extract", dest)
    assert_clean_error(r, INVALID_INPUT,
                       f"error: {arch}: rootfs-diff.tar: big: truncated: its header declares "
                       f"{big} bytes but the archive ends {kept} bytes into it")
    assert r.err.splitlines()[1] == ("hint: the archive was cut short; copy it again from the "
                                     "node; nothing was extracted")
    del before["checkpoint.tar"]  # the archive itself, cut by the test
    after = snapshot(tmp_path)
    del after["checkpoint.tar"]
    assert after == before


def test_file_size_limit_part_way(rootfs_archive: Callable[[list[Entry]], Path],
                                  tmp_path: Path) -> None:
    """EFBIG (RLIMIT_FSIZE): an errno without a hint of its own gives its own text."""
    arch = rootfs_archive([("small", "file", b"s"), ("big", "file", b"b" * (2 << 20))])
    dest = tmp_path / "dest"
    before = snapshot(tmp_path)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    r = subprocess.run([sys.executable, "-m", "migrate", "rootfs-diff", str(arch),
                        "--extract", str(dest)], cwd=REPO, capture_output=True, text=True,
                       preexec_fn=cap, timeout=120)
    assert_clean_error(r, INVALID_INPUT,
                       f"error: {arch}: rootfs-diff.tar: big: cannot extract into {dest}: "
                       "File too large")
    assert r.stderr.splitlines()[1] == "hint: nothing was extracted"
    assert snapshot(tmp_path) == before


def test_interrupted_part_way(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              rootfs_archive: Callable[[list[Entry]], Path]) -> None:
    """Ctrl-C after the first file: exit 130, and the staging directory is gone."""
    arch = rootfs_archive([("a", "file", b"a"), ("b", "file", b"b")])
    real = nofollow.TreeWriter.file

    def file_then_interrupt(self: nofollow.TreeWriter, name: str, *args: Any) -> None:
        if name == "b":
            raise KeyboardInterrupt
        real(self, name, *args)

    monkeypatch.setattr(nofollow.TreeWriter, "file", file_then_interrupt)
    dest = tmp_path / "dest"
    before = snapshot(tmp_path)
    r = cli("rootfs-diff", arch, "--extract", dest)
    assert (r.code, r.err) == (130, "error: interrupted\n")
    assert snapshot(tmp_path) == before


def test_dir_filled_by_someone_else_meanwhile(cli: Cli, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              counters_archive: Path) -> None:
    """DIR gets a file after the check: the final rename refuses to replace it."""
    dest = tmp_path / "dest"
    dest.mkdir()
    real = NestedTar.extract

    def fill_then_extract(self: NestedTar, target: Target) -> Any:
        (dest / "theirs").write_text("keep")
        return real(self, target)

    monkeypatch.setattr(NestedTar, "extract", fill_then_extract)
    r = cli("rootfs-diff", counters_archive, "--extract", dest)
    assert_clean_error(r, USAGE, f"error: {dest} exists and is not an empty directory")
    assert snapshot(tmp_path)["dest/theirs"][2] == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["dest"] and os.listdir(dest) == ["theirs"]


@pytest.mark.parametrize(("code", "hint"), [
    (errno.ENOSPC, "the file system holding /srv is full: free space or extract elsewhere; "
                   "nothing was extracted"),
    (errno.EDQUOT, "your quota on the file system holding /srv is used up: free space or "
                   "extract elsewhere; nothing was extracted"),
    (errno.EACCES, "check that you may create files in /srv, or extract elsewhere; nothing "
                   "was extracted"),
    (errno.EPERM, "check that you may create files in /srv, or extract elsewhere; nothing "
                  "was extracted"),
    (errno.EIO, "nothing was extracted"),
], ids=["ENOSPC", "EDQUOT", "EACCES", "EPERM", "EIO"])
def test_write_failure_hint_by_errno(code: int, hint: str) -> None:
    """The hint follows the errno (root cannot meet EACCES here, nor ENOSPC without a mount)."""
    from migrate.adapters.archive import Member

    e = _write_failure(OSError(code, os.strerror(code)), "ckpt.tar: rootfs-diff.tar",
                       Member("etc/x", 1, 0, "file"), Target(Path("/srv/out"), "out"))
    assert (e.message, e.hint) == (
        f"ckpt.tar: rootfs-diff.tar: etc/x: cannot extract into out: {os.strerror(code)}", hint)


# --- DIR itself -----------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["file", "link-out"])
def test_non_empty_dir_refused_before_reading(cli: Cli, tmp_path: Path, content: str) -> None:
    """DIR holding anything is refused before the archive is even opened (it does not exist)."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "outside").mkdir()
    if content == "file":
        (dest / "mine").write_text("keep me")
    else:
        (dest / "evil").symlink_to(tmp_path / "outside")
    failed_extract(cli, tmp_path, tmp_path / "no-such.tar", dest, USAGE,
                   f"error: {dest} exists and is not an empty directory",
                   "hint: give a new or empty directory to --extract: extraction never mixes "
                   "into or overwrites existing files")


def test_dir_is_a_file(cli: Cli, tmp_path: Path, counters_archive: Path) -> None:
    dest = tmp_path / "dest"
    dest.write_text("x")
    failed_extract(cli, tmp_path, counters_archive, dest, USAGE,
                   f"error: {dest} exists and is not a directory",
                   "hint: give a new or empty directory to --extract")


def test_dir_parent_missing(cli: Cli, tmp_path: Path, counters_archive: Path) -> None:
    dest = tmp_path / "no" / "dest"
    failed_extract(cli, tmp_path, counters_archive, dest, NOT_FOUND,
                   f"error: {tmp_path / 'no'}: no such directory",
                   "hint: create it first: --extract creates only DIR itself")


# --- what a real rootfs diff gives ---------------------------------------------------------


def test_normal_rootfs_diff_extracts_exactly(cli: Cli, tmp_path: Path,
                                            rootfs_archive: Callable[[list[Entry]], Path]
                                            ) -> None:
    """Unlisted parent dirs, files, relative symlinks inside, a hard link, a root entry,
    a path past PATH_MAX: all land as listed, directories 0700, files 0600, times kept."""
    arch = rootfs_archive([
        ("./", "dir", None),
        ("etc/app", "dir", None),
        ("etc/app/conf.ini", "file", b"key=value\n"),
        ("usr/local/bin/tool", "file", b"#!/bin/sh\necho tool\n"),
        ("usr/local/bin/tool-again", "hardlink", "usr/local/bin/tool"),
        ("usr/bin/tool", "symlink", "../local/bin/tool"),
        ("etc/current", "symlink", "app"),
        ("var/log/empty", "file", b""),
        (f"{DEEP}/deep.txt", "file", b"far down\n"),
    ])
    dest = tmp_path / "parent" / "dest"
    dest.parent.mkdir()
    modes = above(dest)
    r = cli("rootfs-diff", arch, "--extract", dest)
    assert (r.code, r.err) == (0, f"extracted 7 entries to {dest}\n")
    tool = b"#!/bin/sh\necho tool\n"
    deep_dirs = {"/".join(LONG[:i]): ("dir", 0o700) for i in range(1, len(LONG) + 1)}
    assert snapshot(dest) == {
        ".": ("dir", 0o700),
        "etc": ("dir", 0o700), "etc/app": ("dir", 0o700),
        "etc/app/conf.ini": ("file", 0o600, b"key=value\n", 1),
        "etc/current": ("link", "app"),
        "usr": ("dir", 0o700), "usr/bin": ("dir", 0o700), "usr/local": ("dir", 0o700),
        "usr/local/bin": ("dir", 0o700),
        "usr/local/bin/tool": ("file", 0o600, tool, 2),
        "usr/local/bin/tool-again": ("file", 0o600, tool, 2),
        "usr/bin/tool": ("link", "../local/bin/tool"),
        "var": ("dir", 0o700), "var/log": ("dir", 0o700),
        "var/log/empty": ("file", 0o600, b"", 1),
        **deep_dirs,
        f"{DEEP}/deep.txt": ("file", 0o600, b"far down\n", 1),
    }
    assert os.stat(dest / "usr/local/bin/tool").st_ino == \
        os.stat(dest / "usr/local/bin/tool-again").st_ino
    for name in ("etc/app", "etc/app/conf.ini", "usr/local/bin/tool", "var/log/empty"):
        assert os.lstat(dest / name).st_mtime == MTIME, name  # listed entries keep their time
    assert os.listdir(dest.parent) == ["dest"]  # no staging directory left beside it
    assert above(dest) == modes


ABSOLUTE: list[tuple[str, str, str]] = [
    # (symlink, its absolute target, the relative target written)
    ("etc/mtab", "/proc/mounts", "../proc/mounts"),  # what CRI-O adds to every root without one
    ("a/b/up", "/a/../../../x", "../../x"),  # ".." at the root stays at the root, as in a chroot
    ("root", "/", "."),
    ("usr/lib/shared", "/usr/share/", "../share/"),  # the trailing "/" (a directory) is kept
    ("etc/localtime", "//usr/./share/zoneinfo/UTC", "../usr/share/zoneinfo/UTC"),
]


def test_absolute_symlinks_written_inside(cli: Cli, tmp_path: Path,
                                          rootfs_archive: Callable[[list[Entry]], Path]) -> None:
    """An absolute target is a path in the container's root: written relative, inside DIR.

    A host path (here a directory outside DIR that exists) is taken the same way: the
    link leads to that path inside DIR, never to the host's. Each rewrite is told, one
    line each, and in -o json's rewritten_links.
    """
    outside = tmp_path / "outside"
    outside.mkdir()
    host = (str(outside), str(outside)[1:])
    entries: list[Entry] = [("etc/app.conf", "file", b"x=1\n"), ("etc/rel", "symlink", "app.conf")]
    entries += [(n, "symlink", t) for n, t, _ in ABSOLUTE] + [("host", "symlink", host[0])]
    arch = rootfs_archive(entries)
    dest = tmp_path / "dest"
    r = cli("rootfs-diff", arch, "--extract", dest)
    rewritten = [*ABSOLUTE, ("host", *host)]
    assert (r.code, r.err) == (0, "".join(f"{n}: symlink to {t} written as {w}\n"
                                          for n, t, w in rewritten)
                               + f"extracted {len(entries)} entries to {dest}\n")
    snap = snapshot(dest)
    assert {n: snap[n] for n, _, _ in rewritten} == {n: ("link", w) for n, _, w in rewritten}
    assert snap["etc/rel"] == ("link", "app.conf")
    for name, _, _ in rewritten:
        assert Path(os.path.realpath(dest / name)).is_relative_to(dest), name
    assert os.listdir(outside) == []

    json_dest = tmp_path / "json"
    r = cli("rootfs-diff", arch, "--extract", json_dest, "-o", "json")
    validate(r.json(), "rootfs-diff.schema.json", "rootfs-diff --extract")
    assert r.json()["rewritten_links"] == [{"path": n, "target": t, "written": w}
                                           for n, t, w in rewritten]
    assert snapshot(json_dest) == snap


def _chain(links: int) -> list[Entry]:
    """d/c0 -> d/c1 -> ... -> DIR in ``links`` links, each inside DIR, and via-chain ->
    d/c0/..: DIR's parent, if the chain can be followed at all."""
    return [("d", "dir", None), *[(f"d/c{i}", "symlink", f"c{i + 1}") for i in range(links - 1)],
            (f"d/c{links - 1}", "symlink", ".."), ("via-chain", "symlink", "d/c0/..")]


def test_links_the_kernel_could_not_follow_are_written_as_they_are(
        cli: Cli, tmp_path: Path, rootfs_archive: Callable[[list[Entry]], Path]) -> None:
    """A loop of links, and a path through more links than the kernel follows in one
    lookup (40) that would end outside: neither can lead anywhere (ELOOP), so both are
    written as links, and the check of each ends."""
    entries: list[Entry] = [("loop-a", "symlink", "loop-b"), ("loop-b", "symlink", "loop-a"),
                            ("via-loop", "symlink", "loop-a/../.."), *_chain(41)]
    arch = rootfs_archive(entries)
    dest = tmp_path / "dest"
    with deadline(30, "the extraction"):
        r = cli("rootfs-diff", arch, "--extract", dest)
    links = [(n, t) for n, kind, t in entries if kind == "symlink"]
    assert (r.code, r.err) == (0, f"extracted {len(links)} entries to {dest}\n")
    snap = snapshot(dest)
    assert {n: snap[n] for n, _ in links} == {n: ("link", t) for n, t in links}
    for name in ("loop-a", "via-loop", "via-chain"):
        with pytest.raises(OSError) as e:
            os.stat(dest / name)
        assert e.value.errno == errno.ELOOP, name


def test_a_path_through_40_links_is_followed(cli: Cli, tmp_path: Path,
                                             rootfs_archive: Callable[[list[Entry]], Path]
                                             ) -> None:
    """A link whose text leads out through 40 links is refused: the kernel follows as
    many in one lookup (a lookup of d/c0/.. leaves DIR), and so does the check."""
    arch = rootfs_archive(_chain(40))
    failed_extract(cli, tmp_path, arch, tmp_path / "dest", 3,
                   f"error: {arch}: rootfs-diff.tar: via-chain: refusing to extract: is a "
                   "symlink pointing out of the target ('d/c0/..')",
                   "hint: the archive may be crafted; nothing was extracted")


def test_fifo_recreated_private(cli: Cli, tmp_path: Path,
                                rootfs_archive: Callable[[list[Entry]], Path]) -> None:
    """A FIFO the container made (Podman records them) comes back as a FIFO, 0600, never opened."""
    arch = rootfs_archive([("run", "dir", None), ("run/ctl.fifo", "fifo", None)])
    dest = tmp_path / "dest"
    r = cli("rootfs-diff", arch, "--extract", dest)
    assert (r.code, r.err) == (0, f"extracted 1 entry to {dest}\n")
    st = os.lstat(dest / "run/ctl.fifo")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime == MTIME


def test_existing_empty_dir_is_filled(cli: Cli, tmp_path: Path, counters_archive: Path) -> None:
    """An existing empty DIR is replaced by the extracted tree (0700)."""
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o755)
    r = cli("rootfs-diff", counters_archive, "--extract", dest)
    assert r.code == 0, r.err
    snap = snapshot(dest)
    assert snap["."] == ("dir", 0o700)
    assert snap["home/counter/test-file"] == ("file", 0o600, b"test-file\n", 1)
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_benign_private_modes(cli: Cli, make_archive: Callable[..., Path],
                              tmp_path: Path) -> None:
    """A benign rootfs-diff.tar extracts, files 0600 and directories 0700 (they may hold secrets)."""
    files = {"home/counter/logfile": b"counter: 1\n", "etc/app/conf.ini": b"key=value\n"}
    arch = make_archive(rootfs_files=files)
    dest = tmp_path / "dest"
    r = cli("rootfs-diff", arch, "--extract", dest)
    assert r.code == 0, r.err
    assert "Traceback" not in r.out + r.err
    got = {str(p.relative_to(dest)): p for p in dest.rglob("*")}
    assert {n: p.read_bytes() for n, p in got.items() if p.is_file()} == files
    assert set(got) == {*files, "home", "home/counter", "etc", "etc/app"}
    for p in [dest, *got.values()]:
        assert not p.is_symlink()
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p


# --- the writer alone: the second guard, without the static check ------------------------


@pytest.fixture
def planted(tmp_path: Path) -> tuple[nofollow.TreeWriter, Path, Snapshot]:
    """A writer over root/, which already holds links out to outside/ (as a race could plant)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "target").write_bytes(b"original")
    (root / "dirlink").symlink_to(outside)
    (root / "filelink").symlink_to(outside / "target")
    (root / "upper").symlink_to("..")
    (root / "notmine").write_bytes(b"not written by the writer")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield nofollow.TreeWriter(fd), tmp_path, snapshot(tmp_path)
    os.close(fd)


@pytest.mark.parametrize(("act", "error", "text"), [
    (lambda w: w.file("dirlink/x", 0, 1, io.BytesIO(b"x")), nofollow.Unsafe,
     "would be written through the symlink 'dirlink'"),
    (lambda w: w.directory("upper/sub"), nofollow.Unsafe,
     "would be written through the symlink 'upper'"),
    (lambda w: w.symlink("dirlink/l", "."), nofollow.Unsafe,
     "would be written through the symlink 'dirlink'"),
    (lambda w: w.file("filelink", 0, 1, io.BytesIO(b"x")), FileExistsError, None),
    (lambda w: w.hardlink("h", "filelink"), nofollow.Unsafe,
     "is a hard link to 'filelink', which is not a file extracted before it"),
    (lambda w: w.hardlink("h", "notmine"), nofollow.Unsafe,
     "is a hard link to 'notmine', which is not a file extracted before it"),
    (lambda w: w.hardlink("h", "dirlink/target"), nofollow.Unsafe,
     "would be written through the symlink 'dirlink'"),
    (lambda w: w.file("../escape", 0, 1, io.BytesIO(b"x")), nofollow.Unsafe,
     "has a '..' path component"),
    (lambda w: w.file("/tmp/escape", 0, 1, io.BytesIO(b"x")), nofollow.Unsafe,
     "has an absolute path"),
], ids=["file-through-dirlink", "dir-through-dotdot-link", "symlink-through-dirlink",
        "file-onto-filelink", "hardlink-to-symlink", "hardlink-to-foreign-file",
        "hardlink-through-dirlink", "dotdot", "absolute"])
def test_writer_never_follows(planted: tuple[nofollow.TreeWriter, Path, Snapshot],
                              act: Callable[[nofollow.TreeWriter], None],
                              error: type[Exception], text: str | None) -> None:
    writer, tmp_path, before = planted
    with pytest.raises(error) as raised:
        act(writer)
    if text is not None:
        assert str(raised.value) == text
    assert snapshot(tmp_path) == before


def test_writer_short_source(planted: tuple[nofollow.TreeWriter, Path, Snapshot]) -> None:
    """A source ending before the promised size stops the copy and says where."""
    writer, _, _ = planted
    with pytest.raises(nofollow.ShortRead) as raised:
        writer.file("short", 0, 10, io.BytesIO(b"1234"))
    assert raised.value.got == 4
