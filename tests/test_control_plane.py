"""The real control plane (e2e/cluster) works as Kubernetes does, for kubectl and the official client.

Each test uses its own namespace; nodes are created by the tests (no node agent
runs yet) and deleted afterwards, so pods stay Pending unless a test adds a Node.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster import binaries, nodehost, procs
from e2e.cluster.launcher import ControlPlane, Options
from e2e.services.registry import free_port
from tests.cluster import Kubectl, api_client, require_cluster, wait_for

pytestmark = pytest.mark.controlplane

REPO = Path(__file__).resolve().parent.parent
NODE_LEASES = "kube-node-lease"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- versions and clients ----------------------------------------------------------------


def _gomodcache() -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=False)
    return Path(out.stdout.strip())


def test_go_mod_pins_one_release() -> None:
    """go.mod's replace lines name the staging modules of the same release, every one
    that k8s.io/kubernetes requires, and etcd is the server release Kubernetes requires."""
    v = binaries.versions()
    assert (v.kubernetes, v.etcd, v.staging) == ("v1.37.2", "v3.7.0", "v0.37.2")
    text = binaries.GO_MOD.read_text()
    replaced = dict(re.findall(r"^\s*(k8s\.io/[\w-]+) => \1 (v\S+)$", text, re.M))
    assert set(replaced.values()) == {v.staging}
    upstream = _gomodcache() / "cache/download/k8s.io/kubernetes/@v" / f"{v.kubernetes}.mod"
    require_cluster(None if upstream.is_file() else
                    f"{upstream} is not downloaded: {binaries.SETUP_HINT}")
    theirs = upstream.read_text()
    staging = set(re.findall(r"^\s*(k8s\.io/[\w-]+) v0\.0\.0$", theirs, re.M))
    assert staging == set(replaced)
    etcd = re.search(r"^\s*go\.etcd\.io/etcd/server/v3 (v\S+)", theirs, re.M)
    assert etcd is not None and etcd.group(1) == v.etcd


def test_server_is_the_pinned_release(real_cp: ControlPlane, cp_kubectl: Kubectl,
                                      cp_admin: client.ApiClient) -> None:
    """kubectl and the official client both see the release go.mod pins."""
    out = cp_kubectl(real_cp.admin_kubeconfig, "version", "-o", "json", check=False)
    assert json.loads(out.stdout)["serverVersion"]["gitVersion"] == binaries.versions().kubernetes
    info = client.VersionApi(cp_admin).get_code()
    assert (info.git_version, info.major, info.minor) == ("v1.37.2", "1", "37")
    assert real_cp.api("GET", "/version")[1]["gitVersion"] == "v1.37.2"


def test_deployment_makes_a_replicaset_and_pending_pods(
        real_cp: ControlPlane, cp_kubectl: Kubectl, cp_admin: client.ApiClient,
        cp_namespace: str) -> None:
    """kubectl apply -> the Deployment controller's ReplicaSet -> its Pods, unscheduled."""
    ns = cp_namespace
    cp_kubectl(real_cp.admin_kubeconfig, "apply", "-n", ns, "-f", "-", input=_DEPLOYMENT)
    apps, core = client.AppsV1Api(cp_admin), client.CoreV1Api(cp_admin)
    rs = wait_for(lambda: apps.list_namespaced_replica_set(ns).items, what="a ReplicaSet")[0]
    assert [(o.kind, o.name) for o in rs.metadata.owner_references] == [("Deployment", "web")]

    def pods() -> list[Any]:
        items = core.list_namespaced_pod(ns, label_selector="app=web").items
        return items if len(items) == 2 else []

    for pod in wait_for(pods, what="two pods"):
        assert pod.metadata.owner_references[0].name == rs.metadata.name
        assert pod.status.phase == "Pending"
        assert pod.spec.node_name is None
        assert pod.spec.service_account_name == "default"  # the ServiceAccount admission
    # The scheduler saw them and found no node.
    def unschedulable() -> bool:
        return all(any(c.type == "PodScheduled" and c.reason == "Unschedulable"
                       for c in p.status.conditions or ())
                   for p in core.list_namespaced_pod(ns).items)

    wait_for(unschedulable, what="PodScheduled=False/Unschedulable")
    got = cp_kubectl(real_cp.admin_kubeconfig, "get", "deploy", "web", "-n", ns, "-o",
                     "jsonpath={.status.replicas}/{.status.readyReplicas}")
    assert got.stdout == "2/"


def test_pdb_status_comes_from_the_disruption_controller(
        real_cp: ControlPlane, cp_kubectl: Kubectl, cp_admin: client.ApiClient,
        cp_namespace: str) -> None:
    """A PDB over two pending pods: expected 2, healthy 0, no disruption allowed."""
    ns = cp_namespace
    cp_kubectl(real_cp.admin_kubeconfig, "apply", "-n", ns, "-f", "-", input=_DEPLOYMENT)
    policy = client.PolicyV1Api(cp_admin)
    policy.create_namespaced_pod_disruption_budget(ns, client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1PodDisruptionBudgetSpec(
            min_available=1, selector=client.V1LabelSelector(match_labels={"app": "web"}))))

    def status() -> Any:
        s = policy.read_namespaced_pod_disruption_budget("web", ns).status
        return s if s is not None and s.expected_pods == 2 else None

    s = wait_for(status, what="the PDB's status")
    assert (s.current_healthy, s.desired_healthy, s.disruptions_allowed) == (0, 1, 0)


def test_rbac_denies_then_allows_a_restricted_user(
        real_cp: ControlPlane, cp_kubectl: Kubectl, cp_namespace: str) -> None:
    """bob may do nothing until a Role and RoleBinding say so; kubectl auth can-i agrees."""
    ns, admin = cp_namespace, real_cp.admin_kubeconfig
    bob = real_cp.kubeconfig("bob", group="team-a")
    denied = cp_kubectl(bob, "get", "pods", "-n", ns, check=False)
    assert denied.returncode == 1
    assert (f'Error from server (Forbidden): pods is forbidden: User "bob" cannot list '
            f'resource "pods" in API group "" in the namespace "{ns}"') in denied.stderr.splitlines()
    no = cp_kubectl(bob, "auth", "can-i", "list", "pods", "-n", ns, check=False)
    assert (no.returncode, no.stdout.strip()) == (1, "no")
    with pytest.raises(ApiException) as e:
        client.CoreV1Api(api_client(bob)).list_namespaced_pod(ns)
    assert e.value.status == 403

    cp_kubectl(admin, "create", "role", "pod-reader", "-n", ns, "--verb=get,list,watch",
               "--resource=pods")
    cp_kubectl(admin, "create", "rolebinding", "bob-reads", "-n", ns, "--role=pod-reader",
               "--group=team-a")
    wait_for(lambda: cp_kubectl(bob, "auth", "can-i", "list", "pods", "-n", ns,
                                check=False).stdout.strip() == "yes", what="can-i yes")
    assert client.CoreV1Api(api_client(bob)).list_namespaced_pod(ns).items == []
    # The grant is exactly what the Role says: not delete, not another namespace.
    assert cp_kubectl(bob, "auth", "can-i", "delete", "pods", "-n", ns,
                      check=False).stdout.strip() == "no"
    assert cp_kubectl(bob, "auth", "can-i", "list", "pods", "-n", "default",
                      check=False).stdout.strip() == "no"
    as_admin = cp_kubectl(admin, "auth", "can-i", "list", "pods", "-n", ns, "--as=bob",
                          "--as-group=team-a")
    assert as_admin.stdout.strip() == "yes"


def test_garbage_collector_deletes_dependents(
        real_cp: ControlPlane, cp_kubectl: Kubectl, cp_admin: client.ApiClient,
        cp_namespace: str) -> None:
    """Deleting a Deployment (background propagation) removes its ReplicaSet and Pods."""
    ns = cp_namespace
    cp_kubectl(real_cp.admin_kubeconfig, "apply", "-n", ns, "-f", "-", input=_DEPLOYMENT)
    apps, core = client.AppsV1Api(cp_admin), client.CoreV1Api(cp_admin)
    wait_for(lambda: len(core.list_namespaced_pod(ns).items) == 2, what="two pods")
    apps.delete_namespaced_deployment("web", ns, propagation_policy="Background")
    wait_for(lambda: not apps.list_namespaced_replica_set(ns).items
             and not core.list_namespaced_pod(ns).items, what="the garbage collector")
    # An owner reference by hand: a ConfigMap owned by another goes with it.
    owner = core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                  uid=owner.metadata.uid)
    core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref])))
    core.delete_namespaced_config_map("owner", ns)
    wait_for(lambda: "dependent" not in {c.metadata.name for c in
                                         core.list_namespaced_config_map(ns).items},
             what="the dependent ConfigMap's deletion")


# --- nodes -------------------------------------------------------------------------------


class Nodes:
    """Node objects made by a test (as a node agent will: Node, status, Lease); deleted after."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.names: list[str] = []

    def add(self, name: str, address: str = "198.18.255.254", port: int = 10250,
            lease: bool = True) -> None:
        self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
            name=name, labels={"kubernetes.io/hostname": name})))
        self.names.append(name)
        now = _now().isoformat()
        resources = {"cpu": "4", "memory": "8Gi", "pods": "110"}
        self.core.patch_node_status(name, {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "test node", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": address}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "capacity": resources, "allocatable": resources}})
        if lease:
            self.coord.create_namespaced_lease(NODE_LEASES, client.V1Lease(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1LeaseSpec(holder_identity=name, lease_duration_seconds=40,
                                        renew_time=_now())))

    def renew(self, name: str) -> None:
        """What a kubelet does every 10 s (here: whenever a test polls)."""
        lease = self.coord.read_namespaced_lease(name, NODE_LEASES)
        lease.spec.renew_time = _now()
        self.coord.replace_namespaced_lease(name, NODE_LEASES, lease)

    def ready(self, name: str) -> str:
        node = self.core.read_node(name)
        return next(c.status for c in node.status.conditions if c.type == "Ready")

    def delete_all(self) -> None:
        for name in self.names:
            for delete in (lambda n: self.core.delete_node(n),
                           lambda n: self.coord.delete_namespaced_lease(n, NODE_LEASES)):
                try:
                    delete(name)
                except ApiException as e:
                    if e.status != 404:
                        raise


@pytest.fixture
def nodes(cp_admin: client.ApiClient) -> Iterator[Nodes]:
    n = Nodes(cp_admin)
    yield n
    n.delete_all()


def test_scheduler_binds_a_pod_once_a_ready_node_exists(
        cp_admin: client.ApiClient, cp_namespace: str, nodes: Nodes) -> None:
    ns, core = cp_namespace, client.CoreV1Api(cp_admin)
    core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="solo"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))

    def scheduled_condition() -> Any:
        conds = core.read_namespaced_pod("solo", ns).status.conditions or []
        return next((c for c in conds if c.type == "PodScheduled"), None)

    cond = wait_for(scheduled_condition, what="the scheduler's first verdict")
    assert (cond.status, cond.reason) == ("False", "Unschedulable")
    assert core.read_namespaced_pod("solo", ns).spec.node_name is None

    node = f"node-{ns}"[:63]
    nodes.add(node)

    def bound() -> str | None:
        nodes.renew(node)
        return core.read_namespaced_pod("solo", ns).spec.node_name

    assert wait_for(bound, what="the binding") == node
    cond = scheduled_condition()
    assert cond.status == "True"


def test_a_renewed_lease_keeps_a_node_ready_and_a_silent_node_goes_unknown(
        cp_admin: client.ApiClient, nodes: Nodes) -> None:
    """The node lifecycle controller (grace period 6 s here) marks the silent node only."""
    suffix = os.urandom(3).hex()
    alive, silent = f"alive-{suffix}", f"silent-{suffix}"
    nodes.add(alive)
    nodes.add(silent, lease=False)
    start = _now()

    def silent_unknown() -> bool:
        nodes.renew(alive)
        return nodes.ready(silent) == "Unknown"

    wait_for(silent_unknown, what=f"{silent} Ready=Unknown")
    assert nodes.ready(alive) == "True"
    node = nodes.core.read_node(silent)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert (ready.reason, ready.message) == ("NodeStatusUnknown",
                                             "Kubelet stopped posting node status.")
    # Not before the grace period (conditions carry whole seconds: up to 1 s early).
    grace = Options().node_monitor_grace_period
    assert (ready.last_transition_time - start).total_seconds() >= grace - 1
    wait_for(lambda: any(t.key == "node.kubernetes.io/unreachable"
                         for t in nodes.core.read_node(silent).spec.taints or ()),
             what="the unreachable taint")
    assert not any(t.key.startswith("node.kubernetes.io/")
                   for t in nodes.core.read_node(alive).spec.taints or ())


# --- the node proxy ----------------------------------------------------------------------


@pytest.fixture
def standin(real_cp: ControlPlane, tmp_path: Path) -> Iterator[Callable[..., int]]:
    """start(address, host, cert_ip=address): run the kubelet stand-in on address (inside
    host if given), with a serving certificate for cert_ip."""
    started: list[procs.Proc] = []

    def start(address: str, host: nodehost.NodeHost | None, cert_ip: str | None = None) -> int:
        port = free_port()
        pair = real_cp.serving_cert(f"standin-{port}", [cert_ip or address])
        argv = [sys.executable, "-m", "e2e.cluster.kubelet_standin", "--address", address,
                "--port", str(port), "--cert", str(pair.cert), "--key", str(pair.key),
                "--ca", str(real_cp.ca.cert)]
        if host is None:
            env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
            proc = procs.spawn("standin", argv, tmp_path / "standin.log", env=env, cwd=REPO)
        else:
            proc = host.spawn("standin", argv)
        started.append(proc)
        procs.wait_until(lambda: _connects(address, port), timeout=30, what="the stand-in",
                         watch=[proc])
        return port

    yield start
    procs.stop(started, grace=5)


def _connects(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def test_node_proxy_refuses_a_loopback_node(
        real_cp: ControlPlane, cp_kubectl: Kubectl, nodes: Nodes,
        standin: Callable[..., int]) -> None:
    """The stand-in answers on 127.0.0.1, but the API server will not proxy there."""
    port = standin("127.0.0.1", None)
    node = f"loopback-{os.urandom(3).hex()}"
    nodes.add(node, address="127.0.0.1", port=port)
    r = cp_kubectl(real_cp.admin_kubeconfig, "get", "--raw",
                   f"/api/v1/nodes/{node}/proxy/healthz", check=False)
    assert r.returncode == 1
    assert "Error from server (BadRequest): address not allowed" in r.stderr.splitlines()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[nodehost.NodeHost]:
    require_cluster(nodehost.missing())
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    with nodehost.node_host("node-a", tmp_path, env=env) as h:
        yield h
    # Gone with the holder: the link and the address (node_host waited for it).
    assert h.host_link not in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                             text=True, check=True).stdout
    assert not os.path.exists(f"/proc/{h.holder.pid}")


def test_node_proxy_reaches_a_kubelet_in_a_node_host(
        real_cp: ControlPlane, cp_kubectl: Kubectl, nodes: Nodes,
        standin: Callable[..., int], host: nodehost.NodeHost, tmp_path: Path) -> None:
    """healthz and a checkpoint POST through /api/v1/nodes/N/proxy, TLS verified both ways."""
    assert host.address.startswith("198.18.")
    assert f"inet {host.address}/30" in host.run("ip", "-4", "-o", "addr", "show", "eth0").stdout
    port = standin(host.address, host)
    node = f"proxied-{os.urandom(3).hex()}"
    nodes.add(node, address=host.address, port=port)
    admin = real_cp.admin_kubeconfig
    ok = cp_kubectl(admin, "get", "--raw", f"/api/v1/nodes/{node}/proxy/healthz")
    assert ok.stdout == "ok"
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    r = cp_kubectl(admin, "create", "--raw",
                   f"/api/v1/nodes/{node}/proxy/checkpoint/default/web/app?timeout=20",
                   "-f", str(empty))
    items = json.loads(r.stdout)["items"]
    assert len(items) == 1
    assert items[0].startswith("/var/lib/kubelet/checkpoints/checkpoint-web_default-app-")
    peer = json.loads(cp_kubectl(admin, "get", "--raw",
                                 f"/api/v1/nodes/{node}/proxy/standin/peer").stdout)
    # The API server's --kubelet-client-certificate, as the kubelet sees it.
    assert peer["subject"] == {"commonName": ["kube-apiserver-kubelet-client"],
                               "organizationName": ["kubeadm:cluster-admins"]}
    assert peer["last_checkpoint"] == {"path": "/checkpoint/default/web/app",
                                       "query": "timeout=20",
                                       "client": ["kube-apiserver-kubelet-client"]}


def test_node_proxy_verifies_the_kubelet_serving_certificate(
        real_cp: ControlPlane, cp_kubectl: Kubectl, nodes: Nodes,
        standin: Callable[..., int], host: nodehost.NodeHost) -> None:
    """--kubelet-certificate-authority: a certificate for another address is refused."""
    port = standin(host.address, host, cert_ip="198.18.255.253")
    node = f"badcert-{os.urandom(3).hex()}"
    nodes.add(node, address=host.address, port=port)
    r = cp_kubectl(real_cp.admin_kubeconfig, "get", "--raw",
                   f"/api/v1/nodes/{node}/proxy/healthz", check=False)
    assert r.returncode == 1
    assert ("Error from server (ServiceUnavailable): error trying to reach service: tls: failed "
            f"to verify certificate: x509: certificate is valid for 198.18.255.253, not "
            f"{host.address}") in r.stderr.splitlines()


def test_node_proxy_rbac_get_and_create_are_separate(
        real_cp: ControlPlane, cp_kubectl: Kubectl, nodes: Nodes,
        standin: Callable[..., int], host: nodehost.NodeHost, tmp_path: Path) -> None:
    """nodes/proxy `get` allows GETs; a checkpoint POST needs `create` as well."""
    port = standin(host.address, host)
    node = f"rbac-{os.urandom(3).hex()}"
    nodes.add(node, address=host.address, port=port)
    admin, carol = real_cp.admin_kubeconfig, real_cp.kubeconfig(f"carol-{node}")
    user = f"carol-{node}"
    cp_kubectl(admin, "create", "clusterrole", f"proxy-get-{node}", "--verb=get",
               "--resource=nodes/proxy")
    cp_kubectl(admin, "create", "clusterrolebinding", f"proxy-get-{node}",
               f"--clusterrole=proxy-get-{node}", f"--user={user}")
    try:
        wait_for(lambda: cp_kubectl(carol, "get", "--raw", f"/api/v1/nodes/{node}/proxy/healthz",
                                    check=False).stdout == "ok", what="the get grant")
        empty = tmp_path / "empty.json"
        empty.write_text("{}")
        post = [f"/api/v1/nodes/{node}/proxy/checkpoint/default/web/app", "-f", str(empty)]
        r = cp_kubectl(carol, "create", "--raw", *post, check=False)
        assert r.returncode == 1
        assert (f'Error from server (Forbidden): nodes "{node}" is forbidden: User "{user}" '
                f'cannot create resource "nodes/proxy" in API group "" at the cluster scope'
                ) in r.stderr.splitlines()
    finally:
        cp_kubectl(admin, "delete", "clusterrolebinding,clusterrole", f"proxy-get-{node}")


# --- the launcher's processes ------------------------------------------------------------


def _launch(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen([sys.executable, "-m", "e2e.cluster", "--dir", str(tmp_path / "cp")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids: dict[str, int] = {}
    for line in proc.stdout:
        if line.strip() == "ready":
            break
        name, eq, pid = line.strip().partition("=")
        if eq and pid.isdigit():
            pids[name] = int(pid)
    else:
        pytest.fail(f"the launcher ended before ready: {proc.wait()} {proc.stderr.read()}")
    assert set(pids) == set(binaries.COMPONENTS)
    return proc, pids


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_launcher_leaves_no_process_behind(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM: the launcher stops every component. SIGKILL: the kernel kills them."""
    require_cluster(binaries.missing())
    proc, pids = _launch(tmp_path)
    assert not any(_gone(p) for p in pids.values())
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == (128 + sig if sig == signal.SIGTERM else -sig)
    wait_for(lambda: all(_gone(p) for p in pids.values()), timeout=30,
             what=f"components {pids} to exit")
    modes = {p: p.stat().st_mode & 0o777 for p in [tmp_path / "cp", tmp_path / "cp" / "pki"]}
    assert set(modes.values()) == {0o700}
    assert (tmp_path / "cp" / "admin.kubeconfig").stat().st_mode & 0o777 == 0o600


_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: app, image: busybox, command: [sleep, "3600"]}
"""
