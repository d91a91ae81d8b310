"""Restore stage: create the destination pod and wait until it runs restored.

"Verified" means: the pod is Running on the destination, every migrated
container is running and ready, and reports the image it was restored from:
the checkpoint image's digest as its imageID, or, as CRI-O reports a restored
container, the checkpointed container's own image. CRI-O (v1.36.3,
server/container_restore.go) creates the restored container with the image
the checkpoint's config.dump names (rootfsImageRef, else rootfsImageName), so
its status shows that image and its imageID, never the checkpoint image's.
The wait is a watch on the pod. A container the runtime refused to create
(CRI-O's restore checks: bind mounts; a runtime that does not restore) fails
at once with the kubelet's reason and message; so does an image pull that
no retry can fix (plain HTTP, an untrusted certificate, credentials, an
unknown image: refusals.py). Other pull errors are waited out until the
deadline, because a registry can come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migrate.adapters import kube
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import MigrateError, WatchTimeout
from migrate.pipeline.nodes import Runtime
from migrate.pipeline.refusals import (
    FATAL_WAITING,
    PULLING,
    PullRefused,
    RestoreRefused,
    image_pull_error,
    pull_refused,
    refused,
)
from migrate.units import human_size

__all__ = ["FATAL_WAITING", "PULLING", "KubeletReport", "PullRefused", "RestoreRefused",
           "Restored", "create", "wait_restored"]

Obj = dict[str, Any]


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

    def __init__(self, digests: dict[str, str], node: str, runtime: Runtime | None,
                 rootfs: dict[str, str], ran: dict[str, str] | None = None,
                 emptied: tuple[str, ...] = ()) -> None:
        self.digests = digests
        self.emptied = emptied
        self.rootfs = rootfs
        self.ran = ran or {}
        self.node = node
        self.runtime = runtime
        self.last_reason = ""

    def __call__(self, pod: Obj | None) -> Restored | None:
        if pod is None:
            raise RestoreRefused("the destination pod was deleted while it was starting",
                                 hint="something else removed it; look at the namespace's "
                                 "events")
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        if status.get("phase") in ("Failed", "Succeeded"):
            reason = str(status.get("reason", ""))
            # The pod is gone once rolled back; its Events stay (an hour, by default).
            hint = (f"the kubelet of {self.node} had no room for it; make room there or pick "
                    "another node with --to" if reason.startswith("OutOf") else
                    f"its Events say why: kubectl get events -n {pod['metadata'].get('namespace')}"
                    f" --field-selector involvedObject.name={name}")
            raise RestoreRefused(f"destination pod {name} ended: {status.get('phase')} "
                                 f"{reason} {status.get('message', '')}".strip(), hint=hint)
        statuses = _statuses(pod)
        for container in self.digests:
            waiting = ((statuses.get(container) or {}).get("state") or {}).get("waiting") or {}
            reason, message = waiting.get("reason", ""), str(waiting.get("message", ""))
            if reason in FATAL_WAITING:
                raise refused(container, self.node, reason, message, self.runtime,
                              emptied=self.emptied)
            if reason in PULLING:
                image = next((str(c.get("image", "")) for c in pod["spec"]["containers"]
                              if c.get("name") == container), "")
                permanent = pull_refused(container, self.node, image, message)
                if permanent is not None:
                    raise permanent
            if reason:  # a timeout's error ends with it, CRI-O's artifact retry left out
                self.last_reason = f"{container}: {reason}: {image_pull_error(message)}"
        if status.get("phase") != "Running":
            return None
        ids = {}
        for container, digest in self.digests.items():
            s = statuses.get(container) or {}
            if not ((s.get("state") or {}).get("running") and s.get("ready")):
                return None
            image_id = str(s.get("imageID", ""))
            if digest and digest not in image_id and not self._runs_own_image(container, s):
                shown = image_id or "an unknown image"
                raise RestoreRefused(f"{container} on {self.node} runs {shown}, not the "
                                     f"checkpoint {digest}",
                                     hint="the node resolved the image to something else")
            ids[container] = image_id
        return Restored(name, pod["metadata"].get("uid", ""), self.node, time.time(), ids)

    def _runs_own_image(self, container: str, status: Obj) -> bool:
        """Whether the container reports the checkpointed container's image (CRI-O's
        restore); a plain start of the checkpoint image would report the checkpoint."""
        # CRI-O shows the image by the node's own name for it (its first tag, else its
        # first REPO@DIGEST: internal/storage/image.go, v1.36.3), which need not be the
        # name the source's node had: a restored pod's checkpoint names the base image by
        # digest (the pre-pull's), and a node that pulled it by tag shows the tag. The
        # imageID (REPO@DIGEST) then matches.
        reported = (str(status.get("image", "")), str(status.get("imageID", "")))
        return any(own and shown and _same_image(shown, own) for shown in reported
                   for own in (self.rootfs.get(container, ""), self.ran.get(container, "")))


def _same_image(a: str, b: str) -> bool:
    try:
        return parse_reference(a) == parse_reference(b)
    except MigrateError:
        return a == b


def create(cluster: kube.Cluster, namespace: str, manifest: Obj) -> Obj:
    """Create the destination pod."""
    return kube.create_pod(cluster, namespace, manifest)


#: What a container is busy with after each kubelet reason, for the "still ..." lines.
_DOING = {"Pulling": "pulling its image", "Pulled": "creating it",
          "Created": "restoring it", "BackOff": "waiting to pull again"}


class KubeletReport:
    """What the destination's kubelet reports about the restored pod's containers (its
    Events: Pulling, Pulled, Created, Started, Failed, BackOff...), told as it happens:
    the pull and the restore can take minutes, and a human wants to see them move.

    ``sizes``: container -> bytes of its checkpoint image, when known (the kubelet
    reports a pull's size only once it is done).
    """

    def __init__(self, say: Callable[[str], None], sizes: dict[str, int]) -> None:
        self.say = say
        self.sizes = sizes
        self.seen: set[tuple[str, int]] = set()
        self.lock = threading.Lock()  # the watch's thread, then the caller's catch-up
        self.started = time.monotonic()
        self.doing: dict[str, str] = {}

    def event(self, event: Obj) -> None:
        """One Event: said once (a repeat is said again when its count grows, with the
        count, as kubectl describe shows it: a kubelet repeats a warning at each sync)."""
        count = int(event.get("count") or 1)
        key = (str((event.get("metadata") or {}).get("name")), count)
        with self.lock:
            if key in self.seen:
                return
            self.seen.add(key)
        path = str((event.get("involvedObject") or {}).get("fieldPath") or "")
        container = path.partition("{")[2].rstrip("}") or "pod"
        reason, message = str(event.get("reason") or ""), str(event.get("message") or "")
        size = self.sizes.get(container)
        if reason == "Pulling" and size:
            message += f" ({human_size(size)})"
        elif reason == "Created":
            message += " (from the checkpoint: CRIU restores its processes as it starts)"
        self.doing[container] = _DOING.get(reason, "")
        self.say(f"{container}: {reason}{f' (x{count})' if count > 1 else ''}: {message}")

    def idle(self) -> None:
        """Nothing new for a while: say what is still going on."""
        waited = time.monotonic() - self.started
        doing = [f"{c}: still {d}" for c, d in self.doing.items() if d]
        self.say(f"{'; '.join(doing) or 'still waiting'} ({waited:.0f} s so far)")


def wait_restored(cluster: kube.Cluster, namespace: str, name: str, node: str,
                  digests: dict[str, str], timeout: float, *,
                  since: str | None = None, runtime: Runtime | None = None,
                  uid: str | None = None, report: KubeletReport | None = None,
                  rootfs: dict[str, str] | None = None,
                  ran: dict[str, str] | None = None,
                  emptied: tuple[str, ...] = ()) -> Restored:
    """Watch the destination pod until it is verified, refused, or the time is up.

    ``since``: the resourceVersion its create answered (see `kube.watch_pod`);
    ``runtime``: the destination's, for the hint when it does not restore;
    ``report``: told the pod's Events meanwhile (``uid``: the pod's);
    ``rootfs``: container -> the image the checkpointed container ran (the checkpoint's
    rootfsImageName), which a CRI-O restore reports instead of the checkpoint's digest;
    ``ran``: container -> the image the source container ran as the destination pulled
    it (REPO@DIGEST), which CRI-O reports when it has no other name for it;
    ``emptied``: the emptyDir volumes the restored containers get empty (a CRIU failure's
    likely cause).
    """
    verify = _Verifier(digests, node, runtime, rootfs or {}, ran, emptied)
    events = (kube.watch_events(cluster, namespace, uid, report.event, report.idle,
                                since=since)
              if report is not None and uid else None)
    try:
        return kube.watch_pod(cluster, namespace, name, verify, timeout, since=since)
    except (RestoreRefused, PullRefused):
        raise
    except WatchTimeout as e:
        if verify.last_reason:
            raise RestoreRefused(f"{e.message}; last state: {verify.last_reason}",
                                 hint=e.hint) from e
        raise
    finally:
        if events is not None:
            events.stop()
            cluster.requests += events.requests
