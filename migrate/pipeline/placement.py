"""Would this node take this pod? nodeSelector, required node affinity, taints, and
room for its requests.

A restored pod is created with ``spec.nodeName`` set, which bypasses the
scheduler: nothing in the cluster would stop a migration from putting a pod
where its own spec says it must not run, and only the kubelet's admission
(OutOfcpu...) would stop one its node has no room for, after the checkpoint.
So the tool checks what the scheduler would have checked, and refuses with the
reason. `Load` counts a node's allocatable against the requests on it (the
drain's placement adds the pods it sends there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from migrate.pipeline.quantity import Resources, add, parse_quantity, pod_requests, show
from migrate.pipeline.selectors import requirement_holds

Obj = dict[str, Any]
DEFAULT_MAX_PODS = Decimal(110)  # the kubelet's --max-pods default


def _labels(node: Obj) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def _term_holds(term: Obj, node: Obj) -> bool:
    fields = {"metadata.name": str(node["metadata"]["name"])}
    exprs = term.get("matchExpressions") or []
    field_exprs = term.get("matchFields") or []
    if not exprs and not field_exprs:
        return False  # an empty term matches nothing (as the scheduler has it)
    return (all(requirement_holds(e, _labels(node)) for e in exprs)
            and all(requirement_holds(e, fields) for e in field_exprs))


def _tolerated(taint: Obj, tolerations: list[Obj]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (
                taint.get("value") or ""):
            return True
    return False


def refusals(pod: Obj, node: Obj) -> list[str]:
    """Why the scheduler would keep ``pod`` off ``node`` (empty: it would not)."""
    spec = pod.get("spec") or {}
    name = node["metadata"]["name"]
    out = []
    labels = _labels(node)
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            out.append(f"node {name} does not have the label {key}={value} "
                       "(the pod's nodeSelector)")
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(_term_holds(t, node) for t in terms):
        out.append(f"node {name} matches none of the pod's required node affinity terms")
    tolerations = spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(
                taint, tolerations):
            value = f"={taint['value']}" if taint.get("value") else ""
            out.append(f"node {name} has the taint {taint.get('key')}{value}:"
                       f"{taint['effect']}, which the pod does not tolerate")
    return out


@dataclass
class Load:
    """A destination's allocatable and what is requested on it so far."""

    node: Obj
    allocatable: Resources
    requested: Resources = field(default_factory=dict)
    scored: Resources = field(default_factory=dict)  # requests with scoring defaults

    @property
    def name(self) -> str:
        """The node's name."""
        return str(self.node["metadata"]["name"])

    def take(self, pod: Obj) -> None:
        """Count ``pod`` as running here."""
        self.requested = add(self.requested, pod_requests(pod))
        self.scored = add(self.scored, pod_requests(pod, scoring=True))

    def shortfall(self, need: Resources) -> str | None:
        """Which resource would not fit, with the numbers (None: all fit)."""
        for resource, wanted in sorted(need.items()):
            if not wanted:
                continue
            used = self.requested.get(resource, Decimal(0))
            free = self.allocatable.get(resource, Decimal(0)) - used
            if wanted > free:
                return (f"not enough {resource} (the pod requests {show(resource, wanted)}, "
                        f"{show(resource, max(free, Decimal(0)))} free)")
        return None

    def score(self, pod: Obj) -> tuple[float, float, str]:
        """Lower is better: (CPU and memory fraction after placing, pod fraction, name)."""
        after = add(self.scored, pod_requests(pod, scoring=True))
        fractions = [float(after.get(r, 0) / self.allocatable[r])
                     if self.allocatable.get(r) else 1.0 for r in ("cpu", "memory")]
        pods = float(after.get("pods", 0) / (self.allocatable.get("pods") or 1))
        return sum(fractions) / len(fractions), pods, self.name


def load_of(node: Obj, running: list[Obj]) -> Load:
    """``node``'s Load from its allocatable and the pods running on it."""
    status = node.get("status") or {}
    raw = status.get("allocatable") or status.get("capacity") or {}
    allocatable = {k: parse_quantity(v) for k, v in raw.items()}
    allocatable.setdefault("pods", DEFAULT_MAX_PODS)
    load = Load(node, allocatable)
    for pod in running:
        load.take(pod)
    return load


def occupying(pod: Obj) -> bool:
    """Whether a pod holds its node's resources (the scheduler counts all but finished)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def room_refusal(pod: Obj, node: Obj, running: list[Obj]) -> str | None:
    """Why ``node``, running ``running``, has no room for ``pod``'s requests (None: it has).
    The kubelet's admission refuses such a pod (OutOfcpu, OutOfmemory, OutOfpods...)."""
    return load_of(node, [p for p in running if occupying(p)]).shortfall(pod_requests(pod))
