"""A node agent on the real control plane, as KWOK runs one: a simulated kubelet and
runtime (e2e/nodes) that is a client of the real API server.

Per node it registers the Node (its node host's 198.18 address as InternalIP,
the kubelet port in daemonEndpoints, capacity, labels, the runtime from its
NodeConfig), renews its Lease in kube-node-lease every LEASE_INTERVAL
seconds, watches the pods bound to it (nodeapi.py), runs them through the
kubelet's code (pulls, restores, Events, status, graceful deletion confirmed
with a grace-0 delete), and serves the kubelet API over HTTPS on the node's
address: checkpoint, containerLogs, pods, healthz.

Where things run, and why:

- The agent is threads of the process that starts it (a test session, the
  drain benchmark), in the host's network namespace. From there it reaches the API server
  and the registries on 127.0.0.1 (a node pulls from them), and tests change
  its NodeConfig or hold its checkpoints with method calls.
- Its kubelet API listens inside its node host's namespace (nodehost.py), on
  the node's address, port 10250: the API server's node proxy refuses loopback
  (e2e/cluster/__init__.py) and reaches this address over the veth pair. The
  listening socket is made by a short-lived thread that enters the namespace
  (setns(2) moves only the calling thread) and keeps that namespace for its
  whole life, so the server's threads accept on it from the host's namespace.
  Every node has a namespace of its own, so each can listen on 10250.
- Containers that really run (the tool's image, toolrun.py) are processes in
  the host's namespace too: they reach the API server at 127.0.0.1, as a pod
  reaches `kubernetes.default`.

The kubelet API authenticates client certificates signed by the cluster CA
(the API server presents its kubelet client certificate) and authorizes each
request with a SubjectAccessReview, as a kubelet with `--authorization-mode
Webhook` does (answers cached: allowed 5 min, denied 30 s, its defaults).
Bearer tokens (TokenReview) are not served: nothing here uses them.

The agent runs as a cluster admin (a client certificate in system:masters),
like KWOK's controller, not with a node's credentials: the Node authorizer
and NodeRestriction do not apply to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from e2e.cluster.kubeclient import KubeClient
from e2e.cluster.nodeapi import ClusterNodeApi
from e2e.cluster.nodehost import NodeHost
from e2e.nodes.api import ApiFailure, Gone
from e2e.nodes.checkpoints import CHECKPOINT_DIR
from e2e.nodes.https import HttpsServer
from e2e.nodes.images import RegistryConfig
from e2e.nodes.kubelet import KUBELET_PORT, Kubelet
from e2e.nodes.kubelet_api import KubeletApi
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.protocol import Attributes, Decision
from e2e.nodes.runs import ContainerProcess
from e2e.services.pki import CertPair

__all__ = ["ApiServerAuthorizer", "NodeAgent", "listen_in"]

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
#: The kubelet's nodeLeaseDurationSeconds.
LEASE_DURATION = 40
#: Seconds between Lease renewals: well inside the launcher's node-monitor grace
#: period (6 s), with room for a busy machine.
LEASE_INTERVAL = 1.0
#: A pass over the node's pods at least this often (seconds), whatever happens.
RESYNC_SECONDS = 10.0
_IMAGE_STORAGE = "var/lib/containers/storage"


def listen_in(netns: Path, address: str, port: int) -> socket.socket:
    """A TCP socket listening on address:port inside network namespace `netns`."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_listen() -> None:
        # This thread alone moves into the namespace, and ends there.
        try:
            fd = os.open(netns, os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(128)
            made.append(sock)
        except BaseException as e:  # handed to the caller's thread
            failed.append(e)

    thread = threading.Thread(target=enter_and_listen, name=f"listen-{address}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


class ApiServerAuthorizer:
    """A kubelet's webhook authorizer: SubjectAccessReviews to the API server."""

    ALLOWED_TTL, DENIED_TTL = 300.0, 30.0

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._cache: dict[tuple[object, ...], tuple[float, Decision]] = {}
        self._lock = threading.Lock()

    def __call__(self, attrs: Attributes) -> Decision:
        key = (attrs.user, attrs.verb, attrs.resource, attrs.subresource, attrs.name)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": attrs.user.name, "groups": list(attrs.user.groups),
                           "resourceAttributes": {
                               "verb": attrs.verb, "resource": attrs.resource,
                               "subresource": attrs.subresource, "name": attrs.name}}}
        try:
            status = self.client.request(
                "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                review).get("status") or {}
        except ApiFailure as e:  # the kubelet denies what it cannot ask about
            return Decision(False, reason=f"cannot ask the API server: {e}")
        decision = Decision(bool(status.get("allowed")), bool(status.get("denied")),
                            str(status.get("reason") or ""))
        ttl = self.ALLOWED_TTL if decision.allowed else self.DENIED_TTL
        with self._lock:
            self._cache[key] = (time.monotonic() + ttl, decision)
        return decision


class NodeAgent:
    """One node of the real control plane, on node host `host`.

    client: the agent's API client (a cluster admin's).
    serving: the kubelet API's certificate (IP SAN: the node's address); ca: the
        CA its clients' certificates must come from.
    root: the node's files on this machine (var/lib/kubelet/checkpoints, pulled
        images, pod logs), DIR/nodes/NODE.
    index: the node's number (pod IPs 10.88.INDEX.x).
    log: where the agent tells what it does.
    Other arguments: e2e/nodes/kubelet.py's Kubelet.
    """

    def __init__(self, client: KubeClient, host: NodeHost, index: int, root: Path, *,
                 serving: CertPair, ca: CertPair, config: NodeConfig | None,
                 registries: RegistryConfig, process: ContainerProcess,
                 start_latency: float, stop_latency: float, kubelet_version: str,
                 log: Callable[[str], None]) -> None:
        self.client = client
        self.host = host
        self.node = host.name
        self.root = root
        self._log = log
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.api = ClusterNodeApi(client, self.node, changed=self._wake.set, log=log)
        self.kubelet = Kubelet(self.api, self.node, index, start_latency=start_latency,
                               stop_latency=stop_latency, config=config, log=log,
                               registries=registries, storage=root / _IMAGE_STORAGE,
                               process=process, address=host.address,
                               kubelet_version=kubelet_version)
        self.kubelet.wake = self._wake.set
        self.kubelet_api = KubeletApi(
            self.kubelet, self.checkpoint_dir, pod_logs=root / "var/log/pods",
            authorizer=ApiServerAuthorizer(client), log=log)
        self._serving, self._ca = serving, ca
        self._server: HttpsServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def checkpoint_dir(self) -> Path:
        """The node's /var/lib/kubelet/checkpoints on this machine."""
        return self.root / CHECKPOINT_DIR.lstrip("/")

    @property
    def kubelet_url(self) -> str:
        """`https://ADDRESS:10250`: the kubelet API, reached from the host over the veth."""
        return f"https://{self.host.address}:{KUBELET_PORT}"

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Serve the kubelet API, register the Node, start the watch, the Lease and the
        kubelet's loop; returns once the first list of the node's pods is in."""
        for d in (self.checkpoint_dir, self.root / "var/log/pods"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        listening = listen_in(self.host.netns, self.host.address, KUBELET_PORT)
        self._server = HttpsServer(
            self.kubelet_api.handle, self._serving, client_ca=self._ca.cert,
            listening=listening, log=self.root / "var/log/kubelet.log",
            name=f"kubelet-{self.node}")
        self._server.start()
        self.kubelet.register()
        for target, name in ((self.api.run_pod_watch, "watch"), (self._renew_lease, "lease"),
                             (self._loop, "loop")):
            thread = threading.Thread(target=target, args=(self._stop,),
                                      name=f"agent-{self.node}-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        if not self.api.synced.wait(60):
            raise RuntimeError(f"node agent {self.node}: no list of its pods after 60 s")

    def begin_stop(self) -> None:
        """Tell every thread to end (stop() waits for them)."""
        self._stop.set()
        self._wake.set()
        self.api.stop_watch()
        self.kubelet_api.abort()

    def stop(self) -> None:
        """Stop serving, stop every thread and the kubelet's workers (idempotent).
        The Node and its pods stay in the API (the caller removes them)."""
        self.begin_stop()
        if self._server is not None:
            self._server.stop()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=RESYNC_SECONDS + 20)
        self._threads = []
        self.kubelet.stop()

    # -- threads -------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        """The kubelet's passes: on every change of its pods, on wake(), on its timers."""
        while not stop.is_set():
            self._wake.clear()
            timeout: float | None
            try:
                self.kubelet.reconcile()
                timeout = self.kubelet.next_wakeup()
            except ApiFailure as e:
                self._log(f"kubelet-{self.node}: pass failed: {e}")
                timeout = 1.0
            except Exception:  # a bug must not kill the loop silently
                self._log(f"kubelet-{self.node}: pass failed: {traceback.format_exc()}")
                timeout = 1.0
            self._wake.wait(RESYNC_SECONDS if timeout is None else min(timeout, RESYNC_SECONDS))

    def _renew_lease(self, stop: threading.Event) -> None:
        """kube-node-lease/NODE: created once, its renewTime moved every interval; and
        the node status (the images held) on the same beat, as the kubelet's defaults
        have them both every 10 s (renewInterval, nodeStatusUpdateFrequency)."""
        path = f"{_LEASES}/{self.node}"
        lease = None
        while not stop.is_set():
            try:
                lease = self._renewed(path, lease)
            except ApiFailure as e:
                self._log(f"kubelet-{self.node}: lease: {e}")
                lease = None
            try:
                self.kubelet.update_node_status()
            except ApiFailure as e:
                self._log(f"kubelet-{self.node}: node status: {e}")
            stop.wait(LEASE_INTERVAL)

    def _renewed(self, path: str, lease: dict[str, object] | None) -> dict[str, object]:
        renew = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime
        if lease is None:
            with contextlib.suppress(Gone):
                lease = self.client.request("GET", path)
        if lease is None:
            node = self.client.request("GET", f"/api/v1/nodes/{self.node}")
            return self.client.request("POST", _LEASES, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node, "namespace": "kube-node-lease",
                             # As the kubelet sets it: the Lease goes with its Node.
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                                  "name": self.node,
                                                  "uid": node["metadata"]["uid"]}]},
                "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_DURATION,
                         "renewTime": renew}})
        spec = lease.setdefault("spec", {})
        assert isinstance(spec, dict)
        spec["renewTime"] = renew
        return self.client.request("PUT", path, lease)
