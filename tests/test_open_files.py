"""inspect --files / --sockets on generated archives: the decoders against crit, the
CLI's exact output, and hostile images.

The generated archive is the seed pod with the open files of e2e/archives/filesgen.py
(`counters_files`): what real dumps on this machine do not produce (a
listening socket, IPv6 and UDP, abstract and connected unix sockets, an
eventfd, a netlink socket, a deleted file) beside pipes, a FIFO and regular
files. Real dumps are compared in tests/test_real_checkpoints.py.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import quopri
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2e.archives.archivegen import ArchiveSpec, Process, build
from e2e.archives.filesgen import FileTable, counters_files, fd, reg
from migrate.adapters.criu import files as cf
from migrate.adapters.criu.images import ImageError
from migrate.validation import validate
from tests.conftest import Result
from tests.test_untrusted_input import assert_clean_error, read_members, rewrite_member, write_tar
from tests.test_untrusted_limits import PEAK_RSS, measured_run

Cli = Callable[..., Result]
INVALID_INPUT = 3
HINT_CORRUPT = "hint: the CRIU image is corrupt or truncated"
# Magics from CRIU's criu/include/magic.h (not from the reader under test).
IMG_COMMON, FDINFO_MAGIC, FILES_MAGIC, PSTREE_MAGIC = 0x54564319, 0x56213732, 0x56303138, \
    0x50273030


def crit_decode(path: Path) -> dict[str, Any]:
    out = subprocess.run(["crit", "decode", "-i", str(path)], capture_output=True, text=True,
                         check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture(scope="module")
def files_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The counters checkpoint with its open files and sockets."""
    out = tmp_path_factory.mktemp("files") / "checkpoint-counters_default-counter-2023.tar"
    return build(ArchiveSpec(use_crit=True, open_files=counters_files()), out)


@pytest.fixture(scope="module")
def criu_dir(files_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("criu")
    with tarfile.open(files_archive) as tf:
        tf.extractall(out, filter="data")
    return out / "checkpoint"


def variant(change: Callable[[FileTable], None]) -> FileTable:
    table = copy.deepcopy(counters_files())
    change(table)
    return table


def entry(table: FileTable, fid: int) -> dict[str, Any]:
    """The files.img entry of id ``fid``."""
    found: dict[str, Any] = next(e for e in table.files if e["id"] == fid)
    return found


# --- the decoders against crit -------------------------------------------------------------


def _ip(words: list[int]) -> str:
    return str(ipaddress.ip_address(b"".join(w.to_bytes(4, "little") for w in words)))


def test_files_img_matches_crit(criu_dir: Path) -> None:
    path = criu_dir / "files.img"
    theirs = crit_decode(path)["entries"]
    ours = cf.collect_files(path.read_bytes(), {e["id"] for e in theirs})
    assert len(ours) == len(theirs) == 18
    for t in theirs:
        o = ours[t["id"]]
        if t["type"] == "REG":
            r = t["reg"]
            assert isinstance(o, cf.RegFile)
            assert (o.flags, o.pos, o.name, o.size) == (r["flags"], r["pos"],
                                                        r["name"].encode(), r.get("size"))
        elif t["type"] == "PIPE":
            assert o == cf.Pipe(t["id"], t["pipe"]["pipe_id"], t["pipe"]["flags"])
        elif t["type"] == "FIFO":
            assert o == cf.Fifo(t["id"], t["fifo"]["pipe_id"], t["fifo"]["regf_id"])
        elif t["type"] == "INETSK":
            s = t["isk"]
            assert isinstance(o, cf.InetSocket)
            assert (o.ino, o.family, o.type, o.proto, o.state, o.flags, o.src_port,
                    o.dst_port) == (s["ino"], s["family"], s["type"], s["proto"], s["state"],
                                    s["flags"], s["src_port"], s["dst_port"])
            assert str(ipaddress.ip_address(o.src_addr)) == _ip(s["src_addr"])
            assert str(ipaddress.ip_address(o.dst_addr)) == _ip(s["dst_addr"])
        elif t["type"] == "UNIXSK":
            u = t["usk"]
            assert o == cf.UnixSocket(t["id"], u["ino"], u["type"], u["state"], u["flags"],
                                      u["peer"], quopri.decodestring(u["name"]))
        elif t["type"] == "NETLINKSK":
            n = t["nlsk"]
            assert o == cf.NetlinkSocket(t["id"], n["ino"], n["protocol"], n["state"],
                                         n["flags"])
        else:
            assert t["type"] == "EVENTFD" and o == cf.OtherFile(t["id"], 6)


def test_fdinfo_ids_fs_and_remap_match_crit(criu_dir: Path) -> None:
    for pid, files_id in ((1, 2), (7, 3), (8, 4)):
        ids = criu_dir / f"ids-{pid}.img"
        assert cf.parse_ids_files_id(ids.read_bytes()) == crit_decode(ids)["entries"][0][
            "files_id"] == files_id
        table = criu_dir / f"fdinfo-{files_id}.img"
        assert [(e.fd, e.id, cf.fd_type_name(e.type), e.fd_flags)
                for e in cf.iter_fdinfo(table.read_bytes(), 100)] == [
            (t["fd"], t["id"], t["type"], t["flags"]) for t in crit_decode(table)["entries"]]
        fs = criu_dir / f"fs-{pid}.img"
        t_fs = crit_decode(fs)["entries"][0]
        assert cf.parse_fs(fs.read_bytes()) == (t_fs["cwd_id"], t_fs["root_id"]) == (2, 1)
    remap = criu_dir / "remap-fpath.img"
    (t_remap,) = crit_decode(remap)["entries"]
    assert cf.deleted_ids(remap.read_bytes(), {13, 14}) == {t_remap["orig_id"]} == {14}
    assert cf.deleted_ids(remap.read_bytes(), {13}) == set()


def test_ids_from_the_core_image_of_older_dumps(tmp_path: Path) -> None:
    table = counters_files()
    table.ids_in_core = True
    arch = build(ArchiveSpec(use_crit=True, open_files=table), tmp_path / "old.tar")
    with tarfile.open(arch) as tf:
        assert not [n for n in tf.getnames() if "/ids-" in n]
        core = tf.extractfile("checkpoint/core-7.img")
        assert core is not None
        assert cf.parse_core_files_id(core.read()) == 3


def test_byte_order_follows_the_machine_type() -> None:
    """CRIU stores an IP address as the dumping machine's 32-bit integers (s390: big-endian)."""
    words = [0x20010DB8, 0, 0, 5]  # 2001:db8::5 read as big-endian integers
    isk = _pb((1, 7), (2, 9), (3, cf.AF_INET6), (4, 1), (5, 6), (6, 1), (7, 80), (8, 0),
              (9, 2), *((11, w) for w in words), *((12, 0) for _ in range(4)))
    data = _image(FILES_MAGIC, _pb((1, cf.INETSK), (2, 7), (4, isk)))
    assert cf.byteorder(5) == "big" and cf.byteorder(1) == "little"
    (sock,) = cf.collect_files(data, {7}, byteorder="big").values()
    assert isinstance(sock, cf.InetSocket)
    assert ipaddress.ip_address(sock.src_addr) == ipaddress.ip_address("2001:db8::5")


@given(st.binary(max_size=300))
def test_file_parsers_fail_only_with_image_error(data: bytes) -> None:
    for magic in (FDINFO_MAGIC, FILES_MAGIC, 0x54432030, 0x51403912, 0x59133954, 0x55053847):
        for parse in (lambda d: list(cf.iter_fdinfo(d, 10)), cf.parse_ids_files_id,
                      cf.parse_core_files_id, cf.parse_fs,
                      lambda d: cf.deleted_ids(d, range(100)),
                      lambda d: cf.collect_files(d, range(100))):
            with contextlib.suppress(ImageError):
                parse(struct.pack("<II", IMG_COMMON, magic) + data)


# --- the CLI --------------------------------------------------------------------------------

TREE = """\
└── Process tree
    └── [1]  bash
        ├── Open files
        │   ├── [0]  REG  /dev/null  (rw, pos 0)
        │   ├── [1]  PIPE  pipe:[40990]  (w)
        │   ├── [2]  PIPE  pipe:[40990]  (w)
        │   ├── [cwd]  /home/counter
        │   └── [root]  /
        ├── [7]  counter.py
        │   ├── Open files
        │   │   ├── [0]  REG  /dev/null  (rw, pos 0)
        │   │   ├── [1]  PIPE  pipe:[41001]  (w)
        │   │   ├── [2]  PIPE  pipe:[41001]  (w)
        │   │   ├── [3]  INETSK  socket:[52001]  (rw)
        │   │   ├── [4]  INETSK  socket:[52002]  (rw)
        │   │   ├── [5]  INETSK  socket:[52003]  (rw)
        │   │   ├── [6]  UNIXSK  socket:[52004]  (rw)
        │   │   ├── [7]  UNIXSK  socket:[52005]  (rw)
        │   │   ├── [8]  UNIXSK  socket:[52006]  (rw)
        │   │   ├── [9]  REG  /tmp/scratch.db  (rw, pos 4096, deleted)
        │   │   ├── [10]  EVENTFD
        │   │   ├── [11]  FIFO  /run/ctl.fifo  (r, pos 0)
        │   │   ├── [12]  NETLINKSK  socket:[52007]  (rw)
        │   │   ├── [cwd]  /home/counter
        │   │   └── [root]  /
        │   └── Open sockets
        │       ├── [3]  TCP LISTEN  0.0.0.0:8088
        │       ├── [4]  TCP ESTABLISHED  [2001:db8::5]:8088 -> [2001:db8::1]:51234
        │       ├── [5]  UDP CLOSE  [::]:5353
        │       ├── [6]  UNIX STREAM LISTEN  @counter\\x00ctl
        │       ├── [7]  UNIX STREAM ESTABLISHED  (unnamed)  (peer socket:[52006])
        │       ├── [8]  UNIX STREAM ESTABLISHED  (unnamed)  (peer socket:[52005])
        │       └── [12]  NETLINK ROUTE
        └── [8]  tee
            └── Open files
                ├── [0]  PIPE  pipe:[41001]  (r)
                ├── [1]  PIPE  pipe:[40990]  (w)
                ├── [2]  PIPE  pipe:[40990]  (w)
                ├── [3]  REG  /home/counter/logfile  (w, pos 241)
                ├── [cwd]  /home/counter
                └── [root]  /
"""


def test_tree_view(cli: Cli, files_archive: Path) -> None:
    r = cli("inspect", files_archive, "--files", "--sockets")
    assert (r.code, r.err) == (0, "")
    assert r.out.endswith("├── Root FS diff size: 10.0 KiB\n" + TREE)


def test_files_alone_draw_no_socket_branches(cli: Cli, files_archive: Path) -> None:
    out = cli("inspect", files_archive, "--files").out
    assert "Open files" in out and "Open sockets" not in out
    out = cli("inspect", files_archive, "--sockets").out
    assert "Open sockets" in out and "Open files" not in out
    # A process without sockets gets no branch: tee is a leaf.
    assert out.endswith("        │       └── [12]  NETLINK ROUTE\n        └── [8]  tee\n")


def _socket(fd: int, inode: int | None, family: str, type_: str, **kw: Any) -> dict[str, Any]:
    out = {"fd": fd, "inode": inode, "family": family, "type": type_, "protocol": None,
           "state": None, "src": None, "src_port": None, "dst": None, "dst_port": None,
           "address": None, "peer": None}
    return out | kw


def test_json(cli: Cli, files_archive: Path) -> None:
    data = cli("inspect", files_archive, "--files", "--sockets", "-o", "json").json()
    validate(data, "inspect.schema.json", "inspect -o json")
    assert data["process_tree"]["pid"] == 1  # the tree comes with its files
    assert [(p["pid"], p["command"], p["cwd"], p["root"], len(p["open_files"]))
            for p in data["files"]] == [(1, "bash", "/home/counter", "/", 3),
                                         (7, "counter.py", "/home/counter", "/", 13),
                                         (8, "tee", "/home/counter", "/", 4)]
    by_fd = {f["fd"]: f for f in data["files"][1]["open_files"]}
    assert by_fd[9] == {"fd": 9, "type": "REG", "path": "/tmp/scratch.db", "mode": "rw",
                        "flags": 0o100002, "cloexec": False, "pos": 4096, "size": None,
                        "deleted": True}
    assert by_fd[11] == {"fd": 11, "type": "FIFO", "path": "/run/ctl.fifo", "mode": "r",
                         "flags": 0o104000, "cloexec": False, "pos": 0, "size": None,
                         "deleted": False}
    assert by_fd[10] == {"fd": 10, "type": "EVENTFD", "path": None, "mode": None,
                         "flags": None, "cloexec": True, "pos": None, "size": None,
                         "deleted": False}
    assert by_fd[3]["cloexec"] and by_fd[1]["path"] == "pipe:[41001]"
    assert data["files"][2]["open_files"][3]["flags"] == 0o102001  # O_WRONLY|O_APPEND|...
    assert [(p["pid"], p["command"], len(p["open_sockets"])) for p in data["sockets"]] == [
        (1, "bash", 0), (7, "counter.py", 7), (8, "tee", 0)]
    assert data["sockets"][1]["open_sockets"] == [
        _socket(3, 52001, "INET", "STREAM", protocol="TCP", state="LISTEN", src="0.0.0.0",
                src_port=8088, dst="0.0.0.0", dst_port=0),
        _socket(4, 52002, "INET6", "STREAM", protocol="TCP", state="ESTABLISHED",
                src="2001:db8::5", src_port=8088, dst="2001:db8::1", dst_port=51234),
        _socket(5, 52003, "INET6", "DGRAM", protocol="UDP", state="CLOSE", src="::",
                src_port=5353, dst="::", dst_port=0),
        _socket(6, 52004, "UNIX", "STREAM", state="LISTEN", address="@counter\0ctl"),
        _socket(7, 52005, "UNIX", "STREAM", state="ESTABLISHED", peer=52006),
        _socket(8, 52006, "UNIX", "STREAM", state="ESTABLISHED", peer=52005),
        _socket(12, 52007, "NETLINK", "RAW", protocol="ROUTE", state="CLOSE")]


def test_all_includes_them_when_the_dump_has_files(cli: Cli, files_archive: Path,
                                                   counters_archive: Path) -> None:
    data = cli("inspect", files_archive, "--all", "-o", "json").json()
    assert len(data["files"]) == len(data["sockets"]) == 3
    # The seed archive has no files images: --all leaves the parts out...
    data = cli("inspect", counters_archive, "--all", "-o", "json").json()
    assert "files" not in data and "sockets" not in data and data["process_tree"]
    # ...asked for, their absence is an error.
    for flag in ("--files", "--sockets"):
        assert_clean_error(cli("inspect", counters_archive, flag), INVALID_INPUT,
                           f"error: {counters_archive}: checkpoint/files.img: missing from the "
                           "archive")


def test_ids_in_the_core_image_read_the_same(cli: Cli, files_archive: Path,
                                             make_archive: Callable[..., Path]) -> None:
    def older(t: FileTable) -> None:
        t.ids_in_core = True

    arch = make_archive(open_files=variant(older))
    assert cli("inspect", arch, "--files", "--sockets").out.endswith(TREE)


def test_zombies_have_no_files_and_shared_tables_are_read_once(
        cli: Cli, make_archive: Callable[..., Path]) -> None:
    procs = [Process(1, 0, "sh", ["sh"], []), Process(2, 1, "worker", ["worker"], []),
             Process(3, 1, "zombie", ["zombie"], [], state=6)]
    null = reg(1, "/dev/null")
    table = FileTable([null], {5: [fd(0, null)]}, ids={1: 5, 2: 5}, fs={1: (1, 1), 2: (1, 1)})
    arch = make_archive(processes=procs, open_files=table)
    data = cli("inspect", arch, "--files", "-o", "json").json()
    assert [(p["pid"], [f["path"] for f in p["open_files"]]) for p in data["files"]] == [
        (1, ["/dev/null"]), (2, ["/dev/null"])]


def test_names_from_the_archive_are_escaped(cli: Cli, make_archive: Callable[..., Path],
                                            tmp_path: Path) -> None:
    def hostile(t: FileTable) -> None:
        entry(t, 13)["reg"]["name"] = "/tmp/\x1b[2J\nerror: none\u202eXX"

    arch = make_archive(open_files=variant(hostile))
    # A byte that is not UTF-8 (pycriu writes strings as UTF-8): patched in place.
    arch = rewrite_member(arch, tmp_path / "bytes.tar", "checkpoint/files.img",
                          lambda d: d.replace(b"XX", b"\xff\xfe"))
    r = cli("inspect", arch, "--files")
    assert r.code == 0
    assert ("[3]  REG  /tmp/\\x1b[2J\\nerror: none\\u202e\\udcff\\udcfe  (w, pos 241)"
            in r.out)
    data = cli("inspect", arch, "--files", "-o", "json")
    assert "\\u001b[2J\\nerror: none\\u202e\\udcff\\udcfe" in data.out
    assert data.json()["files"][2]["open_files"][3]["path"] == (
        "/tmp/\x1b[2J\nerror: none\u202e\udcff\udcfe")


# --- hostile images -------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(*fields: tuple[int, int | bytes]) -> bytes:
    """Protobuf: varints for ints, length-delimited for bytes."""
    out = b""
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3) + _varint(value)
        else:
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
    return out


def _image(magic: int, *entries: bytes) -> bytes:
    return struct.pack("<II", IMG_COMMON, magic) + b"".join(
        struct.pack("<I", len(e)) + e for e in entries)


def _cut_last_entry(data: bytes) -> tuple[bytes, str]:
    """``data`` with its last entry's final 5 bytes cut, and the reader's words for that."""
    pos, index, last = 8, 0, (0, 0)
    while pos < len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        last = (index, size)
        pos += 4 + size
        index += 1
    i, size = last
    return data[:-5], f"entry {i} declares {size} bytes but only {size - 5} remain"


def _dup_fd(t: FileTable) -> None:
    t.tables[3].append(fd(3, entry(t, 14)))


def _reg_without_sub(t: FileTable) -> None:
    del entry(t, 13)["reg"]


def _reg_other_id(t: FileTable) -> None:
    entry(t, 13)["reg"]["id"] = 99


def _no_logfile(t: FileTable) -> None:
    t.files.remove(entry(t, 13))


def _no_fifo_path(t: FileTable) -> None:
    t.files.remove(entry(t, 17))


def _long_name(t: FileTable) -> None:
    entry(t, 13)["reg"]["name"] = "/" + "a" * 4096


def _short_address(t: FileTable) -> None:
    entry(t, 8)["isk"]["src_addr"] = [1, 2]


def _odd_family(t: FileTable) -> None:
    entry(t, 7)["isk"]["family"] = 1


@pytest.mark.parametrize(("change", "member", "message"), [
    (_dup_fd, "fdinfo-3.img", "lists fd 3 twice"),
    (_reg_without_sub, "files.img", "file id 13 (REG) has no reg entry"),
    (_reg_other_id, "files.img", "file id 13 holds a reg entry of id 99"),
    (_no_logfile, "files.img", "has no entry for file id 13 (fd 3 of pid 8)"),
    (_no_fifo_path, "files.img", "has no entry for file id 17 (the path of fd 11 of pid 7)"),
    (_long_name, "files.img", "the name of file 13 is 4097 bytes long, more than PATH_MAX "
                              "(4096)"),
    (_short_address, "files.img", "inet socket 8 has a source address of 2 words, 4 expected"),
    (_odd_family, "files.img", "inet socket 7 has address family 1"),
], ids=["fd-twice", "no-sub-message", "id-mismatch", "missing-file", "missing-fifo-path",
        "long-name", "short-address", "odd-family"])
def test_inconsistent_images_are_refused(cli: Cli, make_archive: Callable[..., Path],
                                         change: Callable[[FileTable], None], member: str,
                                         message: str) -> None:
    arch = make_archive(open_files=variant(change))
    for args in (["--files"], ["--sockets"], ["--all", "-o", "json"]):
        r = cli("inspect", arch, *args)
        assert_clean_error(r, INVALID_INPUT, f"error: {arch}: checkpoint/{member}: {message}")
        assert r.err.splitlines()[1] == HINT_CORRUPT


def test_truncated_and_garbled_images_are_refused(cli: Cli, files_archive: Path,
                                                  tmp_path: Path) -> None:
    members = dict((i.name, d) for i, d in read_members(files_archive))
    cases: list[tuple[str, bytes, str]] = []
    for name in ("checkpoint/fdinfo-3.img", "checkpoint/files.img"):
        data = members[name]
        assert data is not None
        cut, why = _cut_last_entry(data)
        cases.append((name, cut, why))
    cases += [
        ("checkpoint/fdinfo-3.img", _image(FDINFO_MAGIC, _pb((1, 3), (2, 0), (3, 1))),
         "an fdinfo entry lacks required field(s) fd"),
        ("checkpoint/fdinfo-3.img", _image(PSTREE_MAGIC, b""),
         "is not a FDINFO image (PSTREE)"),
        ("checkpoint/fdinfo-3.img", _image(FDINFO_MAGIC, b"\x0a\xff\xff\xff\xff\x0f"),
         "holds a malformed FDINFO entry (field 1 declares 4294967295 bytes, 0 remain)"),
        ("checkpoint/files.img", _image(FILES_MAGIC, _pb((1, 1), (2, 13), (3, b"\x08"))),
         "holds a malformed reg entry (truncated varint)"),
        ("checkpoint/ids-7.img", _image(0x54432030, _pb((1, 3))),
         "the ids entry lacks required field(s) files_id"),
        ("checkpoint/fs-7.img", b"\x19\x43", "too short to hold a CRIU image magic"),
    ]
    for name, data, why in cases:
        arch = rewrite_member(files_archive, tmp_path / "bad.tar", name, lambda _, d=data: d)
        assert_clean_error(cli("inspect", arch, "--files", "--sockets"), INVALID_INPUT,
                           f"error: {arch}: {name}: {why}")


def test_missing_images_are_named(cli: Cli, files_archive: Path, tmp_path: Path) -> None:
    members = read_members(files_archive)
    for name, line in [
        ("checkpoint/ids-7.img", "checkpoint/ids-7.img: missing from the archive, and "
                                 "core-7.img holds no ids either"),
        ("checkpoint/fdinfo-3.img", "checkpoint/fdinfo-3.img: missing from the archive"),
        ("checkpoint/fs-8.img", "checkpoint/fs-8.img: missing from the archive"),
    ]:
        arch = write_tar(tmp_path / "missing.tar", [(i, d) for i, d in members if i.name != name])
        assert_clean_error(cli("inspect", arch, "--all"), INVALID_INPUT,
                           f"error: {arch}: {line}")


def _with_fds(files_archive: Path, dst: Path, count: int) -> Path:
    """The files archive with counter.py's table holding ``count`` descriptors of one file."""
    row = lambda n: _pb((1, 13), (2, 0), (3, cf.REG), (4, n))  # noqa: E731
    image = _image(FDINFO_MAGIC, *(row(n) for n in range(count)))
    return rewrite_member(files_archive, dst, "checkpoint/fdinfo-3.img", lambda _: image)


def test_descriptors_past_the_bound_are_refused_within_bounds(files_archive: Path,
                                                              tmp_path: Path) -> None:
    """One table of 262,145 descriptors: refused while decoding, before any is resolved."""
    arch = _with_fds(files_archive, tmp_path / "huge.tar", 262_145)
    r, peak = measured_run("inspect", arch, "--files", "-o", "json")
    assert_clean_error(r, INVALID_INPUT, f"error: {arch}: checkpoint/fdinfo-3.img: lists more "
                                         "than 262144 file descriptors")
    assert peak < PEAK_RSS, f"peak RSS {peak >> 20} MiB"


def test_descriptors_of_all_processes_together_are_bounded(
        cli: Cli, make_archive: Callable[..., Path]) -> None:
    """Within the bound per table, but not together: the table shared by 3 processes."""
    procs = [Process(1, 0, "sh", ["sh"], []), Process(2, 1, "a", ["a"], []),
             Process(3, 1, "b", ["b"], [])]
    null = reg(1, "/dev/null")
    rows = [fd(n, null) for n in range(100_000)]
    table = FileTable([null], {5: rows}, ids={1: 5, 2: 5, 3: 5},
                      fs={pid: (1, 1) for pid in (1, 2, 3)})
    arch = make_archive(processes=procs, open_files=table)
    assert_clean_error(cli("inspect", arch, "--sockets"), INVALID_INPUT,
                       f"error: {arch}: checkpoint/fdinfo-5.img: its processes hold more than "
                       "262144 open file descriptors together")


def test_many_descriptors_are_listed_within_bounds(files_archive: Path, tmp_path: Path) -> None:
    """50,000 descriptors: listed in full, the JSON written as it goes."""
    arch = _with_fds(files_archive, tmp_path / "many.tar", 50_000)
    r, peak = measured_run("inspect", arch, "--files", "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    rows = data["files"][1]["open_files"]
    assert [f["fd"] for f in rows] == list(range(50_000))
    assert {f["path"] for f in rows} == {"/home/counter/logfile"}
    assert peak < PEAK_RSS // 2, f"peak RSS {peak >> 20} MiB"
