"""`migrate checkpoint`: ask the pod's kubelet to checkpoint one of its containers.

(A migration's checkpoint stage, migration/checkpoint.py, starts at step 3: preflight
has read the pod and chosen its containers, and it goes through the API server.)

1. read the pod; it must be Running on a node;
2. pick the container (-c, the default-container annotation, the only one);
3. POST the kubelet checkpoint API, through the API server's node proxy
   (default) or directly with a client certificate;
4. report the node, the archive's path on that node, and the time taken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from migrate.adapters import kube
from migrate.adapters.kubelet import KubeletEndpoint, checkpoint_direct
from migrate.errors import ClusterError, UsageError
from migrate.pipeline import names
from migrate.pipeline.containers import resolve_container


@dataclass(frozen=True)
class CheckpointRequest:
    """One `migrate checkpoint`."""

    pod: str
    namespace: str | None = None
    container: str | None = None
    timeout: int | None = None  # seconds the runtime may take; None: its default
    via: str = "apiserver"  # apiserver | kubelet
    kubelet: KubeletEndpoint | None = None


@dataclass(frozen=True)
class CheckpointResult:
    """Where the archive is: on ``node``, at ``archive``."""

    namespace: str
    pod: str
    container: str
    node: str
    archive: str
    via: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (schemas/checkpoint.schema.json)."""
        return {"namespace": self.namespace, "pod": self.pod, "container": self.container,
                "node": self.node, "archive": self.archive, "via": self.via,
                "seconds": round(self.seconds, 6)}


def checkpoint(cluster: kube.Cluster, req: CheckpointRequest) -> CheckpointResult:
    """Checkpoint one container (`migrate checkpoint`)."""
    if req.via == "kubelet" and req.kubelet is None:
        raise UsageError("--via kubelet needs --kubelet-url, --cert and --key")
    namespace = req.namespace or cluster.namespace
    pod = names.read_pod(cluster, namespace, req.pod)
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    node = (pod.get("spec") or {}).get("nodeName")
    if phase != "Running" or not node:
        raise ClusterError(f"pod {namespace}/{req.pod} is {phase}, not Running",
                           hint="only a running container can be checkpointed")
    container = resolve_container(pod, req.container)
    start = time.perf_counter()
    if req.via == "kubelet":
        assert req.kubelet is not None
        path = checkpoint_direct(req.kubelet, namespace, req.pod, container, req.timeout,
                                 cluster.settings.retry)
    else:
        path = kube.checkpoint_via_apiserver(cluster, node, namespace, req.pod, container,
                                             req.timeout)
    return CheckpointResult(namespace, req.pod, container, node, path, req.via,
                            time.perf_counter() - start)
