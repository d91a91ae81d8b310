"""One node with nothing simulated: the real kubelet and real CRI-O (issue 16's stretch).

    with control_plane() as cp, real_node(cp, tmp / "node", registry="127.0.0.1:5000") as n:
        n.checkpoints   # the kubelet's checkpoint directory (ROOT/kubelet/checkpoints)
        n.crio_container(container_id)["pid"]  # CRI-O's own record of a container

    with crio_alone(tmp / "crio", registry="127.0.0.1:5000") as c:  # no kubelet
        c.crictl("pods")  # crictl, built by setup-stretch, against that CRI-O

Binaries: scripts/setup-stretch (kubelet at the control plane's release, CRI-O
at CRIO_VERSION of e2e/real/versions.env); conmon, runc and the CNI plugins
from Debian; CRIU 4.1.1 from setup-real, first on CRI-O's PATH.

Where things run, and why:
- The kubelet and CRI-O run in the host's network namespace, to reach the API
  server and the registry on 127.0.0.1. The node proxy refuses loopback
  (__init__.py), so the kubelet serves on the host end of a node host's veth
  pair (198.18, nodehost.py). Pods get a CNI bridge of their own (a free /28 of
  198.18, no masquerading) and routes through it to 198.18/16 and to the
  Services' range, no default one: a server that pods must reach listens on a
  198.18 address of the host; the API server is reached as the `kubernetes`
  Service, through kube-proxy (kubeproxy.py).
- Everything on disk is under ROOT: CRI-O's storage (vfs), state, socket, CNI
  config and IPAM; the kubelet's root (checkpoints in ROOT/kubelet/checkpoints,
  never /var/lib/kubelet), certificates and pod logs.
- CRI-O pulls a pause image for every pod, even with drop_infra_ctr
  (server/sandbox_run_linux.go): the node pushes its own (busybox) to the
  loopback registry it is given and pulls it over plain HTTP (registries.conf:
  CRI-O's insecure_registries is "no longer effective").
- Encrypted images: CRI-O decrypts with the private key files in
  `[crio.runtime] decryption_keys_path` (pkg/config/config.go), read at each
  pull (server/image_pull.go getDecryptionKeys): `decryption_keys` names that
  directory, else the node has an empty one of its own (never /etc/crio/keys).
- No `signature_policy`: CRI-O puts it in the system context, and its restore
  then refuses every checkpoint image as if a namespaced policy applied
  (server/container_restore.go: "namespaced signature policy ... signature
  validation is not supported for container restore"). Podman's
  /etc/containers/policy.json is read instead.
- Hybrid cgroup v1 here: the kubelet runs with failCgroupV1: false, both with
  cgroupfs, pods under a cgroup root of the node's own (/migrate-<hex>).
  hugetlb sits on the cgroup2 half, unmounted as v1 yet listed in /proc/cgroups:
  CRI-O believes it present (internal/config/node CgroupHasHugetlb) and passes
  the kubelet's hugepage limits to runc, whose v1 manager fails ("cannot set
  hugetlb limit: container could not join or create cgroup"). The kubelet asks
  one limit per size in /sys/kernel/mm/hugepages, so both run in a private mount
  namespace where that directory is an empty tmpfs; their mounts (volumes, shm,
  namespaces) stay in it and go with it.
- A pod may name a CRIU configuration file with the annotation org.criu.config
  (runc hands it to CRIU; CRI-O drops the annotation unless the runtime's
  allowed_annotations lists it, pkg/annotations/v2): the forensic workload's
  established TCP connection needs tcp-established (tests/real.py).
- The kubelet sets vm.overcommit_memory, kernel.panic and kernel.panic_on_oops
  (pkg/kubelet/cm/container_manager_linux.go setupKernelTunables; the only
  alternative, protectKernelDefaults, refuses to start): they are put back.
Teardown: kubelet, every process left in the node's cgroups (conmon keeps
containers running when CRI-O exits), CRI-O, the mount namespace, the cgroups,
the bridge, the Node object, the sysctls.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import nodehost, procs
from e2e.cluster.binaries import versions as k8s_versions
from e2e.cluster.launcher import SERVICE_CIDR, ControlPlane
from e2e.real import tools as real_tools
from e2e.real.counter import counter_rootfs, push_rootfs

__all__ = ["CrioAlone", "RealNode", "bin_dir", "crio_alone", "missing", "real_node"]

SETUP_HINT = "run scripts/setup-stretch as root"
_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
_CGROUPS = Path("/sys/fs/cgroup")
_CNI_BIN = Path("/usr/lib/cni")


@dataclass(frozen=True)
class RealNode:
    """A running node; valid inside `real_node`'s with-block."""

    name: str
    address: str
    """The kubelet's address (the Node's InternalIP)."""
    root: Path
    checkpoints: Path
    """Where the kubelet writes checkpoint archives."""
    logs: dict[str, Path]
    """"kubelet", "crio" -> their log files."""
    pause_image: str
    """The pause image CRI-O pulls for every pod (from the registry `real_node` got)."""
    crio_socket: Path
    """CRI-O's socket: the CRI (gRPC) and its inspect endpoints (HTTP) on one listener."""

    def crio_container(self, container_id: str) -> dict[str, Any]:
        """CRI-O's own record of a container (GET /containers/ID on its socket, what
        `crio status containers --id` reads): name, pid (the host's), image, image_ref,
        created_time (Unix nanoseconds), labels, annotations, ip_addresses..."""
        conn = _UnixHTTPConnection(self.crio_socket)
        try:
            conn.request("GET", f"/containers/{container_id}")
            resp = conn.getresponse()
            body = resp.read().decode()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"CRI-O on {self.name}: container {container_id}: "
                               f"{resp.status} {body.strip()}")
        info: dict[str, Any] = json.loads(body)
        return info


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def bin_dir() -> Path:
    """Where setup-stretch puts kubelet, crio, pinns and crictl."""
    return (real_tools.cache_dir() / f"stretch-{k8s_versions().kubernetes}-crio-"
            f"{real_tools.versions()['CRIO_VERSION']}" / "bin")


def runtime() -> str:
    """`cri-o://1.36.3`: the containerRuntimeVersion a real node reports."""
    return f"cri-o://{real_tools.versions()['CRIO_VERSION'].removeprefix('v')}"


def missing() -> str | None:
    """None when a real node can run here, else one sentence saying what is missing."""
    if (reason := nodehost.missing()) is not None:
        return reason
    absent = [str(bin_dir() / b) for b in ("kubelet", "kube-proxy", "crio", "pinns", "crictl")
              if not os.access(bin_dir() / b, os.X_OK)]
    absent += [t for t in ("conmon", "runc") if shutil.which(t) is None]
    absent += [p for p in ("/etc/containers/policy.json",) if not Path(p).exists()]
    absent += [str(_CNI_BIN / p) for p in ("bridge", "host-local", "loopback")
               if not (_CNI_BIN / p).exists()]
    if absent:
        return f"a real node needs {', '.join(absent)}: {SETUP_HINT}"
    return real_tools.missing_engine()


def _pod_subnet() -> ipaddress.IPv4Network:
    """A /28 of 198.18 that no interface here holds (node hosts take /30s from it)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    taken = [ipaddress.IPv4Interface(line.split()[3]).network for line in out.splitlines()]
    for _ in range(100):
        net = ipaddress.IPv4Network((int(nodehost.NODE_HOSTS.network_address)
                                     + 16 * random.randrange(4096), 28))
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free /28 in 198.18.0.0/16 for the pods")


def _pause_image(registry: str, workdir: Path) -> str:
    rootfs = counter_rootfs(workdir)
    (rootfs / "pause").write_text("#!/bin/sh\nexec sleep 2147483647\n")
    (rootfs / "pause").chmod(0o755)
    return push_rootfs(registry, "migrate-test/pause", "1", rootfs, {"Cmd": ["/pause"]})


def _crio_conf(root: Path, bridge: str, subnet: ipaddress.IPv4Network,
               registry: str, pause_image: str, keys: Path, criu: bool = True,
               insecure: tuple[str, ...] = ()) -> Path:
    run = root / "run"
    for d in ("cni", "keys", "log", "policies", "run/ns", "run/exits", "run/runc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "cni" / "10-bridge.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": bridge, "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "dataDir": str(root / "ipam"),
                     "ranges": [[{"subnet": str(subnet)}]],
                     # The test world's own addresses only, through the bridge: a
                     # server on one this host holds (pod_registry), and the Services'
                     # ClusterIPs (kubeproxy.py); nothing else (no default route).
                     # (The gateway spelled out: CRI-O's CNI check compares routes.)
                     "routes": [{"dst": dst, "gw": str(subnet.network_address + 1)}
                                for dst in (str(nodehost.NODE_HOSTS), SERVICE_CIDR)]}}]}))
    q = json.dumps  # TOML basic strings and arrays of them read like JSON's
    conf = f"""
[crio]
root = {q(str(root / "storage"))}
runroot = {q(str(run / "storage"))}
storage_driver = "vfs"
storage_option = []
log_dir = {q(str(root / "log"))}
version_file = {q(str(run / "version"))}
version_file_persist = {q(str(root / "version"))}
clean_shutdown_file = {q(str(root / "clean.shutdown"))}
[crio.api]
listen = {q(str(run / "crio.sock"))}
[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
pinns_path = {q(str(bin_dir() / "pinns"))}
namespaces_dir = {q(str(run / "ns"))}
container_exits_dir = {q(str(run / "exits"))}
container_attach_socket_dir = {q(str(run))}
decryption_keys_path = {q(str(keys))}
irqbalance_config_file = {q(str(root / "irqbalance"))}
irqbalance_config_restore_file = {q(str(root / "irqbalance.restore"))}
hooks_dir = []
enable_criu_support = {q(criu)}
[crio.runtime.runtimes.runc]
runtime_path = {q(shutil.which("runc") or "runc")}
runtime_type = "oci"
runtime_root = {q(str(run / "runc"))}
monitor_path = {q(shutil.which("conmon") or "conmon")}
monitor_cgroup = "pod"
allowed_annotations = ["org.criu.config"]
[crio.image]
signature_policy_dir = {q(str(root / "policies"))}
pause_image = {q(pause_image)}
[crio.network]
network_dir = {q(str(root / "cni"))}
plugin_dirs = [{q(str(_CNI_BIN))}]
[crio.metrics]
enable_metrics = false
[crio.nri]
enable_nri = false
"""
    path = root / "crio.conf"
    path.write_text(conf)
    (root / "registries.conf.d").mkdir(exist_ok=True)
    (root / "registries.conf").write_text("unqualified-search-registries = []\n" + "".join(
        f"[[registry]]\nlocation = {q(r)}\ninsecure = true\n" for r in (registry, *insecure)))
    return path


def _kubelet_conf(cp: ControlPlane, root: Path, name: str, address: str,
                  cgroup_root: str) -> list[str]:
    serving = cp.serving_cert(name, [address])
    kubeconfig = cp.kubeconfig(f"system:node:{name}", group="system:nodes")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": address, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": address, "healthzPort": 10248,
        "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(cp.ca.cert)}},
        # A denial cached 2 s, not the default 30: tests grant and try again.
        "authorization": {"mode": "Webhook", "webhook": {"cacheUnauthorizedTTL": "2s"}},
        "containerRuntimeEndpoint": f"unix://{root / 'crio' / 'run' / 'crio.sock'}",
        "cgroupDriver": "cgroupfs", "cgroupRoot": cgroup_root, "failCgroupV1": False,
        "failSwapOn": False, "podLogsDir": str(root / "pod-logs"),
        # The machine's disks are shared and may be fuller than the defaults allow:
        # eviction would taint the node before any pod ran.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "2s", "syncFrequency": "5s",
    }
    path = root / "kubelet.yaml"
    path.write_text(yaml.safe_dump(config))
    return [f"--config={path}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={root / 'kubelet'}", f"--cert-dir={root / 'kubelet-pki'}",
            f"--hostname-override={name}", f"--node-ip={address}", "-v=2"]


def _cgroup_dirs(cgroup_root: str) -> list[Path]:
    return [d / cgroup_root.lstrip("/") for d in _CGROUPS.iterdir()
            if d.is_dir() and not d.is_symlink()]


def _kill_cgroup_tasks(cgroup_root: str) -> None:
    for top in _cgroup_dirs(cgroup_root):
        for procs_file in top.rglob("cgroup.procs") if top.exists() else []:
            for pid in procs_file.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def _remove_cgroups(cgroup_root: str) -> None:
    for top in _cgroup_dirs(cgroup_root):
        if top.exists():
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def _mount_namespace(logs: Path, env: dict[str, str]) -> procs.Proc:
    """A holder of a private mount namespace with no hugepage sizes to see."""
    holder = procs.spawn("mountns", ["unshare", "--mount", "--propagation", "private", "--",
                                     "sleep", "infinity"], logs / "mountns.log", env=env)
    mine = os.readlink("/proc/self/ns/mnt")

    def unshared() -> bool:
        with contextlib.suppress(FileNotFoundError):
            return os.readlink(f"/proc/{holder.pid}/ns/mnt") != mine
        return False

    procs.wait_until(unshared, timeout=10, what="the node's mount namespace", watch=[holder])
    subprocess.run(["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt", "--", "mount", "-t",
                    "tmpfs", "-o", "ro,size=4k", "tmpfs", "/sys/kernel/mm/hugepages"],
                   check=True, capture_output=True, timeout=30)
    return holder


def _env(root: Path) -> dict[str, str]:
    """CRI-O's and the kubelet's environment: CRIU 4.1.1 first on the PATH."""
    return {"PATH": f"{real_tools.tools().criu_bin_dir}:/usr/local/sbin:/usr/local/bin:"
                    "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(root), "LANG": "C"}


def _start_crio(conf: Path, logs: Path, env: dict[str, str], started: list[procs.Proc],
                timeout: float) -> tuple[list[str], Path]:
    """The mount namespace's holder, then CRI-O in it (both appended to ``started``);
    the command prefix that enters the namespace, and CRI-O's socket once it listens."""
    holder = _mount_namespace(logs, env)
    started.append(holder)
    inside = ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt", "--"]
    crio = procs.spawn("crio", [
        *inside, bin_dir() / "crio", "--config", conf, "--log-level", "info",
        "--registries-conf", conf.parent / "registries.conf",
        "--registries-conf-dir", conf.parent / "registries.conf.d",
    ], logs / "crio.log", env=env)
    started.append(crio)
    sock = conf.parent / "run" / "crio.sock"
    procs.wait_until(sock.exists, timeout=timeout, what="CRI-O's socket", watch=[crio])
    return inside, sock


def _node_ready(cp: ControlPlane, name: str) -> bool:
    status, node = cp.api("GET", f"/api/v1/nodes/{name}")
    if status != 200:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in node.get("status", {}).get("conditions", []))


@contextlib.contextmanager
def real_node(cp: ControlPlane, root: Path, *, name: str = "node-real",
              registry: str, insecure: tuple[str, ...] = (),
              decryption_keys: Path | None = None, criu: bool = True,
              ready_timeout: float = 180.0) -> Iterator[RealNode]:
    """Start CRI-O and the kubelet as Node `name`, wait until Ready, stop it all.

    root: where everything of the node goes (created; kept afterwards, logs and all).
    registry: a plain-HTTP registry (host:port) CRI-O pulls from; the pause image is
    pushed there.
    insecure: more registries CRI-O pulls from over plain HTTP.
    decryption_keys: a directory of private keys (PEM, DER or JWK files) CRI-O decrypts
    encrypted image layers with; None: an empty one under root.
    criu: CRI-O's enable_criu_support (False: a node that can neither checkpoint nor
    restore, as CRI-O is configured unless asked).
    """
    if (reason := missing()) is not None:
        raise RuntimeError(reason)
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    saved = {s: (Path("/proc/sys") / s).read_text() for s in _SYSCTLS}
    cgroup_root = f"/migrate-{secrets.token_hex(4)}"
    bridge = f"mig{secrets.token_hex(4)}"
    started: list[procs.Proc] = []
    env = _env(root)
    try:
        with nodehost.node_host(name, logs) as host:
            address = host.host_address
            pause = _pause_image(registry, root / "crio" / "pause-rootfs")
            keys = decryption_keys or root / "crio" / "keys"
            crio_conf = _crio_conf(root / "crio", bridge, _pod_subnet(), registry, pause, keys,
                                   criu, insecure)
            for d in _cgroup_dirs(cgroup_root):
                d.mkdir()  # the kubelet wants its cgroup root to exist already
            inside, sock = _start_crio(crio_conf, logs, env, started, ready_timeout)
            started.append(procs.spawn(
                "kubelet", [*inside, bin_dir() / "kubelet",
                            *_kubelet_conf(cp, root, name, address, cgroup_root)],
                logs / "kubelet.log", env=env))
            procs.wait_until(lambda: _node_ready(cp, name), timeout=ready_timeout,
                             what=f"Node {name} Ready", watch=started)
            yield RealNode(name=name, address=address, root=root,
                           checkpoints=root / "kubelet" / "checkpoints",
                           logs={"crio": logs / "crio.log", "kubelet": logs / "kubelet.log"},
                           pause_image=pause, crio_socket=sock)
    finally:
        procs.stop(started[2:], grace=15)  # the kubelet first: it would restart pods
        _kill_cgroup_tasks(cgroup_root)
        procs.stop(list(reversed(started[:2])), grace=15)
        _remove_cgroups(cgroup_root)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False,
                       timeout=30)
        cp.api("DELETE", f"/api/v1/nodes/{name}")
        for s, value in saved.items():
            (Path("/proc/sys") / s).write_text(value)


@dataclass(frozen=True)
class CrioAlone:
    """CRI-O with no kubelet; valid inside `crio_alone`'s with-block."""

    root: Path
    socket: Path
    log: Path
    """CRI-O's log."""

    @property
    def endpoint(self) -> str:
        """The CRI endpoint (crictl's --runtime-endpoint)."""
        return f"unix://{self.socket}"

    def crictl(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run crictl against this CRI-O (not checked: the caller reads the result)."""
        return subprocess.run([str(bin_dir() / "crictl"), "--runtime-endpoint", self.endpoint,
                               "--timeout", "60s", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)


@contextlib.contextmanager
def crio_alone(root: Path, *, registry: str, insecure: tuple[str, ...] = (),
               ready_timeout: float = 180.0) -> Iterator[CrioAlone]:
    """CRI-O as a real node runs it, with no kubelet and no Node: the "sandboxed
    instance of CRI-O" the seed article restores a checkpoint archive into with
    crictl (runp, create with the archive as the image, start).

    Nothing manages its pods: without a kubelet nobody kills them as orphans (a
    kubelet kills the sandboxes of pods it does not know). Teardown kills every
    container and removes every pod (`crictl stop --timeout 0`, `crictl rmp --force
    --all`: conmon keeps containers running when CRI-O exits), then CRI-O, its mount
    namespace and the bridge. root and registry are
    real_node's; ``insecure``: more registries it pulls from over plain HTTP.
    """
    if (reason := missing()) is not None:
        raise RuntimeError(reason)
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    bridge = f"mig{secrets.token_hex(4)}"
    started: list[procs.Proc] = []
    alone: CrioAlone | None = None
    try:
        pause = _pause_image(registry, root / "crio" / "pause-rootfs")
        conf = _crio_conf(root / "crio", bridge, _pod_subnet(), registry, pause,
                          root / "crio" / "keys", insecure=insecure)
        _, sock = _start_crio(conf, logs, _env(root), started, ready_timeout)
        alone = CrioAlone(root=root, socket=sock, log=logs / "crio.log")
        yield alone
    finally:
        if alone is not None:
            # Killed first: a container's PID 1 that ignores SIGTERM (a shell, the counter)
            # would hold each removal for its grace period.
            running = alone.crictl("ps", "-q").stdout.split()
            if running:
                alone.crictl("stop", "--timeout", "0", *running)
            removed = alone.crictl("rmp", "--force", "--all")
            if removed.returncode != 0:
                (logs / "teardown.log").write_text(removed.stderr)
        procs.stop(list(reversed(started)), grace=15)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False,
                       timeout=30)
