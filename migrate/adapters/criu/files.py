"""Open files and sockets in CRIU's images (CRIU >= 3: every file entry in files.img).

How a dump records what a process has open (criu/files.c, images/*.proto):

- ``ids-<pid>.img`` holds the task's kernel object ids; its ``files_id``
  names the fd table, ``fdinfo-<files_id>.img``. Older CRIU kept the ids in
  the core image, which CRIU's restore still reads: that is the fallback.
- ``fdinfo-<files_id>.img``: one ``fdinfo_entry { id, flags, type, fd }`` per
  descriptor; ``flags`` are the descriptor's own (FD_CLOEXEC), ``id`` the
  open file description, an entry of ``files.img``.
- ``files.img``: one ``file_entry { type, id, <sub-message> }`` per open
  file description, shared by every descriptor (in any process) that refers
  to it. The sub-message's ``flags`` are the file status flags (O_*) as
  /proc/PID/fdinfo shows them, O_CLOEXEC taken out.
- ``fs-<pid>.img``: the ids of the working and root directories (REG entries).
- ``remap-fpath.img``: files opened under a name they no longer have
  (deleted, then kept by CRIU as a ghost or a link remap).

Only what the forensic commands show is decoded; unknown fields are skipped.
Every entry is decoded one at a time and kept only when the caller wants its
id, so memory follows what is shown, not what the images frame; names are
refused past PATH_MAX.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from migrate.adapters.criu.images import ImageError, decode_entries, iter_entries
from migrate.adapters.criu.wire import Field, Schema, TooManyItems, WireError, decode

MAX_NAME = 4096  # PATH_MAX: CRIU reads names through /proc links, which stop there

FD_TYPES = {
    0: "UND", 1: "REG", 2: "PIPE", 3: "FIFO", 4: "INETSK", 5: "UNIXSK", 6: "EVENTFD",
    7: "EVENTPOLL", 8: "INOTIFY", 9: "SIGNALFD", 10: "PACKETSK", 11: "TTY", 12: "FANOTIFY",
    13: "NETLINKSK", 14: "NS", 15: "TUNF", 16: "EXT", 17: "TIMERFD", 18: "MEMFD",
    19: "BPFMAP", 20: "PIDFD",
}
REG, PIPE, FIFO, INETSK, UNIXSK, PACKETSK, NETLINKSK = 1, 2, 3, 4, 5, 10, 13
AF_INET, AF_INET6 = 2, 10
REMAP_PROCFS = 2  # remap_type: LINKED 0 and GHOST 1 are deleted files; PROCFS a dead /proc/PID
MTYPE_S390 = 5
TASK_ALIVE, TASK_STOPPED = 1, 3  # only these have files (criu/include/pstree.h is_alive_state)

FDINFO: Schema = {
    1: Field("id", "uint"), 2: Field("flags", "uint"), 3: Field("type", "uint"),
    4: Field("fd", "uint"),
}
IDS: Schema = {2: Field("files_id", "uint")}
CORE_IDS: Schema = {4: Field("ids", "message", message=IDS)}
FS: Schema = {1: Field("cwd_id", "uint"), 2: Field("root_id", "uint")}
REMAP_FPATH: Schema = {1: Field("orig_id", "uint"), 2: Field("remap_id", "uint"),
                       3: Field("remap_type", "uint")}
FILE_HEAD: Schema = {1: Field("type", "uint"), 2: Field("id", "uint")}
# Sub-messages are kept as bytes and decoded on their own, with their
# repeated fields bounded (a nested decode would not be).
_SUBS = {REG: (3, "reg"), INETSK: (4, "isk"), PACKETSK: (6, "psk"), NETLINKSK: (7, "nlsk"),
         UNIXSK: (16, "usk"), FIFO: (17, "fifo"), PIPE: (18, "pipe")}
FILE_ENTRY: Schema = {**FILE_HEAD, **{n: Field(name, "bytes") for n, name in _SUBS.values()}}
REG_FILE: Schema = {
    1: Field("id", "uint"), 2: Field("flags", "uint"), 3: Field("pos", "uint"),
    6: Field("name", "bytes"), 8: Field("size", "uint"),
}
PIPE_ENTRY: Schema = {1: Field("id", "uint"), 2: Field("pipe_id", "uint"),
                      3: Field("flags", "uint")}
FIFO_ENTRY: Schema = {1: Field("id", "uint"), 2: Field("pipe_id", "uint"),
                      3: Field("regf_id", "uint")}
INET_SK: Schema = {
    1: Field("id", "uint"), 2: Field("ino", "uint"), 3: Field("family", "uint"),
    4: Field("type", "uint"), 5: Field("proto", "uint"), 6: Field("state", "uint"),
    7: Field("src_port", "uint"), 8: Field("dst_port", "uint"), 9: Field("flags", "uint"),
    11: Field("src_addr", "uint", repeated=True), 12: Field("dst_addr", "uint", repeated=True),
}
UNIX_SK: Schema = {
    1: Field("id", "uint"), 2: Field("ino", "uint"), 3: Field("type", "uint"),
    4: Field("state", "uint"), 5: Field("flags", "uint"), 8: Field("peer", "uint"),
    11: Field("name", "bytes"),
}
PACKET_SK: Schema = {1: Field("id", "uint"), 2: Field("type", "uint"),
                     3: Field("protocol", "uint"), 4: Field("flags", "uint")}
NETLINK_SK: Schema = {1: Field("id", "uint"), 2: Field("ino", "uint"),
                      3: Field("protocol", "uint"), 4: Field("state", "uint"),
                      6: Field("flags", "uint")}


def byteorder(mtype: int) -> Literal["little", "big"]:
    """The byte order of a dump's machine type (core_entry.mtype): s390 (5) is the only
    big-endian one CRIU supports (its ppc64 and mips ports are little-endian)."""
    return "big" if mtype == MTYPE_S390 else "little"


def fd_type_name(code: int) -> str:
    """CRIU's name of an fd type (``REG``, ``PIPE``...); ``type N`` for one it does not have."""
    return FD_TYPES.get(code, f"type {code}")


@dataclass(frozen=True, slots=True)
class FdEntry:
    """One descriptor of an fd table: ``fd`` refers to the file ``id`` of ``files.img``."""

    fd: int
    id: int
    type: int
    fd_flags: int  # the descriptor's flags: FD_CLOEXEC (1)


@dataclass(frozen=True, slots=True)
class RegFile:
    """A file opened by path (also directories, devices, and the path of a FIFO)."""

    id: int
    flags: int
    pos: int
    name: bytes
    size: int | None  # recorded for regular files opened read-only (validation data)


@dataclass(frozen=True, slots=True)
class Pipe:
    """One end of a pipe; ``pipe_id`` is its inode (/proc shows ``pipe:[pipe_id]``)."""

    id: int
    pipe_id: int
    flags: int


@dataclass(frozen=True, slots=True)
class Fifo:
    """A named pipe: flags, position and path are those of the REG entry ``regf_id``."""

    id: int
    pipe_id: int
    regf_id: int | None  # absent in images older than files.img


@dataclass(frozen=True, slots=True)
class InetSocket:
    """An IPv4 or IPv6 socket; addresses in network byte order (4 or 16 bytes)."""

    id: int
    ino: int
    family: int
    type: int
    proto: int
    state: int
    flags: int
    src_addr: bytes
    src_port: int
    dst_addr: bytes
    dst_port: int


@dataclass(frozen=True, slots=True)
class UnixSocket:
    """A unix socket: ``name`` as the kernel reports it (a leading NUL: abstract)."""

    id: int
    ino: int
    type: int
    state: int
    flags: int
    peer: int  # the peer's inode, 0 when none
    name: bytes


@dataclass(frozen=True, slots=True)
class PacketSocket:
    """An AF_PACKET socket (sock_diag reports no inode for it)."""

    id: int
    type: int
    protocol: int
    flags: int


@dataclass(frozen=True, slots=True)
class NetlinkSocket:
    """An AF_NETLINK socket."""

    id: int
    ino: int
    protocol: int
    state: int
    flags: int


@dataclass(frozen=True, slots=True)
class OtherFile:
    """A file of a type this reader shows by type only (eventfd, epoll, memfd...)."""

    id: int
    type: int


FileEntry = (RegFile | Pipe | Fifo | InetSocket | UnixSocket | PacketSocket | NetlinkSocket
             | OtherFile)


def _require(entry: dict[str, Any], what: str, *keys: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ImageError(f"{what} lacks required field(s) {', '.join(missing)}")


def iter_fdinfo(data: bytes, limit: int) -> Iterator[FdEntry]:
    """Decode ``fdinfo-<id>.img`` lazily; more than ``limit`` descriptors or an fd listed
    twice is refused (the kernel has one file per descriptor)."""
    seen: set[int] = set()
    for e in decode_entries(data, "FDINFO", FDINFO):
        _require(e, "an fdinfo entry", "id", "flags", "type", "fd")
        if e["fd"] in seen:
            raise ImageError(f"lists fd {e['fd']} twice")
        if len(seen) >= limit:
            raise ImageError(f"lists more than {limit} file descriptors")
        seen.add(e["fd"])
        yield FdEntry(e["fd"], e["id"], e["type"], e["flags"])


def parse_ids_files_id(data: bytes) -> int:
    """The fd table id (``files_id``) from ``ids-<pid>.img``."""
    entry = next(decode_entries(data, "IDS", IDS), None)
    if entry is None:
        raise ImageError("has no ids entry")
    _require(entry, "the ids entry", "files_id")
    files_id: int = entry["files_id"]
    return files_id


def parse_core_files_id(data: bytes) -> int | None:
    """The fd table id from the core image's ``ids`` (older dumps), None when absent."""
    entry = next(decode_entries(data, "CORE", CORE_IDS), None)
    ids = entry.get("ids") if entry else None
    return None if ids is None else ids.get("files_id")


def parse_fs(data: bytes) -> tuple[int, int]:
    """``fs-<pid>.img``: the file ids of (working directory, root directory)."""
    entry = next(decode_entries(data, "FS", FS), None)
    if entry is None:
        raise ImageError("has no fs entry")
    _require(entry, "the fs entry", "cwd_id", "root_id")
    return entry["cwd_id"], entry["root_id"]


def deleted_ids(data: bytes, wanted: Collection[int]) -> set[int]:
    """Which of the ``wanted`` file ids ``remap-fpath.img`` marks deleted (ghost or link
    remap: opened under a name that no longer leads to the file)."""
    out = set()
    for e in decode_entries(data, "REMAP_FPATH", REMAP_FPATH):
        _require(e, "a remap entry", "orig_id", "remap_id")
        if e["orig_id"] in wanted and e.get("remap_type") != REMAP_PROCFS:
            out.add(e["orig_id"])
    return out


def collect_files(data: bytes, wanted: Collection[int], *,
                  byteorder: Literal["little", "big"] = "little") -> dict[int, FileEntry]:
    """The ``files.img`` entries whose id is in ``wanted``, decoded; the others skipped.

    ``byteorder`` is the dumping machine's: CRIU stores each 32-bit word of
    an IP address as that machine's integer.
    """
    out: dict[int, FileEntry] = {}
    for raw in iter_entries(data, "FILES"):
        head = _decode(raw, FILE_HEAD, "file")
        _require(head, "a file entry", "type", "id")
        if head["id"] not in wanted:
            continue
        if head["id"] in out:
            raise ImageError(f"lists file id {head['id']} twice")
        out[head["id"]] = _file(_decode(raw, FILE_ENTRY, "file"), byteorder)
    return out


def _decode(raw: bytes | memoryview, schema: Schema, what: str,
            max_repeated: int | None = None) -> dict[str, Any]:
    try:
        return decode(raw, schema, max_repeated=max_repeated)
    except TooManyItems as e:
        raise ImageError(f"holds a {what} entry whose {e.field} repeats more than "
                         f"{e.limit} times") from None
    except WireError as e:
        raise ImageError(f"holds a malformed {what} entry ({e})") from e


def _sub(entry: dict[str, Any], what: str, schema: Schema, *required: str,
         max_repeated: int | None = None) -> dict[str, Any]:
    """The sub-message for the entry's type, checked as CRIU checks it (present, same id)."""
    fid, kind = entry["id"], fd_type_name(entry["type"])
    raw = entry.get(_SUBS[entry["type"]][1])
    if raw is None:
        raise ImageError(f"file id {fid} ({kind}) has no {what} entry")
    sub = _decode(raw, schema, what, max_repeated)
    _require(sub, f"the {what} entry of file id {fid}", "id", *required)
    if sub["id"] != fid:
        raise ImageError(f"file id {fid} holds a {what} entry of id {sub['id']}")
    return sub


def _name(value: bytes, what: str) -> bytes:
    if len(value) > MAX_NAME:
        raise ImageError(f"{what} is {len(value)} bytes long, more than PATH_MAX ({MAX_NAME})")
    return value


def _address(words: list[int], family: int, fid: int, which: str,
             byteorder: Literal["little", "big"]) -> bytes:
    size = 4 if family == AF_INET else 16
    if not words:
        return bytes(size)  # not recorded: unspecified (0.0.0.0, ::)
    if len(words) * 4 != size:
        raise ImageError(f"inet socket {fid} has a {which} address of {len(words)} words, "
                         f"{size // 4} expected")
    wide = next((w for w in words if not 0 <= w <= 0xFFFFFFFF), None)
    if wide is not None:
        # The words are uint32 in CRIU's proto; the wire format carries up to 64 bits.
        raise ImageError(f"inet socket {fid} has a {which} address word of {wide:#x}, "
                         "wider than 32 bits")
    return b"".join(w.to_bytes(4, byteorder) for w in words)


def _file(entry: dict[str, Any], byteorder: Literal["little", "big"]) -> FileEntry:
    t, fid = entry["type"], entry["id"]
    if t == REG:
        e = _sub(entry, "reg", REG_FILE, "flags", "pos", "name")
        return RegFile(fid, e["flags"], e["pos"], _name(e["name"], f"the name of file {fid}"),
                       e.get("size"))
    if t == PIPE:
        e = _sub(entry, "pipe", PIPE_ENTRY, "pipe_id", "flags")
        return Pipe(fid, e["pipe_id"], e["flags"])
    if t == FIFO:
        e = _sub(entry, "fifo", FIFO_ENTRY, "pipe_id")
        return Fifo(fid, e["pipe_id"], e.get("regf_id"))
    if t == INETSK:
        e = _sub(entry, "inet socket", INET_SK, "ino", "family", "type", "proto", "state",
                 "src_port", "dst_port", "flags", max_repeated=8)
        if e["family"] not in (AF_INET, AF_INET6):
            raise ImageError(f"inet socket {fid} has address family {e['family']}")
        src = _address(e.get("src_addr", []), e["family"], fid, "source", byteorder)
        dst = _address(e.get("dst_addr", []), e["family"], fid, "destination", byteorder)
        return InetSocket(fid, e["ino"], e["family"], e["type"], e["proto"], e["state"],
                          e["flags"], src, e["src_port"], dst, e["dst_port"])
    if t == UNIXSK:
        e = _sub(entry, "unix socket", UNIX_SK, "ino", "type", "state", "flags", "peer", "name")
        return UnixSocket(fid, e["ino"], e["type"], e["state"], e["flags"], e["peer"],
                          _name(e["name"], f"the name of unix socket {fid}"))
    if t == PACKETSK:
        e = _sub(entry, "packet socket", PACKET_SK, "type", "protocol", "flags")
        return PacketSocket(fid, e["type"], e["protocol"], e["flags"])
    if t == NETLINKSK:
        e = _sub(entry, "netlink socket", NETLINK_SK, "ino", "protocol", "state", "flags")
        return NetlinkSocket(fid, e["ino"], e["protocol"], e["state"], e["flags"])
    return OtherFile(fid, t)
