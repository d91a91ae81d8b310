"""Open files and sockets per process, for `migrate inspect --files / --sockets`.

Every live process (alive or stopped: CRIU records no files for zombies)
gets its descriptors in fd order, each resolved through files.img to what
/proc/PID/fd would have shown: a path for files opened by name (and FIFOs),
``pipe:[inode]`` and ``socket:[inode]`` for pipes and sockets. Sockets are
described further: family, type, protocol, state and addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from migrate.adapters.checkpoint import Checkpoint
from migrate.adapters.criu import files as cf
from migrate.adapters.criu.pstree import ProcessTree
from migrate.errors import ArchiveError
from migrate.settings import ArchiveSettings

ACCESS = ("r", "w", "rw", "none")  # by O_ACCMODE: 3 is neither (ioctl-only opens)
FD_CLOEXEC = 1
FAMILIES = {1: "UNIX", 2: "INET", 10: "INET6", 16: "NETLINK", 17: "PACKET"}
SOCK_TYPES = {1: "STREAM", 2: "DGRAM", 3: "RAW", 4: "RDM", 5: "SEQPACKET", 10: "PACKET"}
# sock_diag reports TCP's states for every socket (unix ones use 1, 7 and 10).
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
          6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
          11: "CLOSING", 12: "NEW_SYN_RECV"}
IP_PROTOCOLS = {0: "IP", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPV6", 136: "UDPLITE"}
NETLINK_PROTOCOLS = {0: "ROUTE", 4: "SOCK_DIAG", 9: "AUDIT", 15: "KOBJECT_UEVENT",
                     16: "GENERIC"}


def _name(table: dict[int, str], code: int) -> str:
    return table.get(code, str(code))


def _text(raw: bytes) -> str:
    # As file names elsewhere: undecodable bytes become lone surrogates, which
    # the output escapes (\udcff), so every byte stays visible and exact.
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class OpenFile:
    """One descriptor as /proc/PID/fd and /proc/PID/fdinfo would show it."""

    fd: int
    type: str
    path: str | None
    mode: str | None
    flags: int | None
    cloexec: bool
    pos: int | None
    size: int | None
    deleted: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON form (schemas/inspect.schema.json, #/$defs/open_file)."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Socket:
    """One socket descriptor: what the kernel's sock_diag told CRIU about it."""

    fd: int
    inode: int | None
    family: str
    type: str
    protocol: str | None
    state: str | None
    src: str | None
    src_port: int | None
    dst: str | None
    dst_port: int | None
    address: str | None
    peer: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (schemas/inspect.schema.json, #/$defs/socket)."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class ProcessFiles:
    """A live process's descriptors (``files``/``sockets``: None when not asked)."""

    pid: int
    command: str
    cwd: str | None
    root: str | None
    files: list[OpenFile] | None = None
    sockets: list[Socket] | None = None


def ip_text(raw: bytes) -> str:
    """An address as RFC 5952 writes it (IPv4-mapped IPv6 ends in dotted IPv4)."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    v6 = ipaddress.IPv6Address(raw)
    mapped = v6.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else v6.compressed


def unix_address(name: bytes) -> str | None:
    """A unix socket's name as /proc/net/unix shows it: a path, ``@name`` for an abstract
    one (NULs in it kept), None for an unnamed one.

    The kernel reports a path with its terminating NUL; the path ends at the first one.
    """
    if not name:
        return None
    if name[0] == 0:
        return "@" + _text(name[1:])
    return _text(name.split(b"\0", 1)[0])


def _path(f: cf.FileEntry, files: dict[int, cf.FileEntry]) -> str | None:
    if isinstance(f, cf.RegFile):
        return _text(f.name)
    if isinstance(f, cf.Fifo):
        reg = files.get(f.regf_id) if f.regf_id is not None else None
        return _text(reg.name) if isinstance(reg, cf.RegFile) else None
    if isinstance(f, cf.Pipe):
        return f"pipe:[{f.pipe_id}]"
    if isinstance(f, cf.InetSocket | cf.UnixSocket | cf.NetlinkSocket):
        return f"socket:[{f.ino}]"
    return None


def _open_file(e: cf.FdEntry, f: cf.FileEntry, files: dict[int, cf.FileEntry],
               deleted: set[int]) -> OpenFile:
    # A FIFO's flags and position are those of its path's entry.
    opened = files.get(f.regf_id) if isinstance(f, cf.Fifo) and f.regf_id is not None else f
    flags = getattr(opened, "flags", None)
    reg = opened if isinstance(opened, cf.RegFile) else None
    return OpenFile(
        fd=e.fd, type=cf.fd_type_name(e.type), path=_path(f, files),
        mode=None if flags is None else ACCESS[flags & 3], flags=flags,
        cloexec=bool(e.fd_flags & FD_CLOEXEC), pos=reg.pos if reg else None,
        size=reg.size if reg else None, deleted=reg is not None and reg.id in deleted)


def _socket(fd: int, f: cf.FileEntry) -> Socket | None:
    if isinstance(f, cf.InetSocket):
        return Socket(fd, f.ino, _name(FAMILIES, f.family), _name(SOCK_TYPES, f.type),
                      _name(IP_PROTOCOLS, f.proto), _name(STATES, f.state),
                      ip_text(f.src_addr), f.src_port, ip_text(f.dst_addr), f.dst_port,
                      None, None)
    if isinstance(f, cf.UnixSocket):
        return Socket(fd, f.ino, "UNIX", _name(SOCK_TYPES, f.type), None,
                      _name(STATES, f.state), None, None, None, None, unix_address(f.name),
                      f.peer or None)
    if isinstance(f, cf.NetlinkSocket):
        return Socket(fd, f.ino, "NETLINK", "RAW", _name(NETLINK_PROTOCOLS, f.protocol),
                      _name(STATES, f.state), None, None, None, None, None, None)
    if isinstance(f, cf.PacketSocket):
        # The protocol is an ethertype (ETH_P_ALL 0x0003...), kept in network byte order.
        return Socket(fd, None, "PACKET", _name(SOCK_TYPES, f.type), f"0x{f.protocol:04x}",
                      None, None, None, None, None, None, None)
    return None


@dataclass
class _Table:
    pid: int
    command: str
    fds: list[cf.FdEntry]
    cwd_id: int
    root_id: int


def _tables(ckpt: Checkpoint, tree: ProcessTree, limit: int) -> tuple[list[_Table], int]:
    """Each live process's fd table (read once per table), and the machine type."""
    tables: list[_Table] = []
    by_id: dict[int, list[cf.FdEntry]] = {}
    total, mtype = 0, 0
    for entry, _depth in tree.walk():
        core = ckpt.core(entry.pid)
        mtype = mtype or core.mtype
        if core.task_state not in (cf.TASK_ALIVE, cf.TASK_STOPPED):
            continue
        files_id = ckpt.files_id(entry.pid)
        if files_id not in by_id:
            by_id[files_id] = ckpt.fd_table(files_id, limit)
        fds = by_id[files_id]
        total += len(fds)
        if total > limit:
            raise ArchiveError(ckpt.label, f"its processes hold more than {limit} open file "
                               "descriptors together", hint="an archive with this many is "
                               "probably crafted", member=f"checkpoint/fdinfo-{files_id}.img")
        cwd_id, root_id = ckpt.fs(entry.pid)
        tables.append(_Table(entry.pid, core.comm, fds, cwd_id, root_id))
    return tables, mtype


def _missing(ckpt: Checkpoint, fid: int, where: str) -> ArchiveError:
    return ArchiveError(ckpt.label, f"has no entry for file id {fid} ({where})",
                        hint="the CRIU image is corrupt or truncated",
                        member="checkpoint/files.img")


def open_files(ckpt: Checkpoint, tree: ProcessTree, settings: ArchiveSettings, *,
               files: bool = True, sockets: bool = True) -> list[ProcessFiles]:
    """Every live process's open files and/or sockets, processes in tree order."""
    if not ckpt.has_files():
        raise ArchiveError(ckpt.label, "missing from the archive", member="checkpoint/files.img",
                           hint="the dump records no open files; CRIU has written them to "
                           "files.img since 2017")
    tables, mtype = _tables(ckpt, tree, settings.max_open_files)
    wanted = {e.id for t in tables for e in t.fds}
    wanted |= {i for t in tables for i in (t.cwd_id, t.root_id)}
    entries = ckpt.files(wanted, cf.byteorder(mtype))
    deleted = ckpt.deleted_file_ids({i for i, f in entries.items()
                                     if isinstance(f, cf.RegFile)}) if files else set()

    def path_of(fid: int, pid: int, which: str) -> str | None:
        f = entries.get(fid)
        if f is None:
            raise _missing(ckpt, fid, f"the {which} of pid {pid}")
        return _path(f, entries)

    out = []
    for t in tables:
        pf = ProcessFiles(t.pid, t.command, path_of(t.cwd_id, t.pid, "working directory"),
                          path_of(t.root_id, t.pid, "root directory"))
        resolved = []
        for e in t.fds:
            f = entries.get(e.id)
            if f is None:
                raise _missing(ckpt, e.id, f"fd {e.fd} of pid {t.pid}")
            if isinstance(f, cf.Fifo) and f.regf_id is not None and f.regf_id not in entries:
                raise _missing(ckpt, f.regf_id, f"the path of fd {e.fd} of pid {t.pid}")
            resolved.append((e, f))
        if files:
            pf.files = [_open_file(e, f, entries, deleted) for e, f in resolved]
        if sockets:
            pf.sockets = [s for e, f in resolved if (s := _socket(e.fd, f)) is not None]
        out.append(pf)
    return out
