"""When the workload controllers run a pass (e2e/sim/controllers.py): only for writes of
what they read, and again after a failed write even when nothing else is written."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.sim.apps import DEPLOYMENTS, REPLICASETS
from e2e.sim.controllers import Controller
from e2e.sim.core import CONFIGMAPS, PODS, core_registry
from e2e.sim.deployment import DeploymentController
from e2e.sim.errors import ApiError
from e2e.sim.owners import claim_candidates, index_owners
from e2e.sim.replicaset import ReplicaSetController
from e2e.sim.resources import ResourceType
from e2e.sim.rest import Rest
from e2e.sim.store import Obj, Store


def _rest() -> Rest:
    registry = core_registry()
    registry.add(REPLICASETS)
    rest = Rest(Store(), registry)
    rest.store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": "default"}})
    return rest


def _replicaset(replicas: int) -> Obj:
    labels = {"app": "web"}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "x"}]}}}}


def _poll(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class _Counting(ReplicaSetController):
    passes = 0

    def reconcile(self) -> None:
        self.passes += 1
        super().reconcile()


@pytest.fixture
def rest() -> Iterator[Rest]:
    rest = _rest()
    yield rest
    rest.store.close()


def test_replicaset_controller_ignores_writes_of_other_kinds(rest: Rest) -> None:
    controller = _Counting(rest)
    idle = threading.Event()  # the loop waits, having seen every write so far
    real_wait = rest.store.wait

    def wait(since: int, timeout: float | None, stopped: Any = None,
             resources: Any = None) -> int:
        if since == rest.store.resource_version:
            idle.set()
        try:
            return real_wait(since, timeout, stopped, resources)
        finally:
            idle.clear()

    rest.store.wait = wait  # type: ignore[method-assign]
    rest.create(REPLICASETS, "default", _replicaset(0))
    with _started(controller):
        _poll(lambda: idle.is_set() and "status" in (
            rest.store.peek_one(REPLICASETS.key, "default", "web") or {}), "a settled pass")
        before = controller.passes
        for i in range(20):
            rest.create(CONFIGMAPS, "default", {"metadata": {"name": f"cm-{i}"}})
        assert not _passed(controller, before, 0.3)
        rest.create(PODS, "default", {"metadata": {"name": "bare", "labels": {"app": "db"}},
                                      "spec": {"containers": [{"name": "c", "image": "x"}]}})
        assert _passed(controller, before, 10.0)


def _passed(controller: _Counting, before: int, timeout: float) -> bool:
    # A bounded wait: the negative case must give the loop time to (wrongly) run.
    deadline = time.monotonic() + timeout
    while controller.passes == before and time.monotonic() < deadline:
        time.sleep(0.01)
    return controller.passes != before


def test_a_pod_whose_create_failed_is_created_without_other_writes(rest: Rest) -> None:
    failures = [ApiError(500, "InternalError", "etcd is away"),
                ApiError(500, "InternalError", "etcd is still away")]
    real_create = rest.create
    log: list[str] = []

    def create(rt: ResourceType, namespace: str, body: Any) -> Obj:
        if rt is PODS and failures:
            raise failures.pop(0)
        return real_create(rt, namespace, body)

    rest.create = create  # type: ignore[method-assign]
    real_create(REPLICASETS, "default", _replicaset(1))
    # The first failure is retried after the pass's own status write; the second pass
    # writes nothing, so only the retry timer brings the third.
    with _started(ReplicaSetController(rest, log=log.append)):
        _poll(lambda: bool(rest.store.peek(PODS.key, "default")), "the pod")
    assert not failures
    assert [line for line in log if "etcd" in line] == [
        "replicaset-controller: default/web: 500 InternalError: etcd is away",
        "replicaset-controller: default/web: 500 InternalError: etcd is still away"]


def test_failed_passes_wait_for_any_write_with_a_doubling_timeout() -> None:
    class Flaky(Controller):
        resources = ("configmaps",)
        def __init__(self, rest: Rest) -> None:
            super().__init__(rest)
            self.outcomes = [True, True, True, False, True]

        def reconcile(self) -> None:
            if self.outcomes.pop(0):
                self.failed("no luck")

    rest = Rest(Store(), core_registry())
    flaky = Flaky(rest)
    waits: list[tuple[Any, float | None]] = []

    def recording_wait(since: int, timeout: float | None, stopped: Any = None,
                       resources: Any = None) -> int:
        waits.append((resources, timeout))
        if not flaky.outcomes:
            flaky._stop.set()
        return since

    rest.store.wait = recording_wait  # type: ignore[method-assign]
    flaky._run()
    assert waits == [(None, 0.1), (None, 0.2), (None, 0.4), (("configmaps",), None),
                     (None, 0.1)]


class _started:
    """Run a controller for the duration of a with block."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def __enter__(self) -> None:
        self._controller.start()

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


def test_claim_candidates_are_the_owned_and_the_orphans_sharing_a_label() -> None:
    store = Store()
    index_owners(store, PODS)

    def pod(name: str, labels: dict[str, str], owner: str | None = None, ns: str = "a"
            ) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
        if owner:
            meta["ownerReferences"] = [{"uid": owner, "controller": True}]
        store.create(PODS.key, {"metadata": meta})

    pod("z-mine", {"app": "other"}, owner="rs-1")  # controlled: found, labels or not
    pod("y-orphan", {"app": "web", "tier": "x"})
    pod("x-orphan-elsewhere", {"app": "web"}, ns="b")
    pod("w-theirs", {"app": "web"}, owner="rs-2")
    pod("v-orphan-unlabelled", {})
    owner: Obj = {"metadata": {"name": "rs", "namespace": "a", "uid": "rs-1"}}

    def names(selector: dict[str, Any] | None) -> list[str]:
        return [p["metadata"]["name"] for p in claim_candidates(store, PODS, owner, selector)]

    assert names({"matchLabels": {"app": "web"}}) == ["y-orphan", "z-mine"]
    assert names({}) == ["v-orphan-unlabelled", "y-orphan", "z-mine"]
    assert names(None) == ["z-mine"]
    # The owner's own objects move with its ownerReferences.
    store.update(PODS.key, "a", "z-mine", lambda p: {**p, "metadata": {
        k: v for k, v in p["metadata"].items() if k != "ownerReferences"}})
    assert names({"matchLabels": {"app": "web"}}) == ["y-orphan"]


def test_a_recreate_rollout_resumes_when_the_old_pod_is_gone(rest: Rest) -> None:
    # The Deployment controller waits for pod writes only while such a rollout waits:
    # the old pod's removal is then the only write, nothing else wakes it.
    rest.registry.add(DEPLOYMENTS)
    labels = {"app": "web"}

    def template(image: str) -> Obj:
        return {"metadata": {"labels": labels},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": image}]}}

    rest.create(DEPLOYMENTS, "default", {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "strategy": {"type": "Recreate"}, "template": template("x:1")}})

    def sets() -> list[Obj]:
        return rest.store.peek(REPLICASETS.key, "default")

    with _started(DeploymentController(rest)), _started(ReplicaSetController(rest)):
        _poll(lambda: len(rest.store.peek(PODS.key, "default")) == 1, "the first pod")
        rest.patch(DEPLOYMENTS, "default", "web", "application/merge-patch+json",
                   {"spec": {"template": template("x:2")}})
        _poll(lambda: all(p["metadata"].get("deletionTimestamp") for p in rest.store.peek(
            PODS.key, "default")) and sets()[0].get("status", {}).get("replicas", 0) == 0,
            "the old pod terminating")
        assert len(sets()) == 1  # Recreate: no new ReplicaSet while the old pod runs
        old = rest.store.peek(PODS.key, "default")[0]["metadata"]["name"]
        rest.store.remove(PODS.key, "default", old)
        _poll(lambda: len(sets()) == 2, "the new ReplicaSet")
