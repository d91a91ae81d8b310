"""Prune on the node: a Job per node runs `migrate prune --dir` on its checkpoint directory.

For nodes whose directory this machine cannot read (the usual case off-node),
as `--build-on node` builds images (nodebuild.py): the Job runs the tool's own
image with the kubelet's checkpoint directory mounted (read-write: it
deletes), no API access (the caller decided what is protected and passes
it as arguments), and hands its node report back as its container's
termination message (archives.compact: at most 4000 bytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from migrate.adapters import kube
from migrate.errors import ClusterError, ExitCode
from migrate.pipeline import nodebuild
from migrate.pipeline.prune.policy import Rules
from migrate.pipeline.templating import fill
from migrate.settings import DEFAULT_CHECKPOINT_DIR

SCRATCH = "/tmp"
LABEL = "migrate.dev/prune"


@dataclass(frozen=True)
class NodePrune:
    """One node's prune Job."""

    namespace: str
    node: str
    tool_image: str
    rules: Rules
    protected: tuple[str, ...] = ()  # archive names
    protected_prefixes: tuple[str, ...] = ()  # checkpoint-POD_NS- of claimed pods
    protected_since: float | None = None  # archives taken since are kept (epoch seconds)
    dry_run: bool = False
    deadline: int = 600


def args(p: NodePrune) -> list[str]:
    """The command line the Job's container runs (the image's entrypoint is `migrate`)."""
    out = ["prune", "--where", "local", "--node", p.node, "--dir", str(DEFAULT_CHECKPOINT_DIR),
           "--termination-message-path", "/dev/termination-log", "-o", "json"]
    r = p.rules
    if r.older_than is not None:
        out += ["--older-than", f"{r.older_than}s"]
    if r.keep is not None:
        out += ["--keep", str(r.keep)]
    if r.max_size is not None:
        out += ["--max-size", str(r.max_size)]
    for name in p.protected:
        out += ["--protect", name]
    for prefix in p.protected_prefixes:
        out += ["--protect-prefix", prefix]
    if p.protected_since is not None:
        out += ["--protect-since", f"{p.protected_since:.0f}"]
    return out + (["--dry-run"] if p.dry_run else [])


def job_manifest(p: NodePrune) -> dict[str, Any]:
    """The Job that prunes ``p.node`` (templates/prune-job.yaml)."""
    directory = str(DEFAULT_CHECKPOINT_DIR)
    labels = {LABEL: p.node[:63].strip("-.")}
    job: dict[str, Any] = fill("prune-job.yaml", {
        "generate_name": f"migrate-prune-{p.node}-"[:58], "namespace": p.namespace,
        "labels": labels, "deadline": p.deadline, "node": p.node, "image": p.tool_image,
        "args": args(p), "env": [{"name": "HOME", "value": SCRATCH}],
        "mounts": [{"name": "checkpoints", "mountPath": directory},
                   {"name": "scratch", "mountPath": SCRATCH}],
        "volumes": [{"name": "checkpoints",
                     # The kubelet makes it (0700) at start-up when ContainerCheckpoint
                     # is on; a node without it has nothing to prune, and with "Directory"
                     # its Job would wait for the mount until the deadline. The prune
                     # makes a new, empty one 0700 as the kubelet would have.
                     "hostPath": {"path": directory, "type": "DirectoryOrCreate"}},
                    {"name": "scratch", "emptyDir": {}}]})
    return job


def start(cluster: kube.Cluster, p: NodePrune) -> str:
    """Create the Job; its name."""
    return str(kube.create_job(cluster, p.namespace, job_manifest(p))["metadata"]["name"])


def collect(cluster: kube.Cluster, namespace: str, job: str, timeout: float) -> dict[str, Any]:
    """Wait for the Job; its node report, marked as run by it."""
    # Exit 10: the Job pruned, and some archive could not be removed; its report says which.
    message = nodebuild.termination_message(cluster, namespace, job, timeout, what="prune",
                                            reported=(ExitCode.PARTIAL,))
    try:
        report: dict[str, Any] = json.loads(message)
        ok = isinstance(report, dict) and isinstance(report.get("pruned"), list)
    except ValueError:
        ok = False
    if not ok:
        raise ClusterError(f"the prune Job {job} finished without a report",
                           hint="is --tool-image the migrate image?")
    return {**report, "where": f"job {job}"}
