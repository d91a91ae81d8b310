"""The `kubernetes` Service for pods on the real nodes: real kube-proxy, and a way in.

    with api_for_pods(cp, host.host_address), kube_proxy(cp, root / "kube-proxy"):
        ...  # a pod's in-cluster client reaches https://198.19.0.1:443, the API server

A pod's in-cluster configuration dials the `kubernetes` Service's ClusterIP
(KUBERNETES_SERVICE_HOST, launcher.SERVICE_CIDR's first address). kube-proxy
(k8s.io/kubernetes/cmd/kube-proxy, built by scripts/setup-stretch at the
control plane's release) turns that into a DNAT to the Service's endpoint, in
nftables mode: tables `ip kube-proxy` and `ip6 kube-proxy`, host-wide (both
real nodes share the host's network namespace, so one kube-proxy serves them).

The endpoint is what a control plane on loopback cannot give: the API server
advertises 127.0.0.1, its endpoint reconciler writes no endpoint for a loopback
address, and a DNAT from a pod to 127.0.0.1 is dropped as martian. So
`api_for_pods` stands in for the network between pods and the control plane:
a TCP relay on a 198.18 address of this host (pods route to 198.18/16,
realnode.py) to the API server's port, bytes as they are (TLS end to end; the
serving certificate names 198.19.0.1), and an EndpointSlice for the Service
naming that relay, with a manager of its own so that no controller takes it.

kube-proxy runs as user system:kube-proxy (the bootstrap binding
system:node-proxier grants what it reads), its health and metrics servers on
free loopback ports, conntrack settings left as the host has them, NodePorts
only on 198.18/16 (there are none). Teardown: `kube-proxy --cleanup` removes
its tables.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

from e2e.cluster import nodehost, procs
from e2e.cluster.launcher import ControlPlane
from e2e.services.addresses import free_port

__all__ = ["api_for_pods", "kube_proxy"]

_SLICE = "kubernetes-for-pods"
_CHUNK = 65536


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _relay(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # closed: the relay is done
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


@contextlib.contextmanager
def api_for_pods(cp: ControlPlane, address: str) -> Iterator[tuple[str, int]]:
    """Relay `address`:PORT to the API server and make it the `kubernetes` Service's
    endpoint; yields (address, PORT). `address` must be one this host holds."""
    host, _, port = cp.server.removeprefix("https://").rpartition(":")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen(64)
    relay = (address, int(listener.getsockname()[1]))
    threading.Thread(target=_relay, args=(listener, (host, int(port))), daemon=True).start()
    path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    status, body = cp.api("POST", path, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": _SLICE, "labels": {
            "kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "migrate-test"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [relay[0]], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": relay[1], "protocol": "TCP"}]})
    try:
        if status != 201:
            raise RuntimeError(f"EndpointSlice {_SLICE}: {status} {body}")
        yield relay
    finally:
        cp.api("DELETE", f"{path}/{_SLICE}")
        listener.close()


def _synced(service_ip: str) -> bool:
    out = subprocess.run(["nft", "list", "table", "ip", "kube-proxy"], capture_output=True,
                         text=True, timeout=30, check=False).stdout
    return f"{service_ip} . tcp . 443" in out and "dnat to" in out


@contextlib.contextmanager
def kube_proxy(cp: ControlPlane, root: Path, *, binary: Path, node: str,
               service_ip: str, timeout: float = 120.0) -> Iterator[None]:
    """Run kube-proxy (nftables mode) until its rules route `service_ip`:443; stop it
    and remove its tables afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(cp.kubeconfig("system:kube-proxy"))},
        "mode": "nftables", "hostnameOverride": node, "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "nodePortAddresses": [str(nodehost.NODE_HOSTS)],
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s", "udpTimeout": "0s",
                      "udpStreamTimeout": "0s"}}))
    proc = procs.spawn("kube-proxy", [binary, "--config", config, "-v", "2"],
                       root / "kube-proxy.log",
                       env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
    try:
        procs.wait_until(lambda: _synced(service_ip), timeout=timeout,
                         what="kube-proxy's rules for the kubernetes Service", watch=[proc])
        yield
    finally:
        procs.stop([proc], grace=15)
        subprocess.run([str(binary), "--cleanup"], capture_output=True, timeout=60,
                       check=False)
