"""The drain's decisions without a cluster: quantities, classification, placement,
budgets."""

from __future__ import annotations

import re
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from migrate.adapters import kube
from migrate.errors import InputError
from migrate.pipeline.drain import budgets as budgets_mod
from migrate.pipeline.drain import evict as evict_mod
from migrate.pipeline.drain.budgets import (
    FIRST_PAUSE,
    Budgets,
    BudgetTimeout,
    Interrupted,
    covering,
    selects,
)
from migrate.pipeline.drain.classify import classify
from migrate.pipeline.drain.plan import (
    BARE_POD,
    LOCAL_DATA,
    DrainRequest,
    PodPlan,
    Snapshot,
    make_plan,
)
from migrate.pipeline.drain.state import STAGES, Context, DrainState
from migrate.pipeline.journal import Journal
from migrate.pipeline.quantity import parse_quantity, pod_requests
from migrate.settings import KubeSettings, Settings

Obj = dict[str, Any]


def node(name: str, *, cpu: str = "4", memory: str = "8Gi", pods: str = "110",
         runtime: str = "cri-o://1.30.4", ready: bool = True, cordoned: bool = False,
         labels: dict[str, str] | None = None, taints: list[Obj] | None = None) -> Obj:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"unschedulable": cordoned, "taints": taints or []},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods},
                       "nodeInfo": {"containerRuntimeVersion": runtime},
                       "conditions": [{"type": "Ready", "status": str(ready)}]}}


def pod(name: str, *, on: str = "node-a", phase: str = "Running", owner: str | None = None,
        cpu: str | None = None, memory: str | None = None,
        labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    meta: Obj = {"name": name, "namespace": "default", "uid": f"uid-{name}",
                 "labels": labels or {"app": name}}
    if owner:
        kind, _, owner_name = owner.partition("/")
        meta["ownerReferences"] = [{"kind": kind, "name": owner_name, "controller": True}]
    return {"metadata": meta, "spec": {"nodeName": on, "containers": [
        {"name": "c", "resources": {"requests": requests}}], **spec},
        "status": {"phase": phase}}


# -- quantities ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("500m", "0.5"), ("2", "2"), ("1.5", "1.5"), ("128Mi", str(128 * 2**20)),
    ("1G", "1000000000"), ("1e3", "1000"), ("2E", str(2 * 10**18)), ("100n", "1E-7"),
    (".5Ki", "512"),
])
def test_quantities(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "abc", "1Zi", "--1", "1e"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(InputError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


def test_requests_of_the_restored_copy() -> None:
    p = pod("p", cpu="250m", memory="64Mi", overhead={"cpu": "10m"}, initContainers=[
        {"name": "setup", "resources": {"requests": {"cpu": "8"}}},  # ran already: not counted
        {"name": "proxy", "restartPolicy": "Always", "resources": {"limits": {"cpu": "50m"}}},
    ])
    assert pod_requests(p) == {"pods": 1, "cpu": Decimal("0.31"), "memory": 64 * 2**20}
    assert pod_requests(pod("empty"), scoring=True) == {
        "pods": 1, "cpu": Decimal("0.1"), "memory": 200 * 2**20}


# -- classification ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "selected", "action", "reason"), [
    ({}, True, "migrate", "bare pod: the restored copy replaces it"),
    ({"owner": "ReplicaSet/web-1"}, True, "migrate",
     "ReplicaSet web-1: the restored copy is handed over to it"),
    ({}, False, "evict", "not matched by --pod-selector"),
    ({"owner": "StatefulSet/db"}, True, "evict",
     "StatefulSet db: a StatefulSet pod's name and storage cannot be taken by a copy while "
     "it exists"),
    ({"owner": "Job/nightly"}, True, "evict",
     "Job nightly: a Job counts its pods and would start another"),
    ({"owner": "ReplicationController/old"}, True, "evict",
     "ReplicationController old: migrate cannot hand a pod over to this controller"),
    ({"phase": "Pending"}, True, "evict", "Pending, not Running: no running state to keep"),
    ({"volumes": [{"name": "v", "hostPath": {"path": "/srv"}}]}, True, "evict",
     "volume v is a hostPath: its data stays on the node"),
    ({"volumes": [{"name": "pv", "persistentVolumeClaim": {"claimName": "c"}}]}, True,
     "evict", "volume pv is a persistent volume claim: a restored copy would need it "
     "mounted on two nodes at once"),
    ({"owner": "DaemonSet/agent"}, True, "skip", "DaemonSet agent: it runs a pod on every node"),
    ({"owner": "DaemonSet/agent", "phase": "Pending"}, False, "skip",
     "DaemonSet agent: it runs a pod on every node"),
    ({"phase": "Succeeded"}, True, "skip", "completed (Succeeded)"),
])
def test_classification(spec: Obj, selected: bool, action: str, reason: str) -> None:
    assert classify(pod("p", **spec), selected=selected) == (action, reason)


def test_mirror_and_terminating_pods_are_skipped() -> None:
    mirror = pod("static")
    mirror["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "h"}
    assert classify(mirror)[0] == "skip" and "static pod" in classify(mirror)[1]
    going = pod("going")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert classify(going) == ("skip", "already terminating")


# -- placement ---------------------------------------------------------------------------


def plan(on_node: list[Obj], nodes: list[Obj], running: list[Obj] | None = None,
         pdbs: list[Obj] | None = None, **req: Any) -> dict[str, tuple[str, str | None, str]]:
    snap = Snapshot(on_node, {p["metadata"]["uid"] for p in on_node}, nodes,
                    [*on_node, *(running or [])], pdbs or [])
    return {e.name: (e.action, e.destination, e.reason)
            for e in make_plan(snap, DrainRequest(node="node-a", **req))}


def test_least_loaded_spreads_and_counts_what_runs() -> None:
    nodes = [node("node-a"), node("node-b"), node("node-c")]
    busy = [pod(f"x{i}", on="node-b") for i in range(3)]
    placed = plan([pod(f"p{i}") for i in range(4)], nodes, busy)
    # node-b already holds 3 pods: node-c takes three, then both hold as much (the name
    # breaks the tie).
    assert [placed[f"p{i}"][1] for i in range(4)] == ["node-c", "node-c", "node-c", "node-b"]
    assert placed["p0"][2] == "bare pod: the restored copy replaces it"


def test_requests_decide_and_largest_go_first() -> None:
    nodes = [node("node-a"), node("node-b", cpu="2", memory="2Gi"),
             node("node-c", cpu="1", memory="1Gi")]
    placed = plan([pod("small", cpu="500m"), pod("large", cpu="1500m"),
                   pod("fat", memory="3Gi", owner="ReplicaSet/fat")], nodes)
    assert placed["large"][:2] == ("migrate", "node-b")
    assert placed["small"][:2] == ("migrate", "node-c")
    assert placed["fat"][:2] == ("evict", None)
    assert placed["fat"][2] == (
        "no destination fits: node node-b: not enough memory (the pod requests 3.0 GiB, "
        "2.0 GiB free); node node-c: not enough memory (the pod requests 3.0 GiB, 1.0 GiB "
        "free); evicted instead (--evict-rest)")


def test_pods_capacity_blocks_and_skip_rest_leaves_pods() -> None:
    nodes = [node("node-a"), node("node-b", pods="1")]
    placed = plan([pod("p1"), pod("p2"), pod("db-0", owner="StatefulSet/db")], nodes,
                  evict_rest=False)
    assert placed["p1"][:2] == ("migrate", "node-b")
    assert placed["p2"] == ("blocked", None, "no destination fits: node node-b: not enough "
                            "pods (the pod requests 1, 0 free)")
    assert placed["db-0"][0] == "skip"
    assert placed["db-0"][2].startswith("left on the node (--skip-rest): StatefulSet db: ")


def test_nodes_that_cannot_take_pods_are_no_destinations() -> None:
    nodes = [node("node-a"), node("node-b", cordoned=True), node("node-c", ready=False),
             node("node-d", runtime="containerd://2.4.0")]
    assert plan([pod("p")], nodes, evict_rest=False)["p"] == (
        "blocked", None, "no destination: no Ready, schedulable node that can restore")
    assert plan([pod("p", owner="ReplicaSet/p")], [], to_selector="pool=spare")["p"][2] == (
        "no destination: no Ready, schedulable node that can restore among the nodes "
        "--to-selector pool=spare selects; evicted instead (--evict-rest)")


def test_the_pods_own_constraints_apply() -> None:
    nodes = [node("node-a"), node("node-b", labels={"disk": "ssd"}),
             node("node-c", taints=[{"key": "gpu", "effect": "NoSchedule"}])]
    placed = plan([pod("ssd", nodeSelector={"disk": "ssd"}),
                   pod("gpu", nodeSelector={"disk": "ssd"}, tolerations=[
                       {"key": "gpu", "operator": "Exists"}]),
                   pod("plain")], nodes, evict_rest=False)
    assert placed["ssd"][1] == placed["gpu"][1] == "node-b"
    assert placed["plain"][1] == "node-b"  # node-c's taint is not tolerated
    nodes[1]["metadata"]["labels"] = {}
    placed = plan([pod("ssd", nodeSelector={"disk": "ssd"})], nodes, evict_rest=False)
    assert placed["ssd"][2] == (
        "no destination fits: node node-b does not have the label disk=ssd (the pod's "
        "nodeSelector); node node-c does not have the label disk=ssd (the pod's nodeSelector)")


def test_the_plan_lists_budgets_and_orders_actions() -> None:
    pdb = {"metadata": {"name": "web-pdb", "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"tier": "web"}}}}
    snap = Snapshot([pod("z", owner="DaemonSet/d"), pod("b", labels={"tier": "web"}),
                     pod("a", phase="Pending", owner="ReplicaSet/a")],
                    {"uid-b", "uid-a", "uid-z"},
                    [node("node-b")], [], [pdb])
    entries = make_plan(snap, DrainRequest(node="node-a"))
    assert [(e.name, e.action, e.budgets) for e in entries] == [
        ("b", "migrate", ["web-pdb"]), ("a", "evict", []), ("z", "skip", [])]


def test_a_bare_pod_is_evicted_only_with_force() -> None:
    # Nothing starts an evicted bare pod again: kubectl drain refuses such pods without
    # --force, and so does the drain, whatever the reason it would evict them.
    pods = [pod("left-out", labels={"app": "other"}), pod("pending", phase="Pending"),
            pod("cache", volumes=[{"name": "d", "hostPath": {"path": "/var/cache"}}]),
            pod("fat", memory="3Gi"), pod("owned", phase="Pending", owner="ReplicaSet/o")]
    snap = Snapshot(pods, {p["metadata"]["uid"] for p in pods if p["metadata"]["name"]
                           != "left-out"}, [node("node-b", memory="2Gi")], pods, [])
    entries = {e.name: (e.action, e.reason) for e in make_plan(snap, DrainRequest("node-a"))}
    assert entries == {
        "left-out": ("blocked", f"not matched by --pod-selector; {BARE_POD}"),
        "pending": ("blocked", f"Pending, not Running: no running state to keep; {BARE_POD}"),
        "cache": ("blocked", f"volume d is a hostPath: its data stays on the node; {BARE_POD}"),
        "fat": ("blocked", "no destination fits: node node-b: not enough memory (the pod "
                "requests 3.0 GiB, 2.0 GiB free); " + BARE_POD),
        "owned": ("evict", "Pending, not Running: no running state to keep")}
    assert BARE_POD == ("a bare pod: evicting it deletes it for good, no controller starts "
                        "it again (--force evicts it)")
    forced = make_plan(snap, DrainRequest("node-a", force=True))
    assert {e.name for e in forced if e.action == "evict"} == set(entries)
    assert next(e for e in forced if e.name == "fat").reason.endswith(
        "evicted instead (--evict-rest)")
    # --skip-rest leaves them as before: nothing is evicted.
    kept = {e.name: e.action for e in make_plan(snap, DrainRequest("node-a", evict_rest=False))}
    assert kept == {"left-out": "skip", "pending": "skip", "cache": "skip", "fat": "blocked",
                    "owned": "skip"}
    # A node whose pods cannot leave with their memory: its bare pods stay too.
    containerd = node("node-a", runtime="containerd://2.4.0")
    snap.source = containerd
    snap.on_node = snap.running = [pod("solo")]
    [solo] = make_plan(snap, DrainRequest("node-a"))
    assert (solo.action, solo.reason.endswith(BARE_POD)) == ("blocked", True)


def test_pods_with_emptydirs_move_or_go_only_with_delete_emptydir_data() -> None:
    # kubectl drain refuses pods with local storage without --delete-emptydir-data. A
    # migration loses that data as an eviction does: the checkpoint holds none of it,
    # and the source pod's emptyDirs go with it.
    scratch = [{"name": "scratch", "emptyDir": {}},
               {"name": "shm", "emptyDir": {"medium": "Memory"}}]
    pods = [pod("web", owner="ReplicaSet/web", volumes=scratch),
            pod("db-0", owner="StatefulSet/db", volumes=scratch[:1]),
            pod("solo", volumes=scratch[1:]),
            pod("done", phase="Succeeded", owner="ReplicaSet/d", volumes=scratch),
            pod("agent", owner="DaemonSet/agent", volumes=scratch), pod("plain")]
    snap = Snapshot(pods, {p["metadata"]["uid"] for p in pods}, [node("node-b")], pods, [])
    entries = {e.name: (e.action, e.reason) for e in make_plan(snap, DrainRequest("node-a"))}
    assert entries["web"] == ("blocked", LOCAL_DATA.format("scratch, shm"))
    assert entries["db-0"] == ("blocked", LOCAL_DATA.format("scratch"))
    assert entries["solo"] == ("blocked", LOCAL_DATA.format("shm"))
    assert [entries[n][0] for n in ("done", "agent", "plain")] == ["skip", "skip", "migrate"]
    assert LOCAL_DATA.format("scratch") == (
        "emptyDir volume(s) scratch: their data on the node is deleted with the pod, "
        "migrated or evicted (--delete-emptydir-data allows it)")
    allowed = {e.name: e.action for e in make_plan(
        snap, DrainRequest("node-a", delete_emptydir_data=True))}
    assert allowed == {"web": "migrate", "db-0": "evict", "solo": "migrate", "done": "skip",
                       "agent": "skip", "plain": "migrate"}
    # --skip-rest evicts nothing: what it would evict it leaves, data and all.
    kept = {e.name: e.action for e in make_plan(snap, DrainRequest("node-a",
                                                                   evict_rest=False))}
    assert (kept["web"], kept["db-0"]) == ("blocked", "skip")
    # A drain journaled before the flag existed moved such pods: resumed, it still does.
    assert DrainRequest.from_dict({"node": "node-a"}).delete_emptydir_data is True
    assert DrainRequest.from_dict(DrainRequest("node-a").to_dict()).delete_emptydir_data \
        is False


# -- budgets -----------------------------------------------------------------------------


def test_selectors() -> None:
    labels = {"app": "web", "tier": "front"}
    assert selects({}, labels) and not selects(None, labels)
    assert selects({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["front", "back"]},
        {"key": "legacy", "operator": "DoesNotExist"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "tier", "operator": "NotIn",
                                              "values": ["front"]}]}, labels)
    other_ns = {"metadata": {"name": "x", "namespace": "prod"}, "spec": {"selector": {}}}
    assert covering(pod("p"), [other_ns]) == []


def test_migrations_in_flight_count_against_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    status = {"disruptionsAllowed": 1}
    pdb = {"metadata": {"name": "web-pdb", "namespace": "default"}, "status": status}
    monkeypatch.setattr(budgets_mod.kube, "list_pdbs", lambda cluster, ns: [pdb])
    stop = threading.Event()
    gate = Budgets(stop)
    soon = time.monotonic() + 0.3
    # No pause taken (the figure is the seconds the call took: not 0 on a busy machine).
    assert gate.wait(None, "default", ["web-pdb"], soon, hold=True) < FIRST_PAUSE  # type: ignore[arg-type]
    seen: list[str] = []
    with pytest.raises(BudgetTimeout, match=re.escape("web-pdb allows 1 disruption(s), 1 "
                                                      "taken by migrations in flight")):
        gate.wait(None, "default", ["web-pdb"], time.monotonic() + 0.3,  # type: ignore[arg-type]
                  hold=True, waiting=seen.append)
    assert seen == ["disruption budget default/web-pdb allows 1 disruption(s), 1 taken by "
                    "migrations in flight"]
    # An eviction waits the same way, and does not hold a share.
    with pytest.raises(BudgetTimeout):
        gate.wait(None, "default", ["web-pdb"], time.monotonic() + 0.3,  # type: ignore[arg-type]
                  hold=False)
    gate.release("default", ["web-pdb"])
    assert gate.wait(None, "default", ["web-pdb"], soon, hold=False) < FIRST_PAUSE  # type: ignore[arg-type]
    status["disruptionsAllowed"] = 0
    stop.set()
    with pytest.raises(Interrupted):
        gate.wait(None, "default", ["web-pdb"], time.monotonic() + 30,  # type: ignore[arg-type]
                  hold=True)
    # A budget deleted meanwhile holds nothing back.
    assert gate.wait(None, "default", ["gone-pdb"], soon, hold=True) < FIRST_PAUSE  # type: ignore[arg-type]


# -- evictions ---------------------------------------------------------------------------


def _context(tmp_path: Path, said: list[str]) -> Context:
    stop = threading.Event()
    journal = Journal.create(tmp_path, "drain", "node-a", DrainRequest("node-a").to_dict(),
                             STAGES)
    return Context(kube.Cluster(None, "default", KubeSettings()), Settings(),
                   DrainState(journal), Budgets(stop), stop,
                   lambda subject, message: said.append(f"{subject}: {message}"))


def test_a_drains_migration_is_placed_so_its_preflight_does_not_count_room_again(
        tmp_path: Path) -> None:
    from migrate.pipeline.drain.move import pod_request

    entry = PodPlan("default", "p", "uid-p", "migrate", "bare pod", destination="node-b")
    assert pod_request(_context(tmp_path, []), entry).placed


def test_a_refused_eviction_is_asked_again_until_the_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [kube.Eviction("refused", "not now", 0.01), kube.Eviction("refused", "not now"),
               kube.Eviction("evicted")]
    monkeypatch.setattr(evict_mod.kube, "evict_pod", lambda *a, **kw: answers.pop(0))
    monkeypatch.setattr(evict_mod.switchover, "wait_gone", lambda *a: 0.0)
    monkeypatch.setattr(evict_mod, "FIRST_PAUSE", 0.01)
    said: list[str] = []
    ctx = _context(tmp_path, said)
    entry = PodPlan("default", "p", "uid-p", "evict", "Pending, not Running")
    out = evict_mod.evict_pod(ctx, entry, time.monotonic() + 5)
    assert (out["outcome"], out["eviction_refusals"], out["error"]) == ("evicted", 2, None)
    assert said == ["default/p: evicting", "default/p: waiting: eviction refused: not now"]
    assert [a["action"] for a in ctx.state.journal.actions] == ["waiting"]
    # Refused for good: the deadline ends it, with the API server's words.
    monkeypatch.setattr(evict_mod.kube, "evict_pod",
                        lambda *a, **kw: kube.Eviction("refused", "budget says no", 0.05))
    out = evict_mod.evict_pod(ctx, entry, time.monotonic() + 0.2)
    assert (out["outcome"], out["error"]) == (
        "failed", "eviction refused until the deadline: budget says no")


def test_workers_take_one_pod_per_budget_group_each_round() -> None:
    """In plan order a Deployment's pods come together, and its budget would hold every
    other worker behind them; the pool takes them round by round instead."""
    from migrate.pipeline.drain.run import spread

    def pod(name: str, *budgets: str, ns: str = "default") -> PodPlan:
        return PodPlan(ns, name, f"uid-{name}", "migrate", "", budgets=list(budgets))

    todo = [pod("solo-1"), pod("solo-2"), pod("web-a-1", "web-a"), pod("web-a-2", "web-a"),
            pod("web-a-3", "web-a"), pod("web-b-1", "web-b"), pod("web-b-2", "web-b"),
            pod("web-a-4", "web-a", ns="other")]
    assert [e.name for e in spread(todo)] == [
        "solo-1", "solo-2", "web-a-1", "web-b-1", "web-a-4",  # round 1
        "web-a-2", "web-b-2",  # round 2
        "web-a-3"]
    assert spread([]) == []
