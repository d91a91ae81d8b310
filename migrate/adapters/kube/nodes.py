"""Nodes and the server: versions, listing, cordoning, access reviews, and the kubelet's
checkpoint API through the API server's node proxy."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from migrate.adapters.kube.client import Cluster, call, request_json, send
from migrate.adapters.kubelet import parse_checkpoint_response, read_answer, runtime_failure
from migrate.errors import MigrateError, NotFoundError


def server_version(cluster: Cluster) -> dict[str, Any]:
    """``/version``: gitVersion, major, minor, platform."""
    return request_json(cluster, "read the server version", "GET", "/version/")


def server_minor_version(cluster: Cluster) -> str:
    """The API server's Kubernetes version as ``MAJOR.MINOR`` (its ``/version``).

    Asked once per connection: an upgrade of the control plane during one command
    would change nothing the answer is used for (which schema a Pod is checked against).
    """
    if "minor_version" not in cluster.memo:
        cluster.memo["minor_version"] = version_of(server_version(cluster))
    return str(cluster.memo["minor_version"])


def version_of(info: dict[str, Any]) -> str:
    """``MAJOR.MINOR`` of a ``/version`` document."""
    # Managed clusters report minor "30+"; gitVersion ("v1.30.4-gke.1") is the fallback.
    major, minor = (str(info.get(k, "")).rstrip("+") for k in ("major", "minor"))
    if not (major.isdigit() and minor.isdigit()):
        major, _, rest = str(info.get("gitVersion", "")).lstrip("v").partition(".")
        minor = rest.split(".")[0]
    return f"{major}.{minor}"


def list_nodes(cluster: Cluster) -> list[dict[str, Any]]:
    """Every node, as the API serves it."""
    items: list[dict[str, Any]] = request_json(cluster, "list nodes", "GET",
                                               "/api/v1/nodes")["items"]
    return items


def list_nodes_matching(cluster: Cluster, label_selector: str) -> list[dict[str, Any]]:
    """Nodes whose labels match ``label_selector`` (the API server parses it)."""
    items: list[dict[str, Any]] = request_json(
        cluster, f"list nodes matching {label_selector!r}", "GET", "/api/v1/nodes",
        query=[("labelSelector", label_selector)])["items"]
    return items


def read_node(cluster: Cluster, name: str) -> dict[str, Any]:
    """One node, as the API serves it."""
    return request_json(cluster, f"read node {name}", "GET", "/api/v1/nodes/{name}",
                        path_params={"name": name})


#: How old a node read by `read_node_recent` may be (seconds): an informer's lag.
RECENT_NODE_SECONDS = 5.0


def read_node_recent(cluster: Cluster, name: str,
                     max_age: float = RECENT_NODE_SECONDS) -> dict[str, Any]:
    """One node, read at most ``max_age`` seconds ago by this process (its copies of
    ``cluster`` share the reads): a drain's preflights read the same few nodes for
    every pod. Not for a last look before an irreversible step: use `read_node`."""
    reads: dict[str, tuple[float, dict[str, Any]]] = cluster.memo.setdefault("node_reads", {})
    found = reads.get(name)
    if found is None or time.monotonic() - found[0] > max_age:
        found = (time.monotonic(), read_node(cluster, name))
        reads[name] = found  # one assignment: safe between threads
    return copy.deepcopy(found[1])  # the caller's to change


def kubelet_config(cluster: Cluster, name: str) -> dict[str, Any]:
    """The node's kubelet configuration as it runs (``/configz`` through the node proxy:
    RBAC ``nodes/proxy`` get), in KubeletConfiguration v1beta1's fields."""
    answer = request_json(cluster, f"read the kubelet configuration of {name}", "GET",
                          "/api/v1/nodes/{name}/proxy/configz", path_params={"name": name})
    config = answer.get("kubeletconfig")
    if not isinstance(config, dict):
        raise MigrateError(f"the kubelet of {name} answered /configz without a "
                           "kubeletconfig")
    return config


def patch_node(cluster: Cluster, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic-merge-patch a node (cordon: ``{"spec": {"unschedulable": True}}``)."""
    return request_json(cluster, f"patch node {name}", "PATCH", "/api/v1/nodes/{name}",
                        path_params={"name": name}, body=patch,
                        content_type="application/strategic-merge-patch+json")


def list_namespaces(cluster: Cluster) -> list[dict[str, Any]]:
    """Every namespace (shell completion of -n)."""
    items: list[dict[str, Any]] = request_json(cluster, "list namespaces", "GET",
                                               "/api/v1/namespaces")["items"]
    return items


@dataclass(frozen=True)
class Access:
    """What a SelfSubjectAccessReview answered."""

    allowed: bool
    reason: str


def can_i(cluster: Cluster, verb: str, resource: str, *, group: str = "",
          subresource: str = "", namespace: str = "") -> Access:
    """Ask the API server whether the current user may ``verb`` the ``resource``."""
    attributes = {"verb": verb, "resource": resource, "group": group,
                  **({"subresource": subresource} if subresource else {}),
                  **({"namespace": namespace} if namespace else {})}
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes}}
    what = f"review access to {verb} {resource}{'/' + subresource if subresource else ''}"
    status = request_json(cluster, what, "POST",
                          "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                          body=body).get("status") or {}
    return Access(bool(status.get("allowed")), str(status.get("reason") or ""))


_GATE_HINT = ("the kubelet has no checkpoint endpoint: enable the ContainerCheckpoint feature "
              "gate (on by default from 1.30)")


def _checkpoint_error(e: MigrateError) -> MigrateError:
    """Checkpoint failures, with hints for the two usual causes."""
    if isinstance(e, NotFoundError):
        return NotFoundError(e.message, hint=_GATE_HINT)
    return e


def checkpoint_via_apiserver(cluster: Cluster, node: str, namespace: str, pod: str,
                             container: str, timeout: int | None) -> str:
    """POST the kubelet's checkpoint API through the API server's node proxy.

    Returns the archive's path on the node. Needs RBAC ``nodes/proxy`` create.
    """
    what = f"checkpoint {namespace}/{pod}/{container} on {node}"
    query = [("timeout", str(timeout))] if timeout else []

    def post(_request_timeout: float) -> bytes:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = send(cluster, "POST",
                        "/api/v1/nodes/{node}/proxy/checkpoint/{namespace}/{pod}/{container}",
                        path_params={"node": node, "namespace": namespace, "pod": pod,
                                     "container": container},
                        query=query, request_timeout=_request_timeout)
        except ApiException as e:
            if (e.status or 0) >= 500:
                raise runtime_failure(what, e.body or f"HTTP {e.status}") from e
            raise  # `call` translates it
        # The node proxy relays whatever answers at the node's kubelet address.
        return read_answer(resp.response, what)

    # The request lasts as long as the runtime takes to dump the memory.
    request_timeout = max(cluster.settings.request_timeout, (timeout or 0) + 30)
    try:
        resp = call(cluster, what, post, _request_timeout=request_timeout)
    except MigrateError as e:
        raise _checkpoint_error(e) from e
    return parse_checkpoint_response(resp, what)
