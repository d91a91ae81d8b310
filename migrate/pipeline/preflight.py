"""Preflight: everything that can be known before anything is changed.

The pod exists and runs; no other migration claims it (claims.py); its owner
lets it move; the destination exists, is Ready, schedulable, not the source,
runs CRI-O and admits the pod; the registry answers. The result is the
`Plan` every later stage follows, and what `--dry-run` prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from migrate.adapters import kube
from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.reference import Reference, parse_reference
from migrate.errors import ClusterError, UsageError
from migrate.pipeline import claims, nodes, placement
from migrate.pipeline.containers import resolve_container
from migrate.settings import Settings

Obj = dict[str, Any]

#: Owners whose pods cannot be handed over to a restored copy, and what to do instead.
REFUSED_OWNERS = {
    "StatefulSet": "a StatefulSet pod has a stable name and storage that a second pod "
                   "cannot take while the first exists; delete the pod and let the "
                   "StatefulSet recreate it (its memory is lost), or move the workload "
                   "off the node with `migrate drain --evict-rest`",
    "DaemonSet": "a DaemonSet runs one pod per node by design; the destination node "
                 "already has, or will get, its own",
    "Job": "a Job's controller counts its pods to completion and would start another; "
           "let the Job finish, or delete and re-create it on the destination",
}


@dataclass(frozen=True)
class PodRequest:
    """One `migrate pod`."""

    pod: str
    to: str
    namespace: str | None = None
    containers: tuple[str, ...] = ()  # empty: the default container
    all_containers: bool = False
    registry: str | None = None  # HOST[:PORT]/REPO prefix; images named per container
    image: str | None = None  # the image reference, for a single container
    builder: str = "native"
    build_on: str = "auto"  # auto | local | node
    compression: str = "none"
    keep_source: bool = False
    dry_run: bool = False
    timeout: float = 300.0
    cleanup_archive: bool = False
    tool_image: str | None = None  # the tool's own image, for --build-on node Jobs
    registry_secret: str | None = None  # dockerconfigjson Secret for node builds

    def to_dict(self) -> dict[str, Any]:
        """JSON form (kept in the journal, so `resume` runs the same request)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PodRequest:
        """Inverse of `to_dict`."""
        return cls(**{**data, "containers": tuple(data.get("containers") or ())})


@dataclass(frozen=True)
class Plan:
    """What the migration will do."""

    namespace: str
    pod: str
    uid: str
    source: str  # node
    destination: str  # node
    containers: tuple[str, ...]
    images: dict[str, str]  # container -> image reference to push
    owner: tuple[str, str] | None  # (kind, name) of the controller
    switch: str  # delete | handover | keep
    # The pod's resourceVersion preflight read and judged: the claim written right
    # after is conditional on it. Not journaled: a resumed run reads the pod again.
    resource_version: str | None = field(default=None, compare=False)
    # What the destination reports as its runtime (cri-o://1.34.12): the hint when it
    # will not restore names its setting. "" in journals written before it was kept.
    destination_runtime: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"namespace": self.namespace, "pod": self.pod, "uid": self.uid,
                "source": self.source, "destination": self.destination,
                "containers": list(self.containers), "images": self.images,
                "owner": {"kind": self.owner[0], "name": self.owner[1]} if self.owner else None,
                "switch": self.switch, "destination_runtime": self.destination_runtime}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Inverse of `to_dict`."""
        owner = (d["owner"]["kind"], d["owner"]["name"]) if d.get("owner") else None
        return cls(d["namespace"], d["pod"], d["uid"], d["source"], d["destination"],
                   tuple(d["containers"]), dict(d["images"]), owner, d["switch"],
                   destination_runtime=str(d.get("destination_runtime") or ""))


def controller_of(pod: Obj) -> tuple[str, str] | None:
    """The (kind, name) of the pod's controlling owner, if any."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("kind")), str(ref.get("name"))
    return None


def _containers(pod: Obj, req: PodRequest) -> tuple[str, ...]:
    names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    if req.all_containers:
        return tuple(names)
    if not req.containers:
        return (resolve_container(pod, None),)
    return tuple(resolve_container(pod, c) for c in req.containers)


def _images(req: PodRequest, plan_ns: str, workload: str, containers: tuple[str, ...]
            ) -> dict[str, str]:
    if req.image:
        if len(containers) > 1:
            raise UsageError("--image names one image, and this migration checkpoints "
                             f"{len(containers)} containers",
                             hint="use --registry REG: each container gets its own image")
        parse_reference(req.image)
        return {containers[0]: req.image}
    if not req.registry:
        raise UsageError("say where the checkpoint image goes: --registry REG or --image REF")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    prefix = req.registry.rstrip("/")
    refs = {c: f"{prefix}/{plan_ns}-{workload}-{c}:checkpoint-{stamp}".lower()
            for c in containers}
    for ref in refs.values():
        parse_reference(ref)
    return refs


def _workload(pod: Obj, owner: tuple[str, str] | None) -> str:
    """A stable name for image repositories: the Deployment's, else the owner's or pod's."""
    name = owner[1] if owner else pod["metadata"]["name"]
    labels = pod["metadata"].get("labels") or {}
    if owner and owner[0] == "ReplicaSet" and labels.get("pod-template-hash"):
        name = name.removesuffix(f"-{labels['pod-template-hash']}")
    return re.sub(r"[^a-z0-9.-]+", "-", name.lower())


def check_destination(pod: Obj, node: Obj, source: str) -> None:
    """Refuse a destination that cannot take this pod, with the reason."""
    name = node["metadata"]["name"]
    if name == source:
        raise UsageError(f"pod {pod['metadata']['name']} already runs on {name}",
                         hint="pick another node with --to")
    ok, why = nodes.ready(node)
    if not ok:
        raise ClusterError(f"node {name} is not Ready: {why}",
                           hint="pick a Ready node (`migrate doctor` checks them)")
    if nodes.cordoned(node):
        raise ClusterError(f"node {name} is cordoned", hint=f"uncordon it (kubectl uncordon "
                           f"{name}) or pick another node")
    rt = nodes.runtime_of(node)
    if not rt.can_restore:
        raise ClusterError(f"node {name} cannot restore checkpoints: {rt.reason}",
                           hint="pick a CRI-O node (`migrate doctor` lists them)"
                           + ("; " + rt.restore_fix if rt.name == "containerd" else ""))
    refused = placement.refusals(pod, node)
    if refused:
        raise ClusterError(refused[0], hint="the pod's own scheduling constraints rule this "
                           "node out; pick another with --to")


def check_source(pod: Obj, node: Obj) -> None:
    """Refuse a source whose checkpoints no destination restores.

    containerd (2.0+) checkpoints, but its spec.dump has none of the annotations
    CRI-O's restore reads (`io.kubernetes.cri-o.Annotations`): CRI-O refuses the
    image only once the restored pod is created, after the checkpoint and the push.
    """
    rt = nodes.runtime_of(node)
    if rt.name == "containerd":
        meta, name = pod["metadata"], node["metadata"]["name"]
        raise ClusterError(
            f"pod {meta.get('namespace')}/{meta['name']} runs on {name} ({rt.shown}): CRI-O "
            "restores only CRI-O's checkpoints, and containerd's have none of the "
            "annotations CRI-O reads (io.kubernetes.cri-o.Annotations)",
            hint="migrate pods that run on CRI-O nodes; `migrate checkpoint` still takes "
                 "containerd's checkpoints, for analysis")


def check_registry(settings: Settings, images: dict[str, str]) -> None:
    """Log in to each registry once: fail now rather than after the checkpoint."""
    seen: set[str] = set()
    for image in images.values():
        ref: Reference = parse_reference(image)
        if ref.registry not in seen:
            seen.add(ref.registry)
            RegistryClient(ref, settings.registry).login()


def preflight(cluster: kube.Cluster, settings: Settings, req: PodRequest) -> Plan:
    """Check everything; return the plan, or raise the first reason it cannot work."""
    namespace = req.namespace or cluster.namespace
    pod = kube.read_pod(cluster, namespace, req.pod)
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    source = (pod.get("spec") or {}).get("nodeName") or ""
    if phase != "Running" or not source:
        raise ClusterError(f"pod {namespace}/{req.pod} is {phase}, not Running",
                           hint="only a running pod can be migrated")
    if (pod["metadata"]).get("deletionTimestamp"):
        raise ClusterError(f"pod {namespace}/{req.pod} is being deleted",
                           hint="nothing to migrate")
    claims.check(settings.state_dir, pod)
    owner = controller_of(pod)
    if owner and owner[0] in REFUSED_OWNERS:
        raise UsageError(f"pod {namespace}/{req.pod} is owned by {owner[0]} {owner[1]}: "
                         "it cannot be migrated", hint=REFUSED_OWNERS[owner[0]])
    if owner and owner[0] != "ReplicaSet":
        raise UsageError(f"pod {namespace}/{req.pod} is controlled by {owner[0]} {owner[1]}, "
                         "which migrate cannot hand a pod over to",
                         hint="only bare pods and ReplicaSet (Deployment) pods can move")
    destination = kube.read_node(cluster, req.to)
    check_destination(pod, destination, source)
    check_source(pod, kube.read_node(cluster, source))
    containers = _containers(pod, req)
    images = _images(req, namespace, _workload(pod, owner), containers)
    check_registry(settings, images)
    switch = "keep" if req.keep_source else ("handover" if owner else "delete")
    return Plan(namespace, req.pod, pod["metadata"].get("uid", ""), source, req.to, containers,
                images, owner, switch, pod["metadata"].get("resourceVersion"),
                destination_runtime=nodes.reported_runtime(destination))
