"""Ground truth read from /proc while the container runs, to compare dumps against.

Everything here is read from the host's /proc for the processes of one PID
namespace: PIDs are translated to the namespace's own (what CRIU records).
The workload is idle when this runs (every process blocked in a system
call), so its memory at dump time is the memory read here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONTEXT = 32  # bytes kept each side of every secret occurrence


@dataclass
class ProcessTruth:
    """One process as /proc showed it."""

    pid: int  # in the container's PID namespace
    host_pid: int
    ppid: int  # in the container's PID namespace (0: the parent is outside)
    comm: str
    argv: list[str]
    environ: list[str]
    fds: dict[int, str]  # fd -> readlink of /proc/PID/fd/N
    maps: list[str]  # /proc/PID/maps lines
    secret_at: dict[int, str] = field(default_factory=dict)
    """Address of each occurrence of the secret -> the bytes around it (hex), CONTEXT each side."""
    fdinfo: dict[int, dict[str, int]] = field(default_factory=dict)
    """fd -> /proc/PID/fdinfo/N: ``pos`` and ``flags`` (O_CLOEXEC included, as the kernel shows)."""
    cwd: str = ""
    root: str = ""


@dataclass
class Truth:
    """The whole container: its processes, and files read through its root."""

    processes: dict[int, ProcessTruth]
    files: dict[str, str]  # path in the container -> content (text)
    hostname: str
    sockets: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Socket inode -> its line of /proc/net/{tcp,tcp6,udp,udp6,unix} in the container's
    network namespace (`net_sockets`)."""

    def to_json(self) -> str:
        """Serialized (kept next to the archive, for debugging and other tests)."""
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Truth:
        raw = json.loads(text)
        procs = {}
        for pid, p in raw["processes"].items():
            p["fds"] = {int(k): v for k, v in p["fds"].items()}
            p["secret_at"] = {int(k): v for k, v in p["secret_at"].items()}
            p["fdinfo"] = {int(k): v for k, v in p.get("fdinfo", {}).items()}
            procs[int(pid)] = ProcessTruth(**p)
        sockets = {int(k): v for k, v in raw.get("sockets", {}).items()}
        return cls(procs, raw["files"], raw["hostname"], sockets)


def _strings(raw: bytes) -> list[str]:
    return [s.decode("utf-8", "backslashreplace") for s in raw.split(b"\0") if s]


def _ns_pid(host_pid: int) -> int:
    status = Path(f"/proc/{host_pid}/status").read_text()
    m = re.search(r"^NSpid:\s+(.*)$", status, re.M)
    assert m, f"/proc/{host_pid}/status has no NSpid line"
    return int(m.group(1).split()[-1])


def _ppid(host_pid: int) -> int:
    status = Path(f"/proc/{host_pid}/status").read_text()
    m = re.search(r"^PPid:\s+(\d+)$", status, re.M)
    assert m
    return int(m.group(1))


def namespace_members(host_pid1: int) -> list[int]:
    """Host PIDs of every process in the PID namespace of ``host_pid1``."""
    ns = os.readlink(f"/proc/{host_pid1}/ns/pid")
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                out.append(int(entry))
        except OSError:  # gone, or a kernel thread
            continue
    return sorted(out)


def _find_all(memory: bytes, needle: bytes) -> list[int]:
    found, pos = [], memory.find(needle)
    while pos >= 0:
        found.append(pos)
        pos = memory.find(needle, pos + 1)
    return found


def secret_occurrences(host_pid: int, secret: bytes) -> dict[int, str]:
    """Every address where ``secret`` is in the process's readable memory."""
    out: dict[int, str] = {}
    fd = os.open(f"/proc/{host_pid}/mem", os.O_RDONLY)
    try:
        for line in Path(f"/proc/{host_pid}/maps").read_text().splitlines():
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                memory = os.pread(fd, end - start, start)
            except OSError:  # [vvar] and friends cannot be read
                continue
            for pos in _find_all(memory, secret):
                lo, hi = max(0, pos - CONTEXT), pos + len(secret) + CONTEXT
                out[start + pos] = memory[lo:hi].hex()
    finally:
        os.close(fd)
    return out


def _fdinfo(base: Path, fd: str) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in (base / "fdinfo" / fd).read_text().splitlines()
                  if ":" in line)
    return {"pos": int(fields["pos"]), "flags": int(fields["flags"], 8)}


def _hex_address(text: str) -> str:
    """/proc/net/tcp's address: 32-bit words in hex, each as this (little-endian) host
    prints the integer."""
    raw = b"".join(bytes.fromhex(text[i:i + 8])[::-1] for i in range(0, len(text), 8))
    return str(ipaddress.ip_address(raw))


def net_sockets(host_pid: int) -> dict[int, dict[str, Any]]:
    """Every inet and unix socket of ``host_pid``'s network namespace, by inode.

    inet: family, protocol, src, src_port, dst, dst_port, state (TCP_* number);
    unix: type, state (SS_* number), flags (0x10000: listening), path.
    """
    out: dict[int, dict[str, Any]] = {}
    net = Path(f"/proc/{host_pid}/net")
    for name, family in (("tcp", "INET"), ("tcp6", "INET6"), ("udp", "INET"),
                         ("udp6", "INET6")):
        for line in (net / name).read_text().splitlines()[1:]:
            f = line.split()
            (src, sport), (dst, dport) = (a.split(":") for a in f[1:3])
            out[int(f[9])] = {"family": family, "protocol": name[:3].upper(),
                              "src": _hex_address(src), "src_port": int(sport, 16),
                              "dst": _hex_address(dst), "dst_port": int(dport, 16),
                              "state": int(f[3], 16)}
    for line in (net / "unix").read_text().splitlines()[1:]:
        f = line.split()
        out[int(f[6])] = {"family": "UNIX", "flags": int(f[3], 16), "type": int(f[4], 16),
                          "state": int(f[5], 16), "path": " ".join(f[7:]) or None}
    return out


def _mount_points(host_pid: int) -> set[str]:
    """Where something is mounted inside the process's root (/proc/PID/mountinfo's fifth
    field, octal escapes decoded), the root itself left out."""
    lines = Path(f"/proc/{host_pid}/mountinfo").read_text().splitlines()
    return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            for line in lines} - {"/"}


def _tree(top: Path, skip: set[str]) -> dict[str, int]:
    """The mode of every entry under ``top`` by its path from ``top`` ("/etc/x"), links
    not followed, ``skip`` not entered."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        base = "/" if rel == "." else f"/{rel}/"
        for name in [*dirnames, *filenames]:
            if base + name not in skip:
                found[base + name] = os.lstat(os.path.join(dirpath, name)).st_mode
            elif name in dirnames:
                dirnames.remove(name)
    return found


def _content(path: Path, mode: int) -> bytes | None:
    """What makes two entries of one type differ: a link's target, a file's bytes."""
    if stat.S_ISLNK(mode):
        return os.readlink(path).encode()
    return path.read_bytes() if stat.S_ISREG(mode) else None


def root_diff(host_pid: int, image_root: Path) -> dict[str, str]:
    """The container's root file system against its image's root, as `podman diff` tells
    it: path -> A (added), C (changed) or D (deleted). What is mounted inside the
    container is not the root file system's and is left out; directories count as
    changed only when their type did."""
    root, mounts = Path(f"/proc/{host_pid}/root"), _mount_points(host_pid)
    now, before = _tree(root, mounts), _tree(image_root, mounts)
    diff = {path: "A" for path in now.keys() - before.keys()}
    diff |= {path: "D" for path in before.keys() - now.keys()}
    for path in now.keys() & before.keys():
        a, b = now[path], before[path]
        if stat.S_IFMT(a) != stat.S_IFMT(b) or (
                _content(root / path[1:], a) != _content(image_root / path[1:], b)):
            diff[path] = "C"
    return dict(sorted(diff.items()))


def read_truth(host_pid1: int, secret: bytes, files: list[str]) -> Truth:
    """Snapshot the container whose first process is ``host_pid1``."""
    members = namespace_members(host_pid1)
    to_ns = {h: _ns_pid(h) for h in members}
    processes = {}
    for h in members:
        base = Path(f"/proc/{h}")
        fd_names = os.listdir(base / "fd")
        fds = {int(n): os.readlink(base / "fd" / n) for n in fd_names}
        processes[to_ns[h]] = ProcessTruth(
            pid=to_ns[h],
            host_pid=h,
            ppid=to_ns.get(_ppid(h), 0),
            comm=(base / "comm").read_text().rstrip("\n"),
            argv=_strings((base / "cmdline").read_bytes()),
            environ=_strings((base / "environ").read_bytes()),
            fds=fds,
            maps=(base / "maps").read_text().splitlines(),
            secret_at=secret_occurrences(h, secret),
            fdinfo={int(n): _fdinfo(base, n) for n in fd_names},
            cwd=os.readlink(base / "cwd"),
            root=os.readlink(base / "root"),
        )
    root = Path(f"/proc/{host_pid1}/root")
    contents = {p: (root / p.lstrip("/")).read_text() for p in files}
    hostname = (root / "etc/hostname").read_text().strip()
    return Truth(processes, contents, hostname, net_sockets(host_pid1))


def load(path: Path) -> Truth:
    """Read a truth file written next to an archive."""
    return Truth.from_json(path.read_text())
