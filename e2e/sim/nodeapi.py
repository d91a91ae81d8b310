"""The simulator's store as a node's view of its cluster (e2e/nodes/api.py's NodeApi).

Reads peek at the stored objects (read-only, no copies: the 200-pod drain
benchmark reads them on every kubelet pass), through an index of pods by the
node they are bound to; writes go through `Rest` as a controller's do.
"""

from __future__ import annotations

from collections.abc import Callable

from e2e.nodes.api import ApiFailure, Change, Gone, Obj
from e2e.sim.batch import JOBS
from e2e.sim.core import CONFIGMAPS, EVENTS, NODES, PODS, SECRETS, SERVICEACCOUNTS
from e2e.sim.errors import ApiError
from e2e.sim.rest import Rest

__all__ = ["NODE_INDEX", "SimNodeApi"]

#: The store's index of pods by the node they are bound to (spec.nodeName).
NODE_INDEX = "spec.nodeName"
_KINDS = {"Secret": SECRETS, "ConfigMap": CONFIGMAPS, "ServiceAccount": SERVICEACCOUNTS,
          "Job": JOBS}


def _pod_node(pod: Obj) -> list[str]:
    node = (pod.get("spec") or {}).get("nodeName")
    return [str(node)] if node else []


def _failure(e: ApiError) -> ApiFailure:
    return Gone(str(e)) if e.code == 404 else ApiFailure(e.code, str(e))


class SimNodeApi:
    """NodeApi for node `node` over the simulator's `rest`.

    tokens: issue(namespace, account) and revoke(token) of the simulator's API server.
    """

    def __init__(self, rest: Rest, node: str, *,
                 tokens: tuple[Callable[[str, str], str], Callable[[str], None]]) -> None:
        self.rest = rest
        self.node = node
        self._issue, self._revoke = tokens
        rest.store.add_index(PODS.key, NODE_INDEX, _pod_node)

    def pods(self) -> list[Obj]:
        return self.rest.store.peek(PODS.key, index=(NODE_INDEX, self.node))

    def pod(self, namespace: str, name: str) -> Obj | None:
        pod = self.rest.store.peek_one(PODS.key, namespace, name)
        if pod is None or (pod.get("spec") or {}).get("nodeName") != self.node:
            return None
        return pod

    def update_pod(self, namespace: str, name: str, change: Change) -> None:
        try:
            self.rest.mutate(PODS, namespace, name, change)
        except ApiError as e:
            raise _failure(e) from e

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.rest.delete(PODS, namespace, name, grace=0, preconditions={"uid": uid})
        except ApiError as e:
            if e.code not in (404, 409):
                raise _failure(e) from e

    def register_node(self, node: Obj) -> None:
        try:
            self.rest.create(NODES, "", node)
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise _failure(e) from e

    def update_node(self, change: Change) -> None:
        try:
            self.rest.mutate(NODES, "", self.node, change)
        except ApiError as e:
            raise _failure(e) from e

    def create_event(self, event: Obj) -> None:
        try:
            self.rest.create(EVENTS, event["metadata"]["namespace"], event)
        except ApiError as e:
            raise _failure(e) from e

    def patch_event(self, namespace: str, name: str, patch: Obj) -> None:
        def apply(current: Obj) -> Obj:
            current.update(patch)
            return current

        try:
            self.rest.mutate(EVENTS, namespace, name, apply)
        except ApiError as e:
            raise _failure(e) from e

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.rest.store.find(_KINDS[kind].key, namespace, name)

    def service_account_token(self, pod: Obj, account: str) -> str:
        return self._issue(pod["metadata"]["namespace"], account)

    def revoke_token(self, token: str) -> None:
        self._revoke(token)
