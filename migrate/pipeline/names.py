"""Objects named on the command line that do not exist: which kind, and what was meant.

The API server's 404 says `nodes "nod-b" not found`; an operator wants to
know what to type instead. So a missing pod or node is reported by kind
(a node has no namespace to check), with the names closest to the one
given and, for a pod, the other namespaces holding a pod of that name.
Listing them is a courtesy: when that fails too, the error is the same
without the suggestions.
"""

from __future__ import annotations

import difflib
from typing import Any

from migrate.adapters import kube
from migrate.errors import MigrateError, NotFoundError

Obj = dict[str, Any]

#: Names listed in a hint at most; past that, the kubectl command that lists them.
SHOWN = 8


def _names(objects: list[Obj]) -> list[str]:
    return sorted(str(o["metadata"]["name"]) for o in objects)


def suggestion(wanted: str, names: list[str], listing: str, what: str) -> str:
    """``did you mean X?`` and the names there are (or how to list them)."""
    scored = sorted(((difflib.SequenceMatcher(None, wanted, n).ratio(), n) for n in names),
                    reverse=True)
    # One name clearly nearest (a typo), not a row of look-alikes (node-a, node-b...).
    close = scored[0][1] if scored and scored[0][0] >= 0.6 and (
        len(scored) == 1 or scored[0][0] > scored[1][0]) else None
    parts = [f"did you mean {close}?"] if close else []
    if not names:
        parts.append(f"there are no {what}")
    elif len(names) <= SHOWN:
        parts.append(f"{what}: {', '.join(names)}")
    else:
        parts.append(f"`{listing}` lists the {len(names)} {what}")
    return "; ".join(parts)


def node_missing(cluster: kube.Cluster, name: str, role: str = "node") -> NotFoundError:
    """The error for a node that does not exist; ``role``: how the command line named it
    (``node``, ``--to``, ``--node``...)."""
    message = f"node {name} does not exist" if role == "node" else \
        f"{role} {name}: no such node"
    try:
        names = _names(kube.list_nodes(cluster))
    except MigrateError:
        return NotFoundError(message, hint="`kubectl get nodes` lists the cluster's nodes")
    return NotFoundError(message, hint=suggestion(name, names, "kubectl get nodes",
                                                  "the cluster's nodes"))


def read_node(cluster: kube.Cluster, name: str, role: str = "node", *,
              recent: bool = False) -> Obj:
    """The node, or `node_missing`'s error; ``recent``: as read by this process in the
    last seconds (kube.read_node_recent)."""
    try:
        return kube.read_node_recent(cluster, name) if recent else kube.read_node(cluster, name)
    except NotFoundError:
        raise node_missing(cluster, name, role) from None


def check_node(cluster: kube.Cluster, name: str, role: str = "node") -> None:
    """Refuse a node name the cluster does not know (nothing is made for it)."""
    read_node(cluster, name, role)


def pod_missing(cluster: kube.Cluster, namespace: str, name: str) -> NotFoundError:
    """The error for a pod that does not exist in ``namespace``: near names there, and
    the namespaces that do have a pod of this name."""
    message = f"pod {namespace}/{name} does not exist"
    hints = []
    try:
        elsewhere = sorted({str(p["metadata"].get("namespace")) for p in kube.list_pods(
            cluster, None, field_selector=f"metadata.name={name}")} - {namespace})
        if elsewhere:
            hints.append(f"it is in namespace {', '.join(elsewhere)}: -n {elsewhere[0]}")
        hints.append(suggestion(name, _names(kube.list_pods(cluster, namespace)),
                                f"kubectl get pods -n {namespace}", f"pods in {namespace}"))
    except MigrateError:
        pass  # not allowed to list, or the API went away: the error stands alone
    if not hints or not hints[0].startswith(("it is in", "did you mean")):
        hints.append("check the name and the namespace (-n)")
    return NotFoundError(message, hint="; ".join(hints))


def read_pod(cluster: kube.Cluster, namespace: str, name: str) -> Obj:
    """The pod, or `pod_missing`'s error."""
    try:
        return kube.read_pod(cluster, namespace, name)
    except NotFoundError:
        raise pod_missing(cluster, namespace, name) from None
