"""The real-dump workload: a busybox process tree with something of every kind to dump.

    build_workload_image(world, secret, tmp / "rootfs", "localhost/wl:1")
    ctr = start_workload(world, "localhost/wl:1", "wl")  # waits until it is set up and idle
    truth = read_truth(ctr.host_pid, secret.encode(), WORKLOAD_FILES)
    export_checkpoint(world, "wl", out / "checkpoint-wl.tar", compress="none")

The same workload runs as a pod on a real node (tests/real.py): its image pushed
to a loopback registry (`push_workload_image`), the pod from `workload_pod`, and
`wait_idle` on the host PID CRI-O reports.

PID 1 is a busybox shell (run.sh, with arguments and an environment) that
reads a random secret into its heap and deletes the file it came from (a
deleted root-fs file), appends to an image file (a changed one), keeps open
regular files, a fifo, a file on a tmpfs mount and a deleted file; its
children are syslogd (a unix socket, /dev/log), a TCP listener and a client
connected to it over loopback (an established connection), and a shell with
an environment of its own whose child sleeps. Once all of that is in place
it touches /run/ready and waits (in sigsuspend): from then on nothing in the
container runs until it is killed, so /proc read then is what CRIU dumps.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.real.counter import push_rootfs
from e2e.real.podman import PodmanError, PodmanWorld
from e2e.real.truth import namespace_members

RUN_SH = """#!/bin/sh
# PID 1 of the real-dump workload (e2e/real/workload.py says what each line leaves).
secret=$(cat /secret.txt)
rm /secret.txt
echo "changed by the workload" >> /etc/data.txt
exec 3</etc/data.txt
exec 4>>/var/log/app.log
echo "started $*" >&4
mkfifo /run/ctl.fifo
exec 5<>/run/ctl.fifo
echo "scratch data" > /scratch/t.dat
exec 6</scratch/t.dat
echo "soon deleted" > /var/tmp/gone.log
exec 7</var/tmp/gone.log
rm /var/tmp/gone.log
syslogd -n -O /var/log/messages &
nc -l -p 8080 </run/ctl.fifo &
env CHILD_ROLE=worker sh /child.sh first "second arg" &
until [ -S /dev/log ] && netstat -tln | grep -q ':8080 '; do usleep 10000; done
nc 127.0.0.1 8080 </run/ctl.fifo &
until netstat -tn | grep -q ESTABLISHED && [ -e /run/child.ready ]; do usleep 10000; done
touch /run/ready
wait
echo "$secret"
"""

CHILD_SH = """#!/bin/sh
sleep 100002 &
touch /run/child.ready
wait
"""

ARGS = ("alpha", "beta gamma")
COMMAND = ("/bin/sh", "/run.sh")
ENV = {"APP_MODE": "forensic", "GREETING": "hello world"}
HOSTNAME = "forensic-host"
TMPFS = "/scratch"
# Files the workload changes, read through the container's root for the truth.
WORKLOAD_FILES = ["/etc/data.txt", "/var/log/app.log"]
DELETED_FILES = ["/secret.txt"]
PROCESSES = 6  # sh, syslogd, nc -l, nc, sh /child.sh, sleep
_READY_TIMEOUT = 60.0


def workload_rootfs(dest: Path, secret: str) -> Path:
    """The image's root: busybox-static and its applet links, the scripts, the secret."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is not installed"
    for d in ("bin", "etc", "var/log", "var/tmp", "run", "tmp", "scratch", "proc", "sys", "dev"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, dest / "bin/busybox")
    for applet in ("sh", "cat", "rm", "echo", "mkfifo", "syslogd", "nc", "env", "netstat",
                   "grep", "usleep", "touch", "sleep", "ls", "hostname"):
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "run.sh").write_text(RUN_SH)
    (dest / "child.sh").write_text(CHILD_SH)
    (dest / "etc/data.txt").write_text("original\n")
    (dest / "secret.txt").write_text(secret + "\n")
    return dest


def build_workload_image(world: PodmanWorld, secret: str, workdir: Path, tag: str) -> str:
    """Build the workload's image (from scratch, nothing pulled); returns ``tag``."""
    world.build_image(workload_rootfs(workdir, secret), tag)
    return tag


@dataclass(frozen=True)
class Container:
    """A running workload container."""

    name: str
    host_pid: int


def _settled(host_pid: int) -> bool:
    """All processes there, and PID 1 in its final `wait` (busybox ash: sigsuspend)."""
    if not Path(f"/proc/{host_pid}/root/run/ready").exists():
        return False
    if len(namespace_members(host_pid)) != PROCESSES:
        return False
    wchan = Path(f"/proc/{host_pid}/wchan").read_text()
    state = Path(f"/proc/{host_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    # wchan reads "0" on kernels that do not expose it; the state still must be S.
    # Busybox ash waits in sigsuspend (other versions: waitpid, do_wait).
    return state == "S" and (wchan in ("", "0") or "sigsuspend" in wchan or "wait" in wchan)


def wait_idle(host_pid: int, timeout: float = _READY_TIMEOUT) -> bool:
    """Poll /proc until the workload whose PID 1 is ``host_pid`` is set up and idle;
    False when it is gone or ``timeout`` seconds passed first."""
    deadline = time.monotonic() + timeout
    while not _settled(host_pid):
        if time.monotonic() > deadline or not Path(f"/proc/{host_pid}").exists():
            return False
        time.sleep(0.02)
    return True


def start_workload(world: PodmanWorld, image: str, name: str) -> Container:
    """Run the workload and wait (polling /proc) until it is set up and idle."""
    env = [a for k, v in ENV.items() for a in ("--env", f"{k}={v}")]
    world.podman("run", "--detach", "--name", name, "--hostname", HOSTNAME,
                 "--network", world.network, "--tmpfs", f"{TMPFS}:size=1m", *env,
                 image, *COMMAND, *ARGS)
    host_pid = world.host_pid(name)
    if not wait_idle(host_pid):
        logs = world.podman("logs", name, check=False)
        raise PodmanError(f"workload {name} did not get ready: {logs.stdout}{logs.stderr}")
    return Container(name, host_pid)


def push_workload_image(registry: str, repo: str, tag: str, workdir: Path,
                        secret: str) -> str:
    """Build the workload's root in ``workdir`` and push it to the plain-HTTP registry
    ``registry`` (host:port) as a one-layer image; returns its reference."""
    return push_rootfs(registry, repo, tag, workload_rootfs(workdir, secret),
                       {"Env": ["PATH=/bin"], "Cmd": [*COMMAND, *ARGS]})


def workload_pod(name: str, namespace: str, image: str, *, node: str,
                 annotations: dict[str, str]) -> dict[str, Any]:
    """The workload as a Pod pinned to ``node``, set up as `start_workload` runs it in
    Podman: the hostname, arguments, environment and a 1 MiB tmpfs (a memory-backed
    emptyDir) at TMPFS. Its one container is named ``workload``."""
    container = {"name": "workload", "image": image, "command": list(COMMAND),
                 "args": list(ARGS), "env": [{"name": k, "value": v} for k, v in ENV.items()],
                 "volumeMounts": [{"name": "scratch", "mountPath": TMPFS}]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
            "spec": {"nodeName": node, "hostname": HOSTNAME, "containers": [container],
                     "automountServiceAccountToken": False,
                     "volumes": [{"name": "scratch",
                                  "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
                     "terminationGracePeriodSeconds": 1}}


@dataclass(frozen=True)
class EngineView:
    """What the engine itself says about the container (compared with the archive):
    Podman's `podman inspect` and `podman diff`, or CRI-O's own record of it."""

    id: str
    image: str
    image_id: str
    created: str  # RFC 3339, as Podman prints it in JSON (CRI-O: nanoseconds, UTC)
    ip: str
    diff: dict[str, str]
    """path -> A (added), C (changed) or D (deleted), from `podman diff`; for CRI-O, which
    has no such command, the container's root against its image's (truth.root_diff)."""


def engine_view(world: PodmanWorld, name: str) -> EngineView:
    """`podman inspect` and `podman diff` of the container."""
    (info,) = json.loads(world.podman("inspect", name).stdout)
    networks = info["NetworkSettings"]["Networks"] or {}
    ips = [n["IPAddress"] for _, n in sorted(networks.items()) if n.get("IPAddress")]
    diff = {}
    for line in world.podman("diff", name).stdout.splitlines():
        kind, path = line.split(" ", 1)
        diff[path] = kind
    return EngineView(info["Id"], info["ImageName"], info["Image"], info["Created"],
                      ", ".join(ips), diff)


def export_checkpoint(world: PodmanWorld, name: str, out: Path, compress: str) -> Path:
    """``podman container checkpoint --export``, leaving the container running."""
    world.podman("container", "checkpoint", "--leave-running", "--tcp-established",
                 "--export", str(out), "--compress", compress, name)
    return out
