"""Restore stage: create the destination pod and wait until it runs restored.

"Verified" means: the pod is Running on the destination, every migrated
container is running and ready, and reports the checkpoint image's digest as
its imageID (so it started from the checkpoint, not from some other image).
The wait is a watch on the pod. A container the runtime refused to create
(CRI-O's restore checks: bind mounts, restore level) fails at once with the
kubelet's reason and message; image pull errors are waited out until the
deadline, because a registry can come back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from migrate.adapters import kube
from migrate.errors import ClusterError

Obj = dict[str, Any]

#: Waiting reasons that will not resolve by themselves (the kubelet retries, in vain).
FATAL_WAITING = frozenset({"CreateContainerError", "CreateContainerConfigError",
                           "InvalidImageName", "ErrImageNeverPull", "RunContainerError"})
PULLING = frozenset({"ErrImagePull", "ImagePullBackOff"})


class RestoreRefused(ClusterError):
    """The destination's kubelet or runtime refused the restore."""


@dataclass(frozen=True)
class Restored:
    """The verified destination pod."""

    name: str
    uid: str
    node: str
    ready_at: float  # time.time() when seen ready
    image_ids: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "uid": self.uid, "node": self.node,
                "image_ids": self.image_ids}


def _statuses(pod: Obj) -> dict[str, Obj]:
    return {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}


class _Verifier:
    """The watch predicate: None to keep waiting, a `Restored`, or an error raised."""

    def __init__(self, digests: dict[str, str], node: str) -> None:
        self.digests = digests
        self.node = node
        self.last_reason = ""

    def __call__(self, pod: Obj | None) -> Restored | None:
        if pod is None:
            raise RestoreRefused("the destination pod was deleted while it was starting",
                                 hint="something else removed it; look at the namespace's "
                                 "events")
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        if status.get("phase") in ("Failed", "Succeeded"):
            raise RestoreRefused(f"destination pod {name} ended: {status.get('phase')} "
                                 f"{status.get('reason', '')} {status.get('message', '')}"
                                 .strip(), hint="kubectl describe pod " + name)
        statuses = _statuses(pod)
        for container in self.digests:
            waiting = ((statuses.get(container) or {}).get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            if reason in FATAL_WAITING:
                raise RestoreRefused(
                    f"the restore of {container} on {self.node} failed: {reason}: "
                    f"{waiting.get('message', '')}".rstrip(": "),
                    hint=_hint(waiting.get("message", "")))
            if reason:
                self.last_reason = f"{container}: {reason}: {waiting.get('message', '')}"
        if status.get("phase") != "Running":
            return None
        ids = {}
        for container, digest in self.digests.items():
            s = statuses.get(container) or {}
            if not ((s.get("state") or {}).get("running") and s.get("ready")):
                return None
            image_id = str(s.get("imageID", ""))
            if digest and digest not in image_id:
                shown = image_id or "an unknown image"
                raise RestoreRefused(f"{container} on {self.node} runs {shown}, not the "
                                     f"checkpoint {digest}",
                                     hint="the node resolved the image to something else")
            ids[container] = image_id
        return Restored(name, pod["metadata"].get("uid", ""), self.node, time.time(), ids)


def _hint(message: str) -> str:
    if "expects following bind mounts" in message:
        return ("the restored pod must mount every volume the checkpointed container had; "
                "keep the source's volumes and volumeMounts")
    if "checkpoint" in message.lower() and ("disabled" in message or "not" in message):
        return ("the destination's runtime does not restore checkpoints: CRI-O needs "
                "[crio.checkpoint_restore] container_level_enabled = checkpoint_restore")
    return "kubectl describe pod shows the kubelet's events"


def create(cluster: kube.Cluster, namespace: str, manifest: Obj) -> Obj:
    """Create the destination pod."""
    return kube.create_pod(cluster, namespace, manifest)


def wait_restored(cluster: kube.Cluster, namespace: str, name: str, node: str,
                  digests: dict[str, str], timeout: float, *,
                  since: str | None = None) -> Restored:
    """Watch the destination pod until it is verified, refused, or the time is up.

    ``since``: the resourceVersion its create answered (see `kube.watch_pod`).
    """
    verify = _Verifier(digests, node)
    try:
        return kube.watch_pod(cluster, namespace, name, verify, timeout, since=since)
    except RestoreRefused:
        raise
    except ClusterError as e:
        if "timed out" in e.message and verify.last_reason:
            raise RestoreRefused(f"{e.message}; last state: {verify.last_reason}",
                                 hint=e.hint) from e
        raise
