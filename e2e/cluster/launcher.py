"""Start the real control plane on loopback: etcd, kube-apiserver, controller manager, scheduler.

    with control_plane() as cp:
        subprocess.run(["kubectl", "--kubeconfig", cp.admin_kubeconfig, "get", "ns"])
        bob = cp.kubeconfig("bob", group="team-a")   # a user RBAC knows nothing about

Binaries: scripts/setup-cluster (e2e/cluster/binaries.py says where). Every
component listens on 127.0.0.1 on a port the kernel picked a moment before;
every certificate comes from e2e/services/pki.py (one CA for serving, client and kubelet
certificates); data and certificates live in one directory, 0700, files 0600.

What is switched on, as a kubeadm cluster has it: `--authorization-mode=Node,RBAC`,
the default admission plugins (nothing enabled or disabled by flag), a
service-account issuer with an EC signing key, the controller manager with
per-controller service-account credentials, and the API server verifying
kubelets' serving certificates against the CA (`--kubelet-certificate-authority`)
and presenting its own client certificate to them (CN kube-apiserver-kubelet-client,
O kubeadm:cluster-admins, as kubeadm issues it). The node lifecycle controller's
timings are short (Options) so tests see a node go unhealthy in seconds.

The launcher is ready when the API server answers /readyz and /livez, the
controller manager /healthz, the scheduler /readyz, and the service-account
controller has made `default/default` (pods cannot be created before it exists);
then it binds group kubeadm:cluster-admins to cluster-admin, as kubeadm does.
On exit, normal or by exception, every process is stopped (SIGTERM, then
SIGKILL); if the launcher itself dies, the kernel kills them (e2e/cluster/procs.py).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from e2e.cluster import procs
from e2e.cluster.binaries import Versions, binaries, missing, versions
from e2e.services.addresses import free_port
from e2e.services.pki import CertPair, issue, make_ca, write_private

__all__ = ["SERVICE_CIDR", "UNSCHEDULABLE_TAINT", "ControlPlane", "Options", "control_plane",
           "unschedulable_tainted"]

LOOPBACK = "127.0.0.1"
#: Service ClusterIPs. Nothing routes or dials them (no kube-proxy here); the range
#: is the benchmarking block's upper half, beside the node hosts' lower half
#: (e2e/cluster/nodehost.py), and only chosen not to overlap it.
SERVICE_CIDR = "198.19.0.0/24"
_SERVICE_IP = "198.19.0.1"  # the `kubernetes` Service: first address of the range
_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: The taint the node lifecycle controller gives a cordoned node (TaintNodesByCondition)
#: and takes away a moment after the uncordon: until then the scheduler, and migrate's
#: own placement, still refuse the node. Tests and benchmarks that uncordon wait for it.
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


def unschedulable_tainted(node: dict[str, Any]) -> bool:
    """Whether a Node (as the API's JSON) still carries `UNSCHEDULABLE_TAINT`."""
    return any(t.get("key") == UNSCHEDULABLE_TAINT
               for t in (node.get("spec") or {}).get("taints") or [])


@dataclass(frozen=True)
class Options:
    """How the control plane runs. Durations are in seconds."""

    node_monitor_period: float = 1.0
    """How often the node lifecycle controller checks nodes (Kubernetes' default: 5)."""
    node_monitor_grace_period: float = 6.0
    """How long a node may post no status and renew no Lease before it is marked
    Ready=Unknown (Kubernetes' default: 50)."""
    node_startup_grace_period: float = 6.0
    """The same for a node that has never posted a Ready condition (default: 60)."""
    ready_timeout: float = 180.0
    """How long each component may take to become ready (a loaded 2-core machine is slow)."""
    stop_grace: float = 15.0
    """How long stopping waits after SIGTERM before SIGKILL."""
    verbosity: int = 1
    """The components' klog level (-v)."""
    audit_users: tuple[str, ...] = ()
    """Users whose requests the API server writes to its audit log (logs/audit.log,
    JSON lines, one event per request at ResponseComplete): the benchmarks count a
    tool's requests there. Empty: no audit log."""


@dataclass(frozen=True)
class ControlPlane:
    """A running control plane; valid inside `control_plane`'s with-block."""

    dir: Path
    """Its data directory (0700): etcd's data, certificates, kubeconfigs, logs."""
    server: str
    """The API server's URL, https://127.0.0.1:PORT."""
    ca: CertPair
    """The CA behind every certificate (serving, client, kubelet)."""
    admin_kubeconfig: Path
    """A kubeconfig for kubernetes-admin in group system:masters."""
    kubelet_client: CertPair
    """The client certificate the API server presents to kubelets."""
    versions: Versions
    pids: dict[str, int] = field(default_factory=dict)
    """Component name -> process id."""
    logs: dict[str, Path] = field(default_factory=dict)
    """Component name -> log file ("audit": the audit log, with Options.audit_users)."""

    @property
    def pki(self) -> Path:
        """Where certificates and keys are written."""
        return self.dir / "pki"

    def kubeconfig(self, user: str, *, group: str | None = None) -> Path:
        """A kubeconfig for `user` (client certificate CN), in `group` (O) if given.

        The user has no rights until RBAC grants some; system:authenticated's
        discovery and self-review rights apply as in any cluster.
        """
        pair = issue(self.ca, self.pki, f"user-{user}", client=True, cn=user, org=group)
        return write_kubeconfig(self.dir / f"{user}.kubeconfig", self.server, self.ca, pair, user)

    def serving_cert(self, name: str, ips: Sequence[str]) -> CertPair:
        """A serving certificate for a node's kubelet endpoint, one the API server trusts."""
        return issue(self.ca, self.pki, f"serving-{name}", ips=ips, dns=[name])

    def api(self, method: str, path: str, body: Any = None, *,
            content_type: str = "application/json") -> tuple[int, Any]:
        """One request as kubernetes-admin: (status, parsed JSON or text)."""
        return _request(self.server, _client_context(self.ca, self._admin_pair()),
                        method, path, body, content_type)

    def _admin_pair(self) -> CertPair:
        return CertPair(cert=self.pki / "admin.crt", key=self.pki / "admin.key")


def write_kubeconfig(path: Path, server: str, ca: CertPair, client: CertPair, user: str) -> Path:
    """A kubeconfig with everything embedded (moving it keeps it valid), mode 0600."""
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    doc = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "migrate-test", "cluster": {
            "server": server, "certificate-authority-data": b64(ca.cert)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)}}],
        "contexts": [{"name": user, "context": {"cluster": "migrate-test", "user": user}}],
        "current-context": user,
    }
    return write_private(path, yaml.safe_dump(doc, sort_keys=False).encode())


def _client_context(ca: CertPair, client: CertPair | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def _request(base: str, ctx: ssl.SSLContext | None, method: str, path: str,
             body: Any = None, content_type: str = "application/json",
             timeout: float = 10.0) -> tuple[int, Any]:
    scheme, _, hostport = base.partition("://")
    host, _, port = hostport.rpartition(":")
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read().decode(errors="replace")
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def _answers(base: str, ctx: ssl.SSLContext | None, path: str) -> bool:
    try:
        status, _ = _request(base, ctx, "GET", path, timeout=3.0)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


@dataclass(frozen=True)
class _Pki:
    ca: CertPair
    apiserver: CertPair
    kubelet_client: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    components_serving: CertPair
    front_proxy_ca: CertPair
    front_proxy_client: CertPair
    sa_key: Path
    sa_pub: Path


def _make_pki(d: Path) -> _Pki:
    d.mkdir(mode=0o700)
    # RSA, as kubeadm issues it (encryptionAlgorithm RSA-2048 by default). The API
    # server verifies a client certificate's chain on every request
    # (authentication/request/x509): with an EC P-256 CA that verification was 8.5%
    # of its CPU in the drain benchmark; an RSA-2048 signature verifies in less than
    # half the time (34 against 79 us, Go 1.26 here).
    ca = make_ca(d, "ca", rsa_bits=2048)
    sa = ec.generate_private_key(ec.SECP256R1())
    sa_key = write_private(d / "sa.key", sa.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    # --service-account-key-file reads public keys only (ECDSA ones too).
    sa_pub = write_private(d / "sa.pub", sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    # The aggregation layer's own CA, as kubeadm has it: the controller manager
    # and scheduler read it from kube-system/extension-apiserver-authentication
    # and complain every few seconds while it is missing.
    front_proxy_ca = make_ca(d, "front-proxy-ca")
    svc = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
           "kubernetes.default.svc.cluster.local", "localhost"]
    return _Pki(
        ca=ca,
        apiserver=issue(ca, d, "apiserver", dns=svc, ips=[LOOPBACK, _SERVICE_IP]),
        kubelet_client=issue(ca, d, "apiserver-kubelet-client", client=True,
                             cn="kube-apiserver-kubelet-client", org="kubeadm:cluster-admins"),
        admin=issue(ca, d, "admin", client=True, cn="kubernetes-admin", org="system:masters"),
        controller_manager=issue(ca, d, "controller-manager", client=True,
                                 cn="system:kube-controller-manager"),
        scheduler=issue(ca, d, "scheduler", client=True, cn="system:kube-scheduler"),
        components_serving=issue(ca, d, "components-serving", dns=["localhost"], ips=[LOOPBACK]),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=issue(front_proxy_ca, d, "front-proxy-client", client=True),
        sa_key=sa_key,
        sa_pub=sa_pub,
    )


def _seconds(value: float) -> str:
    return f"{int(value * 1000)}ms"


def _env(home: Path) -> dict[str, str]:
    # No proxy variables: the API server's kubelet transport honours HTTPS_PROXY,
    # and node hosts must be dialled directly.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C"}


class _Launch:
    """The start-up sequence; `procs` holds whatever has been started so far."""

    def __init__(self, d: Path, options: Options) -> None:
        self.d, self.options = d, options
        self.bins = binaries()
        self.procs: list[procs.Proc] = []
        self.env = _env(d)
        (d / "logs").mkdir(mode=0o700)

    def start(self, name: str, args: list[str]) -> procs.Proc:
        p = procs.spawn(name, [self.bins[name], *args], self.d / "logs" / f"{name}.log",
                        env=self.env, cwd=self.d)
        self.procs.append(p)
        return p

    def wait(self, what: str, base: str, ctx: ssl.SSLContext | None, *paths: str) -> None:
        procs.wait_until(lambda: all(_answers(base, ctx, p) for p in paths),
                         timeout=self.options.ready_timeout, what=what, watch=self.procs)

    def etcd(self) -> str:
        client, peer = free_port(), free_port()
        data = self.d / "etcd"
        data.mkdir(mode=0o700)
        url = f"http://{LOOPBACK}:{client}"
        peer_url = f"http://{LOOPBACK}:{peer}"
        self.start("etcd", [
            "--name=test", f"--data-dir={data}", f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}", f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=test={peer_url}",
            # A test cluster's data dies with it: no fsync, a small backend.
            "--unsafe-no-fsync", "--quota-backend-bytes=2147483648", "--log-level=warn",
        ])
        self.wait("etcd", url, None, "/readyz")
        return url

    def apiserver(self, pki: _Pki, etcd_url: str) -> str:
        port = free_port()
        self.start("kube-apiserver", [
            f"--etcd-servers={etcd_url}", f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}", f"--secure-port={port}",
            # Endpoints may not hold a loopback address, so the `kubernetes`
            # Service gets none (nothing here dials it: no kube-proxy, no pods).
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki.apiserver.cert}", f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}", "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={_ISSUER}", f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={pki.kubelet_client.cert}",
            f"--kubelet-client-key={pki.kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            # Node agents report InternalIP only; say so rather than rely on the
            # default order, which asks for Hostname first.
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            "--allow-privileged=true", "--profiling=false", f"-v={self.options.verbosity}",
            *self.audit(),
        ])
        server = f"https://{LOOPBACK}:{port}"
        ctx = _client_context(pki.ca, pki.admin)
        self.wait("kube-apiserver /readyz and /livez", server, ctx, "/readyz", "/livez")
        return server

    def audit(self) -> list[str]:
        """The audit flags for Options.audit_users: metadata of their requests, once each."""
        users = self.options.audit_users
        if not users:
            return []
        policy = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                  # One event per request: a watch's ResponseStarted would count it twice.
                  "omitStages": ["RequestReceived", "ResponseStarted"],
                  "rules": [{"level": "Metadata", "users": list(users)}, {"level": "None"}]}
        path = write_private(self.d / "audit-policy.yaml", yaml.safe_dump(policy).encode())
        return [f"--audit-policy-file={path}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json", "--audit-log-mode=blocking"]

    @property
    def audit_log(self) -> Path:
        return self.d / "logs" / "audit.log"

    def controllers(self, pki: _Pki, server: str) -> None:
        o = self.options
        cm_cfg = write_kubeconfig(self.d / "controller-manager.kubeconfig", server, pki.ca,
                                  pki.controller_manager, "system:kube-controller-manager")
        sched_cfg = write_kubeconfig(self.d / "scheduler.kubeconfig", server, pki.ca,
                                     pki.scheduler, "system:kube-scheduler")
        cm_port, sched_port = free_port(), free_port()

        def common(cfg: Path, port: int) -> list[str]:
            return [f"--kubeconfig={cfg}", f"--authentication-kubeconfig={cfg}",
                    f"--authorization-kubeconfig={cfg}", f"--bind-address={LOOPBACK}",
                    f"--secure-port={port}", f"--tls-cert-file={pki.components_serving.cert}",
                    f"--tls-private-key-file={pki.components_serving.key}",
                    "--leader-elect=false", f"-v={o.verbosity}"]

        self.start("kube-controller-manager", [
            *common(cm_cfg, cm_port), "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--node-monitor-period={_seconds(o.node_monitor_period)}",
            f"--node-monitor-grace-period={_seconds(o.node_monitor_grace_period)}",
            f"--node-startup-grace-period={_seconds(o.node_startup_grace_period)}",
        ])
        self.start("kube-scheduler", common(sched_cfg, sched_port))
        ctx = _client_context(pki.ca, None)
        self.wait("kube-controller-manager /healthz", f"https://{LOOPBACK}:{cm_port}", ctx,
                  "/healthz")
        self.wait("kube-scheduler /readyz", f"https://{LOOPBACK}:{sched_port}", ctx, "/readyz")
        admin = _client_context(pki.ca, pki.admin)
        self.wait("the service-account controller (ServiceAccount default/default)", server,
                  admin, "/api/v1/namespaces/default/serviceaccounts/default")
        # kubeadm binds the group of the API server's kubelet client certificate to
        # cluster-admin: kubelets authorize its proxied requests with SubjectAccessReviews.
        status, body = _request(server, admin, "POST",
                                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                                    "metadata": {"name": "kubeadm:cluster-admins"},
                                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                "kind": "ClusterRole", "name": "cluster-admin"},
                                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io",
                                                  "kind": "Group",
                                                  "name": "kubeadm:cluster-admins"}]})
        if status != 201:
            raise RuntimeError(f"binding kubeadm:cluster-admins: {status} {body}")


@contextlib.contextmanager
def control_plane(directory: Path | None = None,
                  options: Options = Options()) -> Iterator[ControlPlane]:
    """Start the control plane, yield it, stop it (whatever happens in the with-block).

    directory: where its data goes (created 0700; must not exist yet); default a
    temporary directory, removed afterwards. A given directory is kept, logs and all.
    Raises RuntimeError when binaries are missing or a component fails to start
    (with the end of its log).
    """
    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
    owned = directory is None
    d = Path(tempfile.mkdtemp(prefix="migrate-cp-")) if directory is None else directory
    if not owned:
        d.mkdir(mode=0o700, parents=True)
    os.chmod(d, 0o700)
    launch = _Launch(d, options)
    try:
        pki = _make_pki(d / "pki")
        server = launch.apiserver(pki, launch.etcd())
        admin_cfg = write_kubeconfig(d / "admin.kubeconfig", server, pki.ca, pki.admin,
                                     "kubernetes-admin")
        launch.controllers(pki, server)
        yield ControlPlane(
            dir=d, server=server, ca=pki.ca, admin_kubeconfig=admin_cfg,
            kubelet_client=pki.kubelet_client, versions=versions(),
            pids={p.name: p.pid for p in launch.procs},
            logs={**{p.name: p.log for p in launch.procs},
                  **({"audit": launch.audit_log} if options.audit_users else {})},
        )
    finally:
        # Reverse order: the API server goes before etcd, so it does not spend
        # its grace period retrying a vanished store.
        procs.stop(list(reversed(launch.procs)), options.stop_grace)
        if owned:
            shutil.rmtree(d, ignore_errors=True)
