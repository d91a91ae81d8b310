"""Hostile tar headers: what tarfile alone would trip over, loop on, or believe.

Each archive is built here, from the generated counters checkpoint and raw
header bytes: pax records tarfile parses as NaN, chains of extended headers
it follows by recursion, sparse members whose claimed size reaches into the
next members, pax headers it parses in quadratic time (CVE-2024-6232) or
holds whole in memory. Every one must meet a one-line error and a hint (exit
3), for the outer archive and the nested rootfs-diff.tar alike, and `migrate
list` must still list the good archives beside them.
"""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from migrate.adapters.archive import MAX_TAR_META
from migrate.adapters.criu.images import IMG_COMMON, MAGICS, iter_entries
from tests.conftest import Result, deadline
from tests.test_untrusted_input import assert_clean_error, inner_tar, read_members, write_tar

INVALID_INPUT = 3
Cli = Callable[..., Result]
SPARSE = "is a sparse file, which checkpoint archives never hold (the engines' tar writers " \
         "cannot write one)"
#: Every command that indexes the whole archive before it reads a member.
COMMANDS = [["show"], ["inspect"], ["memparse"], ["rootfs-diff"]]


# --- helpers -------------------------------------------------------------------------------


def body(src: Path) -> bytes:
    """``src`` without its end-of-archive blocks: headers appended to it are read."""
    last = read_members(src)[-1][0]
    return src.read_bytes()[:last.offset_data + -(-last.size // 512) * 512]


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode = size, kind, 0o600
    return info.tobuf(format=tarfile.GNU_FORMAT)


def rechecksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def sparse_header(name: str, stored: int, realsize: int, extended: bool = False) -> bytes:
    """An old-GNU sparse header ('S'): ``stored`` bytes follow, ``realsize`` once expanded."""
    block = bytearray(header(name, stored, tarfile.GNUTYPE_SPARSE))
    block[483:495] = b"%011o\0" % realsize
    block[482] = extended  # more sparse maps follow in extension blocks
    return rechecksum(block)


def pax(records: bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A pax extended (or global) header holding ``records`` verbatim, padded."""
    return header("././@PaxHeader", len(records), kind) + records + bytes(-len(records) % 512)


def record(key: str, value: bytes) -> bytes:
    rest = b" " + key.encode() + b"=" + value + b"\n"
    length = len(rest) + 1
    while len(b"%d" % length) + len(rest) != length:
        length += 1
    return b"%d" % length + rest


def appended(src: Path, dst: Path, tail: bytes) -> Path:
    """``src`` with ``tail`` (headers and data) before its end-of-archive blocks."""
    dst.write_bytes(body(src) + tail + bytes(1024))
    return dst


def with_pax(src: Path, dst: Path, name: str, headers: dict[str, str]) -> Path:
    """``src`` with the pax records ``headers`` added to member ``name``'s header."""
    members = read_members(src)
    for info, _ in members:
        if info.name == name:
            info.pax_headers = headers
    return write_tar(dst, members)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


# --- CRIU: inet socket address words -------------------------------------------------------


def test_inet_address_word_wider_than_32_bits(cli: Cli, make_archive: Callable[..., Path],
                                              tmp_path: Path) -> None:
    """An address word is a uint32 in CRIU's proto; the varint can carry 2**40."""
    from e2e.archives.filesgen import counters_files

    src = make_archive(open_files=counters_files())
    members = read_members(src)
    data = next(d for i, d in members if i.name == "checkpoint/files.img")
    assert data is not None
    entries = [bytes(e) for e in iter_entries(data, "FILES")]
    head = field(1, 4) + field(2, 7)  # INETSK, id 7
    isk = b"".join(field(n, v) for n, v in [(1, 7), (2, 52001), (3, 2), (4, 1), (5, 6), (6, 10),
                                             (7, 8088), (8, 0), (9, 2), (11, 1 << 40)])
    assert any(e.startswith(head) for e in entries)
    entries = [head + field(4, isk) if e.startswith(head) else e for e in entries]
    image = struct.pack("<II", IMG_COMMON, MAGICS["FILES"]) + b"".join(
        struct.pack("<I", len(e)) + e for e in entries)
    arch = write_tar(tmp_path / "inet.tar", [(i, image if i.name == "checkpoint/files.img"
                                              else d) for i, d in members])
    assert_clean_error(cli("inspect", arch, "--sockets"), INVALID_INPUT,
                       f"error: {arch}: checkpoint/files.img: inet socket 7 has a source "
                       "address word of 0x10000000000, wider than 32 bits")


# --- numbers tarfile takes from pax records ------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_pax_mtime_not_a_number(cli: Cli, counters_archive: Path, tmp_path: Path,
                                value: str, command: list[str]) -> None:
    arch = with_pax(counters_archive, tmp_path / "mtime.tar", "checkpoint/inventory.img",
                    {"mtime": value})
    assert_clean_error(cli(*command, arch), INVALID_INPUT,
                       f"error: {arch}: checkpoint/inventory.img: has an invalid modification "
                       f"time ({float(value)})")


def test_nested_pax_mtime_not_a_number(cli: Cli, make_archive: Callable[..., Path]) -> None:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("d/f")
        info.size, info.pax_headers = 2, {"mtime": "nan"}
        tf.addfile(info, io.BytesIO(b"hi"))
    arch = make_archive(extra_members={"rootfs-diff.tar": inner.getvalue()})
    assert_clean_error(cli("rootfs-diff", arch), INVALID_INPUT,
                       f"error: {arch}: rootfs-diff.tar: d/f: has an invalid modification "
                       "time (nan)")


@pytest.mark.parametrize("size", [-512, -1536, -100_000_000])
def test_pax_negative_size(cli: Cli, counters_archive: Path, tmp_path: Path, size: int) -> None:
    """tarfile would step back by the size and read earlier headers again (or at a
    negative offset)."""
    tail = pax(record("size", b"%d" % size)) + header("zz", 0)
    arch = appended(counters_archive, tmp_path / "neg.tar", tail)
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: zz: declares a negative size ({size})")


def test_pax_global_size_cannot_stretch_a_member(cli: Cli, counters_archive: Path,
                                                 tmp_path: Path) -> None:
    """A global "size" record is applied after tarfile stepped over the stored data: the
    member would read the members after it."""
    tail = pax(record("size", b"4096"), tarfile.XGLTYPE) + header("zz", 0) + header("f", 4096) \
        + bytes(4096)
    arch = appended(counters_archive, tmp_path / "global.tar", tail)
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: zz: declares 4096 bytes but holds 0")


# --- chains of extended headers ------------------------------------------------------------


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE], ids=["gnu", "pax"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_extended_header_chain(cli: Cli, counters_archive: Path, tmp_path: Path,
                               kind: bytes, command: list[str]) -> None:
    """2000 long-name (or pax) headers in a row: tarfile recurses once for each."""
    one = (header("././@LongLink", 4, kind) + b"x0\0\0".ljust(512, b"\0")
           if kind == tarfile.GNUTYPE_LONGNAME else pax(record("path", b"x0")))
    start = len(body(counters_archive))
    arch = appended(counters_archive, tmp_path / "chain.tar", one * 2000 + header("final", 0))
    assert_clean_error(cli(*command, arch), INVALID_INPUT,
                       f"error: {arch}: holds more than 16 extended headers in a row (at offset "
                       f"{start + 16 * len(one)})")


def test_legitimate_extended_headers_still_read(cli: Cli, make_archive: Callable[..., Path]
                                                ) -> None:
    """What Go's archive/tar and GNU tar write: pax paths, xattrs, GNU long names and links."""
    long_dir = "d/" + "n" * 150
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(long_dir + "/pax")
        info.size, info.mtime = 3, 1677737263
        info.pax_headers = {"SCHILY.xattr.security.capability": "\x01" * 20,
                            "hdrcharset": "BINARY"}
        tf.addfile(info, io.BytesIO(b"abc"))
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(long_dir + "/gnu")
        info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "t" * 200, 1677737263
        tf.addfile(info)
    data = inner.getvalue().rstrip(b"\0")
    data = data + bytes(-len(data) % 512) + gnu.getvalue()
    arch = make_archive(extra_members={"rootfs-diff.tar": data})
    r = cli("rootfs-diff", arch, "-o", "json")
    assert r.code == 0, r.err
    files = {e["path"]: e for e in r.json()["rootfs_diff"] if e["type"] != "dir"}
    assert sorted(files) == [long_dir + "/gnu", long_dir + "/pax"]
    assert files[long_dir + "/pax"]["size"] == 3


# --- sparse members ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_sparse_header_cut_after_extension_flag(cli: Cli, counters_archive: Path,
                                                tmp_path: Path, command: list[str]) -> None:
    """An old-GNU sparse header that announces extension blocks, at the end of the file."""
    arch = tmp_path / "sparse-cut.tar"
    arch.write_bytes(body(counters_archive) + sparse_header("zz", 0, 0, extended=True))
    assert_clean_error(cli(*command, arch), INVALID_INPUT, f"error: {arch}: zz: {SPARSE}")


def test_sparse_member_reaching_into_the_archive(cli: Cli, counters_archive: Path,
                                                 tmp_path: Path) -> None:
    """rootfs-diff.tar stores nothing but claims, expanded, the rest of the archive:
    reading it would read the outer archive's members."""
    rest = io.BytesIO()
    with tarfile.open(fileobj=rest, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in read_members(counters_archive):
            if info.name != "rootfs-diff.tar":
                tf.addfile(info, None if data is None else io.BytesIO(data))
    arch = tmp_path / "sparse.tar"
    arch.write_bytes(sparse_header("rootfs-diff.tar", 0, len(rest.getvalue()))
                     + rest.getvalue())
    for command in COMMANDS:
        assert_clean_error(cli(*command, arch), INVALID_INPUT,
                           f"error: {arch}: rootfs-diff.tar: {SPARSE}")


def test_sparse_pagemaps_cannot_share_data(cli: Cli, counters_archive: Path,
                                           tmp_path: Path) -> None:
    """Sparse pagemaps each storing a block but claiming one shared region after them: k
    of them would make the reader parse that region k times."""
    region = 64 * 1024
    tail = b"".join(sparse_header(f"checkpoint/pagemap-{i}.img", 512,
                                  512 + (20 - i) * 1024 + 512 + region) + bytes(512)
                    for i in range(1, 21))
    arch = appended(counters_archive, tmp_path / "amplify.tar",
                    tail + header("filler", region) + bytes(region))
    assert_clean_error(cli("memparse", arch), INVALID_INPUT,
                       f"error: {arch}: checkpoint/pagemap-1.img: {SPARSE}")


def _pax_sparse(name: str) -> tuple[tarfile.TarInfo, bytes]:
    """A member in GNU's pax sparse format 1.0: a map, then 512 bytes of data claiming 1 MiB."""
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": name, "GNU.sparse.realsize": str(1 << 20)}
    data = b"1\n0\n512\n".ljust(512, b"\0") + b"x" * 512
    info.size = len(data)
    return info, data


def test_pax_sparse_member(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    info, data = _pax_sparse("checkpoint/extra.img")
    arch = write_tar(tmp_path / "pax-sparse.tar", [*read_members(counters_archive), (info, data)])
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: checkpoint/extra.img: {SPARSE}")


@pytest.mark.parametrize("kind", ["gnu", "pax"])
def test_nested_sparse_member(cli: Cli, make_archive: Callable[..., Path], kind: str) -> None:
    """A sparse file in rootfs-diff.tar: its claimed size reaches past its stored data."""
    plain = inner_tar([("a", "file", b"a" * 600), ("b", "file", b"b" * 600)])
    if kind == "gnu":
        data = sparse_header("f", 0, 1536) + plain
    else:
        out = io.BytesIO()
        info, stored = _pax_sparse("f")
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tf.addfile(info, io.BytesIO(stored))
        data = out.getvalue().rstrip(b"\0")
        data += bytes(-len(data) % 512) + plain
    arch = make_archive(extra_members={"rootfs-diff.tar": data})
    assert_clean_error(cli("rootfs-diff", arch), INVALID_INPUT,
                       f"error: {arch}: rootfs-diff.tar: f: {SPARSE}")


# --- pax headers: size, parse time, memory -------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_pax_header_of_digits(cli: Cli, counters_archive: Path, tmp_path: Path,
                              command: list[str]) -> None:
    """A pax header that is one run of digits: Python 3.11.7's parser backtracks over it in
    quadratic time (CVE-2024-6232), then skips it as if it held nothing."""
    start = len(body(counters_archive))
    arch = appended(counters_archive, tmp_path / "digits.tar",
                    pax(b"1" * 100_000) + header("final", 0))
    with deadline(60, "reading a pax header of 100 000 digits"):
        r = cli(*command, arch)
    assert_clean_error(r, INVALID_INPUT,
                       f"error: {arch}: the pax extended header at offset {start} is malformed")


@pytest.mark.parametrize("filler", ["text", "keys"])
def test_pax_header_larger_than_the_limit(cli: Cli, counters_archive: Path, tmp_path: Path,
                                          filler: str) -> None:
    """A pax header just over the limit, held whole by the file: one long record, or
    distinct keys (tarfile keeps each in a dict: 40 MB of them took 513 MB)."""
    if filler == "text":
        records = record("comment", b"a" * MAX_TAR_META)
    else:
        parts, size, k = [], 0, 0
        while size <= MAX_TAR_META:
            parts.append(record(f"k{k:x}", b""))
            size, k = size + len(parts[-1]), k + 1
        records = b"".join(parts)
    assert MAX_TAR_META < len(records) < MAX_TAR_META + 1024
    start = len(body(counters_archive))
    arch = appended(counters_archive, tmp_path / "big-pax.tar", pax(records) + header("final", 0))
    with deadline(60, "reading a pax header over the limit"):
        r = cli("show", arch)
    assert_clean_error(r, INVALID_INPUT,
                       f"error: {arch}: the extended header at offset {start} declares "
                       f"{len(records)} bytes, more than the {MAX_TAR_META}-byte limit")


def test_pax_global_headers_bounded(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    """tarfile keeps global records for the rest of the archive and copies them into every
    later member."""
    start = len(body(counters_archive))
    many = b"".join(record(f"k{k}", b"") for k in range(100))
    arch = appended(counters_archive, tmp_path / "globals.tar",
                    pax(many, tarfile.XGLTYPE) + header("final", 0))
    assert_clean_error(cli("show", arch), INVALID_INPUT,
                       f"error: {arch}: the pax global headers up to offset {start} hold more "
                       f"than {MAX_TAR_META} bytes or 64 records")


# --- dump time past what a date holds --------------------------------------------------------


def test_podman_dump_time_past_year_9999(cli: Cli, make_archive: Callable[..., Path],
                                         tmp_path: Path) -> None:
    """Podman's archives give the dump time only as inventory.img's mtime."""
    src = make_archive(engine="libpod")
    members = read_members(src)
    for info, _ in members:
        if info.name == "checkpoint/inventory.img":
            info.mtime = 10**12  # year 33658
    (tmp_path / "list").mkdir()
    arch = write_tar(tmp_path / "list" / "checkpoint-podman.tar", members)
    r = cli("show", arch, "-o", "json")
    assert r.code == 0, r.err
    r = cli("list", arch.parent, "-o", "json")
    assert r.code == 0, r.err
    assert [(e["archive"], e["checkpointed"]) for e in r.json()] == [(str(arch), "")]


# --- migrate list ----------------------------------------------------------------------------


def test_list_lists_good_archives_beside_hostile_ones(cli: Cli, counters_archive: Path,
                                                      tmp_path: Path) -> None:
    """Archives named as the kubelet names them are reported; others that cannot be
    probed are not checkpoints (`looks_like_checkpoint`)."""
    d = tmp_path / "checkpoints"
    d.mkdir()
    good = d / "checkpoint-good.tar"
    shutil.copy(counters_archive, good)
    chain = (header("././@LongLink", 4, tarfile.GNUTYPE_LONGNAME)
             + b"x0\0\0".ljust(512, b"\0")) * 2000
    bad: dict[str, Callable[[Path], object]] = {
        "checkpoint-nan.tar": lambda p: with_pax(counters_archive, p, "checkpoint/inventory.img",
                                                  {"mtime": "nan"}),
        "checkpoint-chain.tar": lambda p: appended(counters_archive, p,
                                                   chain + header("final", 0)),
        "checkpoint-sparse.tar": lambda p: p.write_bytes(
            body(counters_archive) + sparse_header("zz", 0, 0, extended=True)),
    }
    for name, make in bad.items():
        make(d / name)
    # Not named as a checkpoint: found only by their first headers.
    (d / "chain.tar").write_bytes(chain + header("config.dump", 0) + bytes(1024))
    (d / "sparse.tar").write_bytes(sparse_header("zz", 0, 0, extended=True))
    (d / "digits.tar.gz").write_bytes(gzip.compress(pax(b"1" * 100_000) + header("config.dump", 0)
                                                    + bytes(1024)))
    (d / "chain.tar.gz").write_bytes(gzip.compress((d / "chain.tar").read_bytes()))
    r = cli("list", d, "-o", "json")
    assert "Traceback" not in r.err
    assert r.code == 0, r.err
    assert [e["archive"] for e in r.json()] == [str(good)]
    warned = sorted(": ".join(line.split(": ")[:2]) for line in r.err.splitlines())
    assert warned == sorted(f"warning: skipped {d / name}" for name in bad), r.err
