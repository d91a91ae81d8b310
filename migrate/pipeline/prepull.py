"""The workload's image on a CRI-O destination before the restore.

CRI-O creates a restored container on the image the checkpointed container ran
(config.dump's rootfsImageRef, a storage ID) and pulls nothing for it
(server/container_restore.go, v1.36.3): on a node that never ran that image the
restore fails with `reading image "<id>": ... image not known`. So, before the
restored pod exists, a short-lived pod of that image is put on the destination:
the kubelet pulls it with the pod's pull secrets, then cannot start its command
(it exists in no image), and the image stays on the node.

Absence from ``node.status.images`` is not proof the node lacks an image (the
kubelet lists at most 50, nodeStatusMaxImages): only a listed image skips the pull.
Nor is it news: a kubelet lists what it pulled at its next node status update
(every 10 s by default), so the migrations of one drain to one node would each
pull an image the first has just pulled. `Pulls` makes it once per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from migrate.adapters import kube
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import ClusterError, MigrateError
from migrate.pipeline import claims
from migrate.pipeline.refusals import PULL_FAILED, base_pull_refused

__all__ = ["COMMAND", "Pulls", "images_ran", "is_prepull", "listed", "pod_manifest", "pull",
           "pulls", "start", "wait", "wanted"]

Obj = dict[str, Any]

#: A path no image has: the kubelet pulls the image, then fails to start this.
COMMAND = "/.migrate-prepull/no-such-command"
CONTAINER = "prepull"
#: Waiting reasons while the image is not on the node yet.
_PULLING = frozenset({"", "ContainerCreating", "PodInitializing"})


def images_ran(source_pod: Obj, containers: tuple[str, ...]) -> dict[str, str]:
    """Container -> the image it ran: its status's imageID when that is REPO@sha256:...
    (exactly those bytes), else its spec's image."""
    specs = {c["name"]: c for c in source_pod["spec"].get("containers") or []}
    statuses = {s.get("name"): s for s in
                (source_pod.get("status") or {}).get("containerStatuses") or []}
    out = {}
    for name in containers:
        image_id = str((statuses.get(name) or {}).get("imageID") or "")
        image_id = image_id.removeprefix("docker-pullable://")
        out[name] = image_id if "@sha256:" in image_id and "://" not in image_id \
            else str(specs[name]["image"])
    return out


def _same(a: str, b: str) -> bool:
    try:
        return parse_reference(a) == parse_reference(b)
    except MigrateError:
        return a == b


def listed(node: Obj, image: str) -> bool:
    """Whether the Node's status.images names ``image`` (by digest or by name)."""
    names = [str(n) for i in (node.get("status") or {}).get("images") or []
             for n in i.get("names") or []]
    return any(_same(image, n) for n in names)


def wanted(source_pod: Obj, containers: tuple[str, ...],
           node: Obj) -> list[tuple[str, str, bool]]:
    """(container, the image it ran, whether ``node`` lists it) for each image a CRI-O
    restore of ``containers`` needs on ``node``: the first container of each image."""
    out, seen = [], set()
    for container, image in images_ran(source_pod, containers).items():
        if image not in seen:
            seen.add(image)
            out.append((container, image, listed(node, image)))
    return out


def pod_manifest(source_pod: Obj, container: str, image: str, node: str, run_id: str,
                 pull_secrets: list[str]) -> Obj:
    """The pre-pull pod: pinned to ``node``, tolerating every taint, with the source's
    pull secrets and security contexts (Pod Security admission judges it as it judged
    the source), labelled with the run (rollback finds it by it)."""
    spec = source_pod["spec"]
    source_container = next(c for c in spec["containers"] if c["name"] == container)
    secrets = [dict(s) for s in spec.get("imagePullSecrets") or []]
    secrets += [{"name": s} for s in pull_secrets if {"name": s} not in secrets]
    c: Obj = {"name": CONTAINER, "image": image, "command": [COMMAND],
              "imagePullPolicy": "IfNotPresent",
              # Small and bounded: a namespace quota may insist on limits, and the node
              # must still fit the restored pod right after.
              "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"cpu": "10m", "memory": "16Mi"}}}
    if source_container.get("securityContext"):
        c["securityContext"] = source_container["securityContext"]
    pod_spec: Obj = {"nodeName": node, "restartPolicy": "Never", "containers": [c],
                     "tolerations": [{"operator": "Exists"}],
                     "automountServiceAccountToken": False, "enableServiceLinks": False,
                     "terminationGracePeriodSeconds": 0}
    for key in ("securityContext", "runtimeClassName", "hostUsers"):
        if key in spec:
            pod_spec[key] = spec[key]
    if secrets:
        pod_spec["imagePullSecrets"] = secrets
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": _prefix(source_pod["metadata"]["name"]),
                         "namespace": source_pod["metadata"]["namespace"],
                         "labels": {claims.RUN_LABEL: run_id}},
            "spec": pod_spec}


def _prefix(source: str) -> str:
    return f"{source[:200]}-prepull-"


def is_prepull(source: str, name: str) -> bool:
    """Whether pod ``name``, made by the run migrating pod ``source``, is a pre-pull pod
    (the name `pod_manifest` has the API server generate: a 5-character suffix)."""
    return name.startswith(_prefix(source)) and len(name) == len(_prefix(source)) + 5


class _PastPull:
    """The watch's condition: True once the container is past its image pull."""

    def __init__(self, node: str, image: str) -> None:
        self.node, self.image = node, image

    def __call__(self, pod: Obj | None) -> bool | None:
        if pod is None:
            raise ClusterError(f"the pre-pull pod of {self.image} on {self.node} was deleted",
                               hint="something else deletes pods there; migrate again")
        status = pod.get("status") or {}
        found = [s for s in status.get("containerStatuses") or [] if s.get("name") == CONTAINER]
        if not found:
            if status.get("phase") == "Failed":  # the kubelet refused the pod itself
                raise ClusterError(f"{self.node} refused the pre-pull pod of {self.image}: "
                                   f"{status.get('reason', '')} {status.get('message', '')}",
                                   hint="kubectl describe node shows what it lacks")
            return None
        state = found[0].get("state") or {}
        if found[0].get("imageID") or "terminated" in state or "running" in state:
            return True
        reason = str((state.get("waiting") or {}).get("reason") or "")
        if reason in PULL_FAILED:
            message = str((state.get("waiting") or {}).get("message") or reason)
            raise base_pull_refused(self.node, self.image, message)
        return None if reason in _PULLING else True


class Pulls:
    """The pre-pulls of one process, by (node, image): one caller pulls, the others
    wait for it and then have the image; a failed pull lets the next one try."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pulled: set[tuple[str, str]] = set()
        self._pulling: dict[tuple[str, str], threading.Event] = {}

    def begin(self, node: str, image: str) -> bool:
        """True: the caller pulls and then calls `end`; False: a pull of this process
        put the image there already."""
        key = (node, image)
        while True:
            with self._lock:
                if key in self._pulled:
                    return False
                pulling = self._pulling.get(key)
                if pulling is None:
                    self._pulling[key] = threading.Event()
                    return True
            pulling.wait()  # that pull has a deadline: then see how it ended

    def end(self, node: str, image: str, pulled: bool) -> None:
        """The pull `begin` gave the caller is over."""
        with self._lock:
            if pulled:
                self._pulled.add((node, image))
            self._pulling.pop((node, image)).set()


def pulls(cluster: kube.Cluster) -> Pulls:
    """This process's `Pulls` (kept with what else its copies of the cluster share)."""
    found: Pulls = cluster.memo.setdefault("prepulls", Pulls())
    return found


def start(cluster: kube.Cluster, manifest: Obj) -> Obj:
    """Create the pre-pull pod (returned as created); the caller records it, then
    calls `wait` and deletes it."""
    return kube.create_pod(cluster, manifest["metadata"]["namespace"], manifest)


def pull(cluster: kube.Cluster, manifest: Obj, image: str, timeout: float,
         made: Callable[[Obj], None], gone: Callable[[Obj], None]) -> tuple[Obj, float]:
    """Pull ``image`` on the node ``manifest`` (from `pod_manifest`) is pinned to; returns
    the pre-pull pod as created and the seconds the pull took. PullRefused when the node
    cannot pull it.

    ``made(pod)`` is called as soon as the pod exists, so that the caller can
    remove it if the wait fails or is interrupted (then the pod is left to it);
    ``gone(pod)`` once it was deleted, after the pull.
    """
    began = time.monotonic()
    created = start(cluster, manifest)
    made(created)
    meta = created["metadata"]
    wait(cluster, created, manifest["spec"]["nodeName"], image, timeout)
    seconds = round(time.monotonic() - began, 3)
    kube.delete_pod(cluster, meta["namespace"], meta["name"], uid=meta.get("uid") or None,
                    grace_seconds=0)
    gone(created)
    return created, seconds


def wait(cluster: kube.Cluster, created: Obj, node: str, image: str, timeout: float) -> None:
    """Watch the pre-pull pod until its image is on ``node``; PullRefused when the
    node cannot pull it."""
    meta = created["metadata"]
    kube.watch_pod(cluster, meta["namespace"], meta["name"], _PastPull(node, image), timeout,
                   since=meta.get("resourceVersion"))

