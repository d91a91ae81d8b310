"""The CRIU image reader, checked against CRIU's own encoder and decoder.

Images come from pycriu (crit's library, Debian `criu`); every decoded value
is compared with what `crit decode` prints for the same file.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2e.archives.criu_encode import encode_own, encode_with_pycriu
from migrate.adapters.criu import images
from migrate.adapters.criu.wire import Field, WireError, decode, read_varint


def crit_decode(path: Path) -> dict[str, Any]:
    out = subprocess.run(["crit", "decode", "-i", str(path)], capture_output=True, text=True,
                         check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def num(value: int | str) -> int:
    """crit prints hex fields as "0x..." with --pretty, as numbers without."""
    return int(value, 0) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def criu_dir(counters_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("criu")
    with tarfile.open(counters_archive) as tf:
        tf.extractall(out, filter="data")
    return out


def test_pstree_matches_crit(criu_dir: Path) -> None:
    path = criu_dir / "checkpoint" / "pstree.img"
    ours = images.parse_pstree(path.read_bytes())
    theirs = crit_decode(path)["entries"]
    assert [(e.pid, e.ppid, e.pgid, e.sid, list(e.threads)) for e in ours] == [
        (e["pid"], e["ppid"], e["pgid"], e["sid"], e["threads"]) for e in theirs]
    assert [e.pid for e in ours] == [1, 7, 8]


@pytest.mark.parametrize("pid,comm", [(1, "bash"), (7, "counter.py"), (8, "tee")])
def test_core_matches_crit(criu_dir: Path, pid: int, comm: str) -> None:
    path = criu_dir / "checkpoint" / f"core-{pid}.img"
    ours = images.parse_core(path.read_bytes())
    theirs = crit_decode(path)["entries"][0]["tc"]
    assert ours.comm == theirs["comm"] == comm
    assert ours.task_state == 1 and ours.state == "alive"


@pytest.mark.parametrize("pid", [1, 7, 8])
def test_pagemap_and_mm_match_crit(criu_dir: Path, pid: int) -> None:
    pm = criu_dir / "checkpoint" / f"pagemap-{pid}.img"
    pages_id, entries = images.parse_pagemap(pm.read_bytes())
    theirs = crit_decode(pm)["entries"]
    assert pages_id == theirs[0]["pages_id"]
    for ours, t in zip(entries, theirs[1:], strict=True):
        assert ours.vaddr == num(t["vaddr"])
        assert ours.nr_pages == t["nr_pages"]
        assert ours.flags == t["flags"]
    mm_path = criu_dir / "checkpoint" / f"mm-{pid}.img"
    mm = images.parse_mm(mm_path.read_bytes())
    t_mm = crit_decode(mm_path)["entries"][0]
    assert (mm.arg_start, mm.arg_end, mm.env_start, mm.env_end) == tuple(
        num(t_mm[k]) for k in ("mm_arg_start", "mm_arg_end", "mm_env_start", "mm_env_end"))


def test_utsns_and_stats_match_crit(criu_dir: Path) -> None:
    uts = criu_dir / "checkpoint" / "utsns-12.img"
    assert images.parse_utsns(uts.read_bytes()) == ("counters", "(none)")
    assert crit_decode(uts)["entries"][0]["nodename"] == "counters"
    stats_path = criu_dir / "stats-dump"
    ours = images.parse_stats(stats_path.read_bytes())
    theirs = crit_decode(stats_path)["entries"][0]["dump"]
    for key in images.DUMP_STAT_KEYS:
        assert ours[key] == theirs[key]
    assert ours["freezing_time"] == 100809 and ours["pages_written"] == 2198


def test_stats_image_carries_the_service_magic(criu_dir: Path) -> None:
    head = (criu_dir / "stats-dump").read_bytes()[:8]
    assert int.from_bytes(head[:4], "little") == images.IMG_SERVICE
    assert int.from_bytes(head[4:], "little") == images.MAGICS["STATS"]


def test_inventory_has_no_first_magic_and_still_parses(criu_dir: Path) -> None:
    data = (criu_dir / "checkpoint" / "inventory.img").read_bytes()
    assert int.from_bytes(data[:4], "little") == images.MAGICS["INVENTORY"]
    assert len(list(images.iter_entries(data, "INVENTORY"))) == 1


PAGEMAP = {"magic": "PAGEMAP", "entries": [
    {"pages_id": 3},
    {"vaddr": 0x1000, "nr_pages": 2, "flags": images.PE_PRESENT},
    {"vaddr": 0x9000, "nr_pages": 1, "in_parent": True, "flags": images.PE_PARENT},
    {"vaddr": 0x20000, "nr_pages": 4, "flags": images.PE_LAZY},
    # What CRIU writes for anonymous private memory (heap, stack) in every dump
    # made without --lazy-pages: lazy *and* present.
    {"vaddr": 0x30000, "nr_pages": 3, "flags": images.PE_LAZY | images.PE_PRESENT},
]}


def test_pagemap_old_layout_from_pycriu() -> None:
    data = encode_with_pycriu({"p": PAGEMAP})["p"]
    pages_id, entries = images.parse_pagemap(data)
    assert pages_id == 3
    assert [(e.vaddr, e.nr_pages, e.in_pages_file) for e in entries] == [
        (0x1000, 2, True), (0x9000, 1, False), (0x20000, 4, False), (0x30000, 3, True)]


def test_pagemap_criu_42_layout_reads_u64_nr_pages() -> None:
    """CRIU 4.2+ writes compat_nr_pages (field 2, as 0) and a u64 nr_pages (field 5)."""
    big = {"magic": "PAGEMAP", "entries": [
        {"pages_id": 1}, {"vaddr": 0x1000, "nr_pages": (1 << 32) + 5, "flags": 4}]}
    _, entries = images.parse_pagemap(encode_own(big, pagemap_u64=True))
    assert entries[0].nr_pages == (1 << 32) + 5
    # The old layout of the same entry would have truncated the count.
    _, old = images.parse_pagemap(encode_own(
        {"magic": "PAGEMAP", "entries": [{"pages_id": 1}, {"vaddr": 0, "nr_pages": 5}]}))
    assert old[0].nr_pages == 5 and old[0].in_pages_file


def test_pagemap_without_flags_is_present_unless_in_parent() -> None:
    img = {"magic": "PAGEMAP", "entries": [
        {"pages_id": 1}, {"vaddr": 0, "nr_pages": 1}, {"vaddr": 4096, "nr_pages": 1,
                                                       "in_parent": True}]}
    _, entries = images.parse_pagemap(encode_with_pycriu({"p": img})["p"])
    assert [e.in_pages_file for e in entries] == [True, False]


def test_unknown_magic_is_named() -> None:
    data = (0x54564319).to_bytes(4, "little") + (0x12345678).to_bytes(4, "little")
    with pytest.raises(images.ImageError, match=r"is not a PSTREE image \(unknown magic "
                                                r"0x12345678\)"):
        images.parse_pstree(data)


def test_wrong_known_magic_is_named() -> None:
    data = encode_with_pycriu({"c": {"magic": "UTSNS", "entries": [
        {"nodename": "a", "domainname": "b"}]}})["c"]
    with pytest.raises(images.ImageError, match=r"is not a CORE image \(UTSNS\)"):
        images.parse_core(data)


def test_entry_size_beyond_file_is_refused_without_reading() -> None:
    data = (0x54564319).to_bytes(4, "little") + images.MAGICS["PSTREE"].to_bytes(4, "little")
    data += (0xFFFFFFFF).to_bytes(4, "little") + b"\x08\x01"
    with pytest.raises(images.ImageError, match="entry 0 declares 4294967295 bytes but only 2"):
        images.parse_pstree(data)


def test_missing_required_field_is_an_image_error() -> None:
    data = encode_own({"magic": "PSTREE", "entries": [{"pgid": 1}]})
    with pytest.raises(images.ImageError, match="lacks required field"):
        images.parse_pstree(data)


# --- wire format ---------------------------------------------------------------

def test_varint_limits() -> None:
    assert read_varint(memoryview(b"\xac\x02"), 0) == (300, 2)
    with pytest.raises(WireError, match="truncated"):
        read_varint(memoryview(b"\x80\x80"), 0)
    with pytest.raises(WireError, match="longer than 10 bytes"):
        read_varint(memoryview(b"\xff" * 11), 0)


def test_unknown_fields_are_skipped_and_packed_repeated_decoded() -> None:
    schema = {1: Field("a", "uint"), 5: Field("r", "uint", repeated=True)}
    # field 9 (unknown, fixed64), field 1 = 150, field 5 packed [1, 2, 300]
    msg = b"\x49" + b"\x00" * 8 + b"\x08\x96\x01" + b"\x2a\x04\x01\x02\xac\x02"
    assert decode(msg, schema) == {"a": 150, "r": [1, 2, 300]}


@given(st.binary(max_size=200))
def test_decoder_never_fails_with_anything_but_wire_error(data: bytes) -> None:
    schema = {1: Field("a", "uint"), 2: Field("s", "string"),
              3: Field("m", "message", message={1: Field("x", "uint")}),
              4: Field("r", "uint", repeated=True)}
    with contextlib.suppress(WireError):
        decode(data, schema)


@given(st.binary(max_size=300))
def test_image_parsers_fail_only_with_image_error(data: bytes) -> None:
    for parse in (images.parse_pstree, images.parse_core, images.parse_mm, images.parse_stats,
                  images.parse_utsns, images.parse_pagemap):
        for prefix in (b"", (0x54564319).to_bytes(4, "little")
                       + images.MAGICS["PSTREE"].to_bytes(4, "little")):
            with contextlib.suppress(images.ImageError):
                parse(prefix + data)


def _pstree(*entries: dict[str, Any]) -> bytes:
    return encode_own({"magic": "PSTREE", "entries": list(entries)})


def test_pstree_listing_more_processes_than_core_images_is_refused() -> None:
    """An archive holds one core image per task: a pstree naming more processes than
    that is refused before it is decoded further (a crafted image could list
    millions)."""
    data = _pstree(*({"pid": p, "ppid": 1, "pgid": 1, "sid": 1, "threads": [p]}
                     for p in range(1, 5)))
    assert len(images.parse_pstree(data, max_tasks=4)) == 4
    with pytest.raises(images.ImageError, match="lists more than 3 processes, but the "
                       "archive holds 3 core images"):
        images.parse_pstree(data, max_tasks=3)


def test_pstree_listing_more_threads_than_core_images_is_refused() -> None:
    """The threads of all processes together are bounded the same way, counted as they
    are decoded (a packed field of millions is never built)."""
    data = _pstree({"pid": 1, "ppid": 0, "pgid": 1, "sid": 1, "threads": [1, 2, 3]},
                   {"pid": 4, "ppid": 1, "pgid": 1, "sid": 1, "threads": [4, 5]})
    assert [e.pid for e in images.parse_pstree(data, max_tasks=5)] == [1, 4]
    with pytest.raises(images.ImageError, match="lists more than 4 threads"):
        images.parse_pstree(data, max_tasks=4)
