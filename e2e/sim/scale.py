"""The `scale` subresource: a workload's replicas as an autoscaling/v1 Scale.

    GET    .../deployments/NAME/scale   {"kind": "Scale", "spec": {"replicas": N},
                                         "status": {"replicas": M, "selector": "app=web"}}
    PUT    .../deployments/NAME/scale   a Scale; its resourceVersion, if any, must match
    PATCH  .../deployments/NAME/scale   any patch type, applied to the Scale

What `kubectl scale` uses (a merge patch of spec.replicas). A change goes
through the workload's own update rules (validation, a generation bump).
"""

from __future__ import annotations

from typing import Any

from e2e.nodes.protocol import Request, Response
from e2e.sim.api import SubresourceHandler
from e2e.sim.errors import (
    FieldError,
    bad_request,
    invalid,
    method_not_allowed,
    unsupported_media_type,
)
from e2e.sim.owners import selector_string
from e2e.sim.resources import ResourceType
from e2e.sim.rest import PATCH_TYPES, Rest
from e2e.sim.store import Obj

__all__ = ["scale_handler", "scale_of"]

_MERGE = "application/merge-patch+json"


def scale_of(obj: Obj) -> dict[str, Any]:
    """The autoscaling/v1 Scale of a Deployment or ReplicaSet."""
    meta = obj["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                          "creationTimestamp") if k in meta},
        "spec": {"replicas": int(obj["spec"].get("replicas", 0))},
        "status": {"replicas": int(obj.get("status", {}).get("replicas", 0)),
                   "selector": selector_string(obj["spec"].get("selector")).replace(
                       "<none>", "")},
    }


def _replicas(scale: Any, name: str) -> int:
    if not isinstance(scale, dict) or scale.get("kind", "Scale") != "Scale":
        raise bad_request("the body must be an autoscaling/v1 Scale object")
    replicas = (scale.get("spec") or {}).get("replicas", 0)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise invalid("Scale", name, [FieldError(
            "Invalid", "spec.replicas", "must be greater than or equal to 0", replicas)],
            "autoscaling")
    return replicas


def scale_handler(rest: Rest) -> SubresourceHandler:
    """The SubresourceHandler serving `scale` for any kind with spec.replicas."""

    def handle(req: Request, verb: str, rt: ResourceType, namespace: str, name: str
               ) -> Response:
        current = rest.get(rt, namespace, name)
        if verb == "get":
            return Response(200, scale_of(current))
        if verb == "update":
            scale = req.json()
        elif verb == "patch":
            media = (req.headers.get("Content-Type") or _MERGE).split(";")[0].strip().lower()
            apply = PATCH_TYPES.get(media)
            if apply is None:
                raise unsupported_media_type(media)
            scale = apply(scale_of(current), req.json())
        else:
            raise method_not_allowed()
        change: dict[str, Any] = {"spec": {"replicas": _replicas(scale, name)}}
        sent_rv = ((scale or {}).get("metadata") or {}).get("resourceVersion")
        if verb == "update" and sent_rv:
            change["metadata"] = {"resourceVersion": sent_rv}
        return Response(200, scale_of(rest.patch(rt, namespace, name, _MERGE, change)))

    return handle
