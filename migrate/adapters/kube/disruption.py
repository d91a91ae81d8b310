"""Disruption budgets and evictions: what a drain does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from migrate.adapters.kube.client import Cluster, call, request_json, send, status_message
from migrate.errors import NotFoundError
from migrate.retry import retry_after


def list_pdbs(cluster: Cluster, namespace: str | None) -> list[dict[str, Any]]:
    """PodDisruptionBudgets (policy/v1) in ``namespace`` (None: every namespace)."""
    if namespace is None:
        listing = request_json(cluster, "list pod disruption budgets", "GET",
                               "/apis/policy/v1/poddisruptionbudgets")
    else:
        listing = request_json(cluster, f"list pod disruption budgets in {namespace}", "GET",
                               "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
                               path_params={"namespace": namespace})
    items: list[dict[str, Any]] = listing["items"]
    return items


EVICTED, GONE, REFUSED = "evicted", "gone", "refused"


@dataclass(frozen=True)
class Eviction:
    """What the eviction subresource answered."""

    outcome: str  # EVICTED | GONE (no such pod, or another pod by that name) | REFUSED
    message: str = ""  # why REFUSED: the budget's own words
    retry_after: float | None = None  # seconds the server asked us to wait, if it did


def _refusal(e: Any) -> Eviction:
    """A 429 as an `Eviction`: the Status message and the budget's cause, if given."""
    message = status_message(e.body) or "too many requests"
    wait = retry_after((e.headers or {}).get("Retry-After"))
    try:
        details = json.loads(e.body).get("details") or {}
    except (ValueError, TypeError, AttributeError):
        details = {}
    causes = [c.get("message") for c in details.get("causes") or [] if c.get("message")]
    if causes:
        message = f"{message} ({'; '.join(causes)})"
    if wait is None and isinstance(details.get("retryAfterSeconds"), int):
        wait = float(details["retryAfterSeconds"])
    return Eviction(REFUSED, message, wait)


def evict_pod(cluster: Cluster, namespace: str, name: str, *,
              uid: str | None = None) -> Eviction:
    """Ask the API server to evict a pod (policy/v1 Eviction: disruption budgets apply).

    A 429 is not a failure but the budget (or the server) saying "not now": it
    comes back as REFUSED, never raised nor retried here, so that the caller
    waits as kubectl drain does. With ``uid``, only that pod is evicted; a pod
    already gone, or replaced by another of the same name, is GONE.
    """
    from kubernetes.client.exceptions import ApiException

    body: Any = {"apiVersion": "policy/v1", "kind": "Eviction",
                 "metadata": {"name": name, "namespace": namespace}}
    if uid:
        body["deleteOptions"] = {"preconditions": {"uid": uid}}

    def post(_request_timeout: float) -> Eviction:
        try:
            send(cluster, "POST", "/api/v1/namespaces/{namespace}/pods/{name}/eviction",
                 path_params={"namespace": namespace, "name": name}, body=body,
                 request_timeout=_request_timeout).read()
        except ApiException as e:
            if e.status == 429:
                return _refusal(e)
            if e.status == 409 and uid:  # the uid precondition: another pod took the name
                return Eviction(GONE, status_message(e.body))
            raise
        return Eviction(EVICTED)

    try:
        return call(cluster, f"evict pod {namespace}/{name}", post)
    except NotFoundError:
        return Eviction(GONE)
