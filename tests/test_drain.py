"""`migrate drain` end to end: the real control plane (its scheduler, workload
controllers, disruption budgets and eviction API) with node agents, the real
registry, the native builder. Each test gets fresh nodes: a drain empties a
whole node, so tests cannot share them.

node-a is drained; node-b and node-c restore; node-d runs CRI-O with restores
turned off (checkpoint_only: the kubelet refuses the restore) and carries the
label disk=special and a taint restore=off:NoSchedule; node-e runs containerd
(neither a source nor a destination).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster as Nodes
from e2e.nodes import NodeConfig, RegistryConfig
from migrate.errors import ClusterError, TransientRegistryError
from migrate.pipeline import migration
from migrate.pipeline.drain.plan import BARE_POD, LOCAL_DATA
from migrate.pipeline.journal import Journal
from migrate.validation import validate
from tests.cluster import api_client, cordoned, node_agents, wait_for
from tests.conftest import Result, done_then, interrupt_at, journal_id_of
from tests.registries import RegistryUnderTest

Cli = Callable[..., Result]
NODES = ("node-a", "node-b", "node-c", "node-d", "node-e")
IMAGE = "quay.io/adrianreber/counter:latest"
RESTORE_OFF = {"key": "restore", "value": "off", "effect": "NoSchedule"}


class Cluster:
    """Fresh node agents and clients for their cluster."""

    def __init__(self, nodes: Nodes, api: client.ApiClient) -> None:
        self.nodes = nodes
        self.v1 = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.batch = client.BatchV1Api(api)

    # -- making workloads on node-a ------------------------------------------------------

    def pod(self, name: str, node: str = "node-a", labels: dict[str, str] | None = None,
            owner: tuple[str, str] | None = None, annotations: dict[str, str] | None = None,
            **spec: Any) -> Any:
        meta: dict[str, Any] = {"name": name, "labels": labels or {"app": name},
                                "annotations": annotations or {}}
        if owner and owner[0] == "StatefulSet":
            # What the StatefulSet controller checks before it adopts a pod as its own.
            meta["labels"]["statefulset.kubernetes.io/pod-name"] = name
            spec = {"hostname": name, "subdomain": owner[1], **spec}
        body = {"metadata": meta, "spec": {"nodeName": node, "containers": [
            {"name": "counter", "image": IMAGE,
             "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}], **spec}}
        self.v1.create_namespaced_pod("default", body)
        running = wait_for(lambda: (p := self.v1.read_namespaced_pod(name, "default"))
                           .status.phase == "Running" and p, what=f"{name} Running")
        return self._adopted(running, owner, node) if owner else running

    def _adopted(self, pod: Any, owner: tuple[str, str], node: str) -> Any:
        """The pod, once a real owner of that kind and name has adopted it (the real
        garbage collector deletes a pod whose owner does not exist). Updates OnDelete:
        the controller keeps the pod it adopted instead of replacing it with its own."""
        kind, name = owner
        labels = {"app": pod.metadata.name}
        template = {"metadata": {"labels": labels}, "spec": {
            "containers": [{"name": "counter", "image": IMAGE}],
            "nodeSelector": {"kubernetes.io/hostname": node}}}
        spec = {"selector": {"matchLabels": labels}, "template": template,
                "updateStrategy": {"type": "OnDelete"}}
        if kind == "StatefulSet":
            self.apps.create_namespaced_stateful_set("default", {
                "metadata": {"name": name}, "spec": {**spec, "replicas": 1,
                                                     "serviceName": name}})
        else:
            self.apps.create_namespaced_daemon_set("default", {
                "metadata": {"name": name}, "spec": spec})

        def adopted() -> Any:
            p = self.v1.read_namespaced_pod(pod.metadata.name, "default")
            refs = [r for r in p.metadata.owner_references or [] if r.controller]
            return p if refs and (refs[0].kind, refs[0].name) == owner else None

        return wait_for(adopted, what=f"{pod.metadata.name} adopted by {kind} {name}")

    def deployment(self, name: str, replicas: int, **template_spec: Any) -> list[Any]:
        """A Deployment whose pods all run on node-a."""
        labels = {"app": name}
        return self._on_node_a(lambda: self.apps.create_namespaced_deployment("default", {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "containers": [{"name": "counter", "image": IMAGE}],
                         **template_spec}}}}), f"app={name}", replicas)

    def job(self, name: str) -> Any:
        """A Job whose pod runs (for ten minutes) on node-a."""
        (pod,) = self._on_node_a(lambda: self.batch.create_namespaced_job("default", {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {"sim.migrate.dev/run-seconds": "600"}},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "task", "image": IMAGE}]}}}}),
            f"app={name}", 1)
        return pod

    def _on_node_a(self, create: Callable[[], Any], selector: str, count: int) -> list[Any]:
        # The scheduler spreads pods: cordon the other nodes while it places these.
        with cordoned(self.v1, [n for n in NODES if n != "node-a"]):
            create()
            pods = wait_for(lambda: len(running := self.running(selector)) == count
                            and running, what=f"{count} pod(s) {selector}")
        assert {p.spec.node_name for p in pods} == {"node-a"}
        return list(pods)

    def pdb(self, name: str, app: str, **spec: Any) -> None:
        self.policy.create_namespaced_pod_disruption_budget("default", {
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": app}}, **spec}})
        wait_for(lambda: self.policy.read_namespaced_pod_disruption_budget(
            name, "default").status.observed_generation, what=f"{name} observed")

    # -- looking ---------------------------------------------------------------------

    def running(self, selector: str = "") -> list[Any]:
        return [p for p in self.v1.list_namespaced_pod("default",
                                                        label_selector=selector).items
                if not p.metadata.deletion_timestamp and p.status.phase == "Running"]

    def where(self) -> dict[str, str]:
        return {p.metadata.name: p.spec.node_name for p in self.running()}

    def cordoned(self, node: str) -> bool:
        return bool(self.v1.read_node(node).spec.unschedulable)


@pytest.fixture
def make_cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
                 plain_registry: RegistryUnderTest,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Cluster]]:
    with ExitStack() as stack:
        def make(**configs: NodeConfig) -> Cluster:
            node_config = {"node-d": NodeConfig(restore_level="checkpoint_only",
                                                labels={"disk": "special"}, taints=[RESTORE_OFF]),
                           "node-e": NodeConfig(runtime="containerd://2.4.0"), **configs}
            nodes = stack.enter_context(node_agents(
                real_cp, tmp_path_factory.mktemp("nodes"), nodes=NODES,
                node_config=node_config, start_latency=0.05, stop_latency=0.05,
                registries=RegistryConfig(insecure=(plain_registry.host,))))
            # The tool reads archives where the nodes' directories are "shared".
            monkeypatch.setenv("MIGRATE_NODE_ROOT", nodes.node_root)
            return Cluster(nodes, stack.enter_context(api_client(nodes.kubeconfig)))
        yield make


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()


@pytest.fixture
def drain(cli: Cli, plain_registry: RegistryUnderTest) -> Callable[..., Result]:
    def run(c: Cluster, *args: str) -> Result:
        # The defaults first: a later option given by the test wins.
        return cli("drain", "--kubeconfig", c.nodes.kubeconfig, "--registry",
                   f"{plain_registry.host}/drains", "--no-tls-verify", "--timeout", "20",
                   "--delete-emptydir-data", *args)
    return run


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in report["pods"]}


def test_a_node_is_drained(drain: Callable[..., Result], cli: Cli, cluster: Cluster) -> None:
    cluster.pod("solo-1")
    cluster.pod("solo-2")
    web = {p.metadata.name for p in cluster.deployment("web", 2)}
    cluster.pod("db-0", owner=("StatefulSet", "db"))
    task = cluster.job("nightly").metadata.name
    cluster.pod("agent-x1", owner=("DaemonSet", "agent"))
    cluster.pod("static-node-a", annotations={"kubernetes.io/config.mirror": "abc"})
    cluster.pod("cache", volumes=[{"name": "data", "hostPath": {"path": "/var/cache"}}])

    # --force: `cache`, a bare pod with its data on the node, is evicted too.
    r = drain(cluster, "node-a", "--concurrency", "3", "--force", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "drain.schema.json", "drain -o json")
    pods = by_name(report)
    assert report["outcome"] == "succeeded" and report["cordoned"]
    assert {n: p["outcome"] for n, p in pods.items()} == {
        "solo-1": "migrated", "solo-2": "migrated", **{n: "migrated" for n in web},
        "db-0": "evicted", task: "evicted", "cache": "evicted", "agent-x1": "skipped",
        "static-node-a": "skipped"}
    assert pods["db-0"]["reason"].startswith("StatefulSet db: ")
    assert pods[task]["reason"] == "Job nightly: a Job counts its pods and would start another"
    assert pods["cache"]["reason"] == ("volume data is a hostPath: its data stays on the "
                                       "node")
    assert pods["agent-x1"]["reason"] == "DaemonSet agent: it runs a pod on every node"
    assert cluster.cordoned("node-a")
    where = cluster.where()
    # Only what a drain leaves is left on node-a.
    assert sorted(n for n, node in where.items() if node == "node-a") == [
        "agent-x1", "static-node-a"]
    restored = {n: p["restored_pod"] for n, p in pods.items() if p["outcome"] == "migrated"}
    assert {where[r] for r in restored.values()} == {"node-b", "node-c"}  # spread, least loaded
    assert all(pods[n]["destination"] == where[r] for n, r in restored.items())
    # The Deployment kept its replica count; its ReplicaSet owns the restored pods.
    replicaset = cluster.apps.list_namespaced_replica_set("default").items[0]
    assert replicaset.spec.replicas == 2
    owned = {p.metadata.name for p in cluster.running("app=web")
             if p.metadata.owner_references
             and p.metadata.owner_references[0].uid == replicaset.metadata.uid}
    assert owned == {restored[n] for n in web}
    assert all(pods[n]["owner"] == {"kind": "ReplicaSet", "name": replicaset.metadata.name}
               for n in web)
    # Each migration is a `migrate pod` run with its own journal.
    history = {h["id"]: h for h in cli("history", "-o", "json").json()}
    for name in restored:
        (journal,) = pods[name]["journals"]
        assert history[journal]["outcome"] == "succeeded"
    assert report["api_requests"] > 0


def test_replicas_moved_in_the_same_second_get_images_of_their_own(
        drain: Callable[..., Result], cluster: Cluster, plain_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Deployment's replicas share its image repositories, and a drain starts several in
    the same second; their tags were the second alone, so the last push took the others'
    tag (an encrypted image is pulled by its tag: a restored pod would get another
    replica's memory)."""
    from migrate.pipeline import preflight

    twins = {p.metadata.name: p.metadata.uid for p in cluster.deployment("twins", 2)}
    frozen = dt.datetime(2026, 12, 5, 1, 2, 3, tzinfo=dt.UTC)
    monkeypatch.setattr(preflight, "datetime", type("Frozen", (dt.datetime,), {
        "now": staticmethod(lambda tz=None: frozen)}))
    r = drain(cluster, "node-a", "--pod-selector", "app=twins", "--skip-rest", "-o", "json")
    assert r.code == 0, r.err
    images = {}
    for name, pod in by_name(r.json()).items():
        restored = cluster.v1.read_namespaced_pod(pod["restored_pod"], "default")
        images[name] = restored.spec.containers[0].image.partition("@")[0]
    repo = f"{plain_registry.host}/drains/default-twins-counter"
    assert images == {name: f"{repo}:checkpoint-20261205010203-{uid[:8]}"
                      for name, uid in twins.items()}


def test_the_table_and_the_dry_run_change_nothing(drain: Callable[..., Result], cli: Cli,
                                                  cluster: Cluster) -> None:
    cluster.pod("solo")
    cluster.pod("db-0", owner=("StatefulSet", "db"))
    before = {p.metadata.name: p.metadata.uid for p in cluster.running()}
    r = drain(cluster, "node-a", "--dry-run")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert re.split(r"\s{3,}", lines[0]) == ["NAMESPACE", "POD", "ACTION", "TO", "REASON"]
    assert re.split(r"\s{3,}", lines[1]) == ["default", "solo", "migrate", "node-b",
                                             "bare pod: the restored copy replaces it"]
    assert re.split(r"\s{3,}", lines[2])[:5] == ["default", "db-0", "evict", "-",
                                                  "StatefulSet db: a StatefulSet pod's name "
                                                  "and storage cannot be taken by a copy "
                                                  "while it exists"]
    assert lines[3:] == ["dry run, nothing changed: 1 to migrate, 1 to evict"]
    r = drain(cluster, "node-a", "--dry-run", "-o", "json")
    validate(r.json(), "drain.schema.json", "drain --dry-run -o json")
    assert (r.json()["summary"], r.json()["id"]) == ({"migrate": 1, "evict": 1}, None)
    # --to and --pod-selector, planned: a Deployment's pod left out is evicted; a bare pod
    # left out stays blocked (nothing would start it again) unless --force.
    cluster.pod("other")
    [web] = [p.metadata.name for p in cluster.deployment("web", 1)]
    before = {p.metadata.name: p.metadata.uid for p in cluster.running()}
    r = drain(cluster, "node-a", "--dry-run", "--to", "node-c", "--pod-selector",
              "app in (solo)", "-o", "json")
    assert r.code == 0, r.err
    assert {p["name"]: (p["action"], p["destination"], p["reason"])
            for p in r.json()["pods"]} == {
        "solo": ("migrate", "node-c", "bare pod: the restored copy replaces it"),
        "other": ("blocked", None, f"not matched by --pod-selector; {BARE_POD}"),
        web: ("evict", None, "not matched by --pod-selector"),
        "db-0": ("evict", None, "StatefulSet db: a StatefulSet pod's name and storage cannot "
                 "be taken by a copy while it exists")}
    r = drain(cluster, "node-a", "--dry-run", "--pod-selector", "app in (solo)", "--force",
              "-o", "json")
    assert {p["name"]: p["action"] for p in r.json()["pods"]}["other"] == "evict"
    assert not cluster.cordoned("node-a")
    assert {p.metadata.name: p.metadata.uid for p in cluster.running()} == before
    assert cli("history", "-o", "json").json() == []
    assert not (Path(os.environ["MIGRATE_STATE_DIR"]) / "drain").exists()


def test_budgets_hold_evictions_and_migrations_until_they_allow(
        drain: Callable[..., Result], cluster: Cluster) -> None:
    guarded = {p.metadata.name for p in cluster.deployment("guarded", 2)}
    # A hostPath volume: these pods are evicted, and the ReplicaSet replaces them elsewhere.
    kept = {p.metadata.name for p in cluster.deployment("kept", 2, volumes=[
        {"name": "logs", "hostPath": {"path": "/var/log/kept"}}])}
    cluster.pdb("guarded-pdb", "guarded", minAvailable=2)  # no disruption allowed
    cluster.pdb("kept-pdb", "kept", minAvailable=2)

    def open_budgets() -> None:
        # Once every pod waits for its budget (the drain journals it), allow one disruption.
        wait_for(lambda: len(waiting_pods()) == 4, what="the drain to wait for budgets")
        for name in ("guarded-pdb", "kept-pdb"):
            cluster.policy.patch_namespaced_pod_disruption_budget(
                name, "default", {"spec": {"minAvailable": 1}})

    opener = threading.Thread(target=open_budgets)
    opener.start()
    r = drain(cluster, "node-a", "--concurrency", "4", "-o", "json")
    opener.join()
    assert r.code == 0, r.err
    pods = by_name(r.json())
    # On failure: each pod's plan and outcome, and the nodes as the drain found them (once
    # under a loaded full suite the guarded pods were planned for eviction: no destination).
    why = [{k: pods[n].get(k) for k in ("action", "reason", "destination", "outcome", "error")}
           for n in sorted(guarded | kept)], cluster_nodes(cluster)
    assert {pods[n]["outcome"] for n in guarded} == {"migrated"}, why
    assert {pods[n]["outcome"] for n in kept} == {"evicted"}, why
    assert all(pods[n]["budgets"] == ["guarded-pdb"] for n in guarded)
    assert all(pods[n]["budget_wait_seconds"] > 0 for n in guarded | kept)
    # The ReplicaSet replaces the evicted pods, elsewhere: node-a is cordoned.
    replaced = wait_for(lambda: len(pods := cluster.running("app=kept")) == 2 and pods,
                        what="kept's replacements")
    assert "node-a" not in {p.spec.node_name for p in replaced}


def cluster_nodes(cluster: Cluster) -> list[tuple[str, bool, list[str], list[str]]]:
    """Each node: schedulable, its taints, its conditions that are True."""
    return [(n.metadata.name, not n.spec.unschedulable,
             [t.key for t in n.spec.taints or []],
             [c.type for c in n.status.conditions or [] if c.status == "True"])
            for n in cluster.v1.list_node().items]


def waiting_pods() -> set[str]:
    """Pods the drain under way has journaled as waiting."""
    journals = (Path(os.environ["MIGRATE_STATE_DIR"]) / "drain" / "journal").glob("*.json")
    return {a["pod"] for j in journals for a in json.loads(j.read_text())["actions"]
            if a["action"] == "waiting"}


def test_a_budget_that_never_allows_leaves_the_pods_and_says_so(
        drain: Callable[..., Result], cluster: Cluster) -> None:
    guarded = {p.metadata.name: p.metadata.uid for p in cluster.deployment("guarded", 2)}
    cluster.pdb("guarded-pdb", "guarded", minAvailable=2)
    r = drain(cluster, "node-a", "-o", "json", "--timeout", "1")
    assert r.code == 10, r.err
    # -o json: no progress on stderr, only the error
    assert r.err.startswith("error: drain of node-a: 2 of 2 pod(s) not drained: "), r.err
    pods = by_name(r.json())
    assert {pods[n]["outcome"] for n in guarded} == {"failed"}
    assert pods[next(iter(guarded))]["error"].startswith(
        "disruption budget default/guarded-pdb allows 0 disruption(s), 0 taken by "
        "migrations in flight")
    assert {p.metadata.name: p.metadata.uid for p in cluster.running("app=guarded")} == guarded


def test_a_destination_filling_up_sends_pods_elsewhere_then_blocks(
        drain: Callable[..., Result], make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(**{
        "node-b": NodeConfig(labels={"pool": "spare"}, capacity={"pods": "2"}),
        "node-c": NodeConfig(labels={"pool": "spare"}, capacity={"pods": "2", "cpu": "1"})})
    cluster.pod("big", containers=[{"name": "counter", "image": IMAGE, "resources": {
        "requests": {"cpu": "1500m"}}}], volumes=[])
    for i in range(1, 5):
        cluster.pod(f"p{i}")
    r = drain(cluster, "node-a", "--to-selector", "pool=spare", "--skip-rest", "-o", "json")
    assert r.code == 10, r.err
    pods = by_name(r.json())
    assert {n: (p["action"], p["destination"], p["outcome"]) for n, p in pods.items()} == {
        "big": ("migrate", "node-b", "migrated"), "p1": ("migrate", "node-c", "migrated"),
        "p2": ("migrate", "node-c", "migrated"), "p3": ("migrate", "node-b", "migrated"),
        "p4": ("blocked", None, "blocked")}
    assert pods["p4"]["reason"] == (
        "no destination fits: node node-b: not enough pods (the pod requests 1, 0 free); "
        "node node-c: not enough pods (the pod requests 1, 0 free)")
    assert cluster.where()["p4"] == "node-a"
    assert r.json()["failed"] == ["default/p4"]


def test_a_failed_migration_does_not_stop_the_others(drain: Callable[..., Result],
                                                     cluster: Cluster) -> None:
    # Only node-d fits this pod, and node-d refuses restores.
    pinned = cluster.pod("pinned", nodeSelector={"disk": "special"}, tolerations=[
        {"key": "restore", "operator": "Exists", "effect": "NoSchedule"}])
    cluster.pod("free")
    r = drain(cluster, "node-a", "-o", "json")
    assert r.code == 10, r.err
    assert r.err.startswith("error: drain of node-a: 1 of 2 pod(s) not drained: "
                            "default/pinned\nhint: the report says why; `migrate drain "
                            "--resume "), r.err
    pods = by_name(r.json())
    assert r.json()["outcome"] == "partial"
    assert (pods["pinned"]["destination"], pods["pinned"]["outcome"]) == ("node-d", "failed")
    assert pods["pinned"]["error"].startswith("verify: the restore of counter on node-d "
                                              "failed: CreateContainerError: ")
    assert pods["pinned"]["attempts"] == 1  # a refusal is not retried
    assert pods["free"]["outcome"] == "migrated"
    # The failed pod's migration was rolled back: the source runs on.
    assert cluster.v1.read_namespaced_pod("pinned", "default").metadata.uid == \
        pinned.metadata.uid
    assert cluster.where()["pinned"] == "node-a"
    assert not [n for n in cluster.where() if n.startswith("pinned-restored")]


def test_a_pod_that_left_the_node_before_its_turn_is_gone_not_failed(
        drain: Callable[..., Result], cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a drain's plan and a pod's turn (minutes, in a large drain) the pod's
    owner may delete or replace it, or its containers may end: the drain leaves such a
    pod as its plan would have, and succeeds."""
    cluster.pod("stays")
    cluster.pod("deleted")
    replaced = cluster.pod("replaced")
    cluster.pod("ends", restartPolicy="Never",
                annotations={"sim.migrate.dev/run-seconds": "4"})
    real = migration.plan

    def meanwhile(c: Any, settings: Any, req: Any) -> Any:
        if req.pod == "deleted":  # still terminating when preflight reads it
            cluster.v1.delete_namespaced_pod("deleted", "default")
        elif req.pod == "replaced":
            cluster.v1.delete_namespaced_pod("replaced", "default", grace_period_seconds=0)
            wait_for(lambda: "replaced" not in {
                p.metadata.name for p in cluster.v1.list_namespaced_pod("default").items},
                what="replaced gone")
            cluster.pod("replaced")
        elif req.pod == "ends":
            wait_for(lambda: cluster.v1.read_namespaced_pod("ends", "default")
                     .status.phase == "Succeeded", what="ends Succeeded")
        return real(c, settings, req)

    monkeypatch.setattr(migration, "plan", meanwhile)
    r = drain(cluster, "node-a", "--concurrency", "1", "-o", "json")
    assert r.code == 0, r.err
    pods = by_name(r.json())
    assert {n: (p["outcome"], p["error"], p["attempts"]) for n, p in pods.items()} == {
        "stays": ("migrated", None, 1), "deleted": ("gone", None, 0),
        "replaced": ("gone", None, 0), "ends": ("gone", None, 0)}
    assert r.json()["outcome"] == "succeeded"
    # The pod that took the name was not the drain's to move: it runs on, untouched.
    now = cluster.v1.read_namespaced_pod("replaced", "default")
    assert now.metadata.uid != replaced.metadata.uid and now.spec.node_name == "node-a"
    assert not [n for n in cluster.where() if "-restored" in n and not
                n.startswith("stays")]


def test_a_bug_in_one_pods_migration_fails_that_pod_only(
        drain: Callable[..., Result], cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception migrate did not foresee, in one pod's worker, is that pod's failure
    (named, with its type); the drain moves the others and says which failed."""
    from migrate.pipeline.drain import run

    cluster.pod("fine")
    buggy = cluster.pod("buggy")
    real = run.migrate_pod

    def bug_for_one(ctx: Any, entry: Any, deadline: float) -> dict[str, Any]:
        if entry.name == "buggy":
            raise RuntimeError("a bug")
        return real(ctx, entry, deadline)

    monkeypatch.setattr(run, "migrate_pod", bug_for_one)
    r = drain(cluster, "node-a", "-o", "json")
    assert r.code == 10, r.err
    assert "Traceback" not in r.err
    pods = by_name(r.json())
    assert (pods["buggy"]["outcome"], pods["buggy"]["error"]) == (
        "failed", "unexpected RuntimeError: a bug")
    assert pods["fine"]["outcome"] == "migrated"
    assert r.json()["failed"] == ["default/buggy"]
    # Never started: the pod runs on where it was.
    assert cluster.v1.read_namespaced_pod("buggy", "default").metadata.uid == \
        buggy.metadata.uid


def test_a_transient_failure_is_retried(drain: Callable[..., Result], cluster: Cluster) -> None:
    cluster.pod("flaky")
    # More failures than one API call retries: the first run fails and is rolled back.
    cluster.nodes.configure_node("node-a", fail_next_checkpoints=5)
    r = drain(cluster, "node-a", "-o", "json")
    assert r.code == 0, r.err
    flaky = by_name(r.json())["flaky"]
    assert (flaky["outcome"], flaky["attempts"], len(flaky["journals"])) == ("migrated", 2, 2)



def test_a_transient_failure_before_any_run_is_tried_as_often_as_any_other(
        drain: Callable[..., Result], cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry down when a pod's turn comes: its preflight fails before a run begins.
    Such tries were not counted (only runs begun were), so the worker tried again at once,
    for as long as the registry stayed down, and a Ctrl-C waited for it for ever."""
    cluster.pod("unlucky")
    real, tries = migration.plan, []

    def registry_down(cluster: Any, settings: Any, req: Any) -> Any:
        tries.append(time.monotonic())
        if len(tries) > 10:  # the old code's endless loop, ended for the test's sake
            raise ClusterError("tried more than ten times")
        raise TransientRegistryError("127.0.0.1:1: cannot connect", hint="is it running?")

    monkeypatch.setattr(migration, "plan", registry_down)
    r = drain(cluster, "node-a", "-o", "json")
    monkeypatch.setattr(migration, "plan", real)
    assert r.code == 10, r.err
    unlucky = by_name(r.json())["unlucky"]
    assert (unlucky["outcome"], unlucky["error"], unlucky["attempts"], unlucky["journals"]) == (
        "failed", "127.0.0.1:1: cannot connect", 0, [])
    assert len(tries) == 3
    # With the API calls' backoff between them (0.5 s, then 1 s by default).
    assert tries[1] - tries[0] >= 0.5 and tries[2] - tries[1] >= 1.0, tries
    assert cluster.where()["unlucky"] == "node-a"


def test_a_pod_that_fails_then_migrates_on_resume_keeps_no_old_hint(
        drain: Callable[..., Result], cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.pod("second-go")
    real = migration.plan

    def refused(*args: Any) -> Any:
        raise ClusterError("node-b is busy", hint="try again later")

    with monkeypatch.context() as m:
        m.setattr(migration, "plan", refused)
        r = drain(cluster, "node-a", "-o", "json")
    assert r.code == 10, r.err
    pod = by_name(r.json())["second-go"]
    assert (pod["outcome"], pod["error"], pod["hint"]) == (
        "failed", "node-b is busy", "try again later")
    assert migration.plan is real
    r = drain(cluster, "--resume", r.json()["id"], "-o", "json")
    assert r.code == 0, r.err
    pod = by_name(r.json())["second-go"]
    assert (pod["outcome"], pod["error"], pod["hint"]) == ("migrated", None, None)


def test_a_run_that_failed_after_its_switch_over_is_finished_by_the_resume(
        drain: Callable[..., Result], cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its clean-up failed: the restored pod is the workload, and the run is `failed`, which
    `migrate resume` finishes. A resumed drain reported it failed again each time."""
    cluster.pod("late-fail")

    def cleanup_fails(run: Any) -> Any:
        raise ClusterError("cannot reach the API server", hint="check it")

    with monkeypatch.context() as m:
        m.setitem(migration.STAGE_FUNCTIONS, "cleanup", cleanup_fails)
        r = drain(cluster, "node-a", "-o", "json")
    assert r.code == 10, r.err
    pod = by_name(r.json())["late-fail"]
    assert pod["outcome"] == "failed", pod
    (run,) = pod["journals"]
    restored = cluster.where()
    assert "late-fail" not in restored  # switched over: the source is gone
    r = drain(cluster, "--resume", r.json()["id"], "-o", "json")
    assert r.code == 0, r.err
    pod = by_name(r.json())["late-fail"]
    assert (pod["outcome"], pod["error"], pod["journals"]) == ("migrated", None, [run])
    assert cluster.where()[pod["restored_pod"]] != "node-a"


def test_an_interrupted_drain_resumes(drain: Callable[..., Result], cli: Cli,
                                      cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
                                      plain_registry: RegistryUnderTest) -> None:
    for name in ("r1", "r2", "r3"):
        cluster.pod(name)
    with monkeypatch.context() as m:
        interrupt_at(m, "verify")
        r = drain(cluster, "node-a", "--concurrency", "1")
    assert r.code == 130, r.err
    drain_id = re.search(r"drain (drain-\S+) interrupted", r.err)[1]  # type: ignore[index]
    assert f"`migrate drain --resume {drain_id}` continues it" in r.err
    interrupted = [h for h in cli("history", "-o", "json").json()]
    assert [h["outcome"] for h in interrupted] == ["interrupted"]  # one pod started, no more
    assert set(cluster.where()) >= {"r1", "r2", "r3"}
    # The id can be found again: `history --drains` lists the drain, as it stands.
    (listed,) = cli("history", "--drains", "-o", "json").json()
    assert listed == {"id": drain_id, "created": listed["created"], "outcome": "interrupted",
                      "node": "node-a", "pods": 3, "results": {"interrupted": 1}}
    r = cli("drain", "--resume", drain_id, "--kubeconfig", cluster.nodes.kubeconfig,
            "--no-tls-verify", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    assert report["id"] == drain_id and report["outcome"] == "succeeded"
    pods = by_name(report)
    assert {p["outcome"] for p in pods.values()} == {"migrated"}
    # The interrupted pod went on with its own journal, not a new run.
    assert [pods[h["pod"].split("/")[1]]["journals"] for h in interrupted] == [
        [interrupted[0]["id"]]]
    assert not {"r1", "r2", "r3"} & set(cluster.where())
    table = cli("history", "--drains").out.splitlines()
    assert table[0].split() == ["ID", "CREATED", "OUTCOME", "NODE", "PODS", "RESULTS"]
    assert table[-1].split()[0::2] == [drain_id, "succeeded", "3", "migrated"]
    r = cli("drain", "--resume", drain_id, "--kubeconfig", cluster.nodes.kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (
        2, f"error: drain {drain_id} has succeeded; nothing to resume")


def _ctrl_c_after_the_first_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain's main thread is interrupted once the first pod is done."""
    from migrate.pipeline.drain import run

    real = run.as_completed

    def ctrl_c_after_the_first(futures: Any) -> Iterator[Any]:
        for future in real(futures):
            yield future
            raise KeyboardInterrupt  # what SIGINT does to the main thread

    monkeypatch.setattr(run, "as_completed", ctrl_c_after_the_first)


def test_ctrl_c_stops_the_pods_in_flight_at_a_stage_boundary(
        drain: Callable[..., Result], cli: Cli, cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("c1", "c2", "c3"):
        cluster.pod(name)
    with monkeypatch.context() as m:
        _ctrl_c_after_the_first_pod(m)
        r = drain(cluster, "node-a", "--concurrency", "2", "-o", "json")
    assert r.code == 130, r.err
    assert "migrate: drain: interrupted: waiting for the pods in flight to reach a safe " \
        "point" in r.err
    drain_id = re.search(r"drain (drain-\S+) interrupted", r.err)[1]  # type: ignore[index]
    left = {"c1", "c2", "c3"} & set(cluster.where())
    assert 1 <= len(left) <= 2  # one pod moved; the others stopped before switching over
    history = cli("history", "-o", "json").json()
    assert {h["outcome"] for h in history} <= {"succeeded", "interrupted"}
    r = cli("drain", "--resume", drain_id, "--kubeconfig", cluster.nodes.kubeconfig,
            "--no-tls-verify", "-o", "json")
    assert r.code == 0, r.err
    assert {p["outcome"] for p in r.json()["pods"]} == {"migrated"}
    assert not {"c1", "c2", "c3"} & set(cluster.where())


def test_a_second_ctrl_c_still_waits_for_the_pods_in_flight(
        drain: Callable[..., Result], cli: Cli, cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C while the drain waited for its workers ended the wait: the drain
    recorded itself interrupted while they still ran and wrote its journal."""
    from concurrent.futures import ThreadPoolExecutor

    from migrate.pipeline.drain import run

    for name in ("s1", "s2", "s3"):
        cluster.pod(name)

    class SecondCtrlC(ThreadPoolExecutor):
        hit = False

        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            if not SecondCtrlC.hit:
                SecondCtrlC.hit = True
                raise KeyboardInterrupt  # what SIGINT does to the waiting main thread
            super().shutdown(wait, cancel_futures=cancel_futures)

    with monkeypatch.context() as m:
        _ctrl_c_after_the_first_pod(m)
        m.setattr(run, "ThreadPoolExecutor", SecondCtrlC)
        r = drain(cluster, "node-a", "--concurrency", "2", "-o", "json")
        running = [t.name for t in threading.enumerate() if t.name.startswith("drain")]
    assert r.code == 130, r.err
    assert running == []
    assert "migrate: drain: interrupted again: still waiting for the pods in flight" in r.err
    # What the journal says is what happened: no pod left running or pending behind it.
    outcomes = {p["name"]: p["outcome"] for p in r.json()["pods"]}
    assert set(outcomes.values()) <= {"migrated", "interrupted", "pending"}, outcomes
    history = {h["id"]: h["outcome"] for h in cli("history", "-o", "json").json()}
    assert all(o in ("succeeded", "interrupted") for o in history.values()), history


def test_on_interrupt_rollback_that_fails_says_how_to_try_again(
        drain: Callable[..., Result], cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.pipeline.drain import run

    for name in ("f1", "f2"):
        cluster.pod(name)

    def unreachable(*args: Any) -> list[str]:
        raise ClusterError("cannot reach the API server")

    with monkeypatch.context() as m:
        _ctrl_c_after_the_first_pod(m)
        m.setattr(run, "rollback", unreachable)
        r = drain(cluster, "node-a", "--concurrency", "2", "--on-interrupt", "rollback",
                  "-o", "json")
    assert r.code == 130, r.err
    drain_id = r.json()["id"]  # the report still says where each pod stands
    assert f"migrate: drain {drain_id} interrupted, and its rollback failed: cannot reach " \
        f"the API server; `migrate rollback {drain_id}` tries again\n" in r.err


def _drain_stopped_after_its_switch_over(drain: Callable[..., Result], cluster: Cluster,
                                         monkeypatch: pytest.MonkeyPatch, pod: str) -> str:
    """Drain node-a of one pod, interrupted when its run begins its clean-up; the id."""
    cluster.pod(pod)
    with monkeypatch.context() as m:
        interrupt_at(m, "cleanup")
        r = drain(cluster, "node-a", "-o", "json")
    assert r.code == 130, r.err
    return re.search(r"drain (drain-\S+) interrupted", r.err)[1]  # type: ignore[index]


def test_rolling_back_a_drain_finishes_a_migration_that_had_switched_over(
        drain: Callable[..., Result], cli: Cli, cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted between its switch-over and its clean-up, a pod's run cannot be undone:
    its source is gone and the restored pod is the only copy. Rolling the drain back
    finishes that run rather than failing on it."""
    drain_id = _drain_stopped_after_its_switch_over(drain, cluster, monkeypatch, "switched")
    r = cli("rollback", drain_id, "--kubeconfig", cluster.nodes.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    (run_id,) = [h["id"] for h in cli("history", "-o", "json").json()]
    assert r.json()["undone"] == [
        f"default/switched: migration {run_id} had switched over: finished it (the pod runs "
        "as switched-restored)", "uncordoned node-a"]
    assert cluster.where() == {"switched-restored": "node-b"}
    assert cli("history", "-o", "json").json()[0]["outcome"] == "succeeded"


def test_a_switched_run_that_cannot_be_finished_does_not_stop_the_drains_rollback(
        drain: Callable[..., Result], cli: Cli, cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    drain_id = _drain_stopped_after_its_switch_over(drain, cluster, monkeypatch, "stuck")

    def unreachable(run: migration.Run) -> dict[str, Any]:
        raise ClusterError("cannot reach the API server")

    with monkeypatch.context() as m:
        m.setitem(migration.STAGE_FUNCTIONS, "cleanup", unreachable)
        r = cli("rollback", drain_id, "--kubeconfig", cluster.nodes.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    (run_id,) = [h["id"] for h in cli("history", "-o", "json").json()]
    assert r.json()["undone"] == [
        f"default/stuck: migration {run_id} had switched over (the pod runs as stuck-restored); "
        f"finishing it failed: cleanup: cannot reach the API server: `migrate resume {run_id}` "
        "tries again", "uncordoned node-a"]
    r = cli("resume", run_id, "--kubeconfig", cluster.nodes.kubeconfig, "-o", "json")
    assert r.code == 0, r.err


def test_on_interrupt_rollback_undoes_the_pods_in_flight_and_uncordons(
        drain: Callable[..., Result], cli: Cli, cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a scheduled drain runs with: its journal goes with its pod, so an interruption
    must not leave migrations half way for a `--resume` that cannot come."""
    for name in ("i1", "i2", "i3"):
        cluster.pod(name)
    with monkeypatch.context() as m:
        _ctrl_c_after_the_first_pod(m)
        r = drain(cluster, "node-a", "--concurrency", "2", "--on-interrupt", "rollback",
                  "-o", "json")
    assert r.code == 130, r.err
    drain_id = re.search(r"drain (drain-\S+) interrupted and rolled back: .*; uncordoned "
                         r"node-a\n", r.err)
    assert drain_id is not None, r.err
    # The report says what is left: the drain's cordon is undone with the rest.
    assert (r.json()["outcome"], r.json()["cordoned"]) == ("rolled-back", False)
    pods = by_name(r.json())
    moved = {n: p["restored_pod"] for n, p in pods.items() if p["outcome"] == "migrated"}
    stayed = {"i1", "i2", "i3"} - set(moved)
    assert moved and stayed
    # The pods not moved run where they ran, and nothing the drain made for them is left.
    assert cluster.where() == {**{n: "node-a" for n in stayed},
                               **{copy: cluster.where()[copy] for copy in moved.values()}}
    assert not cluster.cordoned("node-a")
    r = cli("drain", "--resume", drain_id[1], "--kubeconfig", cluster.nodes.kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (
        2, f"error: drain {drain_id[1]} has rolled-back; nothing to resume")


def test_a_drain_stopped_just_after_its_cordon_is_rolled_back_uncordoned(
        drain: Callable[..., Result], cli: Cli, cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped between the cordon and the journal's record of it: the drain did not know
    it had cordoned the node, and neither its resume (which found the node cordoned, by
    itself) nor its rollback uncordoned it."""
    from migrate.adapters import kube

    cluster.pod("stays")
    with monkeypatch.context() as m:
        m.setattr(kube, "patch_node", done_then(kube.patch_node, KeyboardInterrupt()))
        r = drain(cluster, "node-a")
    assert r.code == 130, r.err
    drain_id = re.search(r"drain (drain-\S+) interrupted", r.err)[1]  # type: ignore[index]
    assert cluster.cordoned("node-a")
    with monkeypatch.context() as m:  # the resume is stopped as its plan begins
        m.setattr("migrate.pipeline.drain.run._plan_stage",
                  lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        r = drain(cluster, "--resume", drain_id)
    assert r.code == 130, r.err
    r = cli("rollback", drain_id, "--kubeconfig", cluster.nodes.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["undone"] == ["uncordoned node-a"]
    assert not cluster.cordoned("node-a")
    assert cluster.where()["stays"] == "node-a"


def test_uncordon(cli: Cli, cluster: Cluster) -> None:
    cluster.v1.patch_node("node-a", {"spec": {"unschedulable": True}})
    r = cli("uncordon", "node-a", "--kubeconfig", cluster.nodes.kubeconfig)
    assert (r.code, r.out) == (0, "node/node-a uncordoned\n")
    assert not cluster.cordoned("node-a")
    r = cli("uncordon", "node-a", "--kubeconfig", cluster.nodes.kubeconfig, "-o", "json")
    assert json.loads(r.out) == {"node": "node-a", "was_cordoned": False}


def test_usage_and_cluster_errors(drain: Callable[..., Result], cli: Cli,
                                  cluster: Cluster) -> None:
    cluster.pod("solo")

    def first_line(r: Result) -> tuple[int, str]:
        return r.code, r.err.splitlines()[0]

    assert first_line(drain(cluster, "node-a", "--to", "node-b", "--to-selector", "x=y")) == (
        2, "error: --to and --to-selector exclude each other")
    assert first_line(drain(cluster, "node-a", "--resume", "drain-x")) == (
        2, "error: give NODE or --resume ID, not both")
    assert first_line(drain(cluster, "node-x")) == (4, "error: node node-x does not exist")
    assert first_line(drain(cluster, "node-a", "--to", "node-e")) == (
        6, "error: --to node-e: cannot restore checkpoints: containerd can checkpoint (2.0+) "
        "but does not restore CRI-O checkpoint images (restore was removed in 2.4), and "
        "CRI-O does not restore its archives: neither a source nor a destination")
    code, line = first_line(drain(cluster, "node-a", "--pod-selector", "app in (x"))
    assert (code, line.split(":")[:2]) == (2, ["error", " --pod-selector"])
    r = cli("drain", "node-a", "--kubeconfig", cluster.nodes.kubeconfig, "--delete-emptydir-data")
    assert first_line(r) == (2, "error: 1 pod(s) to migrate: say where their checkpoint "
                                "images go with --registry REG")
    assert first_line(cli("drain", "--resume", "drain-nothing-20260101t000000-abcd",
                          "--kubeconfig", cluster.nodes.kubeconfig))[0] == 4
    assert not cluster.cordoned("node-a")  # nothing above changed anything


def test_the_eviction_api_says_not_now_gone_or_evicted(cluster: Cluster) -> None:
    from migrate.adapters import kube
    from migrate.settings import KubeSettings

    first, _ = cluster.deployment("guarded", 2)
    cluster.pdb("guarded-pdb", "guarded", minAvailable=2)
    api = kube.connect(KubeSettings(kubeconfig=cluster.nodes.kubeconfig))
    name, uid = first.metadata.name, first.metadata.uid
    answer = kube.evict_pod(api, "default", name, uid=uid)
    assert (answer.outcome, answer.message) == (
        "refused", "Cannot evict pod as it would violate the pod's disruption budget. (The "
        "disruption budget guarded-pdb needs 2 healthy pods and has 2 currently)")
    assert api.requests == 1  # a 429 here is an answer, not something to retry
    assert kube.evict_pod(api, "default", "no-such-pod").outcome == "gone"
    # Another pod took the name (the uid precondition fails): ours is gone.
    cluster.pod("solo")
    assert kube.evict_pod(api, "default", "solo", uid="another-uid").outcome == "gone"
    assert "solo" in cluster.where()
    cluster.policy.patch_namespaced_pod_disruption_budget("guarded-pdb", "default",
                                                         {"spec": {"minAvailable": 1}})
    wait_for(lambda: cluster.policy.read_namespaced_pod_disruption_budget(
        "guarded-pdb", "default").status.disruptions_allowed == 1, what="one disruption")
    assert kube.evict_pod(api, "default", name, uid=uid).outcome == "evicted"
    wait_for(lambda: name not in cluster.where(), what=f"{name} gone")


def test_a_drain_leaves_a_pod_whose_emptydir_data_it_would_lose(
        cli: Cli, cluster: Cluster, plain_registry: RegistryUnderTest) -> None:
    # kubectl drain refuses it too ("Pods with local storage"): migrated or evicted, the
    # pod's emptyDirs go with it, and a checkpoint holds none of their files.
    scratch = cluster.pod("scratch")
    r = cli("drain", "node-a", "--kubeconfig", cluster.nodes.kubeconfig, "--registry",
            f"{plain_registry.host}/drains", "--no-tls-verify", "--timeout", "20", "-o", "json")
    assert r.code == 10, r.err
    pod = by_name(r.json())["scratch"]
    assert (pod["outcome"], pod["reason"]) == ("blocked", LOCAL_DATA.format("data"))
    now = cluster.v1.read_namespaced_pod("scratch", "default")
    assert (now.metadata.uid, now.spec.node_name) == (scratch.metadata.uid, "node-a")
    assert cluster.cordoned("node-a")


def test_a_pod_another_migration_claims_is_blocked_not_moved_twice(
        drain: Callable[..., Result], cli: Cli, cluster: Cluster,
        plain_registry: RegistryUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    claimed = cluster.pod("claimed")
    cluster.pod("free")
    with monkeypatch.context() as m:  # a `migrate pod` run of it, interrupted
        interrupt_at(m, "verify")
        r = cli("pod", "claimed", "--to", "node-b", "--kubeconfig", cluster.nodes.kubeconfig,
                "--registry", f"{plain_registry.host}/drains", "--no-tls-verify",
                "--delete-emptydir-data")
    assert r.code == 130
    holder = journal_id_of(r.err)
    reason = f"claimed by migration {holder}, which was interrupted"
    r = drain(cluster, "node-a", "--dry-run", "-o", "json")
    assert {p["name"]: (p["action"], p["reason"]) for p in r.json()["pods"]} == {
        "free": ("migrate", "bare pod: the restored copy replaces it"),
        "claimed": ("blocked", reason)}
    r = drain(cluster, "node-a", "-o", "json")  # --evict-rest: still not evicted
    assert r.code == 10, r.err
    pods = by_name(r.json())
    assert (pods["claimed"]["outcome"], pods["claimed"]["reason"]) == ("blocked", reason)
    assert pods["free"]["outcome"] == "migrated"
    assert r.json()["failed"] == ["default/claimed"]
    now = cluster.v1.read_namespaced_pod("claimed", "default")
    assert (now.metadata.uid, now.spec.node_name) == (claimed.metadata.uid, "node-a")
    assert now.metadata.annotations["migrate.dev/claimed-by"] == holder
    assert [h["id"] for h in cli("history", "-o", "json").json()
            if h["pod"] == "default/claimed"] == [holder]  # the drain started no run of it


def test_sigterm_stops_a_drain_like_ctrl_c_and_it_resumes_as_it_ran(
        cli: Cli, cluster: Cluster, plain_registry: RegistryUnderTest, tmp_path: Path,
        spawned: list[subprocess.Popen[str]]) -> None:
    for name in ("t1", "t2"):
        cluster.pod(name)
    args = ["drain", "node-a", "--kubeconfig", str(cluster.nodes.kubeconfig), "--registry",
            f"{plain_registry.host}/drains", "--no-tls-verify", "--timeout", "20",
            "--concurrency", "1", "--delete-emptydir-data"]
    stderr = tmp_path / "stderr"
    with cluster.nodes.holding_checkpoints("node-a") as waiting, stderr.open("w") as sink:
        process = subprocess.Popen([str(Path(sys.executable).parent / "migrate"), *args],
                                   stdout=subprocess.DEVNULL, stderr=sink, text=True)
        spawned.append(process)
        wait_for(lambda: waiting() == 1, timeout=60, what="a pod's checkpoint")
        process.send_signal(signal.SIGTERM)
        # Once the drain has stopped taking pods, the one in flight may go on to its
        # next stage boundary: its checkpoint is let go.
        wait_for(lambda: "migrate: drain: interrupted: waiting for the pods in flight"
                 in stderr.read_text(), timeout=30, what="the drain to stop")
    assert process.wait(timeout=60) == 130
    err = stderr.read_text()
    drain_id = re.search(r"drain (drain-\S+) interrupted", err)[1]  # type: ignore[index]
    assert err.splitlines()[-2:] == [
        f"migrate: drain {drain_id} interrupted: `migrate drain --resume {drain_id}` "
        f"continues it, `migrate rollback {drain_id}` undoes its migrations in flight and "
        "uncordons node-a", "error: interrupted by SIGTERM"]
    (listed,) = cli("history", "--drains", "-o", "json").json()
    assert (listed["outcome"], listed["results"]) == ("interrupted", {"interrupted": 1})
    assert [h["outcome"] for h in cli("history", "-o", "json").json()] == ["interrupted"]
    # No registry options: the drain's journal says how it reached the registry.
    r = cli("drain", "--resume", drain_id, "--kubeconfig", cluster.nodes.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    assert {p["outcome"] for p in r.json()["pods"]} == {"migrated"}
    assert not {"t1", "t2"} & set(cluster.where())


def test_the_kubelets_events_are_followed_only_when_shown(
        drain: Callable[..., Result], cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restored pods' Events are progress for -v: without it the drain spends no
    watch (and its requests) on them."""
    from migrate.adapters import kube

    followed: list[str] = []
    real = kube.watch_events

    def spy(*args: Any, **kwargs: Any) -> Any:
        followed.append(args[2])  # the restored pod's uid
        return real(*args, **kwargs)

    monkeypatch.setattr(kube, "watch_events", spy)
    cluster.pod("quiet")
    r = drain(cluster, "node-a", "--to", "node-c", "-o", "json")
    assert r.code == 0, r.err
    assert by_name(r.json())["quiet"]["outcome"] == "migrated"
    assert followed == []
    cluster.pod("told", node="node-b")
    r = drain(cluster, "node-b", "-v", "--to", "node-c")
    assert r.code == 0, r.err
    assert len(followed) == 1
    assert "Started" in r.err  # the kubelet's Event, told as progress


def test_the_migrations_to_one_node_pull_its_image_once(
        drain: Callable[..., Result], cluster: Cluster) -> None:
    # CRI-O restores onto the workload's image and pulls nothing, so migrate pulls it on
    # the destination first; a kubelet lists what it pulled only at its next node
    # status update, so four migrations starting together would each pull it.
    for name in ("same-1", "same-2", "same-3", "same-4"):
        cluster.pod(name)
    r = drain(cluster, "node-a", "--to", "node-b", "--concurrency", "4", "-o", "json")
    assert r.code == 0, r.err
    state = Path(os.environ["MIGRATE_STATE_DIR"])
    actions = [a["action"] for p in r.json()["pods"] for j in p["journals"]
               for a in Journal.load(state, j).actions]
    assert (actions.count("base image pulled"), actions.count("base image present")) == (1, 3)
    assert not [p for p in cluster.v1.list_namespaced_pod("default").items
                if "-prepull-" in p.metadata.name]


def test_preflights_of_one_process_share_recent_node_reads(cluster: Cluster) -> None:
    # A drain's preflights read the same few nodes for every pod: each node once in a
    # few seconds, shared by the process's copies of the cluster, each caller its copy.
    from migrate.adapters import kube
    from migrate.settings import KubeSettings

    api = kube.connect(KubeSettings(kubeconfig=cluster.nodes.kubeconfig))
    first = kube.read_node_recent(api, "node-b")
    first["metadata"]["labels"]["mine"] = "changed"
    again = kube.read_node_recent(api, "node-b")
    assert api.requests == 1 and "mine" not in again["metadata"]["labels"]
    cluster.v1.patch_node("node-b", {"metadata": {"labels": {"seen": "later"}}})
    assert "seen" not in kube.read_node_recent(api, "node-b")["metadata"]["labels"]
    assert kube.read_node_recent(api, "node-b", max_age=0)["metadata"]["labels"]["seen"] == "later"
    assert api.requests == 2
