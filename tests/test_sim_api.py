"""The cluster simulator's API server (e2e.sim), driven by real clients.

kubectl (/usr/bin/kubectl) and the official `kubernetes` Python client talk to
it over HTTPS with the generated kubeconfig: TLS verified against the
simulator's CA, a bearer token, the real REST paths. A few unit tests pin the
pieces clients cannot see directly (selector parsing, strategic merge keys,
watch history expiry).
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from e2e.nodes.protocol import Attributes
from e2e.sim import Simulator
from e2e.sim.errors import ApiError
from e2e.sim.patch import json_patch, strategic_merge
from e2e.sim.selectors import match_labels, parse_label_selector
from e2e.sim.store import Store
from tests.simulated import DEADLINE, kubectl_runner, needs_kubectl, sim_client, wait_for

REPO = Path(__file__).resolve().parent.parent
READ_ONLY_USER = "viewer"





def _read_only_for_viewer(attrs: Attributes) -> bool:
    return attrs.user.name != READ_ONLY_USER or attrs.verb in ("get", "list", "watch")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """One simulated cluster (node-a, node-b) for the module, on 127.0.0.1:<free port>."""
    cluster = Simulator(tmp_path_factory.mktemp("sim") / "state", start_latency=0.1,
                        stop_latency=0.1, authorizer=_read_only_for_viewer)
    with cluster:
        yield cluster


@pytest.fixture(scope="module")
def api(sim: Simulator) -> Iterator[client.ApiClient]:
    with sim_client(sim) as api_client:
        yield api_client


@pytest.fixture(scope="module")
def v1(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(v1: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    ns = v1.create_namespace({"metadata": {"generateName": f"{slug}-"}}).metadata.name
    yield ns
    v1.delete_namespace(ns)


def _pod(name: str | None = None, *, node: str | None = None, labels: dict[str, str] | None = None,
         generate: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": labels or {}}
    if name:
        meta["name"] = name
    if generate:
        meta["generateName"] = generate
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.example/app:1.0"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _running(v1: client.CoreV1Api, ns: str, name: str) -> client.V1Pod:
    def check() -> client.V1Pod | None:
        pod = v1.read_namespaced_pod(name, ns)
        return pod if pod.status.phase == "Running" else None

    return wait_for(check, what=f"pod {ns}/{name} Running")


def _gone(v1: client.CoreV1Api, ns: str, name: str) -> None:
    def check() -> bool:
        try:
            v1.read_namespaced_pod(name, ns)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(check, what=f"pod {ns}/{name} gone")


def _status(e: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(e.body)
    return body


# -- kubectl -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl(sim: Simulator, tmp_path_factory: pytest.TempPathFactory
            ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run kubectl against the simulator (its caches in a private HOME)."""
    run = kubectl_runner(tmp_path_factory.mktemp("kubectl-home"))
    return lambda *args, **kw: run(sim.kubeconfig, *args, **kw)


@needs_kubectl
def test_kubectl_get_nodes(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    out = kubectl("get", "nodes").stdout.splitlines()
    assert out[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert set(rows) == {"node-a", "node-b"}
    assert rows["node-a"][1] == "Ready"
    assert rows["node-a"][4] == "v1.30.4"
    wide = kubectl("get", "nodes", "-o", "wide").stdout
    assert "cri-o://1.30.4" in wide and "192.0.2.11" in wide


@needs_kubectl
def test_kubectl_apply_create_get_delete(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], v1: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(_pod("kubectl-web", labels={"app": "web"})))
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "pod/kubectl-web created"
    _running(v1, "default", "kubectl-web")
    # A second apply is a strategic merge patch computed by kubectl.
    manifest.write_text(yaml.safe_dump(_pod("kubectl-web", labels={"app": "web", "tier": "x"})))
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "pod/kubectl-web configured"
    assert v1.read_namespaced_pod("kubectl-web", "default").metadata.labels == {
        "app": "web", "tier": "x"}

    generated = tmp_path / "generated.yaml"
    generated.write_text(yaml.safe_dump(_pod(generate="kubectl-gen-", node="node-b")))
    created = kubectl("create", "-f", str(generated)).stdout.strip()
    m = re.fullmatch(r"pod/(kubectl-gen-[a-z0-9]{5}) created", created)
    assert m, created
    gen_name = m.group(1)
    _running(v1, "default", gen_name)

    listing = kubectl("get", "pods", "-A").stdout.splitlines()
    assert listing[0].split()[:3] == ["NAMESPACE", "NAME", "READY"]
    rows = {line.split()[1]: line.split() for line in listing[1:]}
    assert rows["kubectl-web"][0] == "default"
    assert rows[gen_name][2:4] == ["1/1", "Running"]
    wide = kubectl("get", "pod", gen_name, "-o", "wide").stdout
    assert "node-b" in wide and "10.88.2." in wide

    # kubectl delete waits (by watch) until the pod is gone.
    for name in ("kubectl-web", gen_name):
        assert kubectl("delete", "pod", name).stdout.strip() == f'pod "{name}" deleted'
        with pytest.raises(ApiException) as e:
            v1.read_namespaced_pod(name, "default")
        assert e.value.status == 404


@needs_kubectl
def test_kubectl_cordon(kubectl: Callable[..., subprocess.CompletedProcess[str]],
                        v1: client.CoreV1Api) -> None:
    try:
        assert kubectl("cordon", "node-a").stdout.strip() == "node/node-a cordoned"
        assert v1.read_node("node-a").spec.unschedulable is True
        assert "Ready,SchedulingDisabled" in kubectl("get", "node", "node-a").stdout
    finally:
        kubectl("uncordon", "node-a")
    assert not v1.read_node("node-a").spec.unschedulable


@needs_kubectl
def test_kubectl_raw(kubectl: Callable[..., subprocess.CompletedProcess[str]],
                     v1: client.CoreV1Api, tmp_path: Path) -> None:
    version = json.loads(kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == "v1.30.4"
    body = tmp_path / "cm.json"
    body.write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "raw-cm"}, "data": {"k": "v"}}))
    created = json.loads(kubectl("create", "--raw", "/api/v1/namespaces/default/configmaps",
                                 "-f", str(body)).stdout)
    assert created["metadata"]["name"] == "raw-cm"
    assert created["metadata"]["namespace"] == "default"
    assert v1.read_namespaced_config_map("raw-cm", "default").data == {"k": "v"}
    v1.delete_namespaced_config_map("raw-cm", "default")


@needs_kubectl
def test_kubectl_errors(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    missing = kubectl("get", "pod", "no-such-pod", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "no-such-pod" not found'
    protected = kubectl("delete", "namespace", "kube-system", check=False)
    assert protected.returncode == 1
    assert protected.stderr.strip() == ('Error from server (Forbidden): namespaces "kube-system" '
                                        'is forbidden: this namespace may not be deleted')


# -- the official Python client -------------------------------------------------------


def test_client_lists_nodes(v1: client.CoreV1Api) -> None:
    nodes = {n.metadata.name: n for n in v1.list_node().items}
    assert set(nodes) == {"node-a", "node-b"}
    node = nodes["node-a"]
    assert node.status.node_info.container_runtime_version == "cri-o://1.30.4"
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert node.metadata.resource_version and node.metadata.uid
    assert node.metadata.creation_timestamp is not None


def test_client_pod_lifecycle(v1: client.CoreV1Api, namespace: str) -> None:
    created = v1.create_namespaced_pod(namespace, _pod(generate="life-", labels={"app": "x"}))
    name = created.metadata.name
    assert re.fullmatch(r"life-[a-z0-9]{5}", name)
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.status.phase == "Pending"
    assert created.spec.restart_policy == "Always"  # defaulted by the server

    pod = _running(v1, namespace, name)
    assert pod.spec.node_name in ("node-a", "node-b")
    assert pod.status.pod_ip.startswith("10.88.")
    assert [s.ready for s in pod.status.container_statuses] == [True]
    assert pod.status.container_statuses[0].state.running is not None
    assert int(pod.metadata.resource_version) > int(created.metadata.resource_version)

    deleted = v1.delete_namespaced_pod(name, namespace)
    assert deleted.metadata.deletion_timestamp is not None
    _gone(v1, namespace, name)


def test_client_round_robin_scheduling(v1: client.CoreV1Api, namespace: str) -> None:
    names = [v1.create_namespaced_pod(namespace, _pod(generate="rr-")).metadata.name
             for _ in range(4)]
    nodes = [_running(v1, namespace, n).spec.node_name for n in names]
    assert sorted(nodes) == ["node-a", "node-a", "node-b", "node-b"]


def test_client_selectors(v1: client.CoreV1Api, namespace: str) -> None:
    v1.create_namespaced_pod(namespace, _pod("on-a", node="node-a",
                                             labels={"app": "web", "tier": "front"}))
    v1.create_namespaced_pod(namespace, _pod("on-b", node="node-b",
                                             labels={"app": "db", "tier": "back"}))
    v1.create_namespaced_pod(namespace, _pod("bare", node="node-b"))

    def names(**kw: Any) -> set[str]:
        return {p.metadata.name for p in v1.list_namespaced_pod(namespace, **kw).items}

    assert names(label_selector="app=web") == {"on-a"}
    assert names(label_selector="app!=web") == {"on-b", "bare"}
    assert names(label_selector="app in (web,db)") == {"on-a", "on-b"}
    assert names(label_selector="app notin (web)") == {"on-b", "bare"}
    assert names(label_selector="tier") == {"on-a", "on-b"}
    assert names(label_selector="!tier") == {"bare"}
    assert names(label_selector="app=db,tier=back") == {"on-b"}
    assert names(field_selector="metadata.name=bare") == {"bare"}
    assert names(field_selector="spec.nodeName=node-b,metadata.name!=bare") == {"on-b"}

    everywhere = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
    mine = {p.metadata.name for p in everywhere.items if p.metadata.namespace == namespace}
    assert mine == {"on-a"}
    assert all(p.spec.node_name == "node-a" for p in everywhere.items)
    assert everywhere.metadata.resource_version

    for n in ("on-a", "on-b", "bare"):
        _running(v1, namespace, n)
    assert names(field_selector="status.phase=Running") == {"on-a", "on-b", "bare"}
    assert names(field_selector="status.phase=Pending") == set()

    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod(namespace, field_selector="spec.nope=x")
    assert e.value.status == 400
    assert _status(e.value)["message"] == "field label not supported: spec.nope"
    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod(namespace, label_selector="app in (web")
    assert e.value.status == 400


def test_client_pagination(v1: client.CoreV1Api, namespace: str) -> None:
    for i in range(3):
        v1.create_namespaced_pod(namespace, _pod(f"page-{i}"))
    first = v1.list_namespaced_pod(namespace, limit=2)
    assert [p.metadata.name for p in first.items] == ["page-0", "page-1"]
    assert first.metadata.remaining_item_count == 1
    rest = v1.list_namespaced_pod(namespace, limit=2, _continue=first.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["page-2"]
    assert not rest.metadata._continue


def test_client_patches(v1: client.CoreV1Api, namespace: str) -> None:
    v1.create_namespaced_pod(namespace, _pod("patched", labels={"a": "1", "b": "2"}))
    # A dict body is sent as a strategic merge patch.
    pod = v1.patch_namespaced_pod("patched", namespace,
                                  {"metadata": {"labels": {"b": None, "c": "3"},
                                                "annotations": {"note": "x"}}})
    assert pod.metadata.labels == {"a": "1", "c": "3"}
    assert pod.metadata.annotations == {"note": "x"}
    pod = v1.patch_namespaced_pod("patched", namespace, {"metadata": {"labels": {"d": "4"}}},
                                  _content_type="application/merge-patch+json")
    assert pod.metadata.labels == {"a": "1", "c": "3", "d": "4"}
    pod = v1.patch_namespaced_pod("patched", namespace, [
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "add", "path": "/metadata/labels/e", "value": "5"},
    ])
    assert pod.metadata.labels == {"c": "3", "d": "4", "e": "5"}
    # Images may change; anything else in the spec may not (422).
    pod = v1.patch_namespaced_pod("patched", namespace, {"spec": {"containers": [
        {"name": "app", "image": "registry.example/app:2.0"}]}})
    assert pod.spec.containers[0].image == "registry.example/app:2.0"
    with pytest.raises(ApiException) as e:
        v1.patch_namespaced_pod("patched", namespace, {"spec": {"restartPolicy": "Never"}})
    assert e.value.status == 422
    assert _status(e.value)["reason"] == "Invalid"


def test_client_status_subresource(v1: client.CoreV1Api, namespace: str) -> None:
    v1.create_namespaced_pod(namespace, _pod("stat", node="node-a"))
    _running(v1, namespace, "stat")
    # The main resource ignores status changes...
    pod = v1.patch_namespaced_pod("stat", namespace, {"status": {"phase": "Failed"}})
    assert pod.status.phase == "Running"
    # ...the status subresource takes them (conditions merge by type).
    pod = v1.patch_namespaced_pod_status("stat", namespace, {"status": {"conditions": [
        {"type": "example.com/Checked", "status": "True"}]}})
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["example.com/Checked"] == "True"
    assert conditions["Ready"] == "True"
    assert v1.read_namespaced_pod_status("stat", namespace).status.phase == "Running"


def _patch(api: client.ApiClient, namespace: str, name: str, content_type: str,
           body: dict[str, Any]) -> Any:
    """PATCH a ConfigMap with an explicit media type; its JSON answer."""
    resp = api.call_api(*api.param_serialize(
        "PATCH", f"/api/v1/namespaces/{namespace}/configmaps/{name}",
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body, auth_settings=["BearerToken"]))
    data = resp.read()
    if resp.status >= 300:
        raise ApiException(http_resp=resp, body=data.decode())
    return json.loads(data)


def test_a_patch_carrying_a_resource_version_is_conditional(v1: client.CoreV1Api,
                                                            namespace: str) -> None:
    """As on the real API server (kubectl annotate --resource-version): a stale one is a
    409 Conflict and nothing is written. (A ConfigMap: nothing else writes it meanwhile,
    as a kubelet would a pod.)"""
    stale = v1.create_namespaced_config_map(namespace, {"metadata": {"name": "claimed"}})
    v1.patch_namespaced_config_map("claimed", namespace, {"data": {"v": "2"}})
    current = v1.read_namespaced_config_map("claimed", namespace).metadata.resource_version
    for content_type in ("application/strategic-merge-patch+json",
                         "application/merge-patch+json"):
        with pytest.raises(ApiException) as e:
            _patch(v1.api_client, namespace, "claimed", content_type, {"metadata": {
                "resourceVersion": stale.metadata.resource_version,
                "annotations": {"example.com/claimed-by": "a"}}})
        assert e.value.status == 409
        assert (_status(e.value)["reason"], _status(e.value)["message"]) == (
            "Conflict", 'Operation cannot be fulfilled on configmaps "claimed": the object has '
            "been modified; please apply your changes to the latest version and try again")
    after = v1.read_namespaced_config_map("claimed", namespace).metadata
    assert (after.resource_version, after.annotations) == (current, None)
    patched = _patch(v1.api_client, namespace, "claimed",
                     "application/strategic-merge-patch+json",
                     {"metadata": {"resourceVersion": current,
                                   "annotations": {"example.com/claimed-by": "a"}}})
    assert patched["metadata"]["annotations"] == {"example.com/claimed-by": "a"}
    assert patched["metadata"]["resourceVersion"] != current
    # Removing the last annotation leaves none: ObjectMeta's maps are `omitempty`.
    released = _patch(v1.api_client, namespace, "claimed",
                      "application/strategic-merge-patch+json",
                      {"metadata": {"annotations": {"example.com/claimed-by": None}}})
    assert "annotations" not in released["metadata"]


def test_racing_conditional_patches_let_exactly_one_win(v1: client.CoreV1Api,
                                                        namespace: str) -> None:
    made = v1.create_namespaced_config_map(namespace, {"metadata": {"name": "raced"}})
    version = made.metadata.resource_version
    results: list[Any] = []

    def claim(who: str) -> None:
        try:
            results.append(_patch(v1.api_client, namespace, "raced",
                                  "application/strategic-merge-patch+json",
                                  {"metadata": {"resourceVersion": version,
                                                "annotations": {"claimed-by": who}}}))
        except ApiException as e:
            results.append(e.status)

    threads = [threading.Thread(target=claim, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, dict)]
    assert len(winners) == 1 and sorted(r for r in results if isinstance(r, int)) == [409] * 3
    held = v1.read_namespaced_config_map("raced", namespace).metadata.annotations
    assert held == winners[0]["metadata"]["annotations"]


def test_client_errors(v1: client.CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_pod("missing", namespace)
    assert e.value.status == 404
    status = _status(e.value)
    assert status["kind"] == "Status" and status["status"] == "Failure"
    assert status["reason"] == "NotFound"
    assert status["message"] == 'pods "missing" not found'
    assert status["details"] == {"name": "missing", "kind": "pods"}

    v1.create_namespaced_pod(namespace, _pod("twice"))
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(namespace, _pod("twice"))
    assert e.value.status == 409
    assert _status(e.value)["reason"] == "AlreadyExists"

    stale = v1.read_namespaced_pod("twice", namespace)
    v1.patch_namespaced_pod("twice", namespace, {"metadata": {"labels": {"v": "2"}}})
    with pytest.raises(ApiException) as e:
        v1.replace_namespaced_pod("twice", namespace, stale)
    assert e.value.status == 409
    assert _status(e.value)["reason"] == "Conflict"

    bad = _pod("no-containers")
    bad["spec"]["containers"] = []
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(namespace, bad)
    assert e.value.status == 422
    status = _status(e.value)
    assert status["reason"] == "Invalid"
    assert status["message"] == 'Pod "no-containers" is invalid: spec.containers: Required value'
    assert status["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers"}]

    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod("no-such-namespace", _pod("p"))
    assert e.value.status == 404
    assert _status(e.value)["message"] == 'namespaces "no-such-namespace" not found'


def test_forbidden(sim: Simulator, namespace: str) -> None:
    with sim_client(sim, sim.add_token(READ_ONLY_USER)) as viewer_client:
        viewer = client.CoreV1Api(viewer_client)
        assert viewer.list_namespaced_pod(namespace).items == []
        with pytest.raises(ApiException) as e:
            viewer.create_namespaced_pod(namespace, _pod("denied"))
    assert e.value.status == 403
    status = _status(e.value)
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        f'pods is forbidden: User "{READ_ONLY_USER}" cannot create resource "pods" in API '
        f'group "" in the namespace "{namespace}"')


def test_namespace_deletion_removes_pods(v1: client.CoreV1Api) -> None:
    ns = v1.create_namespace({"metadata": {"generateName": "doomed-"}}).metadata.name
    held = _pod("inside", node="node-a")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    v1.create_namespaced_pod(ns, held)
    _running(v1, ns, "inside")
    v1.delete_namespace(ns)  # answers the Namespace, which the client types as a Status
    assert v1.read_namespace(ns).status.phase == "Terminating"
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(ns, _pod("late"))
    assert e.value.status == 403
    assert _status(e.value)["message"] == (f'pods "late" is forbidden: unable to create new '
                                           f'content in namespace {ns} because it is being '
                                           f'terminated')

    def stopped_but_held() -> bool:
        pod = v1.read_namespaced_pod("inside", ns)
        return pod.metadata.deletion_grace_period_seconds == 0

    # The kubelet has stopped the pod; only the finalizer keeps pod and namespace.
    wait_for(stopped_but_held, what="pod stopped by its kubelet")
    assert v1.read_namespace(ns).status.phase == "Terminating"
    v1.patch_namespaced_pod("inside", ns, {"metadata": {"finalizers": None}},
                            _content_type="application/merge-patch+json")

    def namespace_gone() -> bool:
        return ns not in {n.metadata.name for n in v1.list_namespace().items}

    wait_for(namespace_gone, what=f"namespace {ns} gone")
    _gone(v1, ns, "inside")


def test_watch_added_modified_deleted(v1: client.CoreV1Api, namespace: str) -> None:
    since = v1.list_namespaced_pod(namespace).metadata.resource_version
    v1.create_namespaced_pod(namespace, _pod("watched", labels={"w": "yes"}))
    seen: list[tuple[str, str | None]] = []
    w = watch.Watch()
    for event in w.stream(v1.list_namespaced_pod, namespace, label_selector="w=yes",
                          resource_version=since, timeout_seconds=int(DEADLINE)):
        pod = event["object"]
        seen.append((event["type"], pod.status.phase))
        if event["type"] == "MODIFIED" and pod.status.phase == "Running":
            v1.delete_namespaced_pod("watched", namespace)
        if event["type"] == "DELETED":
            w.stop()
    assert seen[0] == ("ADDED", "Pending")
    assert ("MODIFIED", "Running") in seen
    assert seen[-1][0] == "DELETED"
    types = [t for t, _ in seen]
    assert types.index("DELETED") > types.index("MODIFIED")


def test_watch_without_resource_version_starts_with_current_state(
    v1: client.CoreV1Api, namespace: str
) -> None:
    v1.create_namespaced_pod(namespace, _pod("existing"))
    w = watch.Watch()
    for event in w.stream(v1.list_namespaced_pod, namespace, timeout_seconds=int(DEADLINE)):
        assert (event["type"], event["object"].metadata.name) == ("ADDED", "existing")
        w.stop()


# -- authentication and TLS -------------------------------------------------------------


def test_bad_token_is_401(sim: Simulator) -> None:
    with sim_client(sim, "not-the-token") as bad, pytest.raises(ApiException) as e:
        client.CoreV1Api(bad).list_node()
    assert e.value.status == 401
    assert _status(e.value) == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": "Unauthorized",
                                "reason": "Unauthorized", "code": 401}


def test_missing_token_is_401(sim: Simulator) -> None:
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(sim.ca.cert),
                               retries=False, timeout=DEADLINE)
    response = http.request("GET", f"{sim.url}/api/v1/pods")
    assert response.status == 401
    assert response.json()["reason"] == "Unauthorized"
    response = http.request("GET", f"{sim.url}/api/v1/pods",
                            headers={"Authorization": f"Bearer {sim.token}"})
    assert response.status == 200
    http.clear()


def test_tls_is_verified_against_the_generated_ca(sim: Simulator) -> None:
    kubeconfig = yaml.safe_load(sim.kubeconfig.read_text())
    cluster = kubeconfig["clusters"][0]["cluster"]
    assert cluster["server"] == sim.url
    assert cluster["certificate-authority-data"]
    assert "insecure-skip-tls-verify" not in cluster
    assert sim.kubeconfig.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", sim.url)

    with sim_client(sim) as api_client:
        assert api_client.configuration.verify_ssl is True
        assert api_client.configuration.ssl_ca_cert
    # A client that does not trust the simulator's CA cannot talk to it.
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", retries=False, timeout=DEADLINE)
    with pytest.raises(urllib3.exceptions.SSLError):
        http.request("GET", f"{sim.url}/version",
                     headers={"Authorization": f"Bearer {sim.token}"})
    http.clear()


def test_raw_paths(sim: Simulator) -> None:
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(sim.ca.cert),
                               retries=False, timeout=DEADLINE,
                               headers={"Authorization": f"Bearer {sim.token}"})
    try:
        # Pods are created in a namespace, never across all of them.
        response = http.request("POST", f"{sim.url}/api/v1/pods", body=b"{}")
        assert (response.status, response.json()["reason"]) == (405, "MethodNotAllowed")
        response = http.request("GET", f"{sim.url}/api/v1/widgets")
        assert (response.status, response.json()["reason"]) == (404, "NotFound")
        response = http.request("GET", f"{sim.url}/api/v1/watch/namespaces/default/pods",
                                fields={"timeoutSeconds": "1"}, preload_content=False)
        assert response.status == 200  # the legacy watch prefix, ending after 1 s
        response.drain_conn()
        root = http.request("GET", f"{sim.url}/openapi/v3").json()
        url = root["paths"]["api/v1"]["serverRelativeURL"]
        document = http.request("GET", f"{sim.url}{url}").json()
        patch = document["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
        assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    finally:
        http.clear()


def test_discovery(api: client.ApiClient) -> None:
    resources = client.CoreV1Api(api).get_api_resources()
    by_name = {r.name: r for r in resources.resources}
    assert by_name["pods"].namespaced and by_name["pods"].short_names == ["po"]
    assert not by_name["nodes"].namespaced
    assert "pods/status" in by_name
    assert client.VersionApi(api).get_code().git_version == "v1.30.4"


def test_stop_ends_watches_and_joins_every_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    sim = Simulator(tmp_path / "state", start_latency=0.05).start()
    api_client = sim_client(sim)
    v1 = client.CoreV1Api(api_client)
    v1.list_node()  # leaves an idle keep-alive connection behind
    events: queue.Queue[object] = queue.Queue()

    def consume() -> None:
        try:
            for event in watch.Watch().stream(v1.list_namespaced_pod, "default",
                                              timeout_seconds=60):
                events.put(event["type"])
        except Exception as e:  # the server going away may cut the stream
            events.put(e)
        events.put("END")

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        v1.create_namespaced_pod("default", _pod("watched-at-stop"))
        assert events.get(timeout=DEADLINE) == "ADDED"
    finally:
        started = time.monotonic()
        sim.stop()
        stop_seconds = time.monotonic() - started
        consumer.join(timeout=DEADLINE)
        api_client.close()
    assert not consumer.is_alive()
    assert stop_seconds < 5
    leftover = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []


# -- the command line ----------------------------------------------------------------


def test_command_line_ready_line_and_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2e.sim", "--state", str(state), "--nodes", "n1,n2,n3",
         "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []])
    reader.start()
    try:
        try:
            first = lines.get(timeout=30)
        except queue.Empty:
            pytest.fail(f"no ready line within 30s; stderr: {proc.stderr.read() if proc.stderr else ''}")
        m = re.fullmatch(r"ready (https://127\.0\.0\.1:(\d+))\n", first)
        assert m, first
        assert (state / "kubeconfig").exists()
        subprocess_sim = yaml.safe_load((state / "kubeconfig").read_text())
        assert subprocess_sim["clusters"][0]["cluster"]["server"] == m.group(1)
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(state / "kubeconfig"), client_configuration=cfg)
        with client.ApiClient(cfg) as api_client:
            nodes = client.CoreV1Api(api_client).list_node().items
        assert [n.metadata.name for n in nodes] == ["n1", "n2", "n3"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        reader.join(timeout=DEADLINE)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert lines.empty(), "only one line may be printed on stdout"
    assert proc.stderr is not None and proc.stderr.read() == ""


# -- pieces clients cannot see directly ----------------------------------------------


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("a=1", {"a": "1"}, True),
    ("a==1", {"a": "2"}, False),
    ("a!=1", {}, True),
    ("a in (1, 2),b", {"a": "2", "b": ""}, True),
    ("a notin (1,2)", {"a": "1"}, False),
    ("!a", {"b": "1"}, True),
    ("a>3", {"a": "4"}, True),
    ("a<3", {"a": "x"}, False),
    ("a=", {"a": ""}, True),
])
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert match_labels(parse_label_selector(selector), {"metadata": {"labels": labels}}) \
        is expected


def test_strategic_merge_uses_merge_keys() -> None:
    pod = {"metadata": {"finalizers": ["a"]}, "spec": {"containers": [
        {"name": "one", "image": "i1", "env": [{"name": "X", "value": "1"}]},
        {"name": "two", "image": "i2"},
    ]}}
    patched = strategic_merge(pod, {
        "metadata": {"finalizers": ["b"]},
        "spec": {"containers": [
            {"name": "one", "env": [{"name": "Y", "value": "2"}]},
            {"name": "two", "$patch": "delete"},
            {"name": "three", "image": "i3"},
        ]},
    })
    assert patched["metadata"]["finalizers"] == ["a", "b"]
    assert patched["spec"]["containers"] == [
        {"name": "one", "image": "i1", "env": [{"name": "X", "value": "1"},
                                                {"name": "Y", "value": "2"}]},
        {"name": "three", "image": "i3"},
    ]


def test_json_patch_test_failure_is_422() -> None:
    assert json_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}]) == {"a": [1, 2]}
    with pytest.raises(ApiError) as e:
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    assert e.value.code == 422


def test_watch_from_compacted_history_is_410() -> None:
    store = Store(history=2)
    for i in range(4):
        store.create("configmaps", {"metadata": {"name": f"cm{i}", "namespace": "d"}})
    with pytest.raises(ApiError) as e:
        store.events_since("configmaps", 1)
    assert (e.value.code, e.value.reason) == (410, "Expired")
    assert [ev.object["metadata"]["name"] for ev in store.events_since("configmaps", 2)] == [
        "cm2", "cm3"]
