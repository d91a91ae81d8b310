"""Where each pod to migrate goes: the scheduler's checks, then the least-loaded node.

A restored pod names its node, so the scheduler never sees it; placement
does what it would have done. A destination must be Ready, schedulable
(not cordoned), able to restore (CRI-O), not the drained node, and match
--to-selector (or be --to). For each pod, a destination must also satisfy
the pod's nodeSelector, required node affinity and taints
(`placement.refusals`) and have room for its requests (CPU, memory, any
other resource, and one more pod) in its allocatable, minus the requests of
the pods already on it and of those this drain placed there before.

The rule among those that fit: the least-loaded node after placing, that is
the lowest mean of its CPU and memory requested fractions (kube-scheduler's
LeastAllocated score, counting 100m / 200 MiB for containers that request
nothing), then the fewest pods, then the name. Pods are placed largest
first, so a big pod is not squeezed out by small ones; a node filling up
sends later pods elsewhere, or leaves them blocked with each node's reason.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from migrate.pipeline import nodes, placement
from migrate.pipeline.placement import Load
from migrate.pipeline.quantity import pod_requests

Obj = dict[str, Any]


def node_unfit(node: Obj, source: str) -> str | None:
    """Why no pod of the drain may go to ``node`` at all (None: it is a candidate)."""
    name = node["metadata"]["name"]
    if name == source:
        return "it is the node being drained"
    ok, why = nodes.ready(node)
    if not ok:
        return f"not Ready: {why}"
    if nodes.cordoned(node):
        return "cordoned"
    runtime = nodes.runtime_of(node)
    if not runtime.can_restore:
        return f"cannot restore checkpoints: {runtime.reason}"
    return None


NOWHERE = "no destination: no Ready, schedulable node that can restore"


def choose(pod: Obj, loads: list[Load], nowhere: str = NOWHERE) -> tuple[Load | None, str]:
    """The destination for ``pod`` and why; (None, every node's reason) if none fits, or
    ``nowhere`` if there is no candidate at all."""
    need = pod_requests(pod)
    fitting, refused = [], []
    for load in loads:
        why = next(iter(placement.refusals(pod, load.node)), None) or load.shortfall(need)
        if why:
            refused.append(why if why.startswith("node ") else f"node {load.name}: {why}")
        else:
            fitting.append(load)
    if not fitting:
        if not loads:
            return None, nowhere
        return None, "no destination fits: " + "; ".join(refused)
    best = min(fitting, key=lambda load: load.score(pod))
    return best, f"least loaded of {len(fitting)} fitting node(s)"


def place(pods: list[Obj], loads: list[Load],
          nowhere: str = NOWHERE) -> dict[str, tuple[str | None, str]]:
    """uid -> (destination or None, reason) for each pod, largest first."""
    def size(pod: Obj) -> tuple[Decimal, Decimal, str]:
        need = pod_requests(pod)
        return (-need.get("cpu", Decimal(0)), -need.get("memory", Decimal(0)),
                f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}")

    out: dict[str, tuple[str | None, str]] = {}
    for pod in sorted(pods, key=size):
        best, why = choose(pod, loads, nowhere)
        if best is not None:
            best.take(pod)
        out[pod["metadata"]["uid"]] = (best.name if best else None, why)
    return out
