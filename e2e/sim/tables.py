"""Server-side printing: `meta.k8s.io Table` responses, the columns `kubectl get` shows.

kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io` and prints
whatever columns come back; the cells here follow the API server's printers
(pkg/printers/internalversion) for the kinds the simulator serves, and the
generic `Name, Created At` table for the rest. Each row carries the object's
metadata (PartialObjectMetadata) unless the client asks otherwise, because
kubectl reads the namespace of `-A` listings from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from e2e.sim.meta import human_duration, now, parse_time

__all__ = [
    "DEFAULT_TABLE",
    "NAMESPACE_TABLE",
    "NODE_TABLE",
    "POD_TABLE",
    "Column",
    "TableSpec",
    "render_table",
]

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """A `TableColumnDefinition`; priority 0 shows by default, >0 with `-o wide`."""

    name: str
    type: str = "string"
    format: str = ""
    description: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.description, "priority": self.priority}


@dataclass(frozen=True)
class TableSpec:
    """Columns and a function making one row's cells from an object."""

    columns: tuple[Column, ...]
    cells: Callable[[Obj], list[Any]]


def _age(obj: Obj) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    return human_duration((now() - parse_time(created)).total_seconds())


def _name(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


_NAME = Column("Name", format="name",
               description="Name must be unique within a namespace.")

DEFAULT_TABLE = TableSpec(
    (_NAME, Column("Created At", type="date")),
    lambda o: [_name(o), o.get("metadata", {}).get("creationTimestamp")],
)


def _pod_cells(pod: Obj) -> list[Any]:
    spec, status = pod.get("spec", {}), pod.get("status", {})
    containers = spec.get("containers", [])
    statuses = status.get("containerStatuses", [])
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for s in statuses:
        waiting = s.get("state", {}).get("waiting")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        _name(pod), f"{ready}/{len(containers)}", reason, restarts, _age(pod),
        status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"{len(gates)}/{len(gates)}" if gates else "<none>",
    ]


POD_TABLE = TableSpec(
    (
        _NAME,
        Column("Ready", description="The aggregate readiness state of this pod for "
               "accepting traffic."),
        Column("Status", description="The aggregate status of the containers in this pod."),
        Column("Restarts", type="string", description="The number of times the containers "
               "in this pod have been restarted and when the last container in this pod "
               "has restarted."),
        Column("Age", description="CreationTimestamp"),
        Column("IP", priority=1, description="IP address allocated to the pod."),
        Column("Node", priority=1, description="Name of the node the pod is assigned to."),
        Column("Nominated Node", priority=1,
               description="Name of the node the pod is nominated to."),
        Column("Readiness Gates", priority=1, description="Pod readiness gates."),
    ),
    _pod_cells,
)


def _node_cells(node: Obj) -> list[Any]:
    spec, status = node.get("spec", {}), node.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else (
        "NotReady" if ready else "Unknown")
    if spec.get("unschedulable"):
        state += ",SchedulingDisabled"
    prefix = "node-role.kubernetes.io/"
    labels = node.get("metadata", {}).get("labels") or {}
    roles = sorted(k[len(prefix):] for k in labels if k.startswith(prefix))
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses", [])}
    info = status.get("nodeInfo", {})
    return [
        _name(node), state, ",".join(r for r in roles if r) or "<none>", _age(node),
        info.get("kubeletVersion", ""), addresses.get("InternalIP") or "<none>",
        addresses.get("ExternalIP") or "<none>", info.get("osImage", "<unknown>"),
        info.get("kernelVersion", "<unknown>"), info.get("containerRuntimeVersion", "<unknown>"),
    ]


NODE_TABLE = TableSpec(
    (
        _NAME,
        Column("Status", description="The status of the node"),
        Column("Roles", description="The roles of the node"),
        Column("Age", description="CreationTimestamp"),
        Column("Version", description="Kubelet Version reported by the node."),
        Column("Internal-IP", priority=1, description="List of internal IPs."),
        Column("External-IP", priority=1, description="List of external IPs."),
        Column("OS-Image", priority=1, description="OS image reported by the node."),
        Column("Kernel-Version", priority=1, description="Kernel version reported by the node."),
        Column("Container-Runtime", priority=1,
               description="Container runtime version reported by the node."),
    ),
    _node_cells,
)

NAMESPACE_TABLE = TableSpec(
    (_NAME, Column("Status", description="The status of the namespace"),
     Column("Age", description="CreationTimestamp")),
    lambda ns: [_name(ns), ns.get("status", {}).get("phase", ""), _age(ns)],
)


def _row_object(obj: Obj, include: str, api_version: str) -> Any:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version,
            "metadata": obj.get("metadata", {})}


def render_table(
    spec: TableSpec,
    objects: Sequence[Obj],
    *,
    resource_version: str,
    include_object: str = "Metadata",
    api_version: str = "meta.k8s.io/v1",
) -> dict[str, Any]:
    """A Table of `objects`; include_object is the `includeObject` parameter."""
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": spec.cells(obj)}
        embedded = _row_object(obj, include_object, api_version)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [c.definition() for c in spec.columns],
        "rows": rows,
    }
