"""The node agents' kubelet checkpoint API (e2e/nodes, e2e/cluster/agent.py), driven by
real clients through the real API server.

Checkpoints are requested the two ways a real cluster offers: through the API
server's node proxy (the official client, kubectl) and directly from a node's
kubelet with a client certificate. The archives they write are read back with
`migrate show/inspect/memparse`, run as the installed command, exactly as an
operator would on the node.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig
from e2e.nodes.checkpoints import CHECKPOINT_DIR, MEMORY_ANNOTATION, PROCESSES_ANNOTATION
from e2e.services.pki import issue, make_ca
from tests.cluster import Kubectl, api_client, node_agents, wait_for

REPO = Path(__file__).resolve().parent.parent
MIGRATE = REPO / ".venv" / "bin" / "migrate"
LIMITED_USER = "limited"
SECRET = "SIM_SECRET_7731"
DEADLINE = 30.0
PROXY_PATH = "/api/v1/nodes/{node}/proxy/checkpoint/{namespace}/{pod}/{container}"
ARCHIVE_NAME = r"checkpoint-{pod}_{namespace}-{container}-\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\.tar"

#: The cluster: one node per behaviour under test.
NODES = {
    "node-a": NodeConfig(),
    "node-gate-off": NodeConfig(checkpoint_gate=False),
    "node-no-criu": NodeConfig(restore_level="none"),
    "node-old-containerd": NodeConfig(runtime="containerd://1.7.22"),
    "node-not-ready": NodeConfig(ready=False),
    "node-faults": NodeConfig(runtime_request_timeout=0.2),
}


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), nodes=list(NODES),
                     node_config=NODES, start_latency=0.05, stop_latency=0.05) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kubelet_http(cluster: Cluster) -> Iterator[urllib3.PoolManager]:
    """A client of the kubelets with the API server's kubelet client certificate."""
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(cluster.ca.cert),
                               cert_file=str(cluster.kubelet_client.cert),
                               key_file=str(cluster.kubelet_client.key),
                               retries=False, timeout=DEADLINE)
    yield http
    http.clear()


_counter = iter(range(1_000_000))


def _pod(v1: client.CoreV1Api, node: str, *, annotations: dict[str, str] | None = None,
         labels: dict[str, str] | None = None, **spec: Any) -> str:
    """Create a pod bound to `node` (in `default`), wait for it Running; its name."""
    name = f"ck-{node.removeprefix('node-')}-{next(_counter)}"
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "ck"},
                     "annotations": annotations or {}},
        "spec": {"nodeName": node,
                 "containers": [{"name": "app", "image": "registry.example/team/web-server:1.4"}],
                 **spec},
    }
    v1.create_namespaced_pod("default", body)

    def running() -> bool:
        return bool(v1.read_namespaced_pod(name, "default").status.phase == "Running")

    wait_for(running, what=f"pod {name} Running")
    return name


def _proxy_checkpoint(api: client.ApiClient, node: str, pod: str, container: str = "app",
                      timeout: int | str | None = None, namespace: str = "default"
                      ) -> tuple[int, bytes, str]:
    """POST the checkpoint through the API server with the official client:
    (status, body, Content-Type), whatever the status."""
    method, url, headers, body, post = api.param_serialize(
        "POST", PROXY_PATH,
        path_params={"node": node, "namespace": namespace, "pod": pod, "container": container},
        query_params=[("timeout", str(timeout))] if timeout is not None else [],
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, body, post)
    data = response.read()
    return response.status, data, response.getheader("Content-Type") or ""


def _migrate(*args: str) -> Any:
    result = subprocess.run([str(MIGRATE), *args, "-o", "json"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def checkpoint_dir(cluster: Cluster, node: str) -> Path:
    return cluster.node_path(node, CHECKPOINT_DIR)


def _archive(cluster: Cluster, node: str, body: bytes, pod: str, container: str = "app") -> Path:
    """Check the kubelet's answer; the archive's path on this machine."""
    answer = json.loads(body)
    assert list(answer) == ["items"] and len(answer["items"]) == 1
    node_path = answer["items"][0]
    assert node_path.startswith("/var/lib/kubelet/checkpoints/")
    assert re.fullmatch(ARCHIVE_NAME.format(pod=pod, namespace="default", container=container),
                        node_path.rsplit("/", 1)[1]), node_path
    local = cluster.node_path(node, node_path)
    assert local.parent == checkpoint_dir(cluster, node) == \
        cluster.state_dir / "nodes" / node / "var/lib/kubelet/checkpoints"
    assert local.is_file()
    assert local.stat().st_mode & 0o777 == 0o600
    return local


# -- success, through the API server and directly -------------------------------------


def test_checkpoint_through_the_api_server(cluster: Cluster, api: client.ApiClient,
                                           v1: client.CoreV1Api) -> None:
    processes = [
        {"pid": 1, "comm": "supervisor", "argv": ["/sbin/supervisor", "-c", "/etc/s.conf"]},
        {"pid": 12, "ppid": 1, "comm": "worker", "argv": ["/usr/bin/worker", "--port=8080"],
         "env": ["MODE=prod"], "heap": f"token={SECRET};"},
    ]
    pod = _pod(v1, "node-a", labels={"app": "web", "tier": "front"},
               annotations={PROCESSES_ANNOTATION: json.dumps(processes),
                            "example.com/owner": "team-a"},
               containers=[{"name": "app", "image": "registry.example/team/web-server:1.4",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                             {"name": "conf", "mountPath": "/etc/web"}]}],
               volumes=[{"name": "data", "emptyDir": {}},
                        {"name": "conf", "configMap": {"name": "web-conf"}}])
    running = v1.read_namespaced_pod(pod, "default")

    status, body, content_type = _proxy_checkpoint(api, "node-a", pod)
    assert status == 200, body
    assert content_type == "application/json"
    archive = _archive(cluster, "node-a", body, pod)

    [shown] = _migrate("show", str(archive))
    assert shown["container_name"] == "app"
    assert shown["pod_name"] == pod
    assert shown["namespace"] == "default"
    assert shown["ip"] == running.status.pod_ip and shown["ip"].startswith("10.88.1.")
    assert shown["image"] == "registry.example/team/web-server:1.4"
    assert shown["engine"] == "CRI-O"
    assert shown["id"] == running.status.container_statuses[0].container_id.removeprefix(
        "cri-o://")

    inspected = _migrate("inspect", "--all", str(archive))
    tree = inspected["process_tree"]
    assert (tree["pid"], tree["command"]) == (1, "supervisor")
    assert tree["cmdline"] == "/sbin/supervisor -c /etc/s.conf"
    [worker] = tree["children"]
    assert (worker["pid"], worker["command"], worker["cmdline"]) == (
        12, "worker", "/usr/bin/worker --port=8080")
    assert worker["environment"] == ["MODE=prod"]
    mounts = {m["destination"]: m["source"] for m in inspected["mounts"]}
    uid = running.metadata.uid
    assert mounts["/data"] == f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/data"
    assert mounts["/etc/web"] == \
        f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~configmap/conf"

    [found] = _migrate("memparse", str(archive), "--search", SECRET)
    assert (found["pid"], found["command"], found["match"]) == (12, "worker", SECRET)

    # The typed method of the official client reaches the same place.
    answer = v1.connect_post_node_proxy_with_path("node-a", f"checkpoint/default/{pod}/app")
    assert "/var/lib/kubelet/checkpoints/checkpoint-" in answer


def test_checkpoint_directly_from_the_kubelet(cluster: Cluster, v1: client.CoreV1Api,
                                              kubelet_http: urllib3.PoolManager) -> None:
    pod = _pod(v1, "node-a")
    node = v1.read_node("node-a")
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    address = cluster.node_address("node-a")
    assert cluster.kubelet_url("node-a") == f"https://{address}:{port}" and port == 10250
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == [address]
    assert cluster.kubelet_url("node-a") != cluster.kubelet_url("node-faults")

    response = kubelet_http.request("POST", f"{cluster.kubelet_url('node-a')}/checkpoint/default/"
                                            f"{pod}/app?timeout=30")
    assert response.status == 200, response.data
    assert response.headers["Content-Type"] == "application/json"
    archive = _archive(cluster, "node-a", response.data, pod)
    inspected = _migrate("inspect", "--ps-tree", str(archive))
    # No annotation: one process, named after the image's last path component.
    assert inspected["process_tree"]["command"] == "web-server"
    assert inspected["process_tree"]["children"] == []
    assert inspected["pod_name"] == pod

    # The kubelet knows only its own pods.
    response = kubelet_http.request("POST", f"{cluster.kubelet_url('node-faults')}/checkpoint/"
                                            f"default/{pod}/app")
    assert (response.status, response.data) == (404, b"pod does not exist")
    pods = kubelet_http.request("GET", f"{cluster.kubelet_url('node-a')}/pods").json()
    assert pod in {p["metadata"]["name"] for p in pods["items"]}
    assert all(p["spec"]["nodeName"] == "node-a" for p in pods["items"])

    # The API server's bearer tokens are not served (agent.py: no TokenReview): 401.
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(cluster.ca.cert),
                               retries=False, timeout=DEADLINE)
    try:
        response = http.request("GET", f"{cluster.kubelet_url('node-a')}/healthz",
                                headers={"Authorization": "Bearer anything"})
        assert (response.status, response.data) == (401, b"Unauthorized\n")
        response = kubelet_http.request("GET", f"{cluster.kubelet_url('node-a')}/healthz")
        assert (response.status, response.data) == (200, b"ok")
    finally:
        http.clear()


def test_kubelet_refuses_clients_without_a_valid_certificate(
    cluster: Cluster, v1: client.CoreV1Api, tmp_path: Path
) -> None:
    pod = _pod(v1, "node-a")
    url = f"{cluster.kubelet_url('node-a')}/checkpoint/default/{pod}/app"
    anonymous = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(cluster.ca.cert),
                                    retries=False, timeout=DEADLINE)
    try:
        response = anonymous.request("POST", url)
        assert (response.status, response.data) == (401, b"Unauthorized\n")
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        response = anonymous.request("POST", url, headers={"Authorization": "Bearer nope"})
        assert response.status == 401
    finally:
        anonymous.clear()

    other_ca = make_ca(tmp_path / "other", "other-ca")
    stranger = issue(other_ca, tmp_path / "other", "stranger", client=True, cn="kubelet-admin",
                     org="system:masters")
    foreign = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(cluster.ca.cert),
                                  cert_file=str(stranger.cert), key_file=str(stranger.key),
                                  retries=False, timeout=DEADLINE)
    try:
        with pytest.raises((urllib3.exceptions.SSLError, urllib3.exceptions.ProtocolError)):
            foreign.request("POST", url)
    finally:
        foreign.clear()
    assert not list(checkpoint_dir(cluster, "node-a").glob(f"checkpoint-{pod}_*"))

    # A certificate of the cluster CA for a user RBAC denies: the kubelet's 403.
    limited = issue(cluster.ca, tmp_path, "limited", client=True, cn=LIMITED_USER)
    denied = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(cluster.ca.cert),
                                 cert_file=str(limited.cert), key_file=str(limited.key),
                                 retries=False, timeout=DEADLINE)
    try:
        response = denied.request("POST", url)
        assert response.status == 403
        assert response.data == (f"Forbidden (user={LIMITED_USER}, verb=create, "
                                 f"resource=nodes, subresource(s)=[checkpoint])\n").encode()
    finally:
        denied.clear()


# -- errors -----------------------------------------------------------------------------


def test_unknown_pod_or_container_is_404(cluster: Cluster, api: client.ApiClient,
                                         v1: client.CoreV1Api) -> None:
    pod = _pod(v1, "node-a")
    status, body, content_type = _proxy_checkpoint(api, "node-a", pod, "nope")
    assert (status, body) == (404, b"container nope does not exist")
    assert content_type == "text/plain; charset=utf-8"
    assert _proxy_checkpoint(api, "node-a", "no-such-pod")[:2] == (404, b"pod does not exist")
    assert _proxy_checkpoint(api, "node-a", pod, namespace="kube-system")[:2] == (
        404, b"pod does not exist")
    # On another node's kubelet the pod is unknown.
    assert _proxy_checkpoint(api, "node-faults", pod)[:2] == (404, b"pod does not exist")
    # An unknown node is the API server's own 404.
    status, body, _ = _proxy_checkpoint(api, "node-zz", pod)
    assert status == 404
    assert json.loads(body)["message"] == 'nodes "node-zz" not found'
    # The kubelet's (odd) answer to a timeout that is not a number.
    assert _proxy_checkpoint(api, "node-a", pod, timeout="soon")[:2] == (
        404, b"cannot parse value of timeout parameter")


def test_init_containers_are_accepted_by_name(cluster: Cluster, api: client.ApiClient,
                                              v1: client.CoreV1Api) -> None:
    pod = _pod(v1, "node-a", initContainers=[
        {"name": "setup", "image": "registry.example/setup:1"},
        {"name": "proxy", "image": "registry.example/envoy:1.30", "restartPolicy": "Always"},
    ])
    # A completed init container is no longer running: the kubelet's runtime lookup fails.
    status, body, _ = _proxy_checkpoint(api, "node-a", pod, "setup")
    assert (status, body) == (500, f"checkpointing of default/{pod}/setup failed "
                                   f"(container setup not found)".encode())
    # A sidecar keeps running and is checkpointed like any container.
    status, body, _ = _proxy_checkpoint(api, "node-a", pod, "proxy")
    assert status == 200, body
    archive = _archive(cluster, "node-a", body, pod, "proxy")
    assert _migrate("show", str(archive))[0]["image"] == "registry.example/envoy:1.30"


def test_feature_gate_off_is_404(api: client.ApiClient, v1: client.CoreV1Api) -> None:
    pod = _pod(v1, "node-gate-off")
    status, body, content_type = _proxy_checkpoint(api, "node-gate-off", pod)
    assert (status, body) == (404, b"404 page not found\n")
    assert content_type == "text/plain; charset=utf-8"


def test_runtime_without_checkpoint_support_is_500(cluster: Cluster, api: client.ApiClient,
                                                   v1: client.CoreV1Api) -> None:
    pod = _pod(v1, "node-no-criu")
    status, body, content_type = _proxy_checkpoint(api, "node-no-criu", pod)
    assert status == 500
    assert content_type == "text/plain; charset=utf-8"
    assert body.decode() == (f"checkpointing of default/{pod}/app failed (rpc error: code = "
                             f"Unknown desc = checkpoint/restore support not available)")

    pod = _pod(v1, "node-old-containerd")
    assert v1.read_namespaced_pod(pod, "default").status.container_statuses[0] \
        .container_id.startswith("containerd://")
    status, body, _ = _proxy_checkpoint(api, "node-old-containerd", pod)
    assert status == 500
    assert b"code = Unimplemented desc = method CheckpointContainer not implemented" in body
    assert not list(checkpoint_dir(cluster, "node-no-criu").iterdir())
    assert not list(checkpoint_dir(cluster, "node-old-containerd").iterdir())


def test_injected_failure_then_success(cluster: Cluster, api: client.ApiClient,
                                       v1: client.CoreV1Api) -> None:
    pod = _pod(v1, "node-faults")
    cluster.configure_node("node-faults", fail_next_checkpoints=1)
    status, body, _ = _proxy_checkpoint(api, "node-faults", pod)
    assert status == 500
    assert body.decode() == (f"checkpointing of default/{pod}/app failed (rpc error: code = "
                             f"Unknown desc = checkpoint failed: (injected))")
    assert cluster.node_config("node-faults").fail_next_checkpoints == 0
    status, body, _ = _proxy_checkpoint(api, "node-faults", pod)
    assert status == 200, body
    _archive(cluster, "node-faults", body, pod)


def test_checkpoint_deadline(cluster: Cluster, api: client.ApiClient,
                             v1: client.CoreV1Api) -> None:
    # 6 MiB at 0.25 s/MiB: the dump takes 1.5 s; the node's CRI default deadline is 0.2 s.
    pod = _pod(v1, "node-faults", annotations={MEMORY_ANNOTATION: "6"})
    cluster.configure_node("node-faults", checkpoint_delay_per_mib=0.25)
    try:
        expected = (f"checkpointing of default/{pod}/app failed (rpc error: code = "
                    f"DeadlineExceeded desc = context deadline exceeded)").encode()
        for timeout, seconds in ((None, 0.2), (1, 1.0)):
            started = time.monotonic()
            status, body, _ = _proxy_checkpoint(api, "node-faults", pod, timeout=timeout)
            elapsed = time.monotonic() - started
            assert (status, body) == (500, expected)
            assert seconds - 0.05 <= elapsed < seconds + 1.0, (timeout, elapsed)
        assert not list(checkpoint_dir(cluster, "node-faults").glob(f"checkpoint-{pod}_*"))

        started = time.monotonic()
        status, body, _ = _proxy_checkpoint(api, "node-faults", pod, timeout=3)
        assert status == 200, body
        assert time.monotonic() - started >= 1.45
        archive = _archive(cluster, "node-faults", body, pod)
        sizes = _migrate("show", str(archive))[0]["checkpoint_size"]
        assert sizes["memory_pages_size"] >= 6 * 1024 * 1024
    finally:
        cluster.configure_node("node-faults", checkpoint_delay_per_mib=0.0)


def test_rbac_denied_is_a_403_status(cluster: Cluster, v1: client.CoreV1Api) -> None:
    pod = _pod(v1, "node-a")
    with api_client(cluster.user_kubeconfig(LIMITED_USER)) as limited:
        status, body, content_type = _proxy_checkpoint(limited, "node-a", pod)
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(limited).connect_post_node_proxy_with_path(
                "node-a", f"checkpoint/default/{pod}/app")
    assert (status, content_type) == (403, "application/json")
    assert json.loads(body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'nodes "node-a" is forbidden: User "{LIMITED_USER}" cannot create '
                   f'resource "nodes/proxy" in API group "" at the cluster scope',
        "reason": "Forbidden", "details": {"name": "node-a", "kind": "nodes"}, "code": 403}
    assert e.value.status == 403
    assert not list(checkpoint_dir(cluster, "node-a").glob(f"checkpoint-{pod}_*"))


def test_discovery_lists_nodes_proxy(api: client.ApiClient) -> None:
    resources = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    proxy = resources["nodes/proxy"]
    assert proxy.kind == "NodeProxyOptions"
    assert sorted(proxy.verbs) == ["create", "delete", "get", "patch", "update"]


# -- node settings as kubectl shows them --------------------------------------------------


def _node_rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines()[1:]}


def test_not_ready_node(cluster: Cluster, v1: client.CoreV1Api, cp_kubectl: Kubectl) -> None:
    def status(node: str) -> str:
        return _node_rows(cp_kubectl(cluster.kubeconfig, "get", "nodes").stdout)[node][1]

    assert status("node-not-ready") == "NotReady"
    assert status("node-a") == "Ready"
    node = v1.read_node("node-not-ready")
    ready = {c.type: c for c in node.status.conditions}["Ready"]
    assert (ready.status, ready.reason) == ("False", "KubeletNotReady")
    # The node lifecycle controller taints it: NoSchedule (TaintNodeByCondition) and
    # NoExecute (taint-based eviction), from two of its loops, one after the other.
    both = [("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/not-ready", "NoSchedule")]
    wait_for(lambda: sorted((t.key, t.effect) for t in
                            v1.read_node("node-not-ready").spec.taints or []) == both,
             what="both not-ready taints")

    cluster.configure_node("node-faults", ready=False)
    try:
        assert status("node-faults") == "NotReady"
    finally:
        cluster.configure_node("node-faults", ready=True)
    assert status("node-faults") == "Ready"
    wait_for(lambda: not v1.read_node("node-faults").spec.taints, what="no taint on node-faults")


# -- pieces ---------------------------------------------------------------------------------


def test_stop_ends_a_checkpoint_in_progress(real_cp: ControlPlane, tmp_path: Path) -> None:
    results: queue.Queue[tuple[int, bytes]] = queue.Queue()
    world = Cluster(real_cp, tmp_path / "nodes", nodes=["n1"], start_latency=0.01,
                    node_config={"n1": NodeConfig(checkpoint_delay_per_mib=60.0)})
    world.start()
    try:
        with api_client(world.kubeconfig) as admin:
            v1 = client.CoreV1Api(admin)
            pod = _pod(v1, "n1", annotations={MEMORY_ANNOTATION: "1"})

            def call() -> None:
                try:
                    results.put(_proxy_checkpoint(admin, "n1", pod, timeout=600)[:2])
                except Exception as e:  # the agent going away may cut the connection
                    results.put((0, repr(e).encode()))

            with world.holding_checkpoints("n1") as waiting:
                caller = threading.Thread(target=call)
                caller.start()
                wait_for(lambda: waiting() == 1, what="the checkpoint under way")
                assert results.empty()
                started = time.monotonic()
                world.stop()
            assert time.monotonic() - started < 10
            caller.join(timeout=DEADLINE)
            assert not caller.is_alive()
    finally:
        world.stop()
    status, body = results.get_nowait()
    assert status in (0, 500, 502, 503), body
    assert not list((tmp_path / "nodes/nodes/n1/var/lib/kubelet/checkpoints").iterdir())
