"""`TarHoles`, the header walk that leaves big members' data out of a decompressed copy.

Its ranges are checked against the offsets Python's tarfile gives each member, for
every way a tar names a member (ustar name and prefix, GNU long name, pax path and
size) and a size in base-256; and a walk meeting what it does not follow (a bad
size field, an oversized metadata record) stops, keeping the rest whole.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from migrate.adapters.tarstream import BLOCK, TarHoles
from tests.conftest import deadline

MIB = 1024 * 1024
PAGES = b"\xa5" * (MIB + 100)  # over the default minimum, not a multiple of a block


def fix_checksum(block: bytearray | memoryview) -> None:
    """Set a tar header's checksum for what it holds now (after a crafted change)."""
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def empty_record(kind: bytes) -> bytes:
    """A metadata header (pax ``x``/``g``, GNU ``L``/``K``) that says its payload is 0
    bytes long: valid for tar readers, crafted for the walk."""
    empty = bytearray(BLOCK)
    empty[:9] = b"././@Meta"
    empty[100:124] = b"0000644\0" + b"0000000\0" + b"0000000\0"
    empty[124:136] = b"%011o\0" % 0
    empty[136:148] = b"%011o\0" % 0
    empty[156:157] = kind
    empty[257:263] = b"ustar\0"
    fix_checksum(empty)
    return bytes(empty)


def _tar(members: list[tuple[str, bytes]], fmt: int,
         pax: dict[str, dict[str, str]] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = dict((pax or {}).get(name, {}))
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _walk(stream: bytes, piece: int = 1000, **kw: object) -> TarHoles:
    """Feed ``stream`` in pieces of ``piece`` bytes (records straddle them); each
    piece's ranges must be the holes, as stream offsets. A walk that does not end
    within 10 s fails (it once looped forever on an empty metadata record)."""
    with deadline(10, "the walk"):
        return _fed(stream, piece, **kw)


def _fed(stream: bytes, piece: int, **kw: object) -> TarHoles:
    holes = TarHoles(lambda name: name.endswith(".img"), **kw)  # type: ignore[arg-type]
    fed: list[tuple[int, int]] = []
    for at in range(0, len(stream), piece):
        fed += [(at + a, at + b) for a, b in holes.feed(stream[at:at + piece])]
    merged: list[tuple[int, int]] = []
    for a, b in fed:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    assert merged == [(off, off + size) for off, size, _ in holes.holes]
    return holes


def _expected(stream: bytes) -> list[tuple[int, int, str]]:
    with tarfile.open(fileobj=io.BytesIO(stream)) as tf:
        return [(m.offset_data, m.size, m.name) for m in tf.getmembers()
                if m.name.endswith(".img") and m.size >= MIB]


LONG = "checkpoint/" + "d" * 120 + "/pages-1.img"  # past ustar's 100-byte name field


@pytest.mark.parametrize(("fmt", "kind"), [
    (tarfile.USTAR_FORMAT, "ustar prefix"),
    (tarfile.GNU_FORMAT, "GNU long name"),
    (tarfile.PAX_FORMAT, "pax path"),
])
def test_a_long_name_is_followed_in_every_format(fmt: int, kind: str) -> None:
    stream = _tar([("config.dump", b"{}"), (LONG, PAGES), ("checkpoint/core-1.img", b"x" * 900),
                   ("checkpoint/pages-2.img", PAGES)], fmt)
    holes = _walk(stream)
    assert holes.holes == _expected(stream), kind
    assert [h[2] for h in holes.holes] == [LONG, "checkpoint/pages-2.img"]


def test_a_pax_size_is_the_members_size() -> None:
    """Go's archive/tar (CRI-O's) writes a pax record for what ustar cannot hold; the
    size in it wins over the header's field."""
    stream = bytearray(_tar([("checkpoint/pages-1.img", PAGES), ("spec.dump", b"{}")],
                            tarfile.PAX_FORMAT,
                            {"checkpoint/pages-1.img": {"size": str(len(PAGES)), "x": "y"}}))
    with tarfile.open(fileobj=io.BytesIO(bytes(stream))) as tf:
        member = tf.getmember("checkpoint/pages-1.img")
    # The member's own header (after the pax record's) says 0: only the pax record
    # gives the size.
    header = member.offset_data - BLOCK
    stream[header + 124:header + 136] = b"%011o\0" % 0
    fix_checksum(memoryview(stream)[header:header + BLOCK])
    holes = _walk(bytes(stream))
    assert holes.holes == [(member.offset_data, len(PAGES), "checkpoint/pages-1.img")]


def test_a_base_256_size_is_read() -> None:
    """GNU tar writes sizes past 8 GiB in base-256; any size may be written so."""
    stream = bytearray(_tar([("checkpoint/pages-1.img", PAGES), ("spec.dump", b"{}")],
                            tarfile.GNU_FORMAT))
    field = b"\x80" + len(PAGES).to_bytes(11, "big")
    stream[124:136] = field
    fix_checksum(memoryview(stream)[:BLOCK])
    with tarfile.open(fileobj=io.BytesIO(bytes(stream))) as tf:  # still a valid tar
        assert tf.getmember("checkpoint/pages-1.img").size == len(PAGES)
    assert _walk(bytes(stream)).holes == [(BLOCK, len(PAGES), "checkpoint/pages-1.img")]


def test_a_size_field_that_is_no_number_stops_the_walk() -> None:
    stream = bytearray(_tar([("config.dump", b"{}"), ("checkpoint/pages-1.img", PAGES)],
                            tarfile.USTAR_FORMAT))
    stream[124:136] = b"not octal!\0\0"
    fix_checksum(memoryview(stream)[:BLOCK])
    holes = _walk(bytes(stream))
    assert holes.holes == []  # nothing left out: the reader judges the tar whole


def test_an_oversized_long_name_stops_the_walk() -> None:
    """A GNU long-name record over 1 MiB is not collected (it would be held in memory)."""
    name = "checkpoint/" + "n" * (2 * MIB) + ".img"
    stream = _tar([(name, PAGES), ("checkpoint/pages-2.img", PAGES)], tarfile.GNU_FORMAT)
    assert _walk(stream).holes == []


def test_a_bad_checksum_stops_the_walk() -> None:
    stream = bytearray(_tar([("config.dump", b"{}"), ("checkpoint/pages-1.img", PAGES)],
                            tarfile.USTAR_FORMAT))
    stream[0] ^= 1  # the first header's name changes, its checksum does not
    assert _walk(bytes(stream)).holes == []


def test_small_members_and_other_names_are_kept() -> None:
    stream = _tar([("checkpoint/pages-1.img", b"p" * 4096), ("rootfs-diff.tar", PAGES),
                   ("checkpoint/pages-2.img", PAGES)], tarfile.PAX_FORMAT)
    holes = _walk(stream, piece=BLOCK * 3 + 7)
    assert [h[2] for h in holes.holes] == ["checkpoint/pages-2.img"]
    assert holes.holes == _expected(stream)


@pytest.mark.parametrize("kind", [b"x", b"L", b"g", b"K"])
def test_an_empty_metadata_record_is_passed_over(kind: bytes) -> None:
    """A pax or GNU record of size 0 names nothing: the walk goes on to the member
    after it (it used to take the same header for its payload again, forever: a hang
    on a crafted archive)."""
    empty = empty_record(kind)
    members = _tar([("checkpoint/pages-1.img", PAGES)], tarfile.USTAR_FORMAT)
    holes = _walk(empty + members)
    assert holes.holes == [(2 * BLOCK, len(PAGES), "checkpoint/pages-1.img")]
