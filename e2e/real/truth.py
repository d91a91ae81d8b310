"""Ground truth read from /proc while the container runs, to compare dumps against.

Everything here is read from the host's /proc for the processes of one PID
namespace: PIDs are translated to the namespace's own (what CRIU records).
The workload is idle when this runs (every process blocked in a system
call), so its memory at dump time is the memory read here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


@dataclass
class Truth:
    """The whole container: its processes, and files read through its root."""

    processes: dict[int, ProcessTruth]
    files: dict[str, str]  # path in the container -> content (text)
    hostname: str

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
            procs[int(pid)] = ProcessTruth(**p)
        return cls(procs, raw["files"], raw["hostname"])


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


def read_truth(host_pid1: int, secret: bytes, files: list[str]) -> Truth:
    """Snapshot the container whose first process is ``host_pid1``."""
    members = namespace_members(host_pid1)
    to_ns = {h: _ns_pid(h) for h in members}
    processes = {}
    for h in members:
        base = Path(f"/proc/{h}")
        fds = {int(n): os.readlink(base / "fd" / n) for n in os.listdir(base / "fd")}
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
        )
    root = Path(f"/proc/{host_pid1}/root")
    contents = {p: (root / p.lstrip("/")).read_text() for p in files}
    hostname = (root / "etc/hostname").read_text().strip()
    return Truth(processes, contents, hostname)


def load(path: Path) -> Truth:
    """Read a truth file written next to an archive."""
    return Truth.from_json(path.read_text())
