"""`migrate prune` on the nodes of the real control plane, and `migrate schedule prune`.

The node agents run each prune Job's container as the real CLI
(e2e/nodes/toolrun.py) with the node's checkpoint directory mounted; nothing
here reads a node's files unless MIGRATE_NODE_ROOT says where they are. The
scheduled prune runs as its own ServiceAccount, whose ClusterRole has
exactly the rules `incluster.prune_rules()` derives, and starts the node
Jobs itself.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from migrate.pipeline import incluster
from migrate.pipeline.journal import Journal
from migrate.validation import validate
from tests.cluster import Kubectl, api_client, node_agents
from tests.conftest import Result
from tests.test_prune import archive
from tests.test_schedule import documents, fire, pod_log

TOOL = "localhost/migrate:test"
Cli = Callable[..., Result]
pytestmark = pytest.mark.controlplane


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
            cp_kubectl: Kubectl) -> Iterator[Cluster]:
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), tool_images=(TOOL,),
                     start_latency=0.02, stop_latency=0.02, tool_timeout=120) as world:
        try:
            yield world
        finally:  # waited for: the next module may create migrate-system again
            cp_kubectl(real_cp.admin_kubeconfig, "delete", "--ignore-not-found", "--timeout=120s",
                       "namespace/migrate-system", "clusterrole/migrate-prune",
                       "clusterrolebinding/migrate-prune:migrate-system")


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    with api_client(cluster.kubeconfig) as admin:
        yield admin


@pytest.fixture
def dirs(cluster: Cluster) -> Iterator[dict[str, Path]]:
    """Each node's checkpoint directory (on the node's files), emptied after the test."""
    out = {}
    for node in ("node-a", "node-b"):
        d = cluster.node_dir(node) / "var/lib/kubelet/checkpoints"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        out[node] = d
    yield out
    for d in out.values():
        for p in d.iterdir():
            p.unlink()


def jobs(api: client.ApiClient, namespace: str) -> list[str]:
    """The node prune Jobs still there."""
    found = client.BatchV1Api(api).list_namespaced_job(namespace,
                                                       label_selector="migrate.dev/prune")
    return [j.metadata.name for j in found.items if not j.metadata.deletion_timestamp]


def test_a_job_on_each_node_prunes_its_archives(cli: Cli, cluster: Cluster,
                                                api: client.ApiClient, dirs: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    old_a = archive(dirs["node-a"], "web", 30)
    new_a = archive(dirs["node-a"], "web", 0)
    old_b = archive(dirs["node-b"], "db", 30, container="pg")
    # A migration elsewhere claims `moving`: its archive is kept though old.
    client.CoreV1Api(api).create_namespaced_pod("default", {
        "metadata": {"name": "moving", "annotations": {
            "migrate.dev/claimed-by": "pod-moving-20261201t000000-abcd"}},
        "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "x.example/c"}]}})
    claimed = archive(dirs["node-b"], "moving", 30, container="c")
    r = cli("prune", "--older-than", "7d", "--where", "node", "--tool-image", TOOL,
            "--kubeconfig", cluster.kubeconfig, "-n", "default", "-o", "json")
    assert r.code == 0, r.err
    rep = r.json()
    validate(rep, "prune.schema.json", "prune -o json")
    by_node = {n["node"]: n for n in rep["nodes"]}
    assert set(by_node) == set(cluster.node_names)
    assert [p["name"] for p in by_node["node-a"]["pruned"]] == [old_a]
    assert [p["name"] for p in by_node["node-b"]["pruned"]] == [old_b]
    assert by_node["node-b"]["protected"] == [claimed]
    assert all(n["where"].startswith("job migrate-prune-") for n in rep["nodes"])
    assert sorted(os.listdir(dirs["node-a"])) == [new_a]
    assert sorted(os.listdir(dirs["node-b"])) == [claimed]
    assert jobs(api, "default") == []  # deleted once their reports were read


def test_an_archive_taken_after_the_prune_read_what_runs_need_is_kept(
        cli: Cli, cluster: Cluster, dirs: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The node Job lists its directory seconds or minutes after the claims and journals
    were read: a migration that claimed its pod and checkpointed meanwhile had its archive
    pruned under it (`--older-than 0s`, `--keep 0`, or `--max-size` filled by archives of
    runs in flight). Archives taken in the minutes before the prune began are kept."""
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    old = archive(dirs["node-a"], "web", 1)
    fresh = archive(dirs["node-a"], "moving", 0)
    r = cli("prune", "--node", "node-a", "--older-than", "0s", "--where", "node",
            "--tool-image", TOOL, "--kubeconfig", cluster.kubeconfig, "-n", "default",
            "-o", "json")
    assert r.code == 0, r.err
    (node,) = r.json()["nodes"]
    assert [p["name"] for p in node["pruned"]] == [old]
    assert node["protected"] == [fresh]
    assert os.listdir(dirs["node-a"]) == [fresh]


def test_a_node_job_that_prunes_partly_reports_what_it_did(
        cli: Cli, cluster: Cluster, dirs: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One archive could not be removed: the Job reported, then exited 10, and was taken
    for failed: its report dropped (nothing pruned, the error a cut piece of JSON)."""
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    stuck = archive(dirs["node-a"], "web", 30)
    gone = archive(dirs["node-a"], "db", 30)
    # Immutable: even the Job's root may not unlink it (EPERM).
    if subprocess.run(["chattr", "+i", str(dirs["node-a"] / stuck)]).returncode:
        pytest.skip("no chattr +i on this file system")
    try:
        r = cli("prune", "--node", "node-a", "--older-than", "7d", "--where", "node",
                "--tool-image", TOOL, "--kubeconfig", cluster.kubeconfig, "-n", "default",
                "-o", "json")
    finally:
        subprocess.run(["chattr", "-i", str(dirs["node-a"] / stuck)], check=True)
    assert r.code == 10, r.err
    (node,) = r.json()["nodes"]
    assert [p["name"] for p in node["pruned"]] == [gone]
    assert [(f["name"], f["why"]) for f in node["failed"]] == [
        (stuck, "Operation not permitted")], node["failed"]
    assert node["where"].startswith("job migrate-prune-node-a-")


def test_local_with_node_root_keeps_what_a_journal_needs(
        cli: Cli, cluster: Cluster, dirs: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_NODE_ROOT", cluster.node_root)
    needed = archive(dirs["node-a"], "web", 30)
    old = archive(dirs["node-a"], "web", 20)
    journal = Journal.create(Path(os.environ["MIGRATE_STATE_DIR"]), "pod", "web", {},
                             ["checkpoint"])
    journal.record("checkpointed", container="app", node="node-a",
                   archive=f"/var/lib/kubelet/checkpoints/{needed}")
    journal.unlock()  # interrupted: `migrate resume` would build from the archive
    r = cli("prune", "--node", "node-a", "--older-than", "7d", "--kubeconfig",
            cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    node = r.json()["nodes"][0]
    assert (node["where"], node["protected"]) == ("local", [needed])
    assert [p["name"] for p in node["pruned"]] == [old]
    assert os.listdir(dirs["node-a"]) == [needed]


def test_where_a_prune_can_run_is_checked_first(cli: Cli, cluster: Cluster,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    r = cli("prune", "--node", "node-a", "--keep", "1", "--where", "local", "--kubeconfig",
            cluster.kubeconfig)
    assert r.code == 2
    assert r.err.splitlines()[0] == ("error: --where local: the archives of node-a cannot be "
                                     "pruned here: this machine is not node-a and "
                                     "MIGRATE_NODE_ROOT is not set")
    r = cli("prune", "--keep", "1", "--kubeconfig", cluster.kubeconfig)
    assert r.code == 2 and "a Job on the node needs the tool's container image" in r.err
    r = cli("prune", "--node", "node-z", "--keep", "1", "--kubeconfig", cluster.kubeconfig)
    assert r.code == 4 and r.err.startswith("error: --node node-z"), r.err


def test_a_node_whose_job_fails_is_reported_and_the_others_pruned(
        cli: Cli, cluster: Cluster, dirs: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    old = archive(dirs["node-a"], "web", 30)
    dirs["node-b"].rmdir()
    dirs["node-b"].write_text("not a directory")  # the hostPath mount fails on node-b
    try:
        r = cli("prune", "--older-than", "1d", "--where", "node", "--tool-image", TOOL,
                "--kubeconfig", cluster.kubeconfig, "-n", "default", "-o", "json")
    finally:
        dirs["node-b"].unlink()
        dirs["node-b"].mkdir(mode=0o700)
    assert r.code == 10, r.err
    rep = r.json()
    validate(rep, "prune.schema.json", "prune -o json")
    assert rep["failed_nodes"] == ["node-b"] and rep["pruned"] == 1
    assert old not in os.listdir(dirs["node-a"])
    lines = r.err.splitlines()
    assert lines[0].startswith("error: prune: 1 of 2 node(s) not fully pruned; node-b: the "
                               "prune Job migrate-prune-node-b-"), lines
    assert lines[0].endswith("hostPath type check failed: /var/lib/kubelet/checkpoints is not "
                             "a directory"), lines


def test_a_node_without_a_checkpoint_directory_has_nothing_to_prune(
        cli: Cli, cluster: Cluster, dirs: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    dirs["node-b"].rmdir()  # never checkpointed, the ContainerCheckpoint gate off
    monkeypatch.setenv("MIGRATE_NODE_ROOT", cluster.node_root)
    r = cli("prune", "--node", "node-b", "--keep", "1", "--kubeconfig", cluster.kubeconfig,
            "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["nodes"][0]["where"] == "local" and not dirs["node-b"].exists()
    monkeypatch.delenv("MIGRATE_NODE_ROOT")
    r = cli("prune", "--node", "node-b", "--keep", "1", "--where", "node", "--tool-image", TOOL,
            "--kubeconfig", cluster.kubeconfig, "-n", "default", "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["nodes"][0]["pruned"] == []
    # The Job's mount made it; the prune made it 0700, as the kubelet makes it.
    assert dirs["node-b"].is_dir() and dirs["node-b"].stat().st_mode & 0o777 == 0o700


def test_a_scheduled_prune_runs_with_exactly_its_rules(
        cli: Cli, cluster: Cluster, api: client.ApiClient, dirs: dict[str, Path],
        cp_kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    old = archive(dirs["node-a"], "web", 30)
    new = archive(dirs["node-b"], "web", 0)
    r = cli("schedule", "prune", "--cron", "30 3 * * *", "--image", TOOL, "--apply",
            "--kubeconfig", cluster.kubeconfig, "-o", "json", "--", "--older-than", "7d")
    assert r.code == 0, r.err
    assert [(a["kind"], a["name"], a["action"]) for a in r.json()][1:] == [
        ("ServiceAccount", "migrate-prune", "created"),
        ("ClusterRole", "migrate-prune", "created"),
        ("ClusterRoleBinding", "migrate-prune:migrate-system", "created"),
        ("CronJob", "migrate-prune", "created")]
    role = client.RbacAuthorizationV1Api(api).read_cluster_role("migrate-prune")
    assert [(r.api_groups, r.resources, r.verbs) for r in role.rules] == [
        (r["apiGroups"], r["resources"], r["verbs"]) for r in incluster.prune_rules()]
    job = fire(cluster, api, "migrate-system", "migrate-prune", cp_kubectl)
    log = pod_log(cluster, "migrate-system", job.metadata.name)
    assert job.status.succeeded == 1, log
    assert old in log and os.listdir(dirs["node-a"]) == [] and os.listdir(dirs["node-b"]) == [new]
    assert jobs(api, "migrate-system") == []


def test_the_prune_role_is_minimal() -> None:
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in incluster.prune_rules()}
    assert rules == {("", "nodes"): ["get", "list"], ("", "pods"): ["list"],
                     ("batch", "jobs"): ["create", "delete", "list", "watch"]}


def test_schedule_prune_renders_and_checks_its_options(cli: Cli) -> None:
    objects = documents(cli("schedule", "prune", "--cron", "30 3 * * *", "--image", TOOL,
                            "--", "--older-than", "7d", "--keep", "2"))
    assert [o["kind"] for o in objects] == ["Namespace", "ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding", "CronJob"]
    pod = objects[-1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "migrate-prune"
    assert pod["containers"][0]["args"] == [
        "prune", "--where", "node", "--tool-image", TOOL, "--namespace", "migrate-system",
        "--older-than", "7d", "--keep", "2"]
    registry = documents(cli("schedule", "prune", "--cron", "@daily", "--image", TOOL,
                             "--registry-secret", "pull", "--", "--registry", "reg.example/c",
                             "--older-than", "30d"))[-1]
    spec = registry["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["args"] == ["prune", "--registry", "reg.example/c",
                                             "--older-than", "30d"]
    assert spec["volumes"][-1] == {"name": "registry-auth", "secret": {"secretName": "pull"}}
    for args, first in [
            ((), "error: say what the scheduled prune removes: --older-than, --keep or "
                 "--max-size (after --)"),
            (("--older-than", "7d", "--dry-run"),
             "error: prune option --dry-run makes no sense on a schedule"),
            (("--keep", "x"), "error: prune option: Invalid value for '--keep': 'x' is not a "
                              "valid int range.")]:
        r = cli("schedule", "prune", "--cron", "@daily", "--image", TOOL, "--", *args)
        assert r.code == 2 and r.err.splitlines()[0] == first, r.err
    assert json.dumps(objects)  # plain data
