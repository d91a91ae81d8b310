"""Compressed checkpoint archives: gzip and zstd, known by content, read like plain tars.

Every analysis command and `build` must give on a compressed archive exactly
what it gives on the same tar uncompressed (the real Podman exports are in
test_real_checkpoints.py). Hostile compressed input (cut, garbage after the
magic, trailing garbage, failed checksums, an oversized zstd window, a
decompression bomb, no room left) ends in exit 3 with one ``error:`` line
naming the archive and a ``hint:``; nothing is left in the temporary
directory either way.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import stat
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from e2e.archives.archivegen import ArchiveSpec, build
from migrate.adapters import compressed
from migrate.adapters.archive import CheckpointArchive, looks_like_checkpoint
from migrate.adapters.checkpoint import unread
from migrate.errors import ArchiveError
from migrate.settings import ArchiveSettings
from migrate.units import human_size
from tests.conftest import Result, deadline, run_binary
from tests.test_tarstream import empty_record
from tests.test_untrusted_input import assert_clean_error
from tests.test_untrusted_limits import measured_run

Cli = Callable[..., Result]
INVALID_INPUT, USAGE = 3, 2
SECRET = "RANDOM_1432_KEY"
MIB = 1 << 20
DAMAGED = "hint: the archive is damaged; copy it again, or export the checkpoint again"
CUT = "hint: the archive was cut short; copy it again from where it was made"


def compress(data: bytes, kind: str, pieces: int = 1) -> bytes:
    """``data`` as ``pieces`` concatenated gzip members or zstd frames (with checksums)."""
    step = max(1, -(-len(data) // pieces))
    parts = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    if kind == "gzip":
        return b"".join(gzip.compress(p, mtime=0) for p in parts)
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    return b"".join(cctx.compress(p) for p in parts)


def skippable(payload: bytes) -> bytes:
    """A zstd skippable frame (what pzstd puts first), which decoders pass over."""
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


VARIANTS = {
    "gzip": lambda d: compress(d, "gzip"),
    "gzip-3-members": lambda d: compress(d, "gzip", 3),
    "zstd": lambda d: compress(d, "zstd"),
    "zstd-3-frames": lambda d: compress(d, "zstd", 3),
    "zstd-skippable-first": lambda d: skippable(b"pzstd") + compress(d, "zstd"),
}


# Big enough (>= 1 MiB) that commands which never read them leave the pages and the
# rootfs diff out of the decompressed copy.
BULK_FILE = "var/lib/data.bin"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ArchiveSpec(use_crit=True, bulk_pages=768)
    files = {**spec.rootfs_files, BULK_FILE: bytes(range(256)) * 6144}
    return build(ArchiveSpec(use_crit=True, bulk_pages=768, rootfs_files=files),
                 tmp_path_factory.mktemp("plain") / "checkpoint-counters.tar")


@pytest.fixture(autouse=True)
def tmp_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of the test's own: what decompression leaves there can be checked."""
    d = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(d))
    return d


def _outputs(cli: Cli, archive: Path, work: Path) -> dict[str, str]:
    """What every analysis command prints for ``archive`` (its path replaced by ARCHIVE)."""
    work.mkdir()
    runs = {
        "show": ["show", archive, "--stats", "-o", "json"],
        "show-table": ["show", archive],
        "inspect": ["inspect", archive, "--all", "-o", "json"],
        "inspect-default": ["inspect", archive, "--ps-tree", "--mounts", "--stats"],
        "inspect-tree": ["inspect", archive, "--ps-tree-cmd", "--ps-tree-env"],
        "memparse": ["memparse", archive, "-o", "json"],
        "memparse-pid": ["memparse", archive, "--pid", "7"],
        "memparse-search": ["memparse", archive, "--search", SECRET, "--context", "8",
                            "-o", "json"],
        "memparse-regex": ["memparse", archive, "--search-regex", "RANDOM_[0-9]+", "--pid", "7"],
        "rootfs-diff": ["rootfs-diff", archive, "-o", "json"],
        "extract": ["rootfs-diff", archive, "--extract", work / "x", "-o", "json"],
        "build": ["build", archive, "--image", "localhost/c:1", "--no-push", "--oci-layout",
                  work / "oci", "-o", "json"],
    }
    out = {}
    for key, args in runs.items():
        r = cli(*args)
        assert (r.code, r.err) == (0, ""), (key, r.err)
        out[key] = r.out.replace(str(archive), "ARCHIVE").replace(str(work), "WORK")
    build_report = json.loads(out.pop("build"))
    out["digest"] = build_report["digest"]
    out["tree"] = json.dumps(_tree(work / "x"))
    return out


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (stat.S_IMODE(p.lstat().st_mode),
                                       p.read_bytes().hex() if p.is_file() else "")
            for p in sorted(root.rglob("*"))} if root.exists() else {}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_command_reads_a_compressed_archive_as_the_plain_one(
        cli: Cli, plain: Path, tmp_path: Path, tmp_dir: Path, variant: str) -> None:
    archive = tmp_path / "podman-export"  # no suffix: the content says what it is
    archive.write_bytes(VARIANTS[variant](plain.read_bytes()))
    want = _outputs(cli, plain, tmp_path / "plain")
    got = _outputs(cli, archive, tmp_path / "compressed")
    # The image holds the tar itself (CRI-O unpacks the layer into the image root):
    # the same layer, config and manifest, so the same digest as from the plain tar.
    assert got == want
    found = json.loads(got["memparse-search"])[0]
    assert (found["match"], found["before"]) == ("RANDOM_1432_KEY", "\\x00secret=")
    assert "home/counter/test-file" in json.loads(got["tree"])
    assert BULK_FILE in json.loads(got["tree"])
    assert list(tmp_dir.iterdir()) == []
    r = cli("list", tmp_path, "-o", "json")
    assert [Path(e["archive"]).name for e in r.json()] == ["podman-export"]


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_commands_leave_what_they_never_read_out_of_the_copy(plain: Path, tmp_path: Path,
                                                             kind: str) -> None:
    """show, list, memparse without --search...: the pages and the rootfs diff are holes."""
    archive = tmp_path / "c"
    archive.write_bytes(compress(plain.read_bytes(), kind))
    settings = ArchiveSettings(tmp_dir=tmp_path)
    big = {"checkpoint/pages-2.img", "rootfs-diff.tar"}
    for reads, skipped in ((unread(), big), (unread(pages=True), {"rootfs-diff.tar"}),
                           (unread(pages=True, rootfs_diff=True), set()), (None, set())):
        with CheckpointArchive(archive, settings, reads) as a:
            assert a.skipped == skipped
            st = os.fstat(a.fd)
            assert st.st_size == plain.stat().st_size  # every offset as in the tar...
            left_out = sum(a.members[name].size for name in skipped)
            assert st.st_blocks * 512 <= st.st_size - left_out + 64 * 1024  # ...sparse
            for name in skipped:  # reading one would be a bug in the command
                with pytest.raises(RuntimeError, match="left out of the decompressed copy"):
                    a.open_member(name)
            if "rootfs-diff.tar" not in skipped:
                assert a.nested_tar("rootfs-diff.tar").members


def test_a_copy_with_holes_is_never_trusted_over_the_index(
        cli: Cli, plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers read two ways (a global pax path renames every member for tarfile, not for
    the header walk): the archive is decompressed again, whole, and reads as it would
    uncompressed."""
    crafted = tmp_path / "crafted.tar"
    with tarfile.open(plain) as src, tarfile.open(crafted, "w", format=tarfile.PAX_FORMAT,
                                                  pax_headers={"path": "renamed"}) as dst:
        for info in src.getmembers():
            dst.addfile(info, src.extractfile(info) if info.isreg() else None)
    packed = tmp_path / "crafted.tar.zst"
    packed.write_bytes(compress(crafted.read_bytes(), "zstd"))
    copies: list[bool] = []  # whether each copy was asked to leave members out
    real_copy = compressed.decompress_to_file

    def spy(*args: Any) -> tuple[int, list[compressed.Hole]]:
        copies.append(len(args) > 5 and args[5] is not None)
        return real_copy(*args)

    monkeypatch.setattr(compressed, "decompress_to_file", spy)
    with CheckpointArchive(packed, ArchiveSettings(tmp_dir=tmp_path), unread()) as a:
        assert a.skipped == frozenset() and set(a.members) == {"renamed"}
    assert copies == [True, False]  # with holes, then again whole
    plain_run, packed_run = cli("show", crafted), cli("show", packed)
    assert plain_run.code == packed_run.code == INVALID_INPUT
    assert packed_run.err == plain_run.err.replace(str(crafted), str(packed))


def test_an_empty_metadata_record_first_reads_as_uncompressed(cli: Cli, plain: Path,
                                                              tmp_path: Path) -> None:
    """A crafted archive that starts with a pax record of size 0: the header walk of the
    decompressed copy took that header for its own payload again, forever (`show` hung).
    Now the compressed archive reads as the uncompressed one."""
    crafted = tmp_path / "empty-record.tar"
    crafted.write_bytes(empty_record(b"x") + plain.read_bytes())
    packed = tmp_path / "empty-record.tar.zst"
    packed.write_bytes(compress(crafted.read_bytes(), "zstd"))
    with deadline(60, "migrate show"):
        plain_run, packed_run = cli("show", crafted), cli("show", packed)
    assert plain_run.code == packed_run.code == 0, packed_run.err
    assert packed_run.out == plain_run.out.replace(str(crafted), str(packed))


def test_build_reports_the_compressed_size_and_pushes_the_tar(cli: Cli, plain: Path,
                                                              tmp_path: Path) -> None:
    archive = tmp_path / "c.tar.zst"
    archive.write_bytes(compress(plain.read_bytes(), "zstd"))
    r = cli("build", archive, "--image", "localhost/c:1", "--no-push", "--oci-layout",
            tmp_path / "oci", "--compression", "gzip", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    assert report["archive_size"] == archive.stat().st_size
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert gzip.decompress((blobs / layer["digest"][7:]).read_bytes()) == plain.read_bytes()


def test_verbose_says_how_long_decompression_took(plain: Path, tmp_path: Path,
                                                  tmp_dir: Path) -> None:
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(compress(plain.read_bytes(), "gzip"))
    r = run_binary(["-v", "show", str(archive)])
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "decompressed" in ln]
    assert line.startswith(f"INFO: {archive}: gzip, {human_size(archive.stat().st_size)} "
                           f"decompressed to {human_size(plain.stat().st_size)} in ")
    # show reads neither the memory pages nor the rootfs diff: their data is not written.
    assert re.search(r" in \d+\.\d{3} s \(\d+\.\d KiB of it written, into "
                     + re.escape(str(tmp_dir)) + r"\)$", line), line


def test_tmp_dir_option_and_tmpdir(cli: Cli, plain: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "c.tar.zst"
    archive.write_bytes(compress(plain.read_bytes(), "zstd"))
    missing = tmp_path / "no-such-dir"
    line = (f"error: {missing}: cannot create a temporary file to decompress {archive}: "
            "No such file or directory")
    assert_clean_error(cli("--tmp-dir", missing, "show", archive), USAGE, line)
    monkeypatch.setenv("TMPDIR", str(missing))
    assert_clean_error(cli("show", archive), USAGE, line)
    assert cli("--tmp-dir", tmp_path, "show", archive).code == 0
    # A plain tar needs no temporary file at all.
    assert cli("show", plain).code == 0


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000) | st.just(bytes(5000)), pieces=st.integers(1, 4),
       kind=st.sampled_from(["gzip", "zstd"]), block=st.integers(1, 700))
def test_decompressor_gives_every_byte_whatever_the_buffer(
        tmp_path_factory: pytest.TempPathFactory, data: bytes, pieces: int, kind: str,
        block: int) -> None:
    """Output handed out a buffer at a time, ends of members and frames anywhere."""
    path = tmp_path_factory.mktemp("d") / "c"
    path.write_bytes(compress(data, kind, pieces))
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = compressed.Decompressor(fd, path.stat().st_size, kind, "c")
        out, buf = bytearray(), bytearray(block)
        while n := reader.readinto(buf):
            out += buf[:n]
    finally:
        os.close(fd)
    assert bytes(out) == data


# --- hostile compressed input ----------------------------------------------------------------


def _zstd_frame(window_descriptor: int, blocks: bytes) -> bytes:
    """A zstd frame: magic, a descriptor with no flags, the window byte, then ``blocks``."""
    return struct.pack("<IBB", 0xFD2FB528, 0, window_descriptor) + blocks


def _raw_block(data: bytes, last: bool = True) -> bytes:
    return (len(data) << 3 | int(last)).to_bytes(3, "little") + data


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def hostile(tar: bytes) -> dict[str, tuple[bytes, str, str]]:
    """name -> (archive bytes, the error after "ARCHIVE: ", its hint)."""
    gz, zst = compress(tar, "gzip"), compress(tar, "zstd")
    return {
        "gzip-cut": (gz[:len(gz) // 2], "truncated: the gzip stream ends in the middle of a "
                     f"member (after {len(gz) // 2} bytes)", CUT),
        "zstd-cut": (zst[:len(zst) // 2], "truncated: the zstd stream ends in the middle of a "
                     f"frame (after {len(zst) // 2} bytes)", CUT),
        "zstd-magic-only": (zst[:4], "truncated: the zstd stream ends in the middle of a "
                            "frame (after 4 bytes)", CUT),
        "gzip-garbage-after-magic": (b"\x1f\x8b" + bytes(range(256)) * 4,
                                     "corrupt gzip data (Error -3 while decompressing data: "
                                     "unknown compression method)", DAMAGED),
        "zstd-reserved-bit": (struct.pack("<IB", 0xFD2FB528, 0x08) + bytes(64),
                              "has a corrupt zstd frame header (byte 4)", DAMAGED),
        "zstd-reserved-block": (_zstd_frame(0x50, b"\x07\x00\x00" + bytes(64)),
                                "has a corrupt zstd block (byte 6)", DAMAGED),
        "gzip-trailing-garbage": (gz + b"not gzip", "has data after the end of the gzip "
                                  f"stream (byte {len(gz)})", DAMAGED),
        "zstd-trailing-garbage": (zst + b"not zstd", "has data after the end of the zstd "
                                  f"stream (byte {len(zst)})", DAMAGED),
        "gzip-bad-crc": (_flip(gz, len(gz) - 6), "corrupt gzip data (Error -3 while "
                         "decompressing data: incorrect data check)", DAMAGED),
        "zstd-bad-checksum": (_flip(zst, len(zst) - 2), "corrupt zstd data (Restored data "
                              "doesn't match checksum)", DAMAGED),
        # Window_Descriptor 0xa8: a 2 GiB window, which no checkpoint needs.
        "zstd-huge-window": (_zstd_frame(0xA8, _raw_block(b"x")), "corrupt zstd data (Frame "
                             "requires too much memory for decoding)", DAMAGED),
        "gzip-not-a-tar": (compress(b"just some text\n" * 100, "gzip"), "not a readable tar "
                           "archive (invalid header)", "hint: is this a checkpoint archive?"),
    }


@pytest.mark.parametrize("case", sorted(hostile(b"x")))
def test_hostile_compressed_input_is_refused(cli: Cli, plain: Path, tmp_path: Path,
                                             tmp_dir: Path, case: str) -> None:
    data, error, hint = hostile(plain.read_bytes())[case]
    archive = tmp_path / "checkpoint-x.tar"
    archive.write_bytes(data)
    for command in (["show"], ["memparse", "--search", SECRET], ["rootfs-diff"]):
        r = cli(command[0], archive, *command[1:])
        assert_clean_error(r, INVALID_INPUT, f"error: {archive}: {error}")
        assert r.err.splitlines()[1] == hint
    r = cli("list", tmp_path, "-o", "json")
    assert (r.code, r.out.strip()) == (0, "[]")
    assert r.err == f"warning: skipped {archive}: {archive}: {error}\n"
    assert list(tmp_dir.iterdir()) == []


def test_decompression_bomb_is_refused_at_the_limit(cli: Cli, tmp_path: Path, tmp_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """1 GiB of zeros in 32 KiB of zstd: refused once 16 MiB are out, in bounded memory."""
    bomb = tmp_path / "bomb.tar.zst"
    cctx = zstandard.ZstdCompressor(level=19)
    with bomb.open("wb") as f, cctx.stream_writer(f) as w:
        block = bytes(16 * MIB)
        for _ in range(64):
            w.write(block)
    monkeypatch.setenv("MIGRATE_MAX_UNCOMPRESSED", "16M")
    r, peak = measured_run("show", bomb)
    line = (f"error: {bomb}: decompresses to more than 16.0 MiB (the limit for compressed "
            f"archives; ")
    assert r.returncode == INVALID_INPUT, r.stderr
    assert r.stderr.startswith(line) and r.stderr.count("\n") == 2, r.stderr
    assert r.stderr.splitlines()[1] == (
        "hint: if the archive is genuine, raise MIGRATE_MAX_UNCOMPRESSED; a small archive "
        "that decompresses to this much is probably crafted")
    assert peak < 100 * MIB
    assert list(tmp_dir.iterdir()) == []
    monkeypatch.setenv("MIGRATE_MAX_UNCOMPRESSED", "lots")
    assert_clean_error(cli("show", bomb), USAGE,
                       "error: MIGRATE_MAX_UNCOMPRESSED='lots': not a size")


def test_decompression_stops_before_the_disk_fills(plain: Path, tmp_path: Path,
                                                   tmp_dir: Path) -> None:
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(compress(plain.read_bytes(), "gzip"))
    st = os.statvfs(tmp_dir)
    keep = st.f_bavail * st.f_frsize  # more than stays free once anything is written
    settings = ArchiveSettings(tmp_dir=tmp_dir, min_free_bytes=keep)
    with pytest.raises(ArchiveError) as e:
        CheckpointArchive(archive, settings)
    assert e.value.message.startswith(f"{archive}: decompressing needs more room than "
                                      f"{tmp_dir} has: 0 B written, ")
    assert e.value.hint is not None and e.value.hint.startswith("give --tmp-dir (or TMPDIR)")
    assert list(tmp_dir.iterdir()) == []


def test_temporary_file_is_private_and_nameless(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fd = compressed.private_tempfile(tmp_path, "x")
    try:
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_nlink) == (0o600, 0)
    finally:
        os.close(fd)
    # Where O_TMPFILE is refused (some file systems): created 0600, unlinked at once.
    monkeypatch.setattr(os, "O_TMPFILE", os.O_DIRECTORY)
    with pytest.raises(IsADirectoryError):
        os.close(os.open(tmp_path, os.O_RDWR | os.O_TMPFILE))
    fd = compressed.private_tempfile(tmp_path, "x")
    try:
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_nlink) == (0o600, 0)
        assert list(tmp_path.iterdir()) == []
    finally:
        os.close(fd)


def test_memory_stays_bounded_on_a_big_compressed_archive(tmp_path: Path) -> None:
    """128 MiB of pages, zstd-compressed: memparse --search streams it, RSS stays small."""
    tar = build(ArchiveSpec(use_crit=True, bulk_pages=128 * MIB // 4096), tmp_path / "big.tar")
    archive = tmp_path / "big.tar.zst"
    with tar.open("rb") as src, archive.open("wb") as dst:
        zstandard.ZstdCompressor(level=1).copy_stream(src, dst)
    tar.unlink()
    r, peak = measured_run("memparse", archive, "--search", SECRET, "-o", "json")
    assert r.returncode == 0, r.stderr
    assert [m["pid"] for m in json.loads(r.stdout)] == [7]
    assert peak < 120 * MIB, peak


# --- finding archives by content (`migrate list`) ---------------------------------------------


def test_probe_reads_only_the_first_entries(plain: Path, tmp_path: Path) -> None:
    data = plain.read_bytes()
    for name, content in {"plain": data, "gz": compress(data, "gzip"),
                          "zst": compress(data, "zstd")}.items():
        (tmp_path / name).write_bytes(content)
        assert looks_like_checkpoint(tmp_path / name), name
    # Not checkpoints: text, compressed text, a tar of other files, zeros (a sparse
    # 1 TiB file: never read whole), a zstd bomb of zeros, an empty file, a directory.
    (tmp_path / "text").write_text("hello\n")
    (tmp_path / "text.gz").write_bytes(compress(b"hello\n", "gzip"))
    shutil.make_archive(str(tmp_path / "other"), "tar", tmp_path, "text")
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(1 << 40)
    cctx = zstandard.ZstdCompressor(level=19)
    (tmp_path / "zeros.zst").write_bytes(cctx.compress(bytes(256 * MIB)))
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    for name in ("text", "text.gz", "other.tar", "sparse", "zeros.zst", "empty", "dir",
                 "missing"):
        assert not looks_like_checkpoint(tmp_path / name), name
