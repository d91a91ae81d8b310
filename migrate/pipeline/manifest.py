"""Render stage: the Pod that restores checkpointed containers on a chosen node.

`render_restore_pod` takes the source pod (as the API serves it, or as
`archive_pod` reconstructs it from an archive), the checkpoint image of each
restored container and the target node, and returns the Pod, validated
against schemas/manifest.schema.json and the Kubernetes OpenAPI schema of the
target version. What it keeps, drops and adds:

- kept: the workload — containers (env, ports, resources, probes, security
  context), volumes and volumeMounts (CRI-O refuses a restore whose bind mounts
  are missing), tolerations, service account, labels, annotations, pod
  (anti-)affinity;
- dropped: status and server-set metadata (uid, resourceVersion,
  creationTimestamp, managedFields, finalizers, ...), ownerReferences (unless
  `keep_owner_references`), the injected ``kube-api-access-*`` volume and its
  mounts (admission adds a fresh one), finished init containers (native
  sidecars stay), and the spec fields in `DROPPED_SPEC`;
- added: ``spec.nodeName``, ``spec.hostname`` (the source's name, when it set
  none: the restored processes keep their host name) and the ``migrate.dev/*``
  annotations.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from migrate.adapters.registry.reference import parse_reference
from migrate.errors import NotFoundError, RenderError, UsageError
from migrate.pipeline.containers import resolve_container
from migrate.pipeline.templating import fill
from migrate.validation import check_kubernetes, check_rendered

ANNOTATION_PREFIX = "migrate.dev/"
SOURCE_POD = ANNOTATION_PREFIX + "source-pod"
SOURCE_UID = ANNOTATION_PREFIX + "source-uid"
SOURCE_NODE = ANNOTATION_PREFIX + "source-node"
CHECKPOINT_IMAGES = ANNOTATION_PREFIX + "checkpoint-images"
CHECKPOINT_TIME = ANNOTATION_PREFIX + "checkpoint-time"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SERVICE_ACCOUNT_VOLUME = "kube-api-access-"
DEFAULT_K8S_VERSION = "1.30"

#: Spec fields never copied, and why.
DROPPED_SPEC = {
    "nodeName": "replaced by the target node",
    "nodeSelector": "the node is chosen; the kubelet would refuse a node that does not match",
    "schedulerName": "a pod that names its node is never scheduled",
    "schedulingGates": "the API server refuses nodeName on a gated pod",
    "serviceAccount": "deprecated alias of serviceAccountName, filled in by the API server",
    "priority": "computed by admission from priorityClassName; a stale value is refused",
    "overhead": "set by RuntimeClass admission; a stale value is refused",
    "ephemeralContainers": "cannot be set when a pod is created",
}
# Used with fullmatch: with match, ``$`` lets a trailing newline through.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                            r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_RESTORED = re.compile(r"^(?P<base>.+?)-restored(?:-(?P<n>\d+))?$")


@dataclass(frozen=True)
class PodSource:
    """The pod to restore, and what is known about its checkpoint."""

    pod: Mapping[str, Any]
    """A Pod with API field names: read from the cluster, or rebuilt from an archive."""
    node: str | None = None
    """Where it ran; default: ``spec.nodeName``."""
    checkpoint_time: str | None = None
    """When the checkpoint was taken (RFC 3339), when known."""
    notes: Mapping[str, str] = field(default_factory=dict)
    """More ``migrate.dev/*`` annotations (what a reconstruction could not recover)."""
    required_mounts: tuple[str, ...] = ()
    """Container paths the restored container must mount (the archive's bind mounts
    the pod itself must provide); checked on the rendered Pod."""


@dataclass(frozen=True)
class RestoreOptions:
    """How the restore Pod is named, placed and trimmed."""

    node: str
    name: str | None = None
    generate_name: bool = False
    namespace: str | None = None
    """Target namespace; default: the source's."""
    drop_labels: tuple[str, ...] = ()
    keep_init_containers: bool = False
    keep_owner_references: bool = False
    """Copy ownerReferences: for a handover to the owning controller (`migrate pod`)."""
    k8s_version: str = DEFAULT_K8S_VERSION


@dataclass(frozen=True)
class ImageArgs:
    """The --image values: a plain REF for the chosen container, and CONTAINER=REF pairs."""

    default: str | None = None
    named: tuple[tuple[str, str], ...] = ()


def _image_ref(ref: str, digest: str | None) -> str:
    parsed = parse_reference(ref)  # a malformed reference is a usage error
    if digest is None:
        return ref
    if parsed.digest and parsed.digest != digest:
        raise UsageError(f"--digest {digest} contradicts the digest in {ref}")
    return ref if parsed.digest else f"{ref}@{digest}"


def parse_images(values: Sequence[str], digest: str | None = None) -> ImageArgs:
    """Parse --image values (``REF`` or ``CONTAINER=REF``); ``digest`` pins the only one."""
    if not values:
        raise UsageError("--image is required", hint="--image REF, or CONTAINER=REF per container")
    if digest is not None and (len(values) != 1 or not _DIGEST.fullmatch(digest)):
        raise UsageError("--digest takes sha256:<64 hex digits> and goes with one --image",
                         hint="or give each image as CONTAINER=REF@sha256:...")
    default, named = None, {}
    for value in values:
        name, sep, ref = value.partition("=")
        if not sep:
            if default is not None:
                raise UsageError("only one --image may omit the container name",
                                 hint="give the others as --image CONTAINER=REF")
            default = _image_ref(value, digest)
        elif not _DNS_LABEL.fullmatch(name) or not ref or name in named:
            raise UsageError(f"--image {value!r}: expected CONTAINER=REF, once per container")
        else:
            named[name] = _image_ref(ref, digest)
    return ImageArgs(default, tuple(named.items()))


def assign_images(pod: Mapping[str, Any], images: ImageArgs,
                  container: str | None) -> dict[str, str]:
    """Container name -> checkpoint image; a plain REF goes to -c (or the default container)."""
    spec = pod.get("spec") or {}
    names = [c.get("name") for key in ("containers", "initContainers")
             for c in spec.get(key) or []]
    out: dict[str, str] = {}
    if images.default is not None or container is not None:
        chosen = resolve_container(pod, container)
        if images.default is not None:
            out[chosen] = images.default
        elif chosen not in dict(images.named):
            raise UsageError(f"-c {chosen} names no --image", hint=f"add --image {chosen}=REF")
    for name, ref in images.named:
        if name in out:
            raise UsageError(f"two images for container {name}")
        if name not in names:
            meta = pod.get("metadata") or {}
            raise NotFoundError(
                f"pod {meta.get('namespace', 'default')}/{meta.get('name', '?')} has no "
                f"container {name!r} (--image {name}=...)",
                hint=f"its containers: {', '.join(str(n) for n in names) or 'none'}")
        out[name] = ref
    return out


def derive_name(source: str) -> str:
    """``web`` -> ``web-restored`` -> ``web-restored-2`` -> ``web-restored-3``."""
    m = _RESTORED.match(source)
    base, suffix = (m["base"], f"-restored-{int(m['n'] or 1) + 1}") if m else (source, "-restored")
    return base[: 253 - len(suffix)].rstrip("-.") + suffix


def _names(meta: Mapping[str, Any], options: RestoreOptions) -> tuple[str | None, str | None]:
    """(name, generateName): exactly one is set."""
    if options.name and options.generate_name:
        raise UsageError("--name and --generate-name exclude each other")
    if options.name:
        if not _DNS_SUBDOMAIN.fullmatch(options.name):
            raise UsageError(f"--name {options.name!r} is not a valid pod name",
                             hint="lower-case letters, digits, '-' and '.'; at most 253")
        return options.name, None
    if options.generate_name:
        return None, str(meta.get("generateName") or f"{meta['name']}-")
    return derive_name(str(meta["name"])), None


def _annotations(source: PodSource, images: Mapping[str, str]) -> dict[str, str]:
    meta = source.pod.get("metadata") or {}
    out = {k: str(v) for k, v in (meta.get("annotations") or {}).items()
           if k != LAST_APPLIED and not k.startswith(ANNOTATION_PREFIX)}
    node = source.node or (source.pod.get("spec") or {}).get("nodeName")
    ours = {
        SOURCE_POD: f"{meta.get('namespace') or 'default'}/{meta.get('name')}",
        SOURCE_UID: meta.get("uid"),
        SOURCE_NODE: node,
        CHECKPOINT_IMAGES: json.dumps(dict(sorted(images.items())), separators=(",", ":")),
        CHECKPOINT_TIME: source.checkpoint_time,
        **source.notes,
    }
    out.update({k: str(v) for k, v in ours.items() if v})
    return out


def _service_account_volumes(spec: Mapping[str, Any]) -> set[str]:
    return {v["name"] for v in spec.get("volumes") or []
            if str(v.get("name", "")).startswith(SERVICE_ACCOUNT_VOLUME) and "projected" in v}


def _container(c: Mapping[str, Any], image: str | None, dropped: set[str]) -> dict[str, Any]:
    out = copy.deepcopy(dict(c))
    if image is not None:
        out["image"] = image
        # The old image's pull policy says nothing about the checkpoint image:
        # the API server defaults it from the new reference.
        out.pop("imagePullPolicy", None)
    mounts = [m for m in out.get("volumeMounts") or [] if m.get("name") not in dropped]
    out.pop("volumeMounts", None)
    if mounts:
        out["volumeMounts"] = mounts
    return out


def _kept_init(c: Mapping[str, Any], keep_all: bool) -> bool:
    # Native sidecars (restartPolicy Always) run for the pod's life: not finished work.
    return keep_all or c.get("restartPolicy") == "Always"


def _check_images(spec: Mapping[str, Any], images: Mapping[str, str], keep_init: bool) -> None:
    kept = {c["name"] for c in spec.get("containers") or []}
    kept |= {c["name"] for c in spec.get("initContainers") or [] if _kept_init(c, keep_init)}
    for name in images:
        if name in kept:
            continue
        if any(c.get("name") == name for c in spec.get("initContainers") or []):
            raise UsageError(f"init container {name} is not kept in the restored pod",
                             hint="pass --keep-init-containers to restore it")
        if any(c.get("name") == name for c in spec.get("ephemeralContainers") or []):
            raise UsageError(f"container {name} cannot be restored into a new pod",
                             hint="ephemeral containers cannot be created with a pod")
        raise NotFoundError(f"the source pod has no container {name!r}",
                            hint=f"its containers: {', '.join(sorted(kept))}")


def _spec(spec: Mapping[str, Any], images: Mapping[str, str], options: RestoreOptions,
          source_name: str) -> dict[str, Any]:
    dropped = _service_account_volumes(spec)
    out = {k: copy.deepcopy(v) for k, v in spec.items() if k not in DROPPED_SPEC}
    if "hostname" not in out and _DNS_LABEL.fullmatch(source_name):
        # A pod's host name is its name: keep the one the restored processes had.
        out["hostname"] = source_name
    volumes = [v for v in out.pop("volumes", None) or [] if v.get("name") not in dropped]
    affinity = {k: v for k, v in (out.pop("affinity", None) or {}).items() if k != "nodeAffinity"}
    init = [_container(c, images.get(c["name"]), dropped) for c in out.pop("initContainers", [])
            if _kept_init(c, options.keep_init_containers)]
    out["containers"] = [_container(c, images.get(c["name"]), dropped)
                         for c in spec.get("containers") or []]
    out.update({k: v for k, v in (("initContainers", init), ("volumes", volumes),
                                  ("affinity", affinity)) if v})
    return out


def render_restore_pod(source: PodSource | Mapping[str, Any], images: Mapping[str, str],
                       options: RestoreOptions) -> dict[str, Any]:
    """The restore Pod, validated; ``images`` maps container names to checkpoint images."""
    if not isinstance(source, PodSource):
        source = PodSource(source)
    if not _DNS_SUBDOMAIN.fullmatch(options.node):
        raise UsageError(f"--node {options.node!r} is not a valid node name")
    meta, spec = source.pod.get("metadata") or {}, source.pod.get("spec") or {}
    if not images:
        raise UsageError("no container to restore: give --image")
    _check_images(spec, images, options.keep_init_containers)
    name, generate_name = _names(meta, options)
    labels = {k: v for k, v in (meta.get("labels") or {}).items()
              if k not in options.drop_labels}
    owners = meta.get("ownerReferences") if options.keep_owner_references else None
    pod: dict[str, Any] = fill("restore-pod.yaml", {
        "name": name, "generate_name": generate_name,
        "namespace": options.namespace or meta.get("namespace") or "default",
        "labels": labels or None, "annotations": _annotations(source, images),
        "owner_references": owners or None, "node": options.node,
        "spec": _spec(spec, images, options, str(meta.get("name", ""))),
    })
    check_restore_pod(pod, options.k8s_version, source.required_mounts)
    return pod


def check_restore_pod(pod: dict[str, Any], version: str, required: Sequence[str] = ()) -> None:
    """Our invariants, the Kubernetes schema of ``version``, and CRI-O's bind-mount rule."""
    check_rendered(pod, "manifest.schema.json", "the restore Pod")
    check_kubernetes(pod, version, "the restore Pod")
    images = json.loads(pod["metadata"]["annotations"][CHECKPOINT_IMAGES])
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        if c["name"] not in images:
            continue
        mounted = {m["mountPath"] for m in c.get("volumeMounts") or []}
        missing = [p for p in required if p not in mounted]
        if missing:
            raise RenderError(f"the restore Pod does not mount {', '.join(missing)} in "
                              f"container {c['name']}: CRI-O would refuse the restore",
                              hint="this is a bug in migrate; report it with the archive")
