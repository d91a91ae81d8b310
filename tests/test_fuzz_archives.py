"""Fuzzing: hostile archives never crash a command, exhaust memory or escape DIR.

Four generators, each starting from the seed `counters` checkpoint with its
open files and sockets (CRIU images encoded by CRIU's own pycriu):

- a member's bytes mutated (CRIU images, JSON metadata, the nested tar):
  flipped, cut, extended, entry sizes rewritten, entries repeated thousands of
  times, JSON nested deeply, control characters and terminal escapes spliced in;
- a tar header of the archive itself rewritten (name, mode, size, type, link),
  with its checksum fixed up or not;
- a rootfs-diff.tar built from random entries: names with '..', long
  components, empty parts; files, directories, symlinks, hard links and device
  nodes pointing anywhere;
- the archive (whole, or with a member mutated as above) gzip- or
  zstd-compressed in one or several members/frames, then maybe damaged: bytes
  flipped, cut short, bytes inserted, data appended, garbage after the magic.

Every command an operator points at an archive runs on every example (show,
inspect, also with --files --sockets, memparse, rootfs-diff with and without
--extract, list, build into an OCI layout), in one long-lived worker process
whose data segment is capped.
The promise checked on each: exit 0, or exit 3/4 with exactly one ``error:``
line and one ``hint:`` line; never exit 1 or a traceback; no control
character but newline in any output; peak RSS under a bound; nothing created
or changed outside the extraction directory.

CI runs a fixed, derandomized set of examples (``MIGRATE_FUZZ_EXAMPLES``,
default 30 per generator); ``MIGRATE_FUZZ_EXAMPLES=2000 scripts/test -k fuzz``
is the long opt-in run.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e.archives.archivegen import ArchiveSpec, build
from e2e.archives.filesgen import counters_files
from tests.conftest import REPO
from tests.test_tarstream import fix_checksum

EXAMPLES = int(os.environ.get("MIGRATE_FUZZ_EXAMPLES", "30"))
DATA_LIMIT = 768 << 20  # the worker's RLIMIT_DATA
RSS_BOUND_KIB = 400 << 10  # what any command may reach on these small archives
SECRET = "RANDOM_1432_KEY"
OK, INVALID_INPUT, NOT_FOUND = 0, 3, 4
# C0 controls but newline, DEL, C1 controls: what a terminal would act on.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# --- the worker ------------------------------------------------------------------------------


class Worker:
    """The fuzz worker process (tests/fuzzworker.py) and its request/answer pipe."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzzworker", str(DATA_LIMIT)], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, *argv: str | Path) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv]}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the worker died running {argv} (exit {self.proc.wait()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    env = dict(os.environ)
    env["MIGRATE_CACHE_DIR"] = str(tmp_path_factory.mktemp("fuzz-cache"))
    env["MIGRATE_STATE_DIR"] = str(tmp_path_factory.mktemp("fuzz-state"))
    env.pop("MIGRATE_DEBUG", None)
    # Compressed examples decompress into a directory of their own, and never to more
    # than a seed archive could hold (a flipped block header can claim 128 KiB a byte).
    env["TMPDIR"] = str(tmp_path_factory.mktemp("fuzz-tmp"))
    env["MIGRATE_MAX_UNCOMPRESSED"] = "64M"
    w = Worker(env)
    yield w
    w.close()


Members = list[tuple[tarfile.TarInfo, bytes | None]]


class Seed(list[tuple[tarfile.TarInfo, bytes | None]]):
    """The seed archive's members in order, with their data (a short repr for reports)."""

    def __repr__(self) -> str:
        return f"<seed archive: {len(self)} members>"


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    # With open files and sockets, so that their images (fdinfo, files.img, ids, fs,
    # remap-fpath) are mutated too and `inspect --all` reads them.
    path = build(ArchiveSpec(use_crit=True, open_files=counters_files()),
                 tmp_path_factory.mktemp("seed") / "seed.tar")
    with tarfile.open(path) as tf:
        return Seed((i, tf.extractfile(i).read() if i.isreg() else None)  # type: ignore[union-attr]
                    for i in tf.getmembers())


def _tar(members: Members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            info = info.replace(deep=False)
            if data is None:
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- checking one archive --------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Everything below ``root``, links not followed: path -> (mode, size, link target)."""
    out = {".": (os.lstat(root).st_mode, 0, "")}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st_ = os.lstat(p)
            target = os.readlink(p) if stat.S_ISLNK(st_.st_mode) else ""
            out[os.path.relpath(p, root)] = (st_.st_mode, st_.st_size, target)
    return out


def _check(answer: dict[str, Any], argv: tuple[str, ...]) -> None:
    code, out, err = answer["code"], answer["out"], answer["err"]
    where = f"migrate {' '.join(argv)} -> {code}\n{err}"
    assert "Traceback" not in out + err, where
    assert code in (OK, INVALID_INPUT, NOT_FOUND), where
    assert not _CONTROL.search(out), f"raw control character on stdout: {where}"
    assert not _CONTROL.search(err), f"raw control character on stderr: {where}"
    lines = err.splitlines()
    if code != OK:
        errors = [ln for ln in lines if ln.startswith("error: ")]
        assert len(errors) == 1, where
        i = lines.index(errors[0])
        assert len(lines) > i + 1 and lines[i + 1].startswith("hint: "), where
        # Nothing after the hint, and before the error only log lines of their own.
        assert len(lines) == i + 2, where
    assert answer["maxrss_kib"] < RSS_BOUND_KIB, f"peak RSS {answer['maxrss_kib']} KiB: {where}"


def check_archive(worker: Worker, data: bytes, work: Path) -> None:
    """Run every archive command on ``data``; each must keep the promises above."""
    if work.exists():
        shutil.rmtree(work)
    listing = work / "listed"
    listing.mkdir(parents=True)
    archive = listing / "checkpoint-fuzz.tar"
    archive.write_bytes(data)
    sentinel = work / "outside"
    sentinel.mkdir(mode=0o755)
    (sentinel / "keep").write_text("keep\n")
    target = work / "extract" / "a" / "b" / "out"
    target.parent.mkdir(parents=True)
    before = _snapshot(work)
    commands: list[tuple[str, ...]] = [
        ("show", str(archive)),
        ("show", str(archive), "--stats", "-o", "json"),
        ("inspect", str(archive), "--all", "-o", "json"),
        ("inspect", str(archive), "--ps-tree-cmd", "--ps-tree-env", "--mounts"),
        ("inspect", str(archive), "--files", "--sockets"),
        ("memparse", str(archive)),
        ("memparse", str(archive), "--search", SECRET, "--context", "16"),
        ("rootfs-diff", str(archive)),
        ("rootfs-diff", str(archive), "--extract", str(target)),
        ("list", str(listing)),
        ("build", str(archive), "--image", "localhost/fuzz:1", "--no-push",
         "--oci-layout", str(work / "layout")),
    ]
    for argv in commands:
        _check(worker.run(*argv), argv)
    after = _snapshot(work)
    produced = {"extract/a/b/out", "layout"}
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)
               and not any(p == q or p.startswith(q + "/") for q in produced)}
    assert not changed, f"written outside the extraction directory: {sorted(changed)}"
    if target.exists():
        for dirpath, dirnames, filenames in os.walk(target):
            for n in dirnames + filenames:
                p = Path(dirpath, n)
                st_ = os.lstat(p)
                if stat.S_ISLNK(st_.st_mode):
                    # realpath, not Path.resolve: a loop (a -> a) stays inside, and only
                    # resolve() calls it an error.
                    resolved = Path(os.path.realpath(p))
                    assert resolved.is_relative_to(os.path.realpath(target)), f"{p} -> {resolved}"
                else:
                    assert stat.S_IMODE(st_.st_mode) in (0o600, 0o700), f"{p} mode"


# --- generator 1: member bytes ---------------------------------------------------------------

_TERMINAL = [b"\n", b"\r", b"\x1b[2J", b"\x1b]0;owned\x07", b"\x9b", "\u202e".encode(),
             b"\nerror: none; all good\n"]


def _entry_offsets(image: bytes) -> list[int]:
    """Where each u32 entry size sits in a CRIU image (after its one or two magics)."""
    pos = 8 if len(image) >= 8 and struct.unpack_from("<I", image)[0] in (
        0x54564319, 0x55105940) else 4
    out = []
    while pos + 4 <= len(image):
        out.append(pos)
        pos += 4 + struct.unpack_from("<I", image, pos)[0]
    return out


def _mutate(draw: st.DrawFn, name: str, data: bytes) -> bytes | None:
    op = draw(st.sampled_from(["flip", "cut", "insert", "entry-size", "repeat", "random",
                               "deep-json", "terminal", "drop", "empty", "varint"]))
    if op == "drop":
        return None
    if op == "empty":
        return b""
    if op == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if op == "cut" and data:
        return data[:draw(st.integers(0, len(data) - 1))]
    if op == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if op == "entry-size":
        offsets = _entry_offsets(data)
        if offsets:
            at = draw(st.sampled_from(offsets))
            size = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, len(data)])
                        | st.integers(0, (1 << 32) - 1))
            return data[:at] + struct.pack("<I", size) + data[at + 4:]
    if op == "repeat":
        offsets = _entry_offsets(data)
        times = draw(st.sampled_from([2, 100, 5000, 40000]))
        if len(offsets) >= 1:
            at = draw(st.sampled_from(offsets))
            size = struct.unpack_from("<I", data, at)[0]
            entry = data[at:at + 4 + size]
            if len(entry) * times <= 8 << 20:
                return data + entry * times
        return (data * min(times, max(1, (4 << 20) // max(1, len(data)))))
    if op == "random":
        return draw(st.binary(max_size=2048))
    if op == "deep-json":
        depth = draw(st.sampled_from([200, 1500, 100_000]))
        inner = draw(st.sampled_from([b"[" * depth, b"[" * depth + b"]" * depth,
                                      b'{"a":' * depth + b"1" + b"}" * depth]))
        if data.startswith(b"{") and name.endswith(".dump"):
            # Keep the document otherwise valid: the nesting hides in one value.
            return b'{"deep":' + inner + b"," + data[1:] if inner.endswith((b"]", b"}")) \
                else inner
        return inner
    if op == "terminal":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from(_TERMINAL)) + data[at:]
    if op == "varint" and len(data) > 12:
        at = draw(st.integers(8, len(data) - 1))
        return data[:at] + b"\xff" * 9 + b"\x01" + data[at:]
    return data


@given(data=st.data())
@FUZZ
def test_fuzz_member_bytes(worker: Worker, seed: Seed,
                           tmp_path: Path, data: st.DataObject) -> None:
    files = [i.name for i, d in seed if d is not None]
    members = list(seed)
    for _ in range(data.draw(st.integers(1, 2))):
        name = data.draw(st.sampled_from(files))
        i = next(k for k, (info, _d) in enumerate(members) if info.name == name)
        old = members[i][1]
        assert old is not None
        new = _mutate(data.draw, name, old)
        if new is None:
            members.pop(i)
            files.remove(name)
            if not files:
                break
        else:
            members[i] = (members[i][0], new)
    check_archive(worker, _tar(members), tmp_path / "w")


# --- generator 2: tar headers ----------------------------------------------------------------

_HEADER_FIELDS = {"name": (0, 100), "mode": (100, 8), "size": (124, 12), "type": (156, 1),
                  "linkname": (157, 100), "magic": (257, 8), "prefix": (345, 155)}


def _header_offsets(archive: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        return [i.offset for i in tf.getmembers()]


@given(data=st.data())
@FUZZ
def test_fuzz_tar_headers(worker: Worker, seed: Seed,
                          tmp_path: Path, data: st.DataObject) -> None:
    archive = bytearray(_tar(seed))
    offsets = _header_offsets(bytes(archive))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.sampled_from(offsets))
        start, length = _HEADER_FIELDS[data.draw(st.sampled_from(sorted(_HEADER_FIELDS)))]
        value = data.draw(st.sampled_from([
            b"../../escape\0", b"/etc/passwd\0", b"a\nerror: none; all good\x1b[2J\0",
            b"77777777777\0", b"\x80\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
            b"2", b"1", b"3", b"6", b"L", b"x", b"g", b"\0"]) | st.binary(max_size=length))
        value = value[:length]
        archive[at + start:at + start + len(value)] = value
        if data.draw(st.booleans()):
            block = archive[at:at + 512]
            fix_checksum(block)
            archive[at:at + 512] = block
    check_archive(worker, bytes(archive), tmp_path / "w")


# --- generator 3: rootfs-diff entries --------------------------------------------------------

_PARTS = st.sampled_from(["a", "b", "q", "h", "..", ".", "", "x" * 120, "y" * 300,
                          "etc", "dev", "\x1b[2J", "n\nl"])
_NAMES = st.lists(_PARTS, min_size=1, max_size=6).map("/".join)
_KINDS = st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "char", "block"])
_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "char": tarfile.CHRTYPE,
          "block": tarfile.BLKTYPE}


def _rootfs_tar(entries: list[tuple[str, str, str, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, target, mode in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = _TYPES[kind], mode, 1677737263
            if kind in ("symlink", "hardlink"):
                info.linkname = target
            if kind == "file":
                body = f"content of {name}\n".encode()
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
            else:
                tf.addfile(info)
    return buf.getvalue()


@given(entries=st.lists(st.tuples(_NAMES, _KINDS, _NAMES | st.just("/") | st.just("../.."),
                                  st.sampled_from([0o644, 0o777, 0o4755, 0o000])),
                        min_size=1, max_size=12))
@FUZZ
def test_fuzz_rootfs_entries(worker: Worker, seed: Seed,
                             tmp_path: Path, entries: list[tuple[str, str, str, int]]) -> None:
    members = [(i, _rootfs_tar(entries) if i.name == "rootfs-diff.tar" else d)
               for i, d in seed]
    check_archive(worker, _tar(members), tmp_path / "w")


# --- generator 4: compressed archives -------------------------------------------------------


def _compressed(draw: st.DrawFn, tar: bytes) -> bytes:
    """``tar`` as gzip or zstd (one or several members/frames), then maybe damaged."""
    kind = draw(st.sampled_from(["gzip", "zstd"]))
    pieces = draw(st.sampled_from([1, 1, 2, 7]))
    step = -(-len(tar) // pieces)
    parts = [tar[i:i + step] for i in range(0, len(tar), step)]
    if kind == "gzip":
        data = b"".join(gzip.compress(p, compresslevel=1, mtime=0) for p in parts)
    else:
        cctx = zstandard.ZstdCompressor(level=1, write_checksum=draw(st.booleans()))
        data = b"".join(cctx.compress(p) for p in parts)
    op = draw(st.sampled_from(["none", "flip", "cut", "insert", "append", "head"]))
    if op == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    if op == "cut":
        return data[:draw(st.integers(1, len(data) - 1))]
    if op == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if op == "append":
        return data + draw(st.binary(min_size=1, max_size=64) | st.just(data))
    if op == "head":  # the magic, then anything
        return data[:4] + draw(st.binary(max_size=256))
    return data


@given(data=st.data())
@FUZZ
def test_fuzz_compressed(worker: Worker, seed: Seed, tmp_path: Path,
                         data: st.DataObject) -> None:
    members = list(seed)
    if data.draw(st.booleans()):  # a damaged member inside a whole compressed stream
        files = [k for k, (_i, d) in enumerate(members) if d is not None]
        k = data.draw(st.sampled_from(files))
        old = members[k][1]
        assert old is not None
        new = _mutate(data.draw, members[k][0].name, old)
        members = members[:k] + ([] if new is None else [(members[k][0], new)]) + members[k + 1:]
    check_archive(worker, _compressed(data.draw, _tar(members)), tmp_path / "w")


def test_worker_reports_a_crash(worker: Worker, tmp_path: Path) -> None:
    """The harness can fail: a command that cannot succeed is seen as such."""
    answer = worker.run("show", tmp_path / "missing.tar")
    assert answer["code"] == NOT_FOUND
    with pytest.raises(AssertionError):
        _check({**answer, "code": 1}, ("show",))
    with pytest.raises(AssertionError):
        _check({**answer, "out": "\x1b[2J"}, ("show",))
