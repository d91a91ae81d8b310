"""Workload APIs of the cluster simulator (e2e.sim), driven by real clients over HTTPS.

Deployments, ReplicaSets, PodDisruptionBudgets with the eviction subresource,
Jobs and garbage collection, through the official `kubernetes` client and
kubectl, against the controllers' behaviour in kube-controller-manager.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.sim import ContainerExit, Simulator
from e2e.sim.deployment_util import template_hash
from e2e.sim.owners import selector_matches, selector_string
from e2e.sim.replicaset import deletion_order
from tests.simulated import kubectl_runner, needs_kubectl, sim_client, wait_for

COST = "controller.kubernetes.io/pod-deletion-cost"
BUDGET_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """One cluster (node-a, node-b) for the module, with short pod start/stop latencies."""
    with Simulator(tmp_path_factory.mktemp("sim") / "state", start_latency=0.05,
                   stop_latency=0.05) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def api(sim: Simulator) -> Iterator[client.ApiClient]:
    with sim_client(sim) as api_client:
        yield api_client


@pytest.fixture(scope="module")
def v1(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture(scope="module")
def policy(api: client.ApiClient) -> client.PolicyV1Api:
    return client.PolicyV1Api(api)


@pytest.fixture(scope="module")
def batch(api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api)


@pytest.fixture
def ns(v1: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = v1.create_namespace({"metadata": {"generateName": f"{slug}-"}}).metadata.name
    yield name
    v1.delete_namespace(name)


@pytest.fixture(scope="module")
def kubectl(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    run = kubectl_runner(tmp_path_factory.mktemp("kubectl-home"))
    return lambda *args, **kw: run(sim.kubeconfig, *args, **kw)


# -- helpers ---------------------------------------------------------------------------


def _template(labels: dict[str, str], image: str = "registry.example/web:1.0",
              annotations: dict[str, str] | None = None, restart: str | None = None
              ) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if restart:
        spec["restartPolicy"] = restart
    meta: dict[str, Any] = {"labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": spec}


def _deployment(name: str, replicas: int, image: str = "registry.example/web:1.0",
                **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": _template(labels, image), **spec}}


def _replicaset(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": _template(labels)}}


def _pdb(name: str, app: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": app}}, **spec}}


def _job(name: str, annotations: dict[str, str] | None = None, restart: str = "Never",
         **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": _template({"app": name}, "registry.example/task:1.0",
                                           annotations, restart), **spec}}


def _active_pods(v1: client.CoreV1Api, ns: str, app: str) -> list[client.V1Pod]:
    pods = v1.list_namespaced_pod(ns, label_selector=f"app={app}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def _running(v1: client.CoreV1Api, ns: str, app: str, count: int) -> list[client.V1Pod]:
    def check() -> list[client.V1Pod] | None:
        pods = _active_pods(v1, ns, app)
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(pods) == count and len(running) == count else None

    pods: list[client.V1Pod] = wait_for(check, what=f"{count} running {app} pods in {ns}")
    return pods


def _available(apps: client.AppsV1Api, ns: str, name: str, replicas: int
               ) -> client.V1Deployment:
    def check() -> client.V1Deployment | None:
        d = apps.read_namespaced_deployment(name, ns)
        status = d.status
        done = (status.available_replicas == replicas and status.updated_replicas == replicas
                and (status.replicas or 0) == replicas
                and status.observed_generation == d.metadata.generation)
        return d if done else None

    deployment: client.V1Deployment = wait_for(check, what=f"deployment {ns}/{name} available")
    return deployment


def _gone(read: Callable[[], Any], what: str) -> None:
    def check() -> bool:
        try:
            read()
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(check, what=f"{what} gone")


def _bare_pods(v1: client.CoreV1Api, ns: str, app: str, count: int,
               finalizers: list[str] | None = None) -> list[str]:
    """`count` running pods without a controller (nothing replaces an evicted one)."""
    for i in range(count):
        meta = {"name": f"{app}-{i}", "labels": {"app": app}, "finalizers": finalizers or []}
        v1.create_namespaced_pod(ns, {"metadata": meta, "spec": _template({})["spec"]})
    return sorted(p.metadata.name for p in _running(v1, ns, app, count))


def _annotate(v1: client.CoreV1Api, ns: str, pod: str, cost: int) -> None:
    v1.patch_namespaced_pod(pod, ns, {"metadata": {"annotations": {COST: str(cost)}}})


def _evict(v1: client.CoreV1Api, ns: str, pod: str, **options: Any) -> tuple[int, dict[str, Any]]:
    """POST pods/NAME/eviction: (HTTP status, the Status body)."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": ns}, "deleteOptions": options}
    try:
        response = v1.create_namespaced_pod_eviction(pod, ns, body, _preload_content=False)
    except ApiException as e:
        return e.status, json.loads(e.body)
    return response.status, json.loads(response.data)


def _condition(obj: Any, type_: str) -> Any:
    return next((c for c in obj.status.conditions or [] if c.type == type_), None)


# -- Deployments and ReplicaSets ----------------------------------------------------------


def test_deployment_makes_a_replicaset_making_running_pods(
        apps: client.AppsV1Api, v1: client.CoreV1Api, ns: str) -> None:
    created = apps.create_namespaced_deployment(ns, _deployment("web", 3))
    assert created.metadata.generation == 1
    assert created.spec.strategy.rolling_update.max_surge == "25%"  # defaulted
    assert created.spec.template.spec.restart_policy == "Always"
    deployment = _available(apps, ns, "web", 3)
    assert deployment.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert _condition(deployment, "Available").reason == "MinimumReplicasAvailable"
    assert _condition(deployment, "Progressing").reason == "NewReplicaSetAvailable"

    [rs] = apps.list_namespaced_replica_set(ns).items
    digest = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{digest}"
    assert re.fullmatch(r"[bcdfghjklmnpqrstvwxz2456789]+", digest)
    assert rs.spec.selector.match_labels == {"app": "web", "pod-template-hash": digest}
    [owner] = rs.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller, owner.block_owner_deletion) == (
        "Deployment", "web", deployment.metadata.uid, True, True)
    assert (rs.status.replicas, rs.status.ready_replicas, rs.status.available_replicas,
            rs.status.fully_labeled_replicas, rs.status.observed_generation) == (3, 3, 3, 3, 1)

    for pod in _running(v1, ns, "web", 3):
        assert pod.metadata.name.startswith(f"{rs.metadata.name}-")
        assert pod.metadata.labels == {"app": "web", "pod-template-hash": digest}
        [ref] = pod.metadata.owner_references
        assert (ref.kind, ref.uid, ref.controller) == ("ReplicaSet", rs.metadata.uid, True)


def test_deleted_pod_is_replaced(apps: client.AppsV1Api, v1: client.CoreV1Api, ns: str) -> None:
    apps.create_namespaced_replica_set(ns, _replicaset("cache", 2))
    victim = _running(v1, ns, "cache", 2)[0].metadata.name
    v1.delete_namespaced_pod(victim, ns)
    pods = _running(v1, ns, "cache", 2)
    assert victim not in {p.metadata.name for p in pods}


def test_replicaset_adopts_an_orphan_and_drops_the_cheapest_pod(
        apps: client.AppsV1Api, v1: client.CoreV1Api, ns: str) -> None:
    rs = apps.create_namespaced_replica_set(ns, _replicaset("kv", 2))
    first, second = (p.metadata.name for p in _running(v1, ns, "kv", 2))
    _annotate(v1, ns, first, -10)
    _annotate(v1, ns, second, 50)
    # A bare pod, running and ready before it matches (else it would go first as pending).
    v1.create_namespaced_pod(ns, {"metadata": {"name": "stray", "labels": {"app": "other"},
                                               "annotations": {COST: "100"}},
                                  "spec": _template({})["spec"]})
    _running(v1, ns, "other", 1)
    v1.patch_namespaced_pod("stray", ns, {"metadata": {"labels": {"app": "kv"}}})

    pods = _running(v1, ns, "kv", 2)
    assert {p.metadata.name for p in pods} == {second, "stray"}
    [ref] = v1.read_namespaced_pod("stray", ns).metadata.owner_references
    assert (ref.kind, ref.name, ref.uid, ref.controller, ref.block_owner_deletion) == (
        "ReplicaSet", "kv", rs.metadata.uid, True, True)

    # A pod whose labels stop matching is released, and replaced.
    v1.patch_namespaced_pod("stray", ns, {"metadata": {"labels": {"app": "gone"}}})
    wait_for(lambda: not v1.read_namespaced_pod("stray", ns).metadata.owner_references,
             what="stray released")
    assert "stray" not in {p.metadata.name for p in _running(v1, ns, "kv", 2)}


def test_scaling_a_deployment_down_deletes_the_lowest_cost_pod(
        apps: client.AppsV1Api, v1: client.CoreV1Api, ns: str) -> None:
    apps.create_namespaced_deployment(ns, _deployment("api", 3))
    pods = [p.metadata.name for p in _running(v1, ns, "api", 3)]
    for name, cost in zip(pods, (10, -3, 7), strict=True):
        _annotate(v1, ns, name, cost)
    scale = apps.patch_namespaced_deployment_scale("api", ns, {"spec": {"replicas": 2}})
    assert (scale.spec.replicas, scale.status.selector) == (2, "app=api")
    left = {p.metadata.name for p in _running(v1, ns, "api", 2)}
    assert left == {pods[0], pods[2]}
    deployment = _available(apps, ns, "api", 2)
    assert deployment.metadata.generation == 2


def test_rolling_update_replaces_every_pod(apps: client.AppsV1Api, v1: client.CoreV1Api,
                                           ns: str) -> None:
    apps.create_namespaced_deployment(ns, _deployment("roll", 2))
    before = {p.metadata.name for p in _running(v1, ns, "roll", 2)}
    apps.patch_namespaced_deployment("roll", ns, {"spec": {"template": {"spec": {
        "containers": [{"name": "app", "image": "registry.example/web:2.0"}]}}}})
    deployment = _available(apps, ns, "roll", 2)
    assert deployment.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    after = _running(v1, ns, "roll", 2)
    assert {p.spec.containers[0].image for p in after} == {"registry.example/web:2.0"}
    assert not before & {p.metadata.name for p in after}
    sets = {rs.metadata.annotations["deployment.kubernetes.io/revision"]: rs.spec.replicas
            for rs in apps.list_namespaced_replica_set(ns).items}
    assert sets == {"1": 0, "2": 2}


def test_deleting_a_deployment_collects_replicasets_and_pods(
        apps: client.AppsV1Api, v1: client.CoreV1Api, ns: str) -> None:
    apps.create_namespaced_deployment(ns, _deployment("doomed", 2))
    _running(v1, ns, "doomed", 2)
    apps.delete_namespaced_deployment("doomed", ns)
    wait_for(lambda: not apps.list_namespaced_replica_set(ns).items, what="replicasets gone")
    wait_for(lambda: not v1.list_namespaced_pod(ns).items, what="pods gone")


def test_orphan_propagation_keeps_the_replicaset_and_its_pods(
        apps: client.AppsV1Api, v1: client.CoreV1Api, ns: str) -> None:
    apps.create_namespaced_deployment(ns, _deployment("kept", 2))
    pods = {p.metadata.name for p in _running(v1, ns, "kept", 2)}
    apps.delete_namespaced_deployment("kept", ns, propagation_policy="Orphan")
    _gone(lambda: apps.read_namespaced_deployment("kept", ns), "deployment")
    [rs] = apps.list_namespaced_replica_set(ns).items
    assert rs.metadata.owner_references is None and rs.metadata.deletion_timestamp is None
    assert {p.metadata.name for p in _running(v1, ns, "kept", 2)} == pods
    assert all(p.metadata.owner_references[0].uid == rs.metadata.uid
               for p in _active_pods(v1, ns, "kept"))


def test_foreground_deletion_waits_for_the_pods(apps: client.AppsV1Api, v1: client.CoreV1Api,
                                                ns: str) -> None:
    apps.create_namespaced_replica_set(ns, _replicaset("fg", 2))
    _running(v1, ns, "fg", 2)
    response = apps.delete_namespaced_replica_set("fg", ns, propagation_policy="Foreground",
                                                  _preload_content=False)
    held = json.loads(response.data)  # still there: the answer is the object itself
    assert held["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert held["metadata"]["deletionTimestamp"]
    _gone(lambda: apps.read_namespaced_replica_set("fg", ns), "replicaset")
    assert not v1.list_namespaced_pod(ns).items  # the pods went first


def test_invalid_workloads_are_422(apps: client.AppsV1Api, ns: str) -> None:
    bad = _deployment("bad", 1)
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ApiException) as e:
        apps.create_namespaced_deployment(ns, bad)
    assert e.value.status == 422
    assert "`selector` does not match template `labels`" in json.loads(e.value.body)["message"]
    apps.create_namespaced_deployment(ns, _deployment("good", 1))
    with pytest.raises(ApiException) as e:
        apps.patch_namespaced_deployment("good", ns, {"spec": {"selector": {
            "matchLabels": {"app": "good", "tier": "x"}}}})
    assert e.value.status == 422
    assert "spec.selector: Invalid value" in json.loads(e.value.body)["message"]


# -- PodDisruptionBudgets and evictions ---------------------------------------------------


def _budget(policy: client.PolicyV1Api, ns: str, name: str, **expected: int
            ) -> client.V1PodDisruptionBudget:
    def check() -> client.V1PodDisruptionBudget | None:
        pdb = policy.read_namespaced_pod_disruption_budget(name, ns)
        status = pdb.status.to_dict() if pdb.status else {}
        return pdb if all(status.get(k) == v for k, v in expected.items()) else None

    budget: client.V1PodDisruptionBudget = wait_for(check, what=f"pdb {name} at {expected}")
    return budget


def test_pdb_status(apps: client.AppsV1Api, v1: client.CoreV1Api, policy: client.PolicyV1Api,
                    ns: str) -> None:
    apps.create_namespaced_deployment(ns, _deployment("db", 3))
    _running(v1, ns, "db", 3)
    policy.create_namespaced_pod_disruption_budget(ns, _pdb("db-min", "db", minAvailable=2))
    pdb = _budget(policy, ns, "db-min", expected_pods=3, desired_healthy=2, current_healthy=3,
                  disruptions_allowed=1, observed_generation=1)
    allowed = _condition(pdb, "DisruptionAllowed")
    assert (allowed.status, allowed.reason) == ("True", "SufficientPods")

    # A percentage counts from the controller's scale, rounded up.
    policy.patch_namespaced_pod_disruption_budget("db-min", ns, {"spec": {
        "minAvailable": None, "maxUnavailable": "34%"}})
    _budget(policy, ns, "db-min", expected_pods=3, desired_healthy=1, current_healthy=3,
            disruptions_allowed=2, observed_generation=2)
    # An unhealthy pod stops counting.
    victim = _active_pods(v1, ns, "db")[0].metadata.name
    v1.patch_namespaced_pod_status(victim, ns, {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}})
    _budget(policy, ns, "db-min", current_healthy=2, disruptions_allowed=1)


def test_eviction_allowed_then_refused(v1: client.CoreV1Api, policy: client.PolicyV1Api,
                                       ns: str) -> None:
    # A finalizer keeps the evicted pod readable after the kubelet is done with it.
    first, second = _bare_pods(v1, ns, "front", 2, finalizers=["sim.test/hold"])
    policy.create_namespaced_pod_disruption_budget(ns, _pdb("front", "front", minAvailable=1))
    _budget(policy, ns, "front", disruptions_allowed=1)

    code, status = _evict(v1, ns, first)
    assert code == 201
    assert status == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Success", "code": 201}
    evicted = v1.read_namespaced_pod(first, ns)
    assert evicted.metadata.deletion_timestamp is not None
    target = _condition(evicted, "DisruptionTarget")
    assert (target.status, target.reason) == ("True", "EvictionByEvictionAPI")

    code, status = _evict(v1, ns, second)
    assert code == 429
    assert status["reason"] == "TooManyRequests"
    assert status["message"] == BUDGET_MESSAGE
    [cause] = status["details"]["causes"]
    assert cause["reason"] == "DisruptionBudget"
    assert cause["message"].startswith("The disruption budget front needs 1 healthy pods")
    assert v1.read_namespaced_pod(second, ns).metadata.deletion_timestamp is None
    for pod in (first, second):
        v1.patch_namespaced_pod(pod, ns, {"metadata": {"finalizers": None}})
    _gone(lambda: v1.read_namespaced_pod(first, ns), "the evicted pod")


def test_two_quick_evictions_cannot_share_one_disruption(
        v1: client.CoreV1Api, policy: client.PolicyV1Api, ns: str) -> None:
    pods = _bare_pods(v1, ns, "pair", 3)
    policy.create_namespaced_pod_disruption_budget(ns, _pdb("pair", "pair", minAvailable=2))
    _budget(policy, ns, "pair", disruptions_allowed=1, current_healthy=3)
    start = threading.Barrier(2)
    codes: list[int] = []

    def evict(pod: str) -> None:
        start.wait()
        codes.append(_evict(v1, ns, pod)[0])

    threads = [threading.Thread(target=evict, args=(pod,)) for pod in pods[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201, 429]


def test_eviction_edge_cases(apps: client.AppsV1Api, v1: client.CoreV1Api,
                             policy: client.PolicyV1Api, ns: str) -> None:
    assert _evict(v1, ns, "no-such-pod")[0] == 404
    apps.create_namespaced_deployment(ns, _deployment("multi", 3))
    pods = [p.metadata.name for p in _running(v1, ns, "multi", 3)]
    # The Eviction's deleteOptions are honoured: preconditions, dry run.
    code, status = _evict(v1, ns, pods[0], preconditions={"uid": "not-its-uid"})
    assert (code, status["reason"]) == (409, "Conflict")
    assert _evict(v1, ns, pods[0], dryRun=["All"])[0] == 201
    assert v1.read_namespaced_pod(pods[0], ns).metadata.deletion_timestamp is None
    policy.create_namespaced_pod_disruption_budget(ns, _pdb("one", "multi", minAvailable=2))
    # An unready pod may go without using the budget while the healthy count allows it
    # (IfHealthyBudget): 2 healthy of 2 desired, yet no disruption is allowed.
    v1.patch_namespaced_pod_status(pods[0], ns, {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}})
    _budget(policy, ns, "one", current_healthy=2, desired_healthy=2, disruptions_allowed=0)
    assert _evict(v1, ns, pods[1])[0] == 429
    assert _evict(v1, ns, pods[0])[0] == 201

    policy.create_namespaced_pod_disruption_budget(ns, _pdb("two", "multi", minAvailable=1))
    code, status = _evict(v1, ns, pods[2])
    assert code == 500
    assert status["message"] == ("This pod has more than one PodDisruptionBudget, which the "
                                 "eviction subresource does not support.")


def test_unhealthy_pod_eviction_policy(v1: client.CoreV1Api, policy: client.PolicyV1Api,
                                       ns: str) -> None:
    pods = _bare_pods(v1, ns, "strict", 3)
    policy.create_namespaced_pod_disruption_budget(ns, _pdb("strict", "strict", minAvailable=3))
    v1.patch_namespaced_pod_status(pods[0], ns, {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}})
    _budget(policy, ns, "strict", current_healthy=2, desired_healthy=3, disruptions_allowed=0)
    # IfHealthyBudget (unset): the budget is not met, so even the unready pod stays.
    code, status = _evict(v1, ns, pods[0])
    assert (code, status["message"]) == (429, BUDGET_MESSAGE)
    policy.patch_namespaced_pod_disruption_budget("strict", ns, {"spec": {
        "unhealthyPodEvictionPolicy": "AlwaysAllow"}})
    assert _evict(v1, ns, pods[0])[0] == 201
    assert _evict(v1, ns, pods[1])[0] == 429  # a healthy pod is still protected


# -- Jobs ---------------------------------------------------------------------------------


def _job_done(batch: client.BatchV1Api, ns: str, name: str, kind: str) -> client.V1Job:
    def check() -> client.V1Job | None:
        job = batch.read_namespaced_job(name, ns)
        condition = _condition(job, kind)
        return job if condition is not None and condition.status == "True" else None

    job: client.V1Job = wait_for(check, what=f"job {name} {kind}")
    return job


def test_job_success_records_the_termination_message(
        batch: client.BatchV1Api, v1: client.CoreV1Api, ns: str) -> None:
    created = batch.create_namespaced_job(ns, _job("once", {
        "sim.migrate.dev/run-seconds": "0.1",
        "sim.migrate.dev/termination-message": "migrated 3 containers"}))
    uid = created.metadata.uid
    assert created.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert (created.spec.completions, created.spec.parallelism, created.spec.backoff_limit) == (
        1, 1, 6)
    job = _job_done(batch, ns, "once", "Complete")
    assert (job.status.succeeded, job.status.active, job.status.failed) == (1, None, None)
    assert job.status.start_time is not None and job.status.completion_time is not None

    [pod] = v1.list_namespaced_pod(ns).items
    assert pod.metadata.labels["batch.kubernetes.io/job-name"] == "once"
    assert pod.metadata.labels["job-name"] == "once"
    assert pod.metadata.labels["controller-uid"] == uid
    assert pod.metadata.owner_references[0].kind == "Job"
    assert pod.metadata.finalizers is None  # counted, so the tracking finalizer is gone
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, terminated.message) == (
        0, "Completed", "migrated 3 containers")
    batch.delete_namespaced_job("once", ns, propagation_policy="Background")
    wait_for(lambda: not v1.list_namespaced_pod(ns).items, what="job pods collected")


def test_job_failures_up_to_the_backoff_limit(batch: client.BatchV1Api, v1: client.CoreV1Api,
                                              ns: str) -> None:
    batch.create_namespaced_job(ns, _job("flaky", {
        "sim.migrate.dev/run-seconds": "0.05", "sim.migrate.dev/exit-code": "3",
        "sim.migrate.dev/termination-message": "no route to registry"}, backoffLimit=2))
    job = _job_done(batch, ns, "flaky", "Failed")
    failed = _condition(job, "Failed")
    assert (failed.reason, failed.message) == ("BackoffLimitExceeded",
                                               "Job has reached the specified backoff limit")
    assert job.status.failed == 3 and not job.status.succeeded
    pods = v1.list_namespaced_pod(ns).items
    assert len(pods) == 3 and {p.status.phase for p in pods} == {"Failed"}
    terminated = pods[0].status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, terminated.message) == (
        3, "Error", "no route to registry")


def test_job_completions_and_parallelism(batch: client.BatchV1Api, v1: client.CoreV1Api,
                                          ns: str) -> None:
    batch.create_namespaced_job(ns, _job("fan", {"sim.migrate.dev/run-seconds": "0.05"},
                                         completions=3, parallelism=2))
    job = _job_done(batch, ns, "fan", "Complete")
    assert job.status.succeeded == 3
    assert len(v1.list_namespaced_pod(ns).items) == 3
    listed = batch.list_namespaced_job(ns, field_selector="status.successful=3").items
    assert [j.metadata.name for j in listed] == ["fan"]


def test_on_failure_restarts_count_against_the_backoff_limit(
        batch: client.BatchV1Api, v1: client.CoreV1Api, ns: str) -> None:
    batch.create_namespaced_job(ns, _job("crash", {
        "sim.migrate.dev/run-seconds": "0.02", "sim.migrate.dev/exit-code": "1"},
        restart="OnFailure", backoffLimit=2))
    job = _job_done(batch, ns, "crash", "Failed")
    assert _condition(job, "Failed").reason == "BackoffLimitExceeded"
    # No pod failed: its container restarted twice, then the Job deleted it (a failure).
    wait_for(lambda: batch.read_namespaced_job("crash", ns).status.failed == 1,
             what="the deleted pod counted as failed")
    wait_for(lambda: not v1.list_namespaced_pod(ns).items, what="the pod gone")


def test_job_deadline(batch: client.BatchV1Api, v1: client.CoreV1Api, ns: str) -> None:
    batch.create_namespaced_job(ns, _job("slow", {"sim.migrate.dev/run-seconds": "60"},
                                         activeDeadlineSeconds=1))
    job = _job_done(batch, ns, "slow", "Failed")
    assert _condition(job, "Failed").reason == "DeadlineExceeded"
    wait_for(lambda: not v1.list_namespaced_pod(ns).items, what="the running pod deleted")


# -- kubectl --------------------------------------------------------------------------------


@needs_kubectl
def test_kubectl_get_workloads(kubectl: Kubectl, apps: client.AppsV1Api, v1: client.CoreV1Api,
                               policy: client.PolicyV1Api, batch: client.BatchV1Api,
                               ns: str) -> None:
    apps.create_namespaced_deployment(ns, _deployment("web", 2))
    policy.create_namespaced_pod_disruption_budget(ns, _pdb("web", "web", minAvailable=1))
    batch.create_namespaced_job(ns, _job("task", {"sim.migrate.dev/run-seconds": "0.05"}))
    _available(apps, ns, "web", 2)
    _budget(policy, ns, "web", disruptions_allowed=1)
    _job_done(batch, ns, "task", "Complete")
    out = kubectl("get", "deploy,rs,pdb,jobs", "-n", ns).stdout
    tables = [block.splitlines() for block in out.strip().split("\n\n")]
    heads = [t[0].split() for t in tables]
    assert heads == [["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
                     ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
                     ["NAME", "MIN", "AVAILABLE", "MAX", "UNAVAILABLE", "ALLOWED",
                      "DISRUPTIONS", "AGE"],
                     ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]]
    assert tables[0][1].split()[:4] == ["deployment.apps/web", "2/2", "2", "2"]
    assert re.fullmatch(r"replicaset\.apps/web-\w+ +2 +2 +2 +\S+", tables[1][1])
    assert tables[2][1].split()[:4] == ["poddisruptionbudget.policy/web", "1", "N/A", "1"]
    assert tables[3][1].split()[:3] == ["job.batch/task", "Complete", "1/1"]
    wide = kubectl("get", "rs", "-n", ns, "-o", "wide").stdout
    assert "registry.example/web:1.0" in wide and "app=web,pod-template-hash=" in wide


@needs_kubectl
def test_kubectl_apply_and_scale(kubectl: Kubectl, apps: client.AppsV1Api,
                                 v1: client.CoreV1Api, ns: str, tmp_path: Path) -> None:
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(yaml.safe_dump(_deployment("site", 3)))
    out = kubectl("apply", "-n", ns, "-f", str(manifest)).stdout.strip()
    assert out == "deployment.apps/site created"
    _available(apps, ns, "site", 3)
    out = kubectl("scale", "-n", ns, "deployment", "site", "--replicas=1").stdout.strip()
    assert out == "deployment.apps/site scaled"
    _running(v1, ns, "site", 1)
    manifest.write_text(yaml.safe_dump(_deployment("site", 1, "registry.example/web:2.0")))
    out = kubectl("apply", "-n", ns, "-f", str(manifest)).stdout.strip()
    assert out == "deployment.apps/site configured"
    _available(apps, ns, "site", 1)
    assert [p.spec.containers[0].image for p in _running(v1, ns, "site", 1)] == [
        "registry.example/web:2.0"]
    status = kubectl("rollout", "status", "-n", ns, "deployment/site", "--timeout=10s").stdout
    assert 'deployment "site" successfully rolled out' in status
    # Undo finds the first ReplicaSet again (same template): revision 1 becomes 3.
    out = kubectl("rollout", "undo", "-n", ns, "deployment/site").stdout.strip()
    assert out == "deployment.apps/site rolled back"
    wait_for(lambda: [p.spec.containers[0].image for p in _running(v1, ns, "site", 1)] == [
        "registry.example/web:1.0"], what="the first template back")
    history = kubectl("rollout", "history", "-n", ns, "deployment/site").stdout.split()
    assert history[-4:] == ["2", "<none>", "3", "<none>"]
    assert len(apps.list_namespaced_replica_set(ns).items) == 2


@needs_kubectl
def test_kubectl_drain(tmp_path: Path) -> None:
    # A cluster of its own: drain evicts every pod on the node, whoever made it.
    with Simulator(tmp_path / "state", start_latency=0.05, stop_latency=0.05) as cluster, \
            sim_client(cluster) as api_client:
        (tmp_path / "home").mkdir()
        kubectl = kubectl_runner(tmp_path / "home")
        apps, v1 = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
        policy = client.PolicyV1Api(api_client)
        apps.create_namespaced_deployment("default", _deployment("svc", 4))
        # Round robin put 2 of the 4 pods on node-a; the budget lets both go at once
        # (with 1 allowed, kubectl would retry the second eviction after 5 s).
        policy.create_namespaced_pod_disruption_budget("default", _pdb("svc", "svc",
                                                                       maxUnavailable="50%"))
        on_a = [p.metadata.name for p in _running(v1, "default", "svc", 4)
                if p.spec.node_name == "node-a"]
        assert len(on_a) == 2
        _budget(policy, "default", "svc", disruptions_allowed=2)
        result = kubectl(cluster.kubeconfig, "drain", "node-a", "--ignore-daemonsets",
                         "--delete-emptydir-data", "--timeout=30s")
        assert "node/node-a cordoned" in result.stdout
        assert "node/node-a drained" in result.stdout
        for name in on_a:
            assert f"pod/{name} evicted" in result.stdout
        assert v1.read_node("node-a").spec.unschedulable is True
        pods = _running(v1, "default", "svc", 4)
        assert {p.spec.node_name for p in pods} == {"node-b"}


def test_discovery(api: client.ApiClient) -> None:
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "batch", "policy"} <= set(groups)
    resources = {r.name: r for r in client.AppsV1Api(api).get_api_resources().resources}
    assert resources["deployments"].short_names == ["deploy"]
    assert resources["replicasets"].short_names == ["rs"]
    assert "all" in resources["deployments"].categories
    scale = resources["deployments/scale"]
    assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")
    core = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    eviction = core["pods/eviction"]
    assert (eviction.group, eviction.version, eviction.kind, eviction.verbs) == (
        "policy", "v1", "Eviction", ["create"])
    pdbs = {r.name: r for r in client.PolicyV1Api(api).get_api_resources().resources}
    assert pdbs["poddisruptionbudgets"].short_names == ["pdb"]
    assert "jobs/status" in {r.name for r in client.BatchV1Api(api).get_api_resources().resources}


# -- pieces clients cannot see directly -------------------------------------------------------


def test_label_selector_semantics() -> None:
    selector = {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                                     {"key": "legacy", "operator": "DoesNotExist"}]}
    assert selector_matches(selector, {"app": "web", "tier": "a"})
    assert not selector_matches(selector, {"app": "web", "tier": "a", "legacy": "1"})
    assert not selector_matches(None, {"app": "web"})
    assert selector_matches({}, {"anything": "goes"})
    assert selector_string(selector) == "app=web,!legacy,tier in (a,b)"
    assert selector_string({}) == "<none>"


def test_template_hash_is_stable_and_safe() -> None:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}
    assert template_hash(template) == template_hash(dict(template))
    assert template_hash(template) != template_hash(template, 1)
    assert re.fullmatch(r"[bcdfghjklmnpqrstvwxz2456789]{1,10}", template_hash(template))


def test_a_container_process_replaces_the_annotations(tmp_path: Path) -> None:
    seen: list[str] = []

    def process(pod: dict[str, Any], container: dict[str, Any], stop: threading.Event
                ) -> ContainerExit:
        seen.append(container["image"])
        return ContainerExit(7, f"ran {container['image']}")

    with Simulator(tmp_path / "state", nodes=["solo"], start_latency=0.02, stop_latency=0.02,
                   container_process=process) as cluster, sim_client(cluster) as api_client:
        batch, v1 = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
        batch.create_namespaced_job("default", _job("own", backoffLimit=0))
        job = _job_done(batch, "default", "own", "Failed")
        assert job.status.failed == 1
        [pod] = v1.list_namespaced_pod("default").items
        terminated = pod.status.container_statuses[0].state.terminated
        assert (terminated.exit_code, terminated.message) == (7, "ran registry.example/task:1.0")
    assert seen == ["registry.example/task:1.0"]


def test_deleting_a_namespace_removes_its_workloads(
        apps: client.AppsV1Api, v1: client.CoreV1Api, batch: client.BatchV1Api,
        policy: client.PolicyV1Api) -> None:
    ns = v1.create_namespace({"metadata": {"generateName": "doomed-"}}).metadata.name
    apps.create_namespaced_deployment(ns, _deployment("web", 2))
    batch.create_namespaced_job(ns, _job("long", {"sim.migrate.dev/run-seconds": "60"}))
    policy.create_namespaced_pod_disruption_budget(ns, _pdb("web", "web", minAvailable=1))
    _running(v1, ns, "web", 2)
    _running(v1, ns, "long", 1)
    v1.delete_namespace(ns)
    _gone(lambda: v1.read_namespace(ns), f"namespace {ns}")


def test_deletion_order_ranks_pods_as_the_replicaset_controller() -> None:
    def pod(name: str, node: str = "n1", phase: str = "Running", ready: bool = True,
            cost: int | None = None) -> dict[str, Any]:
        annotations = {COST: str(cost)} if cost is not None else {}
        return {"metadata": {"name": name, "uid": name, "annotations": annotations,
                             "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"nodeName": node},
                "status": {"phase": phase, "conditions": [{
                    "type": "Ready", "status": "True" if ready else "False",
                    "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}

    pods = [pod("cheap", cost=-5), pod("dear", cost=9), pod("unready", ready=False),
            pod("pending", phase="Pending", ready=False), pod("unscheduled", node="", ready=False),
            pod("default")]
    order = [p["metadata"]["name"] for p in deletion_order(pods, pods)]
    assert order == ["unscheduled", "pending", "unready", "cheap", "default", "dear"]
