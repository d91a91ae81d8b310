"""Switch-over: the restored pod takes the source's place; the source goes.

Runs only after the destination is verified, and only after a last look
(`check_destination`): the destination node is still Ready and the restored
pod still the one verified, Running and ready. A node that went NotReady
during verify fails the stage before the source is touched, and the run is
rolled back like any failure before the switch-over. Three ways:

- delete: a bare pod's source is deleted (its uid as a precondition, so a
  new pod that took the name is never touched).
- handover: a ReplicaSet's pod. The destination was created with one of the
  ReplicaSet's selector labels held back, so the ReplicaSet neither adopted
  it nor scaled down while it was starting. Now the source gets the lowest
  ``controller.kubernetes.io/pod-deletion-cost``, and one patch puts the
  held-back label and the ReplicaSet's controller reference on the
  destination: the ReplicaSet counts it as its own from then on, finds one
  pod too many and removes the cheapest, the source. The tool deletes the
  source itself, at once, so the replica count ends where it started.
- keep: nothing (``--keep-source``); both run.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from migrate.adapters import kube
from migrate.errors import ClusterError, NotFoundError
from migrate.pipeline import nodes

Obj = dict[str, Any]

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
LOWEST_COST = str(-(2**31))  # int32 minimum: deleted before any other replica
HELD_LABEL = "migrate.dev/held-label"  # annotation on the destination: key=value held back


def held_back_label(pod: Obj, owner: Obj) -> tuple[str, str]:
    """The selector label to keep off the destination until the switch-over."""
    selector = ((owner.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    labels = (pod.get("metadata") or {}).get("labels") or {}
    candidates = [k for k in selector if k in labels]
    if not candidates:
        raise ClusterError(f"{owner['kind']} {owner['metadata']['name']} selects its pods "
                           "with matchExpressions only; migrate cannot hold the restored "
                           "pod back from it", hint="use --keep-source and move it by hand")
    key = "pod-template-hash" if "pod-template-hash" in candidates else sorted(candidates)[0]
    return key, str(labels[key])


class DestinationLost(ClusterError):
    """The verified destination is no longer fit to take over: the source stays."""


def check_destination(cluster: kube.Cluster, namespace: str, name: str, uid: str, node: str,
                      containers: tuple[str, ...]) -> None:
    """Refuse to switch over unless ``node`` is Ready and pod ``uid`` still runs there with
    ``containers`` running and ready."""
    hint = "the source was not touched; migrate it again when the destination is healthy"
    ready, why = nodes.ready(kube.read_node(cluster, node))
    if not ready:
        raise DestinationLost(f"destination node {node} is not Ready any more: {why}", hint=hint)
    pod = kube.find_pod(cluster, namespace, name)
    if pod is None or pod["metadata"].get("uid") != uid or pod["metadata"].get("deletionTimestamp"):
        raise DestinationLost(f"the restored pod {name} is gone or going", hint=hint)
    status = pod.get("status") or {}
    statuses = {s["name"]: s for s in status.get("containerStatuses") or []}
    unready = [c for c in containers if not ((statuses.get(c) or {}).get("ready") and (
        (statuses.get(c) or {}).get("state") or {}).get("running"))]
    if status.get("phase") != "Running" or unready:
        raise DestinationLost(f"the restored pod {name} is not running and ready any more "
                              f"({status.get('phase')}"
                              f"{'; not ready: ' + ', '.join(unready) if unready else ''})",
                              hint=hint)


def terminated(pod: Obj, containers: tuple[str, ...]) -> bool:
    """Whether the kubelet reports each of ``containers`` of ``pod`` terminated (its
    process gone: it changes nothing more)."""
    status = pod.get("status") or {}
    states = {s.get("name"): (s.get("state") or {})
              for key in ("containerStatuses", "initContainerStatuses")
              for s in status.get(key) or []}
    return bool(containers) and all("terminated" in states.get(c, {}) for c in containers)


def wait_gone(cluster: kube.Cluster, namespace: str, name: str, uid: str,
              timeout: float, since: str | None = None,
              containers: tuple[str, ...] = ()) -> float:
    """Watch until the pod with ``uid`` no longer exists; returns when it stopped
    (time.time()): when its kubelet was first seen reporting ``containers`` terminated,
    else when it went. ``since``: a resourceVersion of the pod's deletion (see
    `kube.watch_pod`).

    The kubelet reports that once it finds the processes gone; the pod object goes
    only after the sandbox and volumes are torn down (0.7 s later on a real kubelet
    v1.37 with CRI-O, longer if a finalizer holds it), and the state window (what a
    source did after its checkpoint, lost) ends with the processes."""
    seen: list[float] = []

    def gone(pod: Obj | None) -> float | None:
        at = time.time()
        if pod is None or pod["metadata"].get("uid") != uid:
            return seen[0] if seen else at
        if not seen and terminated(pod, containers):
            seen.append(at)
        return None

    return kube.watch_pod(cluster, namespace, name, gone, timeout, since=since)


def delete_source(cluster: kube.Cluster, namespace: str, name: str, uid: str,
                  timeout: float, containers: tuple[str, ...]) -> float:
    """Delete the source pod and wait until it is gone; returns when it stopped
    (`wait_gone` with its ``containers``)."""
    since = kube.begin_pod_deletion(cluster, namespace, name, uid)
    if since is None:
        return time.time()
    return wait_gone(cluster, namespace, name, uid, timeout, since, containers)


def controller_reference(owner: Obj) -> Obj:
    """The controller reference ``owner`` (a ReplicaSet) puts on the pods it adopts,
    without ``blockOwnerDeletion``: where the OwnerReferencesPermissionEnforcement
    admission plugin runs, setting it needs update on the owner's finalizers, a
    right migrate's role does not ask for. It only makes a foreground deletion of
    the owner wait for this pod."""
    meta = owner["metadata"]
    return {"apiVersion": owner.get("apiVersion", "apps/v1"),
            "kind": owner.get("kind", "ReplicaSet"), "name": meta["name"], "uid": meta["uid"],
            "controller": True}


def hand_over(cluster: kube.Cluster, namespace: str, source: str, source_uid: str,
              destination: str, label: tuple[str, str], owner: Obj,
              timeout: float, containers: tuple[str, ...]) -> float:
    """Give the ReplicaSet the destination and remove the source; returns when the
    source's ``containers`` stopped (`delete_source`)."""
    # A resumed handover may find the source gone already (the ReplicaSet removed
    # it, or the run was stopped after deleting it): the destination still needs
    # its label and owner.
    with contextlib.suppress(NotFoundError):
        kube.patch_pod(cluster, namespace, source,
                       {"metadata": {"annotations": {DELETION_COST: LOWEST_COST}}})
    # The label and the controller reference together, rather than the label alone
    # and a wait for the ReplicaSet to adopt the pod: the controller's informer sees
    # this change before the source's deletion (one watch, in resourceVersion
    # order), so no sync of it can find the source gone without the destination
    # counted, and the source need not wait for the controller's queue (0.8 s a
    # pod in the drain benchmark's handovers, under load).
    kube.patch_pod(cluster, namespace, destination,
                   {"metadata": {"labels": {label[0]: label[1]},
                                 "ownerReferences": [controller_reference(owner)],
                                 "annotations": {HELD_LABEL: None}}})
    return delete_source(cluster, namespace, source, source_uid, timeout, containers)
