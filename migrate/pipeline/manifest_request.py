"""`migrate manifest`: find the source (live pod or archive), pick the version, render.

1. the source: the pod read from the API server (``--from-pod``), or rebuilt
   from the archive's spec.dump and config.dump (``--archive``, pod gone);
2. the checkpoint image of each restored container (``--image``);
3. the Kubernetes version to validate against: ``--k8s-version``, else the
   cluster's (``--from-pod``), else `DEFAULT_K8S_VERSION`;
4. `render_restore_pod`, which validates before anything is printed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.adapters import kube
from migrate.adapters.checkpoint import Checkpoint
from migrate.errors import UsageError
from migrate.pipeline import names
from migrate.pipeline.archive_pod import for_version, pod_from_checkpoint
from migrate.pipeline.manifest import (
    DEFAULT_K8S_VERSION,
    ImageArgs,
    PodSource,
    RestoreOptions,
    assign_images,
    render_restore_pod,
)
from migrate.settings import Settings
from migrate.validation import kubernetes_version, kubernetes_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestRequest:
    """One `migrate manifest`."""

    images: ImageArgs
    node: str
    from_pod: str | None = None
    archive: Path | None = None
    container: str | None = None
    namespace: str | None = None
    """With --from-pod: where the pod is; with --archive: the target namespace."""
    name: str | None = None
    generate_name: bool = False
    k8s_version: str | None = None
    drop_labels: tuple[str, ...] = ()
    keep_init_containers: bool = False


def cluster_version(reported: str) -> str:
    """The supported version closest to what a cluster reports (warned when not exact)."""
    try:
        return kubernetes_version(reported)
    except UsageError:
        known = kubernetes_versions()
        try:
            newer = tuple(int(p) for p in reported.split(".")) > tuple(
                int(p) for p in known[-1].split("."))
        except ValueError:
            newer = True
        chosen = known[-1] if newer else known[0]
        log.warning("the cluster reports Kubernetes %s, which has no schema here; validating "
                    "against %s (choose with --k8s-version)", reported, chosen)
        return chosen


def _source(req: ManifestRequest, settings: Settings) -> tuple[PodSource, str]:
    """The source and the Kubernetes version to validate against."""
    if req.archive is not None:
        with Checkpoint(req.archive, settings.archive) as ckpt:
            source = pod_from_checkpoint(ckpt)
        version = kubernetes_version(req.k8s_version or DEFAULT_K8S_VERSION)
        # The AppArmor profile rebuilt from the archive, in the form this version reads.
        return for_version(source, version), version
    assert req.from_pod is not None
    cluster = kube.connect(settings.kube)
    pod = names.read_pod(cluster, req.namespace or cluster.namespace, req.from_pod)
    # A Pod pinned to a node that does not exist would wait for ever: refuse it now.
    names.check_node(cluster, req.node, "--node")
    version = (kubernetes_version(req.k8s_version) if req.k8s_version
               else cluster_version(kube.server_minor_version(cluster)))
    return PodSource(pod), version


def build_manifest(req: ManifestRequest, settings: Settings) -> dict[str, Any]:
    """Run the manifest stage; the Pod returned has passed every check."""
    if (req.from_pod is None) == (req.archive is None):
        raise UsageError("give one of --from-pod POD or --archive ARCHIVE")
    if req.name and req.generate_name:  # usage errors come before any I/O
        raise UsageError("--name and --generate-name exclude each other")
    if req.k8s_version:
        kubernetes_version(req.k8s_version)
    source, version = _source(req, settings)
    images = assign_images(source.pod, req.images, req.container)
    labels = (source.pod.get("metadata") or {}).get("labels") or {}
    for key in req.drop_labels:
        if key not in labels:
            log.warning("--drop-label %s: the source pod has no such label", key)
    return render_restore_pod(source, images, RestoreOptions(
        node=req.node, name=req.name, generate_name=req.generate_name,
        namespace=req.namespace if req.archive is not None else None,
        drop_labels=req.drop_labels, keep_init_containers=req.keep_init_containers,
        k8s_version=version))
