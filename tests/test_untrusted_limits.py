"""Untrusted input, continued: archives built to crash the reader or exhaust its memory.

Each case is an archive a probe used against the forensic commands: a pstree
that is not a tree, a 1,500-deep chain of processes, JSON nested 100,000
levels, a 60 MiB pstree.img, millions of pagemap entries. Every one must end
in exit 3 with an exact one-line error (or succeed), never a traceback; the
memory cases run the CLI in a subprocess and bound its peak RSS.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.archives.archivegen import Process
from e2e.archives.criu_encode import encode_images, encode_message, encode_own
from migrate.adapters import jsondoc
from migrate.adapters.archive import CheckpointArchive
from migrate.adapters.checkpoint import Checkpoint
from migrate.errors import ArchiveError
from migrate.forensics import memsearch
from migrate.forensics.inspect import InspectOptions, inspect
from migrate.settings import ArchiveSettings
from tests.conftest import REPO, Result
from tests.test_untrusted_input import (
    assert_clean_error,
    read_members,
    rewrite_member,
    write_tar,
)

Cli = Callable[..., Result]
INVALID_INPUT = 3
PSTREE = "checkpoint/pstree.img"
TREE_HINT = ("hint: CRIU dumps one tree of processes, rooted at the task with ppid 0; this "
             "pstree.img was damaged or edited")
NESTED = "is nested more than 64 levels deep"
MIB = 1 << 20
# Peak RSS allowed to a CLI run on a hostile archive. The interpreter with the
# tool's imports takes ~30 MB; the largest thing read whole is one CRIU image
# (the 60 MiB pstree.img below, under the 64 MiB image limit); the rest is
# bounded by counts the archive justifies. Before the bounds, the 60 MiB
# pstree.img took 3.1 GB.
PEAK_RSS = 200 * MIB


# --- helpers -------------------------------------------------------------------------------


# Runs ARGV as its own child and writes that child's exit status and peak RSS
# (KiB) to the file named first. Linux carries the memory high-water mark of
# the process image an exec replaces into the new program's ru_maxrss, so a
# direct child of this (large) test process would report this process's size;
# the launcher is small, and its child's figure is the child's own.
_LAUNCHER = """
import os, sys
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def measured_run(*args: str | Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str],
                                                                   int]:
    """``python -m migrate ARGS`` and its peak RSS in bytes.

    A timer kills a run that hangs (the launcher's whole session); nothing sleeps.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        cmd = [sys.executable, "-c", _LAUNCHER, str(report),
               sys.executable, "-m", "migrate", *map(str, args)]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        guard = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        guard.start()
        try:
            out, err = proc.communicate()
        finally:
            guard.cancel()
        assert proc.returncode == 0 and report.exists(), f"killed or failed to launch: {err}"
        code, peak_kib = map(int, report.read_text().split())
    return subprocess.CompletedProcess(cmd, code, out, err), peak_kib * 1024


def with_pstree(src: Path, dst: Path, entries: list[dict[str, Any]]) -> Path:
    """``src`` with pstree.img replaced by ``entries`` (encoded by CRIU's pycriu)."""
    image = encode_images({"p": {"magic": "PSTREE", "entries": entries}}, use_crit=True)["p"]
    return rewrite_member(src, dst, PSTREE, lambda _: image)


def tree_entries(pairs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    return [{"pid": pid, "ppid": ppid, "pgid": 1, "sid": 1, "threads": [pid]}
            for pid, ppid in pairs]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def frame(payload: bytes) -> bytes:
    """One CRIU image entry: its little-endian u32 size, then the protobuf bytes."""
    return struct.pack("<I", len(payload)) + payload


IMG_COMMON, PSTREE_MAGIC, PAGEMAP_MAGIC = 0x54564319, 0x50273030, 0x56084025


# --- the process tree: one tree, or a clear refusal -----------------------------------------


@pytest.mark.parametrize(("pairs", "reason"), [
    ([(1, 1), (7, 1), (8, 1)], "pid 1 is its own parent"),
    ([(1, 0), (7, 7), (8, 1)], "pid 7 is its own parent"),
    ([(1, 8), (7, 1), (8, 7)], "has a cycle of parents: 1 -> 8 -> 7 -> 1"),
    ([(1, 0), (7, 8), (8, 7)], "has a cycle of parents: 7 -> 8 -> 7"),
    ([(1, 0), (7, 0), (8, 1)], "has 2 root processes (ppid 0: pids 1, 7); CRIU writes one"),
    ([(1, 0), (7, 99), (8, 1)], "the parent of pid 7, 99, is not in the dump"),
    ([(1, 0), (7, 1), (7, 1)], "lists pid 7 twice"),
], ids=["root-self-parent", "child-self-parent", "cycle", "cycle-beside-root", "two-roots",
        "missing-parent", "duplicate"])
def test_pstree_that_is_not_one_tree_is_refused(cli: Cli, counters_archive: Path, tmp_path: Path,
                                                pairs: list[tuple[int, int]], reason: str) -> None:
    """inspect --ps-tree on a pstree CRIU itself would refuse to restore (was: IndexError)."""
    arch = with_pstree(counters_archive, tmp_path / "bad.tar", tree_entries(pairs))
    for fmt in ("tree", "json"):
        r = cli("inspect", arch, "--ps-tree", "-o", fmt)
        assert_clean_error(r, INVALID_INPUT, f"error: {arch}: {PSTREE}: {reason}")
        assert r.err.splitlines()[1] == TREE_HINT


def test_memparse_needs_no_tree(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    """memparse lists processes, not a tree: a self-parent does not stop it."""
    arch = with_pstree(counters_archive, tmp_path / "self.tar",
                       tree_entries([(1, 1), (7, 1), (8, 1)]))
    r = cli("memparse", arch, "-o", "json")
    assert r.code == 0, r.err
    assert [p["pid"] for p in r.json()] == [1, 7, 8]


@pytest.fixture(scope="module")
def chain_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 processes, each the child of the one before (was: RecursionError)."""
    from e2e.archives.archivegen import ArchiveSpec, build

    procs = [Process(i, i - 1, f"p{i}", [f"p{i}"], []) for i in range(1, 1501)]
    return build(ArchiveSpec(processes=procs, use_crit=True),
                 tmp_path_factory.mktemp("chain") / "chain.tar")


def test_deep_chain_renders_as_a_tree(cli: Cli, chain_archive: Path) -> None:
    """Every process on its own line; past 64 levels the indentation stops growing."""
    r = cli("inspect", chain_archive, "--ps-tree")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    at = lines.index("└── Process tree")
    drawn = lines[at + 1:]
    expected = [(f"(+{k - 64}) " if k > 64 else "") + "    " * min(k, 64) + f"└── [{k}]  p{k}"
                for k in range(1, 1501)]
    assert drawn == expected


def _chain(node: dict[str, Any]) -> Iterator[int]:
    while True:
        assert set(node) == {"pid", "command", "children"}
        yield node["pid"]
        if not node["children"]:
            return
        [node] = node["children"]


def test_deep_chain_as_json(cli: Cli, chain_archive: Path) -> None:
    """The JSON form nests 1,500 processes deep and stays valid JSON."""
    r = cli("inspect", chain_archive, "--ps-tree", "-o", "json")
    assert r.code == 0, r.err
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # the reader of the output needs it; the tool does not
    try:
        data = json.loads(r.out)
    finally:
        sys.setrecursionlimit(limit)
    assert list(_chain(data["process_tree"])) == list(range(1, 1501))


# --- JSON nested 100,000 deep ---------------------------------------------------------------


def _deep_member(make_archive: Callable[..., Path], member: str, name: str) -> Path:
    if member == "annotation":
        with_spec = read_members(make_archive("base.tar"))
        spec = json.loads(next(d for i, d in with_spec if i.name == "spec.dump") or b"")
        spec["annotations"]["io.kubernetes.cri-o.Metadata"] = "[" * 100_000
        return make_archive(name, extra_members={"spec.dump": json.dumps(spec).encode()})
    return make_archive(name, extra_members={member: b"[" * 100_000})


def _deep_line(arch: Path, member: str) -> str:
    if member == "annotation":
        return f"error: {arch}: spec.dump: annotation io.kubernetes.cri-o.Metadata {NESTED}"
    return f"error: {arch}: {member}: {NESTED}"


@pytest.mark.parametrize("member", ["config.dump", "spec.dump", "annotation"])
@pytest.mark.parametrize("command", ["show", "inspect", "build"])
def test_json_nested_100000_deep(cli: Cli, make_archive: Callable[..., Path], tmp_path: Path,
                                 member: str, command: str) -> None:
    """`[` 100,000 times in a JSON member or a JSON annotation (was: RecursionError)."""
    arch = _deep_member(make_archive, member, "deep.tar")
    layout = tmp_path / "layout"
    extra = {"show": [], "inspect": ["--all"],
             "build": ["--image", "example.org/ckpt/x:v1", "--no-push", "--oci-layout", layout]}
    r = cli(command, arch, *extra[command])
    assert_clean_error(r, INVALID_INPUT, _deep_line(arch, member))
    assert not layout.exists()  # build refused before writing anything


@pytest.mark.parametrize("member", ["config.dump", "spec.dump", "annotation"])
def test_list_skips_the_deep_archive_and_lists_the_rest(
        cli: Cli, make_archive: Callable[..., Path], tmp_path: Path, member: str) -> None:
    """One crafted archive in the directory is reported and skipped (was: the whole list failed)."""
    make_archive("checkpoint-good.tar")
    bad = _deep_member(make_archive, member, "checkpoint-bad.tar")
    (tmp_path / "base.tar").unlink(missing_ok=True)
    r = cli("list", tmp_path)
    assert r.code == 0, r.err
    assert [ln.split()[-1] for ln in r.out.splitlines()[1:]] == ["checkpoint-good.tar"]
    assert r.err.splitlines() == [f"warning: skipped {bad}: " + _deep_line(bad, member)[7:]]


def test_nesting_limit_is_64_levels() -> None:
    assert jsondoc.loads(nested(64), 64) is not None
    with pytest.raises(jsondoc.JsonError, match=f"^{NESTED}$"):
        jsondoc.loads(nested(65), 64)
    with pytest.raises(jsondoc.JsonError, match=f"^{NESTED}$"):
        jsondoc.loads('{"a": ' * 70 + "1" + "}" * 70, 64)
    with pytest.raises(jsondoc.JsonError, match=r"^is not valid JSON \(Expecting value"):
        jsondoc.loads(b"[", 64)


def test_json_member_size_and_value_count_are_bounded(cli: Cli,
                                                      make_archive: Callable[..., Path]) -> None:
    """4 MiB of JSON at most, and at most 262,144 values, counted before parsing."""
    big = make_archive("big.tar", extra_members={"spec.dump": b" " * (4 * MIB + 1)})
    assert_clean_error(cli("show", big), INVALID_INPUT,
                       f"error: {big}: spec.dump: is {4 * MIB + 1} bytes, more than the "
                       f"{4 * MIB}-byte limit for metadata")
    wide = make_archive("wide.tar",
                        extra_members={"config.dump": b'{"x": [' + b"0," * 300_000 + b"0]}"})
    assert_clean_error(cli("show", wide), INVALID_INPUT,
                       f"error: {wide}: config.dump: holds more than 262144 JSON values")


def test_json_members_at_their_limits_stay_in_bounds(make_archive: Callable[..., Path]) -> None:
    """config.dump, spec.dump and deleted.files each just under both limits, held together."""
    item = b'"abcdefghijklmnop",'  # 19 bytes: 220,000 values fit in 4 MiB
    fill = item * ((4 * MIB - 8192) // len(item))
    spec = json.loads(next(d for i, d in read_members(make_archive("base.tar"))
                           if i.name == "spec.dump") or b"")
    spec_bytes = json.dumps(spec).encode()[:-1] + b', "x": [' + fill + b'""]}'
    arch = make_archive("full.tar", extra_members={
        "config.dump": b'{"x": [' + fill + b'""]}', "spec.dump": spec_bytes,
        "deleted.files": b"[" + fill + b'""]'})
    r, peak = measured_run("inspect", arch, "--all", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["deleted_files"]) == len(fill) // len(item) + 1
    assert peak < PEAK_RSS, f"peak RSS {peak >> 20} MiB"


# --- counts bounded by what the archive holds -----------------------------------------------


@pytest.fixture(scope="module")
def pstree_60mib(counters_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pstree.img of 60 MiB: 7.8 million entries (pid 1, ppid 0) in an archive of 3 tasks."""
    entry = frame(b"\x08\x01\x10\x00")
    image = struct.pack("<II", IMG_COMMON, PSTREE_MAGIC) + entry * (60 * MIB // len(entry))
    members = [(i, image if i.name == PSTREE else d) for i, d in read_members(counters_archive)]
    return write_tar(tmp_path_factory.mktemp("big") / "pstree60.tar", members)


@pytest.mark.parametrize("args", [("memparse",), ("inspect", "--ps-tree")],
                         ids=["memparse", "inspect"])
def test_60mib_pstree_is_refused_within_bounds(pstree_60mib: Path, args: tuple[str, ...]) -> None:
    """More pstree entries than core images (was: 60 s and 3.1 GB)."""
    r, peak = measured_run(*args, pstree_60mib)
    assert_clean_error(r, INVALID_INPUT,
                       f"error: {pstree_60mib}: {PSTREE}: lists more than 3 processes, but the "
                       "archive holds 3 core images (CRIU writes one per task)")
    assert peak < PEAK_RSS, f"peak RSS {peak >> 20} MiB"


def test_pstree_threads_bounded_by_core_images(counters_archive: Path, tmp_path: Path) -> None:
    """One entry listing a million threads: refused after the fourth, not decoded whole."""
    image = encode_own({"magic": "PSTREE", "entries": [
        {"pid": 1, "ppid": 0, "threads": [1] * 1_000_000}]})
    arch = rewrite_member(counters_archive, tmp_path / "threads.tar", PSTREE, lambda _: image)
    r, peak = measured_run("inspect", arch, "--ps-tree")
    assert_clean_error(r, INVALID_INPUT,
                       f"error: {arch}: {PSTREE}: lists more than 3 threads, but the archive "
                       "holds 3 core images (CRIU writes one per task)")
    assert peak < PEAK_RSS, f"peak RSS {peak >> 20} MiB"


def test_huge_pagemap_is_streamed(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    """pagemap-1.img framing ~760,000 one-page runs kept in a parent dump.

    They need no byte of the pages file, so nothing bounds their number but the
    image; decoded one at a time, they cost no memory (a list of them: ~400 MB).
    """
    head = frame(encode_message("pagemap_head", {"pages_id": 1}))
    run = frame(encode_message("pagemap", {"vaddr": 0x1000, "nr_pages": 1, "flags": 1}))
    count = 8 * MIB // len(run)
    image = struct.pack("<II", IMG_COMMON, PAGEMAP_MAGIC) + head + run * count
    before = {p["pid"]: p["memory_size"] for p in cli("memparse", counters_archive,
                                                      "-o", "json").json()}
    arch = rewrite_member(counters_archive, tmp_path / "pagemap.tar", "checkpoint/pagemap-1.img",
                          lambda old: image + old[8 + len(head):])
    r, peak = measured_run("memparse", arch, "-o", "json")
    assert r.returncode == 0, r.stderr
    after = {p["pid"]: p["memory_size"] for p in json.loads(r.stdout)}
    assert after == {**before, 1: before[1] + count * 4096}
    assert peak < PEAK_RSS, f"peak RSS {peak >> 20} MiB"


def test_tar_entries_bounded(counters_archive: Path, make_archive: Callable[..., Path]) -> None:
    """More tar entries than ArchiveSettings.max_members, in the archive or in rootfs-diff.tar."""
    outer = len(read_members(counters_archive))
    with CheckpointArchive(counters_archive, ArchiveSettings(max_members=outer)) as a:
        assert len(a.members) == outer  # every name is unique
    with pytest.raises(ArchiveError) as e:
        CheckpointArchive(counters_archive, ArchiveSettings(max_members=outer - 1))
    assert e.value.message == f"{counters_archive}: holds more than {outer - 1} entries"
    files = {f"f{i:03}": b"x" for i in range(outer + 5)}
    arch = make_archive(rootfs_files=files)
    with Checkpoint(arch, ArchiveSettings(max_members=outer + 1)) as ckpt, \
            pytest.raises(ArchiveError) as e:
        ckpt.rootfs_diff()
    assert e.value.message == f"{arch}: rootfs-diff.tar: holds more than {outer + 1} entries"


# --- what a search or a tree may hold -------------------------------------------------------


def test_memparse_stops_after_max_matches(counters_archive: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    pattern = memsearch.compile_pattern("counter", None)
    with Checkpoint(counters_archive, ArchiveSettings()) as ckpt:
        every = list(memsearch.search(ckpt, pattern, ArchiveSettings()))
        assert len(every) > 2
        settings = ArchiveSettings(max_matches=2)
        with caplog.at_level(logging.WARNING):
            first = list(memsearch.search(ckpt, pattern, settings))
        assert first == every[:2]
        assert caplog.messages == [
            "stopped after 2 matches: more would exceed the limit of 2 matches or "
            f"{settings.max_match_text_bytes} characters of match text; narrow the search "
            "(--pid, a longer pattern, less --context)"]
        text = len(every[0].match) + len(every[1].match)
        within = ArchiveSettings(max_match_text_bytes=text)
        assert list(memsearch.search(ckpt, pattern, within)) == every[:2]


def test_environment_strings_share_one_budget(counters_archive: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Strings past ArchiveSettings.max_strings_total_bytes are left out, with one warning."""
    opts = InspectOptions(ps_tree_env=True)
    with Checkpoint(counters_archive, ArchiveSettings()) as ckpt:
        full = inspect(ckpt, opts, ArchiveSettings()).process_tree
        assert full is not None and full.environment
        budget = sum(len(s) + 64 for s in full.environment)
        with caplog.at_level(logging.WARNING):
            cut = inspect(ckpt, opts, ArchiveSettings(max_strings_total_bytes=budget)).process_tree
    assert cut is not None
    assert cut.environment == full.environment
    assert [c.environment for c in cut.children] == [[], []]
    assert caplog.messages == [
        f"pid 7: env and all later command lines and environments are cut: their strings "
        f"exceed the {budget}-byte budget"]
