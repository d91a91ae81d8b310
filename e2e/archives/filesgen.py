"""Open files and sockets for generated archives (`ArchiveSpec.open_files`).

A `FileTable` is what CRIU writes about open files, in crit's JSON (the
images are encoded by pycriu, so every field CRIU requires is filled):
files.img, one fdinfo image per fd table, ids-<pid>.img naming each task's
table, fs-<pid>.img and remap-fpath.img. The builders below fill the
required boilerplate (fown, socket options) so a test names only what it
is about. `counters_files()` is the seed pod's: what real dumps on this
machine do not produce (a listening socket, IPv6 and UDP, abstract and
connected unix sockets, an eventfd, a netlink socket, a deleted file written
to), beside pipes, a FIFO and regular files.
"""

from __future__ import annotations

import quopri
from dataclasses import dataclass, field
from typing import Any

O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_NONBLOCK, O_LARGEFILE = 0, 1, 2, 0o2000, 0o4000, 0o100000
FD_CLOEXEC = 1
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
SOCK_STREAM, SOCK_DGRAM = 1, 2
_FOWN = {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}
_OPTS = {"so_sndbuf": 212992, "so_rcvbuf": 212992, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
         "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0}


def reg(fid: int, name: str, flags: int = O_RDONLY | O_LARGEFILE, pos: int = 0,
        size: int | None = None, mode: int = 0o100644) -> dict[str, Any]:
    """A REG files.img entry (a file opened by path)."""
    entry: dict[str, Any] = {"id": fid, "flags": flags, "pos": pos, "fown": _FOWN,
                             "name": name, "mode": mode}
    if size is not None:
        entry["size"] = size
    return {"type": "REG", "id": fid, "reg": entry}


def pipe(fid: int, pipe_id: int, flags: int) -> dict[str, Any]:
    """One end of a pipe (its inode ``pipe_id``)."""
    return {"type": "PIPE", "id": fid,
            "pipe": {"id": fid, "pipe_id": pipe_id, "flags": flags, "fown": _FOWN}}


def fifo(fid: int, pipe_id: int, regf_id: int) -> dict[str, Any]:
    """A FIFO whose path, flags and position are the REG entry ``regf_id``."""
    return {"type": "FIFO", "id": fid,
            "fifo": {"id": fid, "pipe_id": pipe_id, "regf_id": regf_id}}


def inet(fid: int, ino: int, *, family: str = "INET", proto: str = "TCP",
         state: int = TCP_ESTABLISHED, src: tuple[str, int] | None = None,
         dst: tuple[str, int] | None = None) -> dict[str, Any]:
    """An INET or INET6 socket (crit's JSON: addresses as text; unspecified by default)."""
    sock_type = SOCK_STREAM if proto == "TCP" else SOCK_DGRAM
    anywhere = ("::" if family == "INET6" else "0.0.0.0", 0)
    src, dst = src or anywhere, dst or anywhere
    return {"type": "INETSK", "id": fid, "isk": {
        "id": fid, "ino": ino, "family": family, "type": sock_type, "proto": proto,
        "state": state, "src_port": src[1], "dst_port": dst[1], "flags": O_RDWR,
        "backlog": 128 if state == TCP_LISTEN else 0, "src_addr": [src[0]],
        "dst_addr": [dst[0]], "fown": _FOWN, "opts": _OPTS}}


def unix(fid: int, ino: int, name: bytes = b"", *, sock_type: int = SOCK_STREAM,
         state: int = TCP_ESTABLISHED, peer: int = 0) -> dict[str, Any]:
    """A unix socket; ``name`` as the kernel reports it (leading NUL: abstract)."""
    return {"type": "UNIXSK", "id": fid, "usk": {
        "id": fid, "ino": ino, "type": sock_type, "state": state, "flags": O_RDWR,
        "uflags": 0, "backlog": 0, "peer": peer, "fown": _FOWN, "opts": _OPTS,
        "name": quopri.encodestring(name, quotetabs=True).decode()}}


def netlink(fid: int, ino: int, protocol: int = 0) -> dict[str, Any]:
    """A netlink socket (protocol 0: NETLINK_ROUTE)."""
    return {"type": "NETLINKSK", "id": fid, "nlsk": {
        "id": fid, "ino": ino, "protocol": protocol, "state": TCP_CLOSE, "flags": O_RDWR,
        "portid": 0, "dst_portid": 0, "dst_group": 0, "fown": _FOWN, "opts": _OPTS}}


def eventfd(fid: int) -> dict[str, Any]:
    """An eventfd (shown by type only)."""
    return {"type": "EVENTFD", "id": fid,
            "efd": {"id": fid, "flags": O_RDWR, "fown": _FOWN, "counter": 0}}


def fd(number: int, file: dict[str, Any], cloexec: bool = False) -> dict[str, Any]:
    """An fdinfo entry: descriptor ``number`` refers to the files.img entry ``file``."""
    return {"id": file["id"], "flags": FD_CLOEXEC if cloexec else 0, "type": file["type"],
            "fd": number}


@dataclass
class FileTable:
    """What the dump records about open files; `images` turns it into crit JSON images."""

    files: list[dict[str, Any]]
    """files.img entries, in image order."""
    tables: dict[int, list[dict[str, Any]]]
    """files_id -> its fdinfo entries (fdinfo-<files_id>.img)."""
    ids: dict[int, int]
    """pid -> files_id (ids-<pid>.img)."""
    fs: dict[int, tuple[int, int]]
    """pid -> (cwd file id, root file id) (fs-<pid>.img)."""
    remaps: list[dict[str, Any]] = field(default_factory=list)
    """remap-fpath.img entries (``{orig_id, remap_id, remap_type}``); none: no image."""
    ids_in_core: bool = False
    """Put the ids in the core images instead of ids-<pid>.img, as older CRIU did."""

    def images(self) -> dict[str, dict[str, Any]]:
        """The images, by file name (without the core images' ids: see `core_ids`)."""
        out: dict[str, dict[str, Any]] = {"files.img": {"magic": "FILES", "entries": self.files}}
        for files_id, entries in self.tables.items():
            out[f"fdinfo-{files_id}.img"] = {"magic": "FDINFO", "entries": entries}
        if not self.ids_in_core:
            for pid in self.ids:
                out[f"ids-{pid}.img"] = {"magic": "IDS", "entries": [self.core_ids(pid)]}
        for pid, (cwd, root) in self.fs.items():
            out[f"fs-{pid}.img"] = {"magic": "FS", "entries": [
                {"cwd_id": cwd, "root_id": root, "umask": 0o22}]}
        if self.remaps:
            out["remap-fpath.img"] = {"magic": "REMAP_FPATH", "entries": self.remaps}
        return out

    def core_ids(self, pid: int) -> dict[str, Any]:
        """``pid``'s task_kobj_ids_entry."""
        files_id = self.ids[pid]
        return {"vm_id": files_id, "files_id": files_id, "fs_id": files_id,
                "sighand_id": files_id}


def counters_files() -> FileTable:
    """The counters pod's open files: bash | counter.py (an HTTP server) | tee."""
    root, cwd, null = reg(1, "/", 0, mode=0o40755), reg(2, "/home/counter", 0, mode=0o40755), \
        reg(3, "/dev/null", O_RDWR | O_LARGEFILE, mode=0o20666)
    out = pipe(4, 40990, O_WRONLY)  # the container's stdout, from conmon
    to_tee, from_counter = pipe(5, 41001, O_WRONLY), pipe(6, 41001, O_RDONLY)
    listen = inet(7, 52001, state=TCP_LISTEN, src=("0.0.0.0", 8088))
    client = inet(8, 52002, family="INET6", src=("2001:db8::5", 8088),
                  dst=("2001:db8::1", 51234))
    mdns = inet(9, 52003, family="INET6", proto="UDP", state=TCP_CLOSE, src=("::", 5353))
    control = unix(10, 52004, b"\0counter\0ctl", state=TCP_LISTEN)
    left, right = unix(11, 52005, peer=52006), unix(12, 52006, peer=52005)
    logfile = reg(13, "/home/counter/logfile", O_WRONLY | O_APPEND | O_LARGEFILE, pos=241)
    scratch = reg(14, "/tmp/scratch.db", O_RDWR | O_LARGEFILE, pos=4096)
    event = eventfd(15)
    ctl_path = reg(17, "/run/ctl.fifo", O_RDONLY | O_NONBLOCK | O_LARGEFILE, mode=0o10644)
    ctl = fifo(16, 9001, 17)
    route = netlink(18, 52007)
    files = [root, cwd, null, out, to_tee, from_counter, listen, client, mdns, control, left,
             right, logfile, scratch, event, ctl_path, ctl, route]
    tables = {
        2: [fd(0, null), fd(1, out), fd(2, out)],
        3: [fd(0, null), fd(1, to_tee), fd(2, to_tee), fd(3, listen, True),
            fd(4, client, True), fd(5, mdns), fd(6, control), fd(7, left), fd(8, right),
            fd(9, scratch), fd(10, event, True), fd(11, ctl), fd(12, route, True)],
        4: [fd(0, from_counter), fd(1, out), fd(2, out), fd(3, logfile)],
    }
    return FileTable(files, tables, ids={1: 2, 7: 3, 8: 4},
                     fs={pid: (2, 1) for pid in (1, 7, 8)},
                     remaps=[{"orig_id": 14, "remap_id": 0x80000021, "remap_type": "GHOST"}])
