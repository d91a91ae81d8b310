"""The real API server as a node's view of its cluster (e2e/nodes/api.py's NodeApi).

Pods come from a watch, as a kubelet's pod source does: `run_pod_watch` lists
the pods whose spec.nodeName is the node, then watches from that list's
resourceVersion (with bookmarks, so a quiet watch resumes from a recent
version), and lists again when the stream ends or the version has expired
(410). The cache it keeps answers `pods()` and `pod()`; every change wakes the
kubelet. A write's answer goes into the cache at once, so the kubelet API sees
a status the node has just posted even before the watch brings it.

Writes are what a kubelet sends: pod status by PUT .../status with the
resourceVersion read just before (409: read again and redo the change), the
deletion that confirms a stopped pod (grace period 0, uid precondition), Node
and Lease updates, Events, TokenRequests. Annotations a restore brings back
(e2e/nodes/restored.py keeps them on the Pod, so that a restored pod can be
checkpointed again anywhere) are a merge patch of the pod's metadata: the
status subresource ignores metadata. That patch is the simulation's, not a
kubelet's; the agent may make it because it runs as a cluster admin (KWOK's
controller does the same), not with a node's credentials.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

from e2e.cluster.kubeclient import MERGE_PATCH, KubeClient
from e2e.nodes.api import ApiFailure, Change, Gone, Obj

__all__ = ["ClusterNodeApi"]

_PATHS = {"Secret": "/api/v1/namespaces/{ns}/secrets/{name}",
          "ConfigMap": "/api/v1/namespaces/{ns}/configmaps/{name}",
          "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts/{name}",
          "Job": "/apis/batch/v1/namespaces/{ns}/jobs/{name}"}
_CONFLICT_RETRIES = 20
#: How long one watch request lasts before the server ends it and it is made again from
#: the last resourceVersion seen.
WATCH_SECONDS = 60
#: A bound service-account token's life, as the kubelet asks for it (an hour).
TOKEN_SECONDS = 3600


def _pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def _newer(candidate: Obj, current: Obj | None) -> bool:
    """Whether `candidate` is a later state of the object than `current`. etcd's
    resourceVersions are increasing integers; the comparison only keeps a cache
    from going back in time, so an unexpected version just counts as newer."""
    if current is None or current["metadata"].get("uid") != candidate["metadata"].get("uid"):
        return True
    try:
        return int(candidate["metadata"]["resourceVersion"]) >= \
            int(current["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return True


class ClusterNodeApi:
    """NodeApi for node `node` through `client` (a cluster admin's).

    changed: called after the cache changed (wakes the kubelet).
    log: where refusals and watch restarts are told.
    """

    def __init__(self, client: KubeClient, node: str, *, changed: Callable[[], None],
                 log: Callable[[str], None]) -> None:
        self.client = client
        self.node = node
        self._changed = changed
        self._log = log
        self._pods: dict[tuple[str, str], Obj] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()  # set once the first list is in the cache
        self._cancel: Callable[[], None] = lambda: None  # ends the watch in progress
        self._stopping = threading.Event()

    # -- the pod source ------------------------------------------------------------------

    def run_pod_watch(self, stop: threading.Event) -> None:
        """List and watch this node's pods into the cache until `stop` is set."""
        selector = {"fieldSelector": f"spec.nodeName={self.node}"}
        self._stopping = stop
        while not stop.is_set():
            try:
                listing = self.client.request("GET", "/api/v1/pods", query=selector)
                self._replace(listing.get("items") or [])
                self.synced.set()
                version = str(listing["metadata"]["resourceVersion"])
                while not stop.is_set():
                    version = self._watch(selector, version, stop)
            except ApiFailure as e:
                if not stop.is_set():
                    self._log(f"kubelet-{self.node}: pod watch: {e}; listing again")
                    stop.wait(0.5)

    def _watch(self, selector: dict[str, str], version: str, stop: threading.Event) -> str:
        """One watch request from `version`; the version to go on from. ApiFailure
        when the list must be made again (410 Gone, a broken connection)."""
        query = {**selector, "resourceVersion": version, "allowWatchBookmarks": "true"}
        for event in self.client.watch("/api/v1/pods", query, seconds=WATCH_SECONDS,
                                       opened=self._opened):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise ApiFailure(int(obj.get("code") or 0), str(obj.get("message")))
            version = str(obj.get("metadata", {}).get("resourceVersion") or version)
            if kind == "DELETED":
                self._forget(obj)
            elif kind in ("ADDED", "MODIFIED"):
                self.remember(obj)
            if stop.is_set():
                break
        return version

    def _opened(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel
        if self._stopping.is_set():  # stop_watch() came before this watch began
            cancel()

    def stop_watch(self) -> None:
        """End the watch in progress now (run_pod_watch's `stop` must be set first)."""
        self._cancel()

    def _replace(self, pods: list[Obj]) -> None:
        with self._lock:
            self._pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        self._changed()

    def remember(self, pod: Obj) -> None:
        """Put a state of a pod into the cache, unless the cache has a later one."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        with self._lock:
            if (pod.get("spec") or {}).get("nodeName") != self.node:
                return
            if not _newer(pod, self._pods.get(key)):
                return
            self._pods[key] = pod
        self._changed()

    def _forget(self, pod: Obj) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        with self._lock:
            current = self._pods.get(key)
            if current is None or current["metadata"].get("uid") != pod["metadata"].get("uid"):
                return
            del self._pods[key]
        self._changed()

    def pods(self) -> list[Obj]:
        with self._lock:
            return [self._pods[k] for k in sorted(self._pods)]

    def pod(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._pods.get((namespace, name))

    # -- the pod sink --------------------------------------------------------------------

    def _read_modify_write(self, path: str, change: Change,
                           write: Callable[[str, Obj, Obj], None]) -> None:
        """`change` a fresh copy of the object at `path`, `write` it; on a conflict
        (409: someone wrote in between) read again and redo the change."""
        for _ in range(_CONFLICT_RETRIES):
            current = self.client.request("GET", path)
            new = change(copy.deepcopy(current))
            if new is None:
                return
            try:
                write(path, current, new)
                return
            except ApiFailure as e:
                if e.code != 409:
                    raise
        raise ApiFailure(409, f"{path}: still conflicting after {_CONFLICT_RETRIES} attempts")

    def update_pod(self, namespace: str, name: str, change: Change) -> None:
        self._read_modify_write(_pod_path(namespace, name), change, self._write_pod)

    def _write_pod(self, path: str, current: Obj, new: Obj) -> None:
        meta = current["metadata"]
        annotations = new["metadata"].get("annotations") or {}
        if annotations != (meta.get("annotations") or {}):
            patch = {"metadata": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"],
                                  "annotations": annotations}}
            written = self.client.request("PATCH", path, patch, content_type=MERGE_PATCH)
            self.remember(written)
            new["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"]
        if new.get("status") != current.get("status"):
            self.remember(self.client.request("PUT", f"{path}/status", new))

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}}
        try:
            self.client.request("DELETE", _pod_path(namespace, name), body)
        except ApiFailure as e:
            if e.code not in (404, 409):
                raise

    def register_node(self, node: Obj) -> None:
        try:
            self.client.request("POST", "/api/v1/nodes", node)
        except ApiFailure as e:
            if e.code != 409:
                raise

            # Registered before, by an earlier test's agent on this control plane: the
            # Node starts again as this agent's, not with that test's cordon, taints or
            # capacity (a drain would find no destination in them).
            def ours(current: Obj) -> Obj:
                current["metadata"].setdefault("labels", {}).update(node["metadata"]["labels"])
                spec = {k: v for k, v in (current.get("spec") or {}).items()
                        if k not in ("taints", "unschedulable")}
                current["spec"] = {**spec, **node.get("spec", {})}
                current["status"] = node["status"]
                return current

            self.update_node(ours)

    def update_node(self, change: Change) -> None:
        self._read_modify_write(f"/api/v1/nodes/{self.node}", change, self._write_node)

    def _write_node(self, path: str, current: Obj, new: Obj) -> None:
        if {k: new.get(k) for k in ("metadata", "spec")} != \
                {k: current.get(k) for k in ("metadata", "spec")}:
            written = self.client.request("PUT", path, new)
            new["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"]
        if new.get("status") != current.get("status"):
            self.client.request("PUT", f"{path}/status", new)

    def create_event(self, event: Obj) -> None:
        namespace = event["metadata"]["namespace"]
        self.client.request("POST", f"/api/v1/namespaces/{namespace}/events", event)

    def patch_event(self, namespace: str, name: str, patch: Obj) -> None:
        self.client.request("PATCH", f"/api/v1/namespaces/{namespace}/events/{name}", patch,
                            content_type=MERGE_PATCH)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.client.request("GET", _PATHS[kind].format(ns=namespace, name=name))
        except Gone:
            return None

    def service_account_token(self, pod: Obj, account: str) -> str:
        meta = pod["metadata"]
        answer = self.client.request(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": TOKEN_SECONDS, "boundObjectRef": {
                 "apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                 "uid": meta["uid"]}}})
        return str(answer["status"]["token"])
