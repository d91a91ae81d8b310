"""Untrusted input: hostile or damaged checkpoint archives meet a clean error.

Every case asserts the exit code, the exact ``error: ...`` line (computed from
the archive path and the member at fault), that a ``hint: ...`` line follows,
and that no traceback leaks. Hostile entries for ``rootfs-diff --extract`` are
in test_safe_extract.py.
"""

from __future__ import annotations

import io
import os
import random
import resource
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, Result

INVALID_INPUT, NOT_FOUND = 3, 4  # documented exit codes (migrate.errors.ExitCode)
IMG_COMMON = 0x54564319  # CRIU's IMG_COMMON_MAGIC (criu/include/magic.h)
BAD_MAGIC = 0x0BADF00D
SECRET = "RANDOM_1432_KEY"
PAGES2 = "checkpoint/pages-2.img"  # pages of the second process, pid 7
PAGEMAP7 = "checkpoint/pagemap-7.img"

Cli = Callable[..., Result]
Entry = tuple[str, str, bytes | str | None]  # (name, kind, data or link target)


# --- helpers -------------------------------------------------------------------------------


def assert_clean_error(r: Result | subprocess.CompletedProcess[str], code: int,
                       line: str) -> None:
    """Exit ``code``, stderr exactly ``line`` then a hint line, and no traceback anywhere."""
    rc = r.code if isinstance(r, Result) else r.returncode
    out, err = (r.out, r.err) if isinstance(r, Result) else (r.stdout, r.stderr)
    assert "Traceback" not in out + err, err
    assert rc == code, err
    lines = err.splitlines()
    assert lines[:1] == [line]
    assert len(lines) == 2 and lines[1].startswith("hint: ") and lines[1][6:].strip(), err


def read_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Every entry of a tar with its data (None for non-files), in archive order."""
    with tarfile.open(path) as tf:
        return [(i, tf.extractfile(i).read() if i.isreg() else None)  # type: ignore[union-attr]
                for i in tf.getmembers()]


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """Write ``members`` as a new PAX tar, each file's size taken from its data."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is None:
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def rewrite_member(src: Path, dst: Path, name: str, change: Callable[[bytes], bytes]) -> Path:
    """Copy the archive ``src`` to ``dst`` with member ``name``'s bytes passed through ``change``."""
    members = read_members(src)
    assert name in [i.name for i, _ in members], name
    return write_tar(dst, [(i, change(d) if i.name == name and d is not None else d)
                           for i, d in members])


def member_info(path: Path, name: str) -> tarfile.TarInfo:
    """The header of ``name`` (its ``offset``: header start, ``offset_data``: data start)."""
    with tarfile.open(path) as tf:
        return tf.getmember(name)


def cut(src: Path, dst: Path, length: int) -> Path:
    """The first ``length`` bytes of ``src``, as a copy interrupted there would leave it."""
    dst.write_bytes(src.read_bytes()[:length])
    return dst


def set_first_entry_size(image: bytes, size: int) -> bytes:
    """A CRIU image (two magics, then entries) whose first entry claims ``size`` bytes."""
    assert struct.unpack_from("<I", image)[0] == IMG_COMMON
    return image[:8] + struct.pack("<I", size) + image[12:]


def set_type_magic(image: bytes, magic: int) -> bytes:
    """A CRIU image whose type magic (after the common/service magic) is ``magic``."""
    return image[:4] + struct.pack("<I", magic) + image[8:]


def inner_tar(entries: list[Entry]) -> bytes:
    """A rootfs-diff.tar holding exactly ``entries``: file, dir, symlink, hardlink, char,
    block or fifo; data is a file's bytes or a link's target."""
    types = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, 1677737263
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = types[kind]
            if isinstance(data, str):
                info.linkname = data
            if kind in ("char", "block"):
                info.devmajor, info.devminor = 1, 3
            tf.addfile(info)
    return buf.getvalue()


def limited_run(*args: str | Path, limit: int = 1 << 30) -> subprocess.CompletedProcess[str]:
    """``python -m migrate ARGS`` with its address space capped at ``limit`` bytes."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "migrate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, preexec_fn=cap, timeout=120)


# --- CRIU images -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0x7FFFFFFF, 0xFFFFFFFF])
def test_image_entry_size_beyond_end(cli: Cli, counters_archive: Path, tmp_path: Path,
                                     size: int) -> None:
    """pstree.img's first entry declares more bytes than the image holds."""
    member = "checkpoint/pstree.img"
    arch = rewrite_member(counters_archive, tmp_path / "bad.tar", member,
                          lambda d: set_first_entry_size(d, size))
    remain = member_info(arch, member).size - 12
    r = cli("inspect", arch, "--ps-tree")
    assert_clean_error(r, INVALID_INPUT, f"error: {arch}: {member}: entry 0 declares {size} "
                                         f"bytes but only {remain} remain")


def test_image_unknown_magic_core(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    """core-1.img carries a type magic CRIU never wrote."""
    member = "checkpoint/core-1.img"
    arch = rewrite_member(counters_archive, tmp_path / "bad.tar", member,
                          lambda d: set_type_magic(d, BAD_MAGIC))
    r = cli("inspect", arch, "--ps-tree")
    assert_clean_error(r, INVALID_INPUT,
                       f"error: {arch}: {member}: is not a CORE image (unknown magic 0x0badf00d)")


def test_image_unknown_magic_stats(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    """stats-dump carries a type magic CRIU never wrote."""
    arch = rewrite_member(counters_archive, tmp_path / "bad.tar", "stats-dump",
                          lambda d: set_type_magic(d, BAD_MAGIC))
    r = cli("show", arch, "--stats")
    assert_clean_error(r, INVALID_INPUT,
                       f"error: {arch}: stats-dump: is not a STATS image (unknown magic 0x0badf00d)")


def _short_pages(counters_archive: Path, tmp_path: Path) -> tuple[Path, str]:
    """pages-2.img cut to half its size, so pagemap-7.img points past its end."""
    need = member_info(counters_archive, PAGES2).size
    arch = rewrite_member(counters_archive, tmp_path / "bad.tar", PAGES2, lambda d: d[: need // 2])
    line = (f"error: {arch}: {PAGEMAP7}: points past the end of pages-2.img "
            f"(its runs need {need} bytes, the file holds {need // 2})")
    return arch, line


@pytest.mark.parametrize("args", [(), ("--search", SECRET)], ids=["sizes", "search"])
def test_pagemap_past_pages_end_names_member(cli: Cli, counters_archive: Path, tmp_path: Path,
                                             args: tuple[str, ...]) -> None:
    """A pagemap whose runs need more bytes than its pages file holds (error line only)."""
    arch, line = _short_pages(counters_archive, tmp_path)
    r = cli("memparse", arch, *args)
    assert "Traceback" not in r.out + r.err
    assert (r.code, r.err.splitlines()[:1]) == (INVALID_INPUT, [line])


@pytest.mark.parametrize("args", [(), ("--search", SECRET)], ids=["sizes", "search"])
def test_pagemap_past_pages_end(cli: Cli, counters_archive: Path, tmp_path: Path,
                                args: tuple[str, ...]) -> None:
    """A pagemap whose runs need more bytes than its pages file holds: error and hint."""
    arch, line = _short_pages(counters_archive, tmp_path)
    assert_clean_error(cli("memparse", arch, *args), INVALID_INPUT, line)


# --- the tar archive itself --------------------------------------------------------------


@pytest.mark.parametrize("member", ["spec.dump", "config.dump"])
def test_missing_metadata_member(cli: Cli, make_archive: Callable[..., Path],
                                 member: str) -> None:
    """An archive lacking spec.dump or config.dump."""
    arch = make_archive(omit=(member,))
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: {member}: missing from the archive")


def test_missing_stats_member(cli: Cli, make_archive: Callable[..., Path]) -> None:
    """`show --stats` on an archive without stats-dump."""
    arch = make_archive(omit=("stats-dump",))
    assert_clean_error(cli("show", arch, "--stats"), INVALID_INPUT,
                       f"error: {arch}: stats-dump: missing from the archive")


def test_metadata_not_json(cli: Cli, make_archive: Callable[..., Path]) -> None:
    """spec.dump holds bytes that are not JSON."""
    arch = make_archive(extra_members={"spec.dump": b"{not json"})
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: spec.dump: is not valid JSON (Expecting property name "
                       "enclosed in double quotes: line 1 column 2 (char 1))")


@pytest.mark.parametrize("member", [PAGES2, "stats-dump"])
def test_tar_cut_in_member_data(cli: Cli, counters_archive: Path, tmp_path: Path,
                                member: str) -> None:
    """An archive copy interrupted in the middle of a member's data."""
    info = member_info(counters_archive, member)
    into = info.size // 2
    arch = cut(counters_archive, tmp_path / "cut.tar", info.offset_data + into)
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: {member}: truncated: its header declares {info.size} "
                       f"bytes but the archive ends {into} bytes into it")


def test_nested_tar_member_cut(cli: Cli, make_archive: Callable[..., Path]) -> None:
    """rootfs-diff.tar's only entry declares 1 MiB but its data stops after 100 bytes."""
    whole = inner_tar([("big", "file", b"x" * (1 << 20))])
    with tarfile.open(fileobj=io.BytesIO(whole)) as tf:
        data_at = tf.getmember("big").offset_data
    arch = make_archive(extra_members={"rootfs-diff.tar": whole[: data_at + 100]})
    assert_clean_error(cli("rootfs-diff", arch), INVALID_INPUT,
                       f"error: {arch}: rootfs-diff.tar: big: truncated: its header declares "
                       f"{1 << 20} bytes but the archive ends 100 bytes into it")


@pytest.mark.parametrize("member", [PAGES2, "stats-dump"])
def test_tar_cut_in_header(cli: Cli, counters_archive: Path, tmp_path: Path,
                           member: str) -> None:
    """An archive copy interrupted 200 bytes into a member's 512-byte header block.

    tarfile alone takes the cut header for the end of the archive; the reader
    must not, or a damaged archive would pass for a complete one.
    """
    with tarfile.open(counters_archive) as tf:
        names = tf.getnames()
    info = member_info(counters_archive, member)
    arch = cut(counters_archive, tmp_path / "cut.tar", info.offset + 200)
    previous = names[names.index(member) - 1]
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: {member}: truncated or corrupt: the header at offset "
                       f"{info.offset} after {previous} is cut short")


def test_tar_cut_at_a_member_boundary(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    """Cut exactly where a header starts: no end-of-archive marker follows the last member."""
    with tarfile.open(counters_archive) as tf:
        names = tf.getnames()
    arch = cut(counters_archive, tmp_path / "cut.tar", member_info(counters_archive, "spec.dump")
               .offset)
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: truncated: the archive ends after "
                       f"{names[names.index('spec.dump') - 1]} without the end-of-archive marker")


@pytest.mark.parametrize(("content", "why"), [
    (random.Random(0).randbytes(4096), "invalid header"),
    (b"", "empty file"),
    (b"hello world\n", "truncated header"),
], ids=["random", "empty", "text"])
def test_not_a_tar(cli: Cli, tmp_path: Path, content: bytes, why: str) -> None:
    """Random bytes, an empty file, a short text file given as the archive."""
    arch = tmp_path / "x.tar"
    arch.write_bytes(content)
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: not a readable tar archive ({why})")


def test_fifo_as_archive(cli: Cli, tmp_path: Path) -> None:
    """A FIFO (or a device) where the archive should be: refused without opening it,
    which would wait for a writer forever."""
    fifo = tmp_path / "checkpoint.tar"
    os.mkfifo(fifo)
    r = cli("show", fifo)
    assert_clean_error(r, INVALID_INPUT, f"error: {fifo}: is not a regular file")
    assert r.err.splitlines()[1] == "hint: copy the archive to a file first"


def test_directory_as_archive(cli: Cli, tmp_path: Path) -> None:
    """A directory where the archive should be."""
    assert_clean_error(cli("show", tmp_path), INVALID_INPUT,
                       f"error: {tmp_path}: is a directory, not an archive")


def test_nonexistent_archive(cli: Cli, tmp_path: Path) -> None:
    """An archive path that does not exist."""
    arch = tmp_path / "nope.tar"
    assert_clean_error(cli("show", arch), NOT_FOUND, f"error: {arch}: no such file")


# --- allocation bounded by the file ------------------------------------------------------


def _with_trailer(src: Path, dst: Path, header: tarfile.TarInfo, tail: bytes) -> Path:
    """``src`` without its end-of-archive blocks, then ``header`` (GNU format) and ``tail``."""
    last = read_members(src)[-1][0]
    end = last.offset_data + -(-last.size // 512) * 512
    dst.write_bytes(src.read_bytes()[:end] + header.tobuf(format=tarfile.GNU_FORMAT) + tail)
    assert dst.stat().st_size < 1 << 20
    return dst


def _huge(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, 8 << 30  # 8 GiB, far beyond the 1 GiB address space
    return info


@pytest.mark.parametrize(("header", "tail", "why"), [
    (_huge("././@LongLink", tarfile.GNUTYPE_LONGNAME), b"A" * 1024, "empty header"),
    (_huge("././@PaxHeader", tarfile.XHDTYPE), b"30 path=" + b"A" * 21 + b"\n", "empty header"),
], ids=["gnu-longname", "pax-header"])
def test_tar_header_claims_8gib(counters_archive: Path, tmp_path: Path,
                                header: tarfile.TarInfo, tail: bytes, why: str) -> None:
    """A GNU long-name or pax header declaring 8 GiB in a small file (run under RLIMIT_AS)."""
    arch = _with_trailer(counters_archive, tmp_path / "huge.tar", header, tail)
    r = limited_run("show", arch)
    assert "MemoryError" not in r.stderr
    assert_clean_error(r, INVALID_INPUT, f"error: {arch}: not a readable tar archive ({why})")


def test_tar_member_claims_8gib(counters_archive: Path, tmp_path: Path) -> None:
    """A regular member declaring 8 GiB at the end of a small file (run under RLIMIT_AS)."""
    arch = _with_trailer(counters_archive, tmp_path / "huge.tar",
                         _huge("huge.bin", tarfile.REGTYPE), b"x" * 1024)
    r = limited_run("show", arch)
    assert "MemoryError" not in r.stderr and "Traceback" not in r.stderr
    # The exact line is test_tar_cut_in_member_data's business; here: no allocation.
    assert r.returncode == INVALID_INPUT, r.stderr
    assert r.stderr.startswith(f"error: {arch}: "), r.stderr
    assert r.stderr.splitlines()[1].startswith("hint: ")


def test_image_entry_size_ffffffff_bounded(counters_archive: Path, tmp_path: Path) -> None:
    """A CRIU image entry declaring 0xFFFFFFFF bytes (run under RLIMIT_AS)."""
    member = "checkpoint/pstree.img"
    arch = rewrite_member(counters_archive, tmp_path / "bad.tar", member,
                          lambda d: set_first_entry_size(d, 0xFFFFFFFF))
    remain = member_info(arch, member).size - 12
    r = limited_run("inspect", arch, "--ps-tree")
    assert "MemoryError" not in r.stderr
    assert_clean_error(r, INVALID_INPUT, f"error: {arch}: {member}: entry 0 declares "
                                         f"{0xFFFFFFFF} bytes but only {remain} remain")


# --- --debug -----------------------------------------------------------------------------


def test_debug_shows_traceback(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    """--debug on a corrupt archive: the traceback is shown, the exit code is unchanged."""
    member = "checkpoint/pstree.img"
    arch = rewrite_member(counters_archive, tmp_path / "bad.tar", member,
                          lambda d: set_first_entry_size(d, 0x7FFFFFFF))
    r = cli("--debug", "inspect", arch, "--ps-tree")
    assert r.code == INVALID_INPUT
    assert r.err.startswith("Traceback"), r.err
    error = [ln for ln in r.err.splitlines() if ln.startswith("error: ")]
    assert error == [f"error: {arch}: {member}: entry 0 declares {0x7FFFFFFF} bytes but only "
                     f"{member_info(arch, member).size - 12} remain"]
    assert r.err.splitlines()[-1].startswith("hint: ")
