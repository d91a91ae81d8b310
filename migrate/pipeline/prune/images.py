"""Checkpoint images in the registry: `migrate prune --registry`, and deleting a
migration's images (what `migrate pod --cleanup-image` calls).

A checkpoint image is one whose manifest (or index) carries CRI-O's
``io.kubernetes.cri-o.annotations.checkpoint.name`` annotation, the one
CRI-O itself checks (server/container_restore.go, checkIfCheckpointOCIImage,
at v1.36.3), or whose config has it as a label. Any other image in the
repository is left alone.

An image is in use while any pod in the cluster names it: a container's
image (by digest, or by a tag that points at it) or a container status's
imageID. A restored container that restarts is restored again from its
checkpoint image (docs/retention.md), so a pod that names one still needs
it. Manifests are deleted by digest (the distribution API has no tag
delete before 3.0); distribution then removes the tags that pointed at it.
Space comes back only when the registry's garbage collector runs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from migrate.adapters import kube
from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.reference import Reference, check_prefix, parse_reference
from migrate.errors import MigrateError, RegistryError, UsageError
from migrate.pipeline.annotations import CHECKPOINT_NAME
from migrate.pipeline.prune import protect
from migrate.settings import Settings

Obj = dict[str, Any]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
_CONFIG_LIMIT = 4 << 20  # an image config is a few KiB; anything this big is not one
_FRACTION = re.compile(r"(\.\d{6})\d+")
_DELETE_HINT = ("the registry must allow deletes: in distribution's config.yml, "
                "`storage: delete: enabled: true` (REGISTRY_STORAGE_DELETE_ENABLED=true), then "
                "restart it; its garbage collector (`registry garbage-collect`) frees the space")


@dataclass
class InUse:
    """What the cluster's pods name: digests, and (registry, repository, tag) triples,
    each with the first pod seen naming it."""

    digests: dict[str, str] = field(default_factory=dict)
    tags: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def user(self, registry: str, repository: str, digest: str,
             tags: Iterable[str]) -> str | None:
        """The pod (namespace/name) that uses this image, if any."""
        if digest in self.digests:
            return self.digests[digest]
        return next((self.tags[(registry, repository, t)] for t in tags
                     if (registry, repository, t) in self.tags), None)


def _images_of(pod: Obj) -> Iterable[str]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    for key in ("containers", "initContainers", "ephemeralContainers"):
        yield from (str(c.get("image") or "") for c in spec.get(key) or [])
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for s in status.get(key) or []:
            yield str(s.get("image") or "")
            yield str(s.get("imageID") or "")


def in_use(cluster: kube.Cluster, restored: str | None = None) -> InUse:
    """Every image any pod in the cluster names; ``restored`` (NAMESPACE/NAME): a pod
    left out when none of its containers pulls Always (see `delete_images`)."""
    out = InUse()
    for pod in kube.list_pods(cluster, None):
        meta = pod.get("metadata") or {}
        who = f"{meta.get('namespace')}/{meta.get('name')}"
        if who == restored and not _pulls_always(pod):
            continue
        for image in _images_of(pod):
            image = image.split("://", 1)[-1]  # docker-pullable://, as some runtimes report
            if "@sha256:" in image or image.startswith("sha256:"):
                out.digests.setdefault("sha256:" + image.rsplit("sha256:", 1)[1], who)
            if not image or image.startswith("sha256:"):
                continue
            try:
                ref = parse_reference(image)
            except UsageError:
                continue  # not a reference we can match; it cannot name our images either
            if ref.tag:
                out.tags.setdefault((ref.registry, ref.repository, ref.tag), who)
    return out


def _pulls_always(pod: Obj) -> bool:
    """Whether a container of ``pod`` pulls its image at every start (the API server
    writes the default policy into the spec: Always for :latest or no tag)."""
    return any(c.get("imagePullPolicy") == "Always"
               for c in (pod.get("spec") or {}).get("containers") or [])


def _deleted_or_refused(client: RegistryClient, digest: str) -> None:
    if not client.delete_manifest(digest):
        raise RegistryError(f"{client.ref.registry} refuses to delete manifests "
                            "(HTTP 405 UNSUPPORTED): nothing was deleted there",
                            hint=_DELETE_HINT)


def delete_images(cluster: kube.Cluster, settings: Settings, images: Sequence[str],
                  restored: str | None = None) -> list[Obj]:
    """Delete the checkpoint images ``images`` (``REGISTRY/REPOSITORY[:TAG]@DIGEST``, as a
    migration's report names them) from their registries, by digest.

    Refuses, deleting none, while any pod in the cluster names one of them
    (a restored pod that restarts is restored from it again). ``restored``
    (NAMESPACE/NAME), the migration's own restored pod, is the exception
    unless a container of it pulls Always: a restart restores from the copy
    in its node's image store, which the kubelet's image garbage collection
    leaves alone while a container of the pod uses it (docs/retention.md).
    Returns one ``{"image", "digest", "deleted"}`` per image; ``deleted`` is
    False for one the registry no longer had.
    """
    refs = [parse_reference(i) for i in images]
    missing = [str(r) for r in refs if not r.digest]
    if missing:
        raise UsageError(f"image {missing[0]} has no digest: only a pushed image's "
                         "digest says exactly what to delete", hint="name it as "
                         "REGISTRY/REPOSITORY@sha256:...")
    users = in_use(cluster, restored)
    for r in refs:
        assert r.digest is not None
        who = users.user(r.registry, r.repository, r.digest, [r.tag] if r.tag else [])
        if who:
            raise UsageError(f"checkpoint image {r.name}@{r.digest} is still used by pod "
                             f"{who}: nothing was deleted", hint="a restored container that "
                             "restarts is restored again from its checkpoint image "
                             "(docs/retention.md); delete it once no pod uses it: "
                             f"`migrate prune --registry {r.name} --older-than 0s`")
    out = []
    for r in refs:
        assert r.digest is not None
        client = RegistryClient(Reference(r.registry, r.repository), settings.registry,
                                actions="pull,delete")
        present = client.has_manifest(r.digest)
        if present:
            _deleted_or_refused(client, r.digest)
        out.append({"image": str(r), "digest": r.digest, "deleted": present})
    return out


# -- migrate prune --registry ---------------------------------------------------------------


@dataclass(frozen=True)
class RegistryPrune:
    """One `migrate prune --registry`."""

    prefix: str  # HOST[:PORT]/REPOSITORY: that repository and those under it
    older_than: int  # seconds
    dry_run: bool = False


@dataclass(frozen=True)
class Image:
    """One manifest of a repository, with the tags that point at it."""

    repository: str
    digest: str
    tags: tuple[str, ...]
    checkpoint: str | None  # the container name it restores, None: not a checkpoint image
    created: float | None  # seconds since the epoch; None when the config has no time


def _created(config: Obj) -> float | None:
    text = config.get("created")
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00"))
                                      ).timestamp()
    except ValueError:
        return None


def _describe(client: RegistryClient, digest: str, tags: tuple[str, ...]) -> Image:
    body, _, _ = client.manifest(digest, ACCEPT)
    doc = json.loads(body)
    annotations = dict(doc.get("annotations") or {})
    if doc.get("manifests"):  # an index: the first image's manifest has the config
        doc = json.loads(client.manifest(str(doc["manifests"][0].get("digest", "")),
                                         ACCEPT)[0])
        annotations = {**dict(doc.get("annotations") or {}), **annotations}
    config: Obj = {}
    config_digest = str((doc.get("config") or {}).get("digest", ""))
    if config_digest:
        config = json.loads(client.get_blob(config_digest, _CONFIG_LIMIT))
    labels = dict((config.get("config") or {}).get("Labels") or {})
    name = annotations.get(CHECKPOINT_NAME) or labels.get(CHECKPOINT_NAME)
    return Image(client.ref.repository, digest, tags, str(name) if name else None,
                 _created(config))


def _repositories(client: RegistryClient, prefix: str) -> list[str]:
    """The repository and those under it, from the catalog; the repository alone when
    the registry will not list its catalog."""
    try:
        found = [r for r in client.catalog()
                 if r == prefix or r.startswith(prefix.rstrip("/") + "/")]
    except MigrateError:
        return [prefix]
    return sorted(found) or [prefix]


def _images(client: RegistryClient) -> list[Image]:
    by_digest: dict[str, list[str]] = {}
    for tag in client.list_tags():
        by_digest.setdefault(client.manifest(tag, ACCEPT)[2], []).append(tag)
    return [_describe(client, d, tuple(sorted(t))) for d, t in sorted(by_digest.items())]


#: Images checkpointed this recently are kept whatever --older-than says: a migration run
#: elsewhere (an in-cluster drain) may be between its push and its restored pod, which
#: no pod names yet, and a large image's build and push take minutes.
IN_FLIGHT_SECONDS = 3600.0


def _verdict(image: Image, users: InUse, registry: str, cutoff: float,
             live: tuple[set[str], set[str]], now: float) -> str | None:
    """Why ``image`` stays (None: it goes)."""
    who = users.user(registry, image.repository, image.digest, image.tags)
    if who:
        return f"used by pod {who}"
    refs, digests = live
    named = {f"{registry}/{image.repository}:{t}" for t in image.tags}
    if image.digest in digests or named & refs:
        return "a running or interrupted migration journaled here needs it"
    if image.created is None:
        return "its config has no creation time"
    if image.created > now - IN_FLIGHT_SECONDS:
        return "checkpointed in the last hour: a migration may not have restored it yet"
    if image.created > cutoff:
        return "newer than --older-than"
    return None


def prune_registry(cluster: kube.Cluster, settings: Settings, req: RegistryPrune) -> Obj:
    """Delete the checkpoint images under ``req.prefix`` no pod uses and older than
    ``req.older_than``; the report (schemas/prune-registry.schema.json)."""
    prefix = check_prefix(req.prefix)
    registry, _, repository = prefix.partition("/")
    if not repository:
        raise UsageError(f"--registry {prefix}: name the repository too (HOST[:PORT]/REPO)",
                         hint="prune looks at that repository and the ones under it")
    root = RegistryClient(Reference(registry, repository), settings.registry,
                          actions="pull,delete")
    root.login()
    users = in_use(cluster)
    live = protect.images_of_live_runs(settings.state_dir)
    now = time.time()
    cutoff = now - req.older_than
    pruned, kept, other, failed = [], [], 0, []
    for repo in _repositories(root, repository):
        client = RegistryClient(Reference(registry, repo), settings.registry,
                                actions="pull,delete")
        try:
            client.login()  # per repository: a Bearer token's scope is one repository
            images = _images(client)
        except MigrateError as e:
            # One repository refused (a 403 on it alone, a broken manifest): the others
            # are still pruned, and the report says what was done before and after.
            failed.append({"repository": f"{registry}/{repo}", "error": e.message})
            continue
        for image in images:
            if image.checkpoint is None:
                other += 1
                continue
            item = {"repository": f"{registry}/{repo}", "digest": image.digest,
                    "tags": list(image.tags), "container": image.checkpoint,
                    "created": _rfc3339(image.created)}
            why = _verdict(image, users, registry, cutoff, live, now)
            if why:
                kept.append({**item, "why": why})
                continue
            if not req.dry_run:
                _deleted_or_refused(client, image.digest)
            pruned.append(item)
    return {"dry_run": req.dry_run, "registry": prefix, "older_than": req.older_than,
            "pruned": pruned, "kept": kept, "other_images": other, "failed": failed}


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
