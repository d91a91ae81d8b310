"""Control loops: the scheduler and the namespace controller (kubelets: kubelet.py).

Each controller is level-triggered, like Kubernetes' own: a thread that
reconciles the whole (small) state whenever anything in the store changes
(anything it reads: see `Controller.resources`), or when a timer it asked for
is due. Reconciling twice must be a no-op, which
the store guarantees for unchanged writes, so loops settle by themselves.
Writes go through `Rest`, obeying the same rules as clients' writes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from e2e.nodes.api import set_condition
from e2e.sim.core import NAMESPACES, NODES, PODS
from e2e.sim.errors import ApiError
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["Controller", "NamespaceController", "Scheduler", "node_fit", "set_condition"]


class Controller:
    """A reconcile loop in its own thread.

    Subclasses implement reconcile() and may return, from next_wakeup(), the
    seconds until a timer of theirs is due (None: only wake on changes).
    `resources`: the storage keys of everything reconcile() reads, whose writes
    start a pass (None: a write of anything does); read after each pass, so a
    pass may narrow or widen what the next one waits for.
    Errors in reconcile(), and writes it reports failed (`failed()`), go to
    `log` and are retried on the next change (of anything: what made them fail
    may be elsewhere) or, at the latest, after a backoff doubling from
    RETRY_MIN to RETRY_MAX seconds while passes keep failing, as the real
    controllers' rate-limited work queues requeue.
    """

    name = "controller"
    resources: tuple[str, ...] | None = None
    RETRY_MIN = 0.1
    RETRY_MAX = 10.0

    def __init__(self, rest: Rest, *, log: Callable[[str], None] | None = None) -> None:
        self.rest = rest
        self._log = log or (lambda line: None)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pass_failed = False  # this pass reported a failed write
        self._backoff = 0.0  # seconds until the retry of a failed pass (0: none failed)

    def reconcile(self) -> None:
        raise NotImplementedError

    def next_wakeup(self) -> float | None:
        return None

    def failed(self, message: str) -> None:
        """Log a write this pass could not make: a later pass retries it (see above)."""
        self._log(f"{self.name}: {message}")
        self._pass_failed = True

    def start(self) -> None:
        """Run the loop in a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.name}")
        self._thread.start()

    def wake(self) -> None:
        """Run a pass now, though nothing changed in the store (e.g. a clock moved)."""
        self._wake.set()
        self.rest.store.poke()

    def stop(self) -> None:
        """Stop the loop and join its thread."""
        self._stop.set()
        self.rest.store.poke()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        store = self.rest.store
        while not self._stop.is_set() and not store.closed:
            # Read the version first: a write during reconcile() wakes the next pass.
            seen = store.resource_version
            self._wake.clear()
            self._pass_failed = False
            try:
                self.reconcile()
            except ApiError as e:
                self.failed(str(e))
            except Exception as e:  # a bug must not kill the loop silently
                self.failed(f"unexpected {type(e).__name__}: {e}")
            store.wait(seen, self._timeout(),
                       stopped=lambda: self._stop.is_set() or self._wake.is_set(),
                       resources=None if self._pass_failed else self.resources)

    def _timeout(self) -> float | None:
        timer = self.next_wakeup()
        if not self._pass_failed:
            self._backoff = 0.0
            return timer
        self._backoff = min(max(self._backoff * 2, self.RETRY_MIN), self.RETRY_MAX)
        return self._backoff if timer is None else min(timer, self._backoff)


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == taint["key"]):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def node_fit(pod: Obj, node: Obj) -> str | None:
    """Why `pod` cannot run on `node` (a scheduler reason phrase), or None if it fits."""
    status = node.get("status", {})
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
    if ready.get("status") != "True":
        return "node(s) were not ready"
    if node.get("spec", {}).get("unschedulable"):
        return "node(s) were unschedulable"
    tolerations = pod["spec"].get("tolerations") or []
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            tolerations, taint
        ):
            return "node(s) had untolerated taint"
    labels = node["metadata"].get("labels") or {}
    selector = pod["spec"].get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()) or not _affinity_fits(pod, node):
        return "node(s) didn't match Pod's node affinity/selector"
    return None


def _node_expression(expr: dict[str, Any], values: dict[str, str]) -> bool:
    key, op = str(expr.get("key", "")), expr.get("operator")
    wanted = [str(v) for v in expr.get("values") or []]
    if op in ("Gt", "Lt"):
        try:
            have, limit = int(values[key]), int(wanted[0])
        except (KeyError, IndexError, ValueError):
            return False
        return have > limit if op == "Gt" else have < limit
    return {"In": key in values and values[key] in wanted,
            "NotIn": key not in values or values[key] not in wanted,
            "Exists": key in values, "DoesNotExist": key not in values}.get(str(op), False)


def _affinity_fits(pod: Obj, node: Obj) -> bool:
    """requiredDuringSchedulingIgnoredDuringExecution: some term matches (terms are ORed,
    a term's expressions ANDed; matchFields knows metadata.name; an empty term matches
    nothing)."""
    required = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if not required:
        return True
    labels = node["metadata"].get("labels") or {}
    fields = {"metadata.name": node["metadata"]["name"]}
    for term in required.get("nodeSelectorTerms") or []:
        checks = [(e, labels) for e in term.get("matchExpressions") or []] + \
            [(e, fields) for e in term.get("matchFields") or []]
        if checks and all(_node_expression(e, values) for e, values in checks):
            return True
    return False


class Scheduler(Controller):
    """Binds pods without `spec.nodeName` to a fitting node, round robin.

    Fitting: Ready, not cordoned, taints tolerated, nodeSelector and required
    node affinity matched. Preferred affinity, pod affinity, resources and
    spreading are not considered. A pod that fits
    nowhere gets `PodScheduled=False` (reason Unschedulable), as kubectl
    describe would show.
    """

    name = "scheduler"
    resources = (PODS.key, NODES.key)

    def __init__(self, rest: Rest, *, log: Callable[[str], None] | None = None) -> None:
        super().__init__(rest, log=log)
        self._turn = 0

    def reconcile(self) -> None:
        pending, _ = self.rest.list(PODS, None, lambda p: not p["spec"].get("nodeName")
                                    and not p["metadata"].get("deletionTimestamp")
                                    and p["spec"].get("schedulerName") == "default-scheduler")
        if not pending:
            return
        nodes, _ = self.rest.list(NODES, None)
        for pod in pending:
            verdicts = {n["metadata"]["name"]: node_fit(pod, n) for n in nodes}
            fitting = sorted(name for name, why in verdicts.items() if why is None)
            if fitting:
                target = fitting[self._turn % len(fitting)]
                self._turn += 1
                self._bind(pod, target)
            else:
                reasons = Counter(why for why in verdicts.values() if why)
                detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
                self._unschedulable(pod, f"0/{len(nodes)} nodes are available: {detail}.")

    def _bind(self, pod: Obj, node: str) -> None:
        uid = pod["metadata"]["uid"]

        def bind(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid or current["spec"].get("nodeName"):
                return None
            current["spec"]["nodeName"] = node
            set_condition(current.setdefault("status", {}), "PodScheduled", "True")
            return current

        self._log(f"scheduler: {pod['metadata']['namespace']}/{pod['metadata']['name']} -> {node}")
        self.rest.mutate(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], bind)

    def _unschedulable(self, pod: Obj, message: str) -> None:
        def mark(current: Obj) -> Obj | None:
            if current["spec"].get("nodeName"):
                return None
            set_condition(current.setdefault("status", {}), "PodScheduled", "False",
                          "Unschedulable", message)
            return current

        self.rest.mutate(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], mark)


class NamespaceController(Controller):
    """Empties Terminating namespaces, then lets them go (drops the `kubernetes` finalizer)."""

    name = "namespace-controller"

    def reconcile(self) -> None:
        doomed, _ = self.rest.list(NAMESPACES, None,
                                   lambda ns: bool(ns["metadata"].get("deletionTimestamp")))
        for ns in doomed:
            name = ns["metadata"]["name"]
            if self._empty(name):
                self.rest.update(NAMESPACES, "", name, {"spec": {"finalizers": []}}, "finalize")

    def _empty(self, namespace: str) -> bool:
        remaining = 0
        for rt in self.rest.registry.namespaced():
            items, _ = self.rest.list(rt, namespace)
            remaining += len(items)
            for obj in items:
                if obj["metadata"].get("deletionTimestamp"):
                    continue  # already going (a kubelet is stopping the pod)
                try:
                    self.rest.delete(rt, namespace, obj["metadata"]["name"])
                except ApiError as e:
                    if e.code != 404:
                        raise
        return remaining == 0
