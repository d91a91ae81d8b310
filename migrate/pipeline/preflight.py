"""Preflight: everything that can be known before anything is changed.

The pod exists and runs; no other migration holds it (claims.py: its claim,
its journal on this machine, a restored copy still there); its owner lets it
move; its node's runtime makes archives CRI-O restores; the destination
exists, is Ready, schedulable, not the source, runs CRI-O and admits the pod;
the image build has a place to run (the archive readable here, or a Job on
the source node from the tool's image); the registry answers. The result is
the `Plan` every later stage follows, and what `--dry-run` prints.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from migrate.adapters import kube
from migrate.adapters.ocicrypt import parse_recipients
from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.reference import (
    REACH_HINT,
    Reference,
    parse_reference,
    unreachable_from_pods,
)
from migrate.errors import AuthError, ClusterError, UsageError
from migrate.pipeline import claims, names, nodebuild, nodes, placement
from migrate.pipeline.choices import Builder, BuildOn, Compression
from migrate.pipeline.containers import resolve_container
from migrate.settings import DEFAULT_CHECKPOINT_DIR, Settings

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
    builder: Builder = Builder.native
    build_on: BuildOn = BuildOn.auto
    compression: Compression = Compression.none
    keep_source: bool = False
    dry_run: bool = False
    timeout: float = 300.0
    cleanup_archive: bool = False
    cleanup_image: bool = False  # delete the checkpoint images once switched over
    tool_image: str | None = None  # the tool's own image, for --build-on node Jobs
    registry_secret: str | None = None  # dockerconfigjson Secret for node builds
    keep_archive: bool = False  # a failed run keeps the archives it made (else removed)
    placed: bool = False  # a drain placed it: the destination's room is already counted
    # --encrypt-for SCHEME:PUBLIC_KEY_FILE recipients: file names only (the journal keeps
    # the request; the files are read again when the build runs).
    encrypt_for: tuple[str, ...] = ()
    # The pod's emptyDir volumes may be lost (kubectl drain's --delete-emptydir-data):
    # deleting the source deletes them, and the restored pod gets them empty.
    delete_emptydir_data: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form (kept in the journal, so `resume` runs the same request)."""
        return {k: (list(v) if isinstance(v, tuple) else v.value if isinstance(v, StrEnum)
                    else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PodRequest:
        """Inverse of `to_dict` (the journal's schema checked the choices' values)."""
        return cls(**{**data, "containers": tuple(data.get("containers") or ()),
                      "encrypt_for": tuple(data.get("encrypt_for") or ()),
                      # Runs journaled before the flag existed moved such pods.
                      "delete_emptydir_data": data.get("delete_emptydir_data", True),
                      "builder": Builder(data.get("builder", Builder.native)),
                      "build_on": BuildOn(data.get("build_on", BuildOn.auto)),
                      "compression": Compression(data.get("compression", Compression.none))})


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
    # Where the image is built: "local" (the archive read here, in `build_from`, the
    # source's checkpoint directory as this machine sees it) or "node" (a Job on the
    # source node; `build_from` is the tool's image). "" in older journals: decided
    # once the archive exists, as before.
    build_on: str = ""
    build_from: str = ""
    # The emptyDir volumes the moved containers mount: a checkpoint holds none of a
    # volume's files (CRI-O dumps processes and the root-fs diff), so the restored pod
    # gets them empty. Said in the report; () in older journals.
    emptied: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"namespace": self.namespace, "pod": self.pod, "uid": self.uid,
                "source": self.source, "destination": self.destination,
                "containers": list(self.containers), "images": self.images,
                "owner": {"kind": self.owner[0], "name": self.owner[1]} if self.owner else None,
                "switch": self.switch, "destination_runtime": self.destination_runtime or None,
                "build_on": self.build_on or None, "build_from": self.build_from or None,
                "emptied_volumes": list(self.emptied)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Inverse of `to_dict`."""
        owner = (d["owner"]["kind"], d["owner"]["name"]) if d.get("owner") else None
        return cls(d["namespace"], d["pod"], d["uid"], d["source"], d["destination"],
                   tuple(d["containers"]), dict(d["images"]), owner, d["switch"],
                   destination_runtime=str(d.get("destination_runtime") or ""),
                   build_on=str(d.get("build_on") or ""),
                   build_from=str(d.get("build_from") or ""),
                   emptied=tuple(d.get("emptied_volumes") or ()))


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


def local_data(pod: Obj) -> tuple[str, ...]:
    """The pod's emptyDir volumes: data on its node that goes with the pod. kubectl
    drain's rule (k8s.io/kubectl pkg/drain hasLocalStorage): any emptyDir, mounted or
    not, of any medium."""
    return tuple(sorted(v["name"] for v in (pod.get("spec") or {}).get("volumes") or []
                        if "emptyDir" in v))


def emptied_volumes(pod: Obj, containers: tuple[str, ...]) -> tuple[str, ...]:
    """The emptyDir volumes ``containers`` mount: they start empty on the destination."""
    spec = pod.get("spec") or {}
    mounted = {m.get("name") for c in spec.get("containers") or [] if c.get("name") in containers
               for m in c.get("volumeMounts") or []}
    return tuple(v for v in local_data(pod) if v in mounted)


def _images(req: PodRequest, plan_ns: str, workload: str, uid: str,
            containers: tuple[str, ...]) -> dict[str, str]:
    if req.image:
        if len(containers) > 1:
            raise UsageError("--image names one image, and this migration checkpoints "
                             f"{len(containers)} containers",
                             hint="use --registry REG: each container gets its own image")
        parse_reference(req.image)
        return {containers[0]: req.image}
    if not req.registry:
        raise UsageError("say where the checkpoint image goes: --registry REG or --image REF")
    # The replicas of a workload share its repositories, and a drain migrates several
    # in the same second: the pod's uid keeps their tags apart (an encrypted image is
    # pulled by its tag, so a shared one would restore another replica's memory).
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    prefix = req.registry.rstrip("/")
    refs = {c: f"{prefix}/{plan_ns}-{workload}-{c}:checkpoint-{stamp}-{uid[:8]}".lower()
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


def check_room(cluster: kube.Cluster, pod: Obj, node: Obj) -> None:
    """Refuse a destination without room for the pod's requests: created with its node
    named, the restored pod skips the scheduler, and the kubelet's admission would reject
    it (OutOfcpu...) only after the checkpoint."""
    name = node["metadata"]["name"]
    try:
        running = kube.list_pods(cluster, None, field_selector=f"spec.nodeName={name}")
    except AuthError:
        return  # not allowed to see the node's pods: the kubelet stays the only judge
    short = placement.room_refusal(pod, node, running)
    if short:
        raise ClusterError(f"node {name} has no room for pod {pod['metadata'].get('namespace')}"
                           f"/{pod['metadata']['name']}: {short}",
                           hint="its kubelet would reject the restored pod; make room there "
                           "or pick another node with --to")


def check_source(namespace: str, pod: str, node: Obj) -> None:
    """Refuse a pod whose node makes archives CRI-O cannot restore, before its checkpoint."""
    rt = nodes.runtime_of(node)
    if rt.can_source:
        return
    name = node["metadata"]["name"]
    raise ClusterError(f"pod {namespace}/{pod} runs on {name}, whose runtime cannot be a "
                       f"source: {rt.source_reason}",
                       hint="only pods on CRI-O nodes can be migrated (`migrate doctor` "
                       "lists the nodes' runtimes); nothing was checkpointed")


def locate(node: str, path: str, settings: Settings) -> Path:
    """Where this machine reads ``path`` of ``node`` (see `Settings.node_root`)."""
    if settings.node_root:
        return Path(settings.node_root.format(node=node)) / path.lstrip("/")
    return Path(path)


def _readable_here(settings: Settings, node: str) -> tuple[Path, str]:
    """The node's checkpoint directory as this machine sees it, and why it cannot be read
    here ("" when it can)."""
    here = locate(node, str(DEFAULT_CHECKPOINT_DIR), settings)
    if settings.node_root:
        root = locate(node, "/", settings)
        if not root.is_dir():
            return here, f"{root} (MIGRATE_NODE_ROOT for {node}) does not exist"
    elif os.uname().nodename.split(".")[0] != node.split(".")[0]:
        return here, f"this machine is not {node} and MIGRATE_NODE_ROOT is not set"
    # The kubelet makes the directory at its first checkpoint: its parent will do.
    probe = here if here.exists() else here.parent
    if not os.access(probe, os.R_OK | os.X_OK):
        return here, f"{probe} is not readable here"
    return here, ""


def build_location(settings: Settings, source: str, build_on: BuildOn,
                   tool_image: str | None) -> tuple[str, str]:
    """Where the image of an archive of ``source`` will be built, proved possible before
    anything is checkpointed: ("local", the checkpoint directory as read here) or
    ("node", the tool's image for the Job)."""
    here, why = _readable_here(settings, source)
    where = ("set MIGRATE_NODE_ROOT to where this machine sees each node's files (e.g. "
             "/mnt/nodes/{node}), or run migrate on " + source)
    if build_on is BuildOn.local:
        if why:
            raise UsageError(f"--build-on local: the archives of {source} are not readable "
                             f"here: {why}", hint=where + "; or build in a Job on the node: "
                             "--build-on node --tool-image IMAGE")
        return "local", str(here)
    if build_on is BuildOn.node or why:
        if not tool_image:
            first = ("--build-on node needs the tool's container image" if build_on is BuildOn.node
                     else f"the image build has nowhere to run: the archives of {source} "
                     f"are not readable here ({why}), and a build on the node needs the "
                     "tool's container image")
            raise UsageError(first, hint="give --tool-image REF (or MIGRATE_TOOL_IMAGE): "
                             "the migrate image, built from the Containerfile and pushed"
                             + ("" if build_on is BuildOn.node else "; or " + where))
        return "node", nodebuild.check_tool_image(tool_image)
    return "local", str(here)


POD_REACH_HINT = (REACH_HINT + "; or build here: make the archives readable "
                  "(MIGRATE_NODE_ROOT) and use --build-on local")
#: `doctor --probe` has no --build-on: it builds here whenever the archives are readable.
PROBE_REACH_HINT = REACH_HINT + "; or make the archives readable here (MIGRATE_NODE_ROOT)"


def check_pods_reach(build_on: str, images: dict[str, str], explicit: bool,
                     hint: str = POD_REACH_HINT) -> None:
    """A build on the node pushes from its Job's pod, whose loopback is its own: refuse a
    registry on a loopback address before anything is checkpointed (the Job would fail
    after it, with only "connection refused" to say why)."""
    if build_on != "node":
        return
    for image in images.values():
        ref = parse_reference(image)
        if ref.loopback:
            what = ("--build-on node" if explicit else "the image build runs in a Job on the "
                    "node (the archives are not readable here)")
            raise UsageError(f"{what}, and the Job's pod {unreachable_from_pods(ref.registry)}",
                             hint=hint)


def check_encryption(encrypt_for: tuple[str, ...], build_on: str) -> None:
    """Read the recipients' key files now (a bad one fails before the checkpoint), and
    refuse a build on the node: its Job could not read them."""
    if not encrypt_for:
        return
    parse_recipients(encrypt_for)
    if build_on == "node":
        raise UsageError("--encrypt-for needs the image built here: the build Job on the "
                         "node cannot read the public key files",
                         hint="make the archives readable here (--build-on local, "
                         "MIGRATE_NODE_ROOT) or run migrate on the source node")


def check_restore_name(cluster: kube.Cluster, settings: Settings, pod: Obj) -> None:
    """Refuse when the restored copy's name is taken: by a copy another run left (named,
    with how to resume or undo it), or by a pod migrate did not make."""
    from migrate.pipeline.manifest import derive_name

    meta = pod["metadata"]
    name = derive_name(meta["name"])
    found = kube.find_pod(cluster, meta["namespace"], name)
    if found is None:
        return
    other = ((found["metadata"].get("labels") or {}).get(claims.RUN_LABEL))
    where = f"{meta['namespace']}/{name}"
    if found["metadata"].get("deletionTimestamp"):
        made = f", the restored copy of migration {other}," if other else ""
        raise claims.Claimed(f"pod {where}{made} is still being deleted: the restored copy "
                             "needs its name", hint="run it again once it is gone (kubectl get "
                             f"pod -n {meta['namespace']} {name})")
    if other:
        verdict = claims.judge(settings.state_dir, pod, other)
        why = verdict.why.removeprefix(f"claimed by migration {other}, ") or "which has ended"
        delete = f"kubectl delete pod -n {meta['namespace']} {name}"
        hint = verdict.hint or f"it is left over: `migrate rollback {other}` removes it (or " \
            f"{delete})"
        if "journal is not on this machine" in why:
            hint = (f"roll it back where it ran (`migrate rollback {other}`); if that run is "
                    f"gone for good, delete the copy: {delete}")
        raise claims.Claimed(f"pod {where} is the restored copy of migration {other}, {why}",
                             hint=hint)
    raise claims.Claimed(f"pod {where} exists and was not made by migrate: the restored copy "
                         "would take its name", hint=f"delete or rename it (kubectl delete pod "
                         f"-n {meta['namespace']} {name}) if it is not needed")


#: How long a login to a registry answers for the next preflights of this process (a
#: drain's pods push to the same registry): the build logs in again anyway, and a
#: refusal then still comes before the source is touched.
RECENT_LOGIN_SECONDS = 5.0


def check_registry(settings: Settings, images: dict[str, str],
                   memo: dict[str, Any] | None = None) -> None:
    """Log in to each registry: fail now rather than after the checkpoint. ``memo`` (a
    cluster's) keeps the logins of the last RECENT_LOGIN_SECONDS: one holds for the
    whole registry with the same credentials, unless it was a Bearer token, whose
    scope is one repository."""
    logins: dict[tuple[Any, ...], float] = (
        memo.setdefault("registry_logins", {}) if memo is not None else {})
    for image in images.values():
        ref: Reference = parse_reference(image)
        client = RegistryClient(ref, settings.registry)
        whole = (ref.registry, client.credentials)
        if any(time.monotonic() - logins.get(key, -math.inf) <= RECENT_LOGIN_SECONDS
               for key in (whole, (*whole, ref.repository))):
            continue
        client.login()
        logins[(*whole, ref.repository) if client.scoped else whole] = time.monotonic()


def preflight(cluster: kube.Cluster, settings: Settings, req: PodRequest) -> Plan:
    """Check everything; return the plan, or raise the first reason it cannot work."""
    namespace = req.namespace or cluster.namespace
    pod = names.read_pod(cluster, namespace, req.pod)
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    source = (pod.get("spec") or {}).get("nodeName") or ""
    if phase != "Running" or not source:
        raise ClusterError(f"pod {namespace}/{req.pod} is {phase}, not Running",
                           hint="only a running pod can be migrated")
    if (pod["metadata"]).get("deletionTimestamp"):
        raise ClusterError(f"pod {namespace}/{req.pod} is being deleted",
                           hint="nothing to migrate")
    claims.check(settings.state_dir, pod)
    claims.check_journals(settings.state_dir, pod)
    owner = controller_of(pod)
    if owner and owner[0] in REFUSED_OWNERS:
        raise UsageError(f"pod {namespace}/{req.pod} is owned by {owner[0]} {owner[1]}: "
                         "it cannot be migrated", hint=REFUSED_OWNERS[owner[0]])
    if owner and owner[0] != "ReplicaSet":
        raise UsageError(f"pod {namespace}/{req.pod} is controlled by {owner[0]} {owner[1]}, "
                         "which migrate cannot hand a pod over to",
                         hint="only bare pods and ReplicaSet (Deployment) pods can move")
    volumes = local_data(pod)
    if volumes and not (req.delete_emptydir_data or req.keep_source):
        raise UsageError(f"pod {namespace}/{req.pod} has emptyDir volume(s) "
                         f"{', '.join(volumes)}: a checkpoint does not hold their files, and "
                         "they are deleted with the source pod",
                         hint="--delete-emptydir-data moves it anyway (the restored pod gets "
                         "them empty); --keep-source leaves the source and its data running")
    if owner is None:  # a controller's copy is named by generateName: no name to take
        check_restore_name(cluster, settings, pod)
    # Nodes as read in the last seconds: a drain's preflights read the same few for
    # every pod. Nothing irreversible follows from them: the switch-over looks at the
    # destination again before it touches the source.
    check_source(namespace, req.pod, kube.read_node_recent(cluster, source))
    destination = names.read_node(cluster, req.to, "--to", recent=True)
    check_destination(pod, destination, source)
    if not req.placed:
        check_room(cluster, pod, destination)
    containers = _containers(pod, req)
    images = _images(req, namespace, _workload(pod, owner), str(pod["metadata"].get("uid", "")),
                     containers)
    build_on, build_from = build_location(settings, source, req.build_on, req.tool_image)
    check_encryption(req.encrypt_for, build_on)
    check_pods_reach(build_on, images, req.build_on is BuildOn.node)
    check_registry(settings, images, cluster.memo)
    switch = "keep" if req.keep_source else ("handover" if owner else "delete")
    return Plan(namespace, req.pod, pod["metadata"].get("uid", ""), source, req.to, containers,
                images, owner, switch, pod["metadata"].get("resourceVersion"),
                destination_runtime=nodes.reported_runtime(destination),
                build_on=build_on, build_from=build_from,
                emptied=emptied_volumes(pod, containers))
