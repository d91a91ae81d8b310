"""`migrate pod --build-on node` end to end: the build Job really runs the tool.

The source node's agent on the real control plane runs the build Job's
container, whose image is the tool's own, as `python -m migrate build ...`
(e2e/nodes/toolrun.py):
it reads the archive through the Job's hostPath mount, pushes to a real
registry (with the temporary registry Secret for one that needs
credentials), and hands the digest back through its termination message.
The archive is never readable where the tool runs (no MIGRATE_NODE_ROOT).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import RegistryConfig
from migrate.pipeline.journal import Journal
from migrate.pipeline.preflight import POD_REACH_HINT
from tests.cluster import node_agents, wait_for
from tests.conftest import Result, done_then
from tests.registries import RegistryUnderTest
from tests.test_migrate_pod import assert_untouched, make_pod, pods

TOOL = "localhost/migrate:test"
Cli = Callable[..., Result]
# --no-tls-verify: the Job's process trusts only the system CAs, as the real image would.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
            pod_plain_registry: RegistryUnderTest,
            pod_tls_basic_registry: RegistryUnderTest) -> Iterator[Cluster]:
    assert pod_tls_basic_registry.ca_cert is not None
    registries = RegistryConfig(insecure=(pod_plain_registry.host,),
                                ca_files=(pod_tls_basic_registry.ca_cert,))
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), start_latency=0.05,
                     stop_latency=0.05, registries=registries, tool_images=(TOOL,),
                     tool_timeout=120) as world:
        yield world


def dockerconfig(registry: RegistryUnderTest, password: str) -> dict[str, Any]:
    auth = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
    config = json.dumps({"auths": {registry.host: {"auth": auth}}})
    return {".dockerconfigjson": base64.b64encode(config.encode()).decode()}


def secret(v1: client.CoreV1Api, name: str, registry: RegistryUnderTest,
           password: str) -> None:
    v1.create_namespaced_secret("default", {
        "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "data": dockerconfig(registry, password)})


def leftovers(api: client.ApiClient) -> tuple[list[str], list[str]]:
    """The build Jobs and registry Secrets still there."""
    jobs = client.BatchV1Api(api).list_namespaced_job("default").items
    secrets = client.CoreV1Api(api).list_namespaced_secret("default").items
    return ([j.metadata.name for j in jobs if not j.metadata.deletion_timestamp],
            [s.metadata.name for s in secrets if s.metadata.name.startswith("migrate-registry")])


def build_logs(cluster: Cluster, job: str) -> str:
    """What the Job's container printed (the node's pod log)."""
    logs = sorted((cluster.node_dir("node-a") / "var/log/pods").glob(f"default_{job}-*/build/*"))
    return "\n".join(p.read_text() for p in logs)


def on_node(cli: Cli, cluster: Cluster, pod: str, registry: RegistryUnderTest,
            *args: str) -> Result:
    return cli("pod", pod, "--to", "node-b", "--build-on", "node", "--tool-image", TOOL,
               "--registry", f"{registry.host}/migrations", "--no-tls-verify",
               "--kubeconfig", cluster.kubeconfig, "--timeout", "60", "-o", "json",
               "--delete-emptydir-data", *args)


def journal_actions(journal_id: str) -> list[str]:
    """The journal's actions as `action namespace/name` lines."""
    journal = Journal.load(Path(os.environ["MIGRATE_STATE_DIR"]), journal_id)
    return [f"{a['action']} {a.get('namespace', '')}/{a.get('name', '')}"
            for a in journal.actions]


def test_the_build_job_pushes_to_a_plain_registry(cli: Cli, cluster: Cluster,
                                                  api: client.ApiClient, v1: client.CoreV1Api,
                                                  pod_plain_registry: RegistryUnderTest) -> None:
    make_pod(v1, "plain")
    r = on_node(cli, cluster, "plain", pod_plain_registry)
    assert r.code == 0, r.err
    rep = r.json()
    image = rep["images"]["counter"]
    job = image["built_on"].removeprefix("job ")
    assert job.startswith("migrate-build-plain-")
    assert image["digest"].startswith("sha256:") and image["image_size"] > 0
    # CRIU's times, read in the Job from the archive, come back with the digest.
    assert image["freezing_time_us"] > 0 and image["frozen_time_us"] > 0
    assert image["reference"].startswith(f"{pod_plain_registry.host}/migrations/")
    restored = v1.read_namespaced_pod(rep["destination_pod"], "default")
    assert (restored.spec.node_name, restored.status.phase) == ("node-b", "Running")
    # Restored from the checkpoint image (CRI-O then reports the workload's image).
    record = json.loads(restored.metadata.annotations["sim.migrate.dev/restored.counter"])
    assert record["imageID"].endswith(image["digest"])
    assert "plain" not in pods(v1)
    # No credentials for a plain registry: no Secret; the Job is deleted at clean-up.
    actions = journal_actions(rep["id"])
    assert f"created Job default/{job}" in actions and f"deleted Job default/{job}" in actions
    assert not [a for a in actions if "Secret" in a]
    assert leftovers(api) == ([], [])
    # The build ran in the Job's container: its JSON report went to the node's pod logs.
    report = json.loads(build_logs(cluster, job))
    assert report["digest"] == image["digest"]


def test_a_registry_with_credentials_gets_a_temporary_secret(
        cli: Cli, cluster: Cluster, api: client.ApiClient, v1: client.CoreV1Api,
        pod_tls_basic_registry: RegistryUnderTest) -> None:
    assert pod_tls_basic_registry.password is not None
    secret(v1, "pull-tls", pod_tls_basic_registry, pod_tls_basic_registry.password)
    make_pod(v1, "private", imagePullSecrets=[{"name": "pull-tls"}])
    r = on_node(cli, cluster, "private", pod_tls_basic_registry, "--creds",
                f"{pod_tls_basic_registry.username}:{pod_tls_basic_registry.password}")
    assert r.code == 0, r.err
    digest = r.json()["images"]["counter"]["digest"]
    restored = v1.read_namespaced_pod(r.json()["destination_pod"], "default")
    record = json.loads(restored.metadata.annotations["sim.migrate.dev/restored.counter"])
    assert record["imageID"].endswith(digest)
    # The Job's process saw no credentials but the Secret's (its environment is a
    # pod's): the push worked through the mounted Secret, deleted afterwards.
    made = [a.split()[-1] for a in journal_actions(r.json()["id"])
            if a.startswith("created Secret")]
    assert len(made) == 1 and made[0].startswith("default/migrate-registry-")
    assert f"deleted Secret {made[0]}" in journal_actions(r.json()["id"])
    assert leftovers(api) == ([], [])
    assert not list((cluster.node_dir("node-a") / "var/lib/kubelet/pods").glob(
        "*/volumes/kubernetes.io~secret/registry-auth"))


@pytest.mark.parametrize("kind", ["Secret", "Job"])
def test_a_create_whose_answer_was_lost_leaves_nothing_behind(
        cli: Cli, cluster: Cluster, api: client.ApiClient, v1: client.CoreV1Api,
        pod_tls_basic_registry: RegistryUnderTest, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """The API server made the Secret (the registry's credentials) or the Job, and its
    answer never came: their names were known only from it, so the rollback left them
    (the Secret with the password in it). Now each has the run's own name, recorded
    before the create."""
    from migrate.adapters import kube
    from migrate.errors import ClusterError

    name = f"lost-{kind.lower()}"
    pod = make_pod(v1, name)
    create = f"create_{kind.lower()}"
    monkeypatch.setattr(kube, create, done_then(getattr(kube, create), ClusterError(
        f"{create}: the connection was reset", hint="retry")))
    r = on_node(cli, cluster, name, pod_tls_basic_registry, "--creds",
                f"{pod_tls_basic_registry.username}:{pod_tls_basic_registry.password}")
    assert r.code == 6, r.err
    assert r.json()["outcome"] == "rolled-back"
    assert leftovers(api) == ([], [])
    actions = journal_actions(r.json()["id"])
    assert [a for a in actions if a.startswith(f"deleted {kind} default/migrate-")], actions
    assert_untouched(v1, name, pod.metadata.uid)
    # The Job's pod goes with it, in the background: waited for (see the probe's test).
    wait_for(lambda: not [p for p in v1.list_namespaced_pod("default").items
                          if p.metadata.name.startswith(f"migrate-build-{name}-")],
             what="the build Job's pod gone")


def test_a_failing_build_fails_the_migration_and_rolls_back(
        cli: Cli, cluster: Cluster, api: client.ApiClient, v1: client.CoreV1Api,
        pod_tls_basic_registry: RegistryUnderTest) -> None:
    assert pod_tls_basic_registry.password is not None
    secret(v1, "wrong-creds", pod_tls_basic_registry, "not-the-password")
    pod = make_pod(v1, "denied")
    r = on_node(cli, cluster, "denied", pod_tls_basic_registry, "--creds",
                f"{pod_tls_basic_registry.username}:{pod_tls_basic_registry.password}",
                "--registry-secret", "wrong-creds")
    assert r.code == 6, r.err  # a cluster error: the Job failed
    lines = r.err.splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    job = error.split("the build Job ")[1].split()[0]
    # The build's own error, out of its termination message (its output's tail).
    assert error == (f"error: build: the build Job {job} failed (exit 8): "
                     f"{pod_tls_basic_registry.host}: login failed: HTTP 401 (UNAUTHORIZED: "
                     "authentication required) as 'alice'")
    assert lines[lines.index(error) + 1] == (
        "hint: check the user and password (--creds USER:PASS or --authfile FILE); "
        f"kubectl logs -n default job/{job}")
    assert r.json()["outcome"] == "rolled-back"
    assert_untouched(v1, "denied", pod.metadata.uid)
    assert leftovers(api) == ([], [])  # the failed Job is gone; the named Secret is not ours
    assert v1.read_namespaced_secret("wrong-creds", "default").metadata.name == "wrong-creds"


def test_a_registry_on_loopback_is_refused_before_the_checkpoint(
        cli: Cli, cluster: Cluster, api: client.ApiClient, v1: client.CoreV1Api,
        plain_registry: RegistryUnderTest) -> None:
    # The Job's pod has a loopback of its own: its push could never reach this registry.
    # (These node agents run Jobs on this host, where it would work: a real pod's fails,
    # seen on the real nodes, after the checkpoint, with "connection refused".)
    pod = make_pod(v1, "looped")
    reach = f"the Job's pod cannot reach the registry {plain_registry.host}: a loopback " \
            "address is the pod's own"
    r = on_node(cli, cluster, "looped", plain_registry)
    assert r.code == 2, r.err
    assert r.err.splitlines()[:2] == [f"error: --build-on node, and {reach}",
                                      f"hint: {POD_REACH_HINT}"]
    # Chosen because the archives are not readable here: said so.
    r = cli("pod", "looped", "--to", "node-b", "--tool-image", TOOL, "--registry",
            f"localhost:{plain_registry.registry.port}/migrations", "--kubeconfig",
            cluster.kubeconfig, "--delete-emptydir-data")
    assert (r.code, r.err.splitlines()[0]) == (2, (
        "error: the image build runs in a Job on the node (the archives are not readable "
        f"here), and the Job's pod cannot reach the registry localhost:"
        f"{plain_registry.registry.port}: a loopback address is the pod's own"))
    assert_untouched(v1, "looped", pod.metadata.uid)
    assert leftovers(api) == ([], [])


def test_doctor_probe_builds_on_the_node_where_the_archive_is_not_readable_here(
        cli: Cli, cluster: Cluster, api: client.ApiClient, v1: client.CoreV1Api,
        pod_tls_basic_registry: RegistryUnderTest) -> None:
    """The production case: migrate runs away from the nodes, so the probe's image is
    built by the tool's image in a Job on the source node, pushing with a temporary
    Secret from --creds; everything it made is removed but the archive, which only
    the node can remove (said in the row)."""
    reg = pod_tls_basic_registry
    before = {p.metadata.name for p in v1.list_namespaced_pod("default").items}
    r = cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-a", "--registry",
            f"{reg.host}/probes", "--creds", f"{reg.username}:{reg.password}",
            "--no-tls-verify", "--probe", "node-b", "--probe-source", "node-a",
            "--tool-image", TOOL, "--timeout", "120", "-o", "json")
    assert r.code == 0, r.err
    (row,) = r.json()["probes"]
    assert (row["status"], row["source"], row["node"]) == ("PASS", "node-a", "node-b"), row
    assert row["image"].startswith(f"{reg.host}/probes/")
    (archive,) = (cluster.node_dir("node-a") / "var/lib/kubelet/checkpoints").glob(
        "checkpoint-migrate-probe-*")
    assert row["leftovers"] == [
        f"archive /var/lib/kubelet/checkpoints/{archive.name} on node node-a"]
    assert leftovers(api) == ([], [])  # the build Job and its registry Secret are gone
    assert {p.metadata.name for p in v1.list_namespaced_pod("default").items
            if not p.metadata.deletion_timestamp} <= before


@pytest.mark.parametrize("kind", ["secret", "job"])
def test_a_probe_whose_create_answer_was_lost_leaves_nothing_behind(
        cli: Cli, cluster: Cluster, api: client.ApiClient, v1: client.CoreV1Api,
        pod_tls_basic_registry: RegistryUnderTest, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """The probe recorded what it made from the create's answer: one lost left the
    Secret (with the registry's password) or the Job behind."""
    from migrate.adapters import kube
    from migrate.errors import ClusterError

    reg = pod_tls_basic_registry
    before = {p.metadata.name for p in v1.list_namespaced_pod("default").items}
    create = f"create_{kind}"
    monkeypatch.setattr(kube, create, done_then(getattr(kube, create), ClusterError(
        f"{create}: the connection was reset", hint="retry")))
    r = cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-a", "--registry",
            f"{reg.host}/probes", "--creds", f"{reg.username}:{reg.password}",
            "--no-tls-verify", "--probe", "node-b", "--probe-source", "node-a",
            "--tool-image", TOOL, "--timeout", "120", "-o", "json")
    (row,) = r.json()["probes"]
    assert row["status"] == "FAIL" and row["message"].endswith("the connection was reset")
    assert leftovers(api) == ([], [])
    # The Job's pod goes with it, in the background: waited for, so that the next test
    # counts the pods it finds as its own.
    wait_for(lambda: {p.metadata.name for p in v1.list_namespaced_pod("default").items}
             <= before, what="the probe's pods gone")


def test_doctor_probe_refuses_a_loopback_registry_for_a_build_on_the_node(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
        plain_registry: RegistryUnderTest) -> None:
    before = {p.metadata.name for p in v1.list_namespaced_pod("default").items}
    r = cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-a", "--registry",
            f"{plain_registry.host}/probes", "--no-tls-verify", "--probe", "node-b",
            "--probe-source", "node-a", "--tool-image", TOOL, "-o", "json")
    assert r.code == 9, r.err
    (row,) = r.json()["probes"]
    # doctor has no --build-on: the hint says what it can do instead.
    assert (row["status"], row["stage"], row["hint"]) == ("FAIL", None, (
        "give --registry an address or name the cluster's pods reach; or make the archives "
        "readable here (MIGRATE_NODE_ROOT)"))
    assert row["message"].endswith(f"cannot reach the registry {plain_registry.host}: a "
                                   "loopback address is the pod's own"), row["message"]
    # Refused before the probe's pod existed.
    assert {p.metadata.name for p in v1.list_namespaced_pod("default").items} == before
