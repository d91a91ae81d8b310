"""Generate container checkpoint archives the way CRI-O (or Podman, containerd) lays them out.

The default is a checkpoint of the seed article's `counters` pod: three
processes (bash, counter.py, tee), the secret RANDOM_1432_KEY in
counter.py's heap, two changed files and CRIU dump statistics. Everything is a
parameter so the node agents can checkpoint their own pods, tests can
build variants, and benchmarks can add bulk memory.

Run ``python -m e2e.archives.archivegen OUT.tar [--bulk-mib N]`` for a sample archive.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.archives.criu_encode import encode_images
from e2e.archives.filesgen import FileTable

PAGE = 4096
PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4


@dataclass
class Process:
    """One checkpointed process; ``heap`` is placed in its dumped memory."""

    pid: int
    ppid: int
    comm: str
    argv: list[str]
    env: list[str]
    heap: bytes = b""
    state: int = 1  # alive


def counters_processes(secret: str = "RANDOM_1432_KEY") -> list[Process]:
    """The seed article's container: bash | counter.py | tee."""
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOSTNAME=counters", "KUBERNETES_SERVICE_HOST=10.96.0.1", "HOME=/home/counter"]
    log = b"\n".join(f"counter: {i}".encode() for i in range(3))
    return [
        Process(1, 0, "bash", ["bash", "-c", "/home/counter/counter.py 2>&1 | tee "
                               "/home/counter/logfile"], env),
        Process(7, 1, "counter.py", ["/usr/bin/python3", "/home/counter/counter.py"], env,
                heap=b"\x00" * 100 + b"secret=" + secret.encode() + b"\x00" + log),
        Process(8, 1, "tee", ["/usr/bin/coreutils", "--coreutils-prog-shebang=tee",
                              "/usr/bin/tee", "/home/counter/logfile"], env),
    ]


@dataclass
class ArchiveSpec:
    """Everything that varies between generated archives."""

    pod: str = "counters"
    namespace: str = "default"
    pod_uid: str = "6a2d1a4e-53a1-4f8b-9c1e-0d5e0f1b7a21"
    container: str = "counter"
    image: str = "quay.io/adrianreber/counter:blog"
    image_ref: str = ("quay.io/adrianreber/counter@sha256:"
                      "4a8bc1f0e0f3b1d5a7b2c9d6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c")
    image_id: str = "d0b3e3b25b4e5b3c1a2f4e6d8c0b2a4f6e8d0c2b4a6f8e0d2c4b6a8f0e2d4c6b"
    container_id: str = "059a219a22e56a1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d"
    ip: str = "10.88.0.25"
    runtime: str = "runc"
    created: str = "2023-03-02T06:06:49.123456789Z"
    checkpointed: str = "2023-03-02T06:08:12.000000001Z"
    hostname: str = "counters"
    engine: str = "cri-o"  # cri-o | libpod | containerd
    labels: dict[str, str] = field(default_factory=lambda: {"app": "counters"})
    annotations: dict[str, str] = field(default_factory=dict)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    """Extra bind mounts: {destination, source, file_type, permissions}."""
    service_account: bool = True
    """Mount the service-account token (a pod with automountServiceAccountToken: false
    has none)."""
    processes: list[Process] = field(default_factory=counters_processes)
    rootfs_files: dict[str, bytes] = field(default_factory=lambda: {
        "home/counter/logfile": (
            b'10.88.0.1 - - [02/Mar/2023 06:07:29] "GET /create?test-file HTTP/1.1" 200 -\n'
            b'10.88.0.1 - - [02/Mar/2023 06:07:40] "GET /secret?RANDOM_1432_KEY HTTP/1.1" 200 -\n'
            b'10.88.0.1 - - [02/Mar/2023 06:07:43] "GET / HTTP/1.1" 200 -\n'),
        "home/counter/test-file": b"test-file\n",
    })
    deleted_files: list[str] | None = None
    stats: dict[str, int] = field(default_factory=lambda: {
        "freezing_time": 100809, "frozen_time": 119627, "memdump_time": 11602,
        "memwrite_time": 7379, "pages_scanned": 7800, "pages_skipped_parent": 0,
        "pages_written": 2198, "irmap_resolve": 0, "pages_lazy": 0})
    parent_run: bool = True
    """Add a run kept in a parent dump (not in this pages file), as pre-dumps make."""
    bulk_pages: int = 0
    """Extra pages in the second process (benchmarks): half zero, some random, some text."""
    pagemap_u64: bool = False
    """Write the CRIU 4.2+ pagemap layout (u64 nr_pages in field 5)."""
    use_crit: bool | None = None
    """Encode with CRIU's pycriu (None: when installed)."""
    omit: tuple[str, ...] = ()
    """Archive members to leave out (for bad-input tests)."""
    extra_members: dict[str, bytes] = field(default_factory=dict)
    open_files: FileTable | None = None
    """Open files and sockets (e2e/archives/filesgen.py); None: no files images, as before."""


STACK_BASE, HEAP_BASE, PARENT_BASE, BULK_BASE = (
    0x7FFD_0000_0000, 0x5600_0000_0000, 0x7F00_0000_0000, 0x7F10_0000_0000)


def _pages(n_bytes: int) -> int:
    return max(1, -(-n_bytes // PAGE))


class BulkPages(io.RawIOBase):
    """Realistic page contents, generated while they are written (never all in memory)."""

    def __init__(self, pages: int) -> None:
        super().__init__()
        self.remaining = pages * PAGE
        self.rng = random.Random(7)  # the same pages in every archive
        self.text = (b"GET /index.html HTTP/1.1 counter=42 user=alice lorem ipsum dolor "
                     * 64)[:PAGE]
        self.buf = b""
        self.page_no = 0

    def readable(self) -> bool:
        return True

    def _page(self) -> bytes:
        kind = self.page_no % 8
        self.page_no += 1
        if kind < 4:
            return bytes(PAGE)
        if kind < 6:
            return self.rng.randbytes(PAGE)
        return self.text

    def readinto(self, b: Any) -> int:
        want = min(len(b), self.remaining)
        while len(self.buf) < want:
            self.buf += b"".join(self._page() for _ in range(64))
        b[:want] = self.buf[:want]
        self.buf = self.buf[want:]
        self.remaining -= want
        return want


def _memory(spec: ArchiveSpec, p: Process, index: int) -> tuple[dict[str, Any], dict[str, Any],
                                                                 bytes, int]:
    """(mm image, pagemap image, stored pages bytes, bulk pages) for one process."""
    args = b"\0".join(a.encode() for a in p.argv) + b"\0"
    env = b"\0".join(e.encode() for e in p.env) + b"\0"
    stack = args + env
    stack_pages, heap_pages = _pages(len(stack)), _pages(len(p.heap))
    # Stack and heap are anonymous private memory: CRIU flags it lazy and adds
    # PE_PRESENT as it writes the pages (every dump made without --lazy-pages).
    anon = PE_LAZY | PE_PRESENT
    entries: list[dict[str, Any]] = [
        {"vaddr": STACK_BASE, "nr_pages": stack_pages, "flags": anon}]
    if spec.parent_run:
        entries.append({"vaddr": PARENT_BASE, "nr_pages": 3, "in_parent": True,
                        "flags": PE_PARENT})
    entries.append({"vaddr": HEAP_BASE, "nr_pages": heap_pages, "flags": anon})
    bulk = spec.bulk_pages if index == 1 else 0
    if bulk:
        entries.append({"vaddr": BULK_BASE, "nr_pages": bulk, "flags": PE_PRESENT})
    data = stack.ljust(stack_pages * PAGE, b"\0") + p.heap.ljust(heap_pages * PAGE, b"\0")
    mm = {"mm_start_code": 0x400000, "mm_end_code": 0x4F0000, "mm_start_data": 0x6F0000,
          "mm_end_data": 0x700000, "mm_start_stack": STACK_BASE + stack_pages * PAGE,
          "mm_start_brk": HEAP_BASE, "mm_brk": HEAP_BASE + heap_pages * PAGE,
          "mm_arg_start": STACK_BASE, "mm_arg_end": STACK_BASE + len(args),
          "mm_env_start": STACK_BASE + len(args), "mm_env_end": STACK_BASE + len(stack),
          "exe_file_id": 10 + index}
    return ({"magic": "MM", "entries": [mm]},
            {"magic": "PAGEMAP", "entries": [{"pages_id": index + 1}, *entries]}, data, bulk)


def _annotations(spec: ArchiveSpec) -> dict[str, str]:
    a = {"io.kubernetes.pod.name": spec.pod, "io.kubernetes.pod.namespace": spec.namespace,
         "io.kubernetes.pod.uid": spec.pod_uid, "io.kubernetes.container.name": spec.container}
    if spec.engine == "cri-o":
        a.update({
            "io.container.manager": "cri-o",
            "io.kubernetes.cri-o.Metadata": json.dumps({"name": spec.container, "attempt": 0}),
            "io.kubernetes.cri-o.IP.0": spec.ip,
            "io.kubernetes.cri-o.Created": spec.created,
            "io.kubernetes.cri-o.ImageName": spec.image,
            "io.kubernetes.cri-o.ImageRef": spec.image_id,
            "io.kubernetes.cri-o.Labels": json.dumps({
                "io.kubernetes.container.name": spec.container,
                "io.kubernetes.pod.name": spec.pod,
                "io.kubernetes.pod.namespace": spec.namespace,
                "io.kubernetes.pod.uid": spec.pod_uid, **spec.labels}),
            "io.kubernetes.cri-o.Annotations": json.dumps({
                "io.kubernetes.container.hash": "8f3e0b51", **spec.annotations}),
            "io.kubernetes.cri-o.LogPath": f"/var/log/pods/{spec.namespace}_{spec.pod}_"
                                           f"{spec.pod_uid}/{spec.container}/0.log",
            "io.kubernetes.cri-o.SandboxName": f"k8s_{spec.pod}_{spec.namespace}_"
                                               f"{spec.pod_uid}_0",
        })
        if spec.image_ref:  # joined with "," when the image has several (CRI-O >= 1.30)
            a["io.kubernetes.cri-o.ImageRepoDigests"] = spec.image_ref
    elif spec.engine == "libpod":
        a = {"io.container.manager": "libpod"}
    else:
        a.update({"io.kubernetes.cri.container-name": spec.container,
                  "io.kubernetes.cri.sandbox-name": spec.pod,
                  "io.kubernetes.cri.sandbox-namespace": spec.namespace,
                  "io.kubernetes.cri.container-type": "container"})
    return a


def _binds(spec: ArchiveSpec) -> list[dict[str, Any]]:
    pod_dir = f"/var/lib/kubelet/pods/{spec.pod_uid}"
    return [
        {"destination": "/etc/hosts", "source": f"{pod_dir}/etc-hosts",
         "file_type": "file", "permissions": 0o644},
        {"destination": "/dev/termination-log",
         "source": f"{pod_dir}/containers/{spec.container}/1a2b3c4d",
         "file_type": "file", "permissions": 0o644},
        *([{"destination": "/var/run/secrets/kubernetes.io/serviceaccount",
             "source": f"{pod_dir}/volumes/kubernetes.io~projected/kube-api-access-7xk2p",
             "file_type": "directory", "permissions": 0o755}] if spec.service_account else []),
        *spec.volumes,
    ]


def _spec_dump(spec: ArchiveSpec) -> dict[str, Any]:
    runtime_mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/dev/shm", "type": "bind",
         "source": "/run/containers/storage/overlay-containers/3f2e/userdata/shm",
         "options": ["rw", "bind"]},
        {"destination": "/etc/resolv.conf", "type": "bind",
         "source": "/run/containers/storage/overlay-containers/3f2e/userdata/resolv.conf",
         "options": ["ro", "bind", "nodev", "nosuid", "noexec"]},
        {"destination": "/etc/hostname", "type": "bind",
         "source": "/run/containers/storage/overlay-containers/3f2e/userdata/hostname",
         "options": ["ro", "bind", "nodev", "nosuid", "noexec"]},
    ]
    binds = [{"destination": b["destination"], "type": "bind", "source": b["source"],
              "options": ["rw", "rbind", "rprivate", "bind"]} for b in _binds(spec)]
    main = spec.processes[0] if spec.processes else Process(1, 0, "sh", ["sh"], [])
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"user": {"uid": 1000, "gid": 1000}, "args": main.argv, "env": main.env,
                    "cwd": "/home/counter", "terminal": False},
        "root": {"path": f"/var/lib/containers/storage/overlay/{spec.container_id[:12]}/merged"},
        "hostname": spec.hostname,
        "mounts": runtime_mounts + binds,
        "annotations": _annotations(spec),
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }


def _config_dump(spec: ArchiveSpec) -> dict[str, Any]:
    if spec.engine == "libpod":
        # libpod's own container record (Podman 4.3): no checkpointedTime, no
        # rootfsImageRef; the image ID is rootfsImageID.
        return {"id": spec.container_id, "name": spec.container,
                "RawImageName": spec.image, "rootfsImageID": spec.image_id,
                "rootfsImageName": spec.image, "runtime": spec.runtime,
                "createdTime": spec.created, "logDriver": "k8s-file",
                "cgroupManager": "cgroupfs", "networkMode": "bridge"}
    name = (f"k8s_{spec.container}_{spec.pod}_{spec.namespace}_{spec.pod_uid}_0"
            if spec.engine == "cri-o" else spec.container)
    # CRI-O's rootfsImageRef is the image ID, as its restore parses it (since v1.30;
    # internal/lib/checkpoint.go, v1.36.3); containerd's is the reference it pulls.
    return {"id": spec.container_id, "name": name, "rootfsImage": spec.image_id,
            "rootfsImageRef": spec.image_id if spec.engine == "cri-o" else spec.image_ref,
            "rootfsImageName": spec.image,
            "runtime": spec.runtime, "createdTime": spec.created,
            "checkpointedTime": spec.checkpointed, "restoredTime": "0001-01-01T00:00:00Z",
            "restored": False}


def _podman_members(spec: ArchiveSpec) -> list[tuple[str, Member]]:
    """What `podman container checkpoint --export` (4.3) adds: no dump.log, no bind.mounts."""
    status = {"podman": {"interfaces": {"eth0": {
        "subnets": [{"ipnet": f"{spec.ip}/16", "gateway": "10.88.0.1"}],
        "mac_address": "3e:1c:8a:5d:02:9f"}}}}
    return [
        ("network.status", json.dumps(status, indent=2).encode()),
        ("ctr.log", b"2023-03-02T06:06:50.1Z stdout F counter: 0\n"),
        ("devshm-checkpoint.tar", _tar_bytes({})),
        ("checkpoint/descriptors.json", b'["/dev/null","pipe:[31675]","pipe:[31676]"]'),
    ]


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files
                       for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1677737263
            tf.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1677737263
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(spec: ArchiveSpec, out: Path) -> Path:
    """Write the archive to ``out`` (mode 0600: checkpoints hold process memory)."""
    images: dict[str, dict[str, Any]] = {
        "inventory.img": {"magic": "INVENTORY",
                          "entries": [{"img_version": 2, "fdinfo_per_id": True}]},
        "pstree.img": {"magic": "PSTREE", "entries": [
            {"pid": p.pid, "ppid": p.ppid, "pgid": 1, "sid": 1, "threads": [p.pid]}
            for p in spec.processes]},
        "utsns-12.img": {"magic": "UTSNS",
                         "entries": [{"nodename": spec.hostname, "domainname": "(none)"}]},
    }
    pages: dict[str, tuple[bytes, int]] = {}
    for i, p in enumerate(spec.processes):
        images[f"core-{p.pid}.img"] = {"magic": "CORE", "entries": [{
            "mtype": "X86_64", "tc": {"task_state": p.state, "exit_code": 0, "personality": 0,
                                      "flags": 0x402100, "blk_sigset": 0, "comm": p.comm}}]}
        if spec.open_files and spec.open_files.ids_in_core and p.pid in spec.open_files.ids:
            images[f"core-{p.pid}.img"]["entries"][0]["ids"] = spec.open_files.core_ids(p.pid)
        mm, pagemap, data, bulk = _memory(spec, p, i)
        images[f"mm-{p.pid}.img"], images[f"pagemap-{p.pid}.img"] = mm, pagemap
        pages[f"pages-{i + 1}.img"] = (data, bulk)
    if spec.open_files:
        images.update(spec.open_files.images())
    encoded = encode_images(images, use_crit=spec.use_crit, pagemap_u64=spec.pagemap_u64)
    stats = encode_images({"stats-dump": {"magic": "STATS", "entries": [{"dump": spec.stats}]}},
                          use_crit=spec.use_crit)["stats-dump"]
    members: list[tuple[str, Member]] = [
        *((f"checkpoint/{n}", d) for n, d in sorted(encoded.items())),
        *((f"checkpoint/{n}", d) for n, d in sorted(pages.items())),
        ("config.dump", json.dumps(_config_dump(spec), indent=2).encode()),
    ]
    if spec.deleted_files is not None:
        members.append(("deleted.files", json.dumps(spec.deleted_files).encode()))
    members += [
        ("rootfs-diff.tar", _tar_bytes(spec.rootfs_files)),
        ("spec.dump", json.dumps(_spec_dump(spec), indent=2).encode()),
        ("stats-dump", stats),
    ]
    members += _podman_members(spec) if spec.engine == "libpod" else [
        ("bind.mounts", json.dumps(_binds(spec)).encode()),
        ("dump.log", b"(00.000000) Version: 3.17.1 (gitid 0)\n(00.119627) Dumping finished\n"),
        ("io.kubernetes.cri-o.LogPath", b"counter: 0\ncounter: 1\ncounter: 2\n")]
    members += spec.extra_members.items()
    return write_archive(out, [(n, c) for n, c in members if n not in spec.omit], 1677737292)


#: An archive member's content: bytes, a file to copy, or (head, N): head then N bulk pages.
Member = bytes | Path | tuple[bytes, int]


def write_archive(out: Path, members: list[tuple[str, Member]], mtime: int) -> Path:
    """Write a checkpoint archive in CRI-O's layout at ``out``, mode 0600 (checkpoints
    hold process memory): the `checkpoint` directory, then ``members`` in order."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("checkpoint")
        info.type, info.mode = tarfile.DIRTYPE, 0o700
        tf.addfile(info)
        for name, content in members:
            if isinstance(content, Path):
                tf.add(content, arcname=name, recursive=False)
                continue
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o600, mtime
            if isinstance(content, tuple):
                head, bulk = content
                info.size = len(head) + bulk * PAGE
                tf.addfile(info, io.BufferedReader(_Concat(head, BulkPages(bulk))))
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return out


class _Concat(io.RawIOBase):
    def __init__(self, head: bytes, tail: io.RawIOBase) -> None:
        super().__init__()
        self.head, self.tail = memoryview(head), tail

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.tail.readinto(b) or 0


def main() -> None:
    """CLI: write a sample archive."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--bulk-mib", type=int, default=0, help="extra memory in MiB")
    ap.add_argument("--engine", default="cri-o", choices=["cri-o", "libpod", "containerd"])
    ap.add_argument("--no-crit", action="store_true", help="use the built-in encoder")
    a = ap.parse_args()
    spec = ArchiveSpec(bulk_pages=a.bulk_mib * 256, engine=a.engine,
                       use_crit=False if a.no_crit else None)
    print(build(spec, a.out))


if __name__ == "__main__":
    main()
