"""Node agents run the tool's own image for real: `python -m migrate` in-cluster.

A container whose image is one of `Cluster(tool_images=...)` gets a
ServiceAccount token (RBAC applies), the CA, KUBERNETES_SERVICE_HOST/PORT, its
volumes on the node's disk with paths in its arguments rewritten, and its
termination message read back; it never outlives its pod.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes.checkpoints import CHECKPOINT_DIR
from e2e.nodes.podfiles import Mounts
from tests.cluster import Kubectl, node_agents, wait_for

TOOL = "localhost/migrate:test"


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), tool_images=(TOOL,),
                     start_latency=0.02, stop_latency=0.02, tool_timeout=60) as cluster:
        yield cluster


def run_pod(v1: client.CoreV1Api, name: str, container: dict[str, Any], *,
            namespace: str = "default", timeout: float = 60, **spec: Any) -> Any:
    """Create a Never-restarting pod on node-a; its terminated state once it ends."""
    v1.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": {
        "nodeName": "node-a", "restartPolicy": "Never",
        "containers": [{"name": "tool", "image": TOOL, **container}], **spec}})
    pod = wait_for(lambda: (p := v1.read_namespaced_pod(name, namespace)).status.phase in (
        "Succeeded", "Failed") and p, timeout=timeout, what=f"{name} to end")
    return pod.status.container_statuses[0].state.terminated


def test_in_cluster_as_the_pods_service_account(cluster: Cluster, v1: client.CoreV1Api) -> None:
    wait_for(lambda: v1.list_namespaced_service_account("default").items,
             what="the default ServiceAccount")
    done = run_pod(v1, "doctor", {"args": ["doctor", "-o", "json"],
                                  "terminationMessagePolicy": "FallbackToLogsOnError"})
    assert done.exit_code == 9  # checks failed: the default account may do nothing
    # No termination message was written: the output's tail stands in for it.
    assert done.message.rstrip().endswith("hint: each FAIL row has a hint; fix those and run "
                                          "migrate doctor again")
    logs = list((cluster.node_dir("node-a") / "var/log/pods").glob("default_doctor_*/tool/0.log"))
    report = json.loads(logs[0].read_text().split("\nerror:")[0])
    rows = {c["check"]: c for c in report["checks"]}
    assert rows["api"]["status"] == "PASS"  # it reached the API server, in-cluster
    assert rows["nodes"]["detail"] == ('list nodes: nodes is forbidden: User "system:'
                                       'serviceaccount:default:default" cannot list resource '
                                       '"nodes" in API group "" at the cluster scope')
    assert rows["rbac: get pods"]["hint"].endswith("(`migrate deploy` emits the role the "
                                                   "tool needs)")
    pod_dir = next((cluster.node_dir("node-a") / "var/lib/kubelet/pods").iterdir())
    # The token and the pod's secrets do not outlive the pod's containers.
    assert not list(pod_dir.glob("volumes/kubernetes.io~projected/*/token"))


def test_a_host_path_mount_and_its_paths(cluster: Cluster, v1: client.CoreV1Api,
                                         counters_archive: Path) -> None:
    target = cluster.node_path("node-a", CHECKPOINT_DIR) / counters_archive.name
    shutil.copyfile(counters_archive, target)
    done = run_pod(v1, "lister", {
        "args": ["list", "$(DIR)", "-o", "json"],
        "env": [{"name": "DIR", "value": CHECKPOINT_DIR}],
        "volumeMounts": [{"name": "ckpt", "mountPath": CHECKPOINT_DIR, "readOnly": True}]},
        volumes=[{"name": "ckpt", "hostPath": {"path": CHECKPOINT_DIR, "type": "Directory"}}],
        automountServiceAccountToken=False)
    assert (done.exit_code, done.message) == (0, None)
    log = next((cluster.node_dir("node-a") / "var/log/pods").glob("default_lister_*/tool/0.log"))
    listed = json.loads(log.read_text())
    assert [Path(a["archive"]).name for a in listed] == [counters_archive.name]


def test_a_missing_host_path_fails_the_container_and_a_missing_account_the_pod(
        v1: client.CoreV1Api) -> None:
    done = run_pod(v1, "nodir", {
        "args": ["list", "/nowhere"],
        "volumeMounts": [{"name": "x", "mountPath": "/nowhere"}]},
        volumes=[{"name": "x", "hostPath": {"path": "/nowhere", "type": "Directory"}}])
    assert (done.exit_code, done.message) == (128, 'sim: MountVolume.SetUp failed for volume '
                                              '"x" : hostPath type check failed: /nowhere is '
                                              'not a directory')
    # A missing ServiceAccount: the API server's ServiceAccount admission refuses the pod
    # (the simulator used to start it and fail the container).
    with pytest.raises(ApiException) as refused:
        run_pod(v1, "noaccount", {"args": ["version"]}, serviceAccountName="ghost")
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["message"] == (
        'pods "noaccount" is forbidden: error looking up service account default/ghost: '
        'serviceaccount "ghost" not found')


def test_only_the_entrypoint_runs(v1: client.CoreV1Api) -> None:
    done = run_pod(v1, "shell", {"command": ["sh", "-c", "id"]})
    assert (done.exit_code, done.message) == (
        127, "sim: the tool image runs its entrypoint (migrate), not 'sh'")
    done = run_pod(v1, "entry", {"command": ["/opt/migrate/bin/migrate"], "args": ["--version"]})
    assert done.exit_code == 0


def test_a_container_past_its_deadline_is_killed(cluster: Cluster, v1: client.CoreV1Api) -> None:
    # An API server that accepts connections and never answers: the tool would wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        done = run_pod(v1, "stuck", {
            "args": ["doctor"], "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": str(port)}]},
            activeDeadlineSeconds=1, timeout=20)
    assert done.exit_code == 137


def test_mounts_translate_arguments() -> None:
    mounts = Mounts({"/var/lib/kubelet/checkpoints": Path("/n/ckpt"), "/tmp": Path("/p/tmp"),
                     "/dev/termination-log": Path("/p/c/termination-log")})
    assert mounts.translate("/var/lib/kubelet/checkpoints/a.tar") == "/n/ckpt/a.tar"
    assert mounts.translate("/var/lib/kubelet/checkpointsX") == "/var/lib/kubelet/checkpointsX"
    assert mounts.translate("--authfile=/tmp/auth.json") == "--authfile=/p/tmp/auth.json"
    assert mounts.translate("/dev/termination-log") == "/p/c/termination-log"
    assert mounts.translate("relative/tmp") == "relative/tmp"


def tool_processes(pod: str) -> list[int]:
    """PIDs of tool processes running as `pod` (their HOSTNAME is the pod's name)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours
        if f"HOSTNAME={pod}".encode() in environ and b"migrate" in cmdline:
            found.append(int(proc.name))
    return found


def hanging_pod(v1: client.CoreV1Api, name: str, port: int, node: str = "node-a") -> None:
    v1.create_namespaced_pod("default", {"metadata": {"name": name}, "spec": {
        "nodeName": node, "restartPolicy": "Never", "containers": [{
            "name": "tool", "image": TOOL, "args": ["doctor"],
            "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": str(port)}]}]}})
    wait_for(lambda: tool_processes(name), timeout=20, what=f"{name}'s process")


def test_the_process_ends_with_its_pod_and_with_the_node_agents(
        real_cp: ControlPlane, cluster: Cluster, v1: client.CoreV1Api, tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        hanging_pod(v1, "deleted", port)
        v1.delete_namespaced_pod("deleted", "default")
        wait_for(lambda: not tool_processes("deleted"), what="the deleted pod's process to end")
        with Cluster(real_cp, tmp_path / "nodes", nodes=("node-z",), tool_images=(TOOL,),
                     start_latency=0.02):
            hanging_pod(v1, "orphaned", port, node="node-z")
        assert not tool_processes("orphaned")  # stop() killed it before returning


def test_kubectl_logs_shows_what_the_tool_printed(cluster: Cluster, v1: client.CoreV1Api,
                                                  cp_kubectl: Kubectl) -> None:
    kubectl = cp_kubectl
    client.BatchV1Api(v1.api_client).create_namespaced_job("default", {
        "metadata": {"name": "version"}, "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "containers": [{"name": "tool", "image": TOOL, "args": ["--version"]}]}}}})
    wait_for(lambda: client.BatchV1Api(v1.api_client).read_namespaced_job(
        "version", "default").status.succeeded, what="the Job to succeed")
    out = kubectl(cluster.kubeconfig, "logs", "job/version").stdout
    assert out.startswith("migrate ")
    assert kubectl(cluster.kubeconfig, "logs", "job/version", "--tail=0").stdout == ""
    gone = kubectl(cluster.kubeconfig, "logs", "job/version", "--previous", check=False)
    assert 'previous terminated container "tool" in pod' in gone.stderr
