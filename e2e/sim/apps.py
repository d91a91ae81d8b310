"""The apps/v1 kinds: Deployments and ReplicaSets (controllers: deployment.py,
replicaset.py).

Defaults, validation and update rules follow the API server's apps/v1
strategies: replicas 1, a RollingUpdate strategy of 25%/25%, a revision
history of 10 and a 600 s progress deadline for Deployments; pod template
defaults; a selector that is required, non-empty, matches the template's
labels and never changes; restartPolicy Always. Both kinds serve `status`
and `scale` (autoscaling/v1 Scale, scale.py) subresources.
"""

from __future__ import annotations

from typing import Any

from e2e.sim.errors import FieldError
from e2e.sim.owners import int_or_percent
from e2e.sim.resources import ALL_VERBS, STATUS_VERBS, ResourceType, metadata_fields
from e2e.sim.store import Obj
from e2e.sim.strategy import (
    generation_hooks,
    non_negative,
    template_defaults,
    validate_selector,
    validate_template,
)
from e2e.sim.workload_tables import DEPLOYMENT_TABLE, REPLICASET_TABLE

__all__ = ["DEPLOYMENTS", "REPLICASETS", "max_surge_unavailable"]

_SUBRESOURCES = {"status": STATUS_VERBS, "scale": STATUS_VERBS}


def max_surge_unavailable(deployment: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) in pods (deploymentutil.ResolveFenceposts): surge
    rounds up, unavailability down, and both 0 would deadlock so unavailability is 1."""
    spec = deployment.get("spec", {})
    replicas = int(spec.get("replicas", 1))
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return 0, replicas
    rolling = strategy.get("rollingUpdate") or {}
    surge = int_or_percent(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, replicas)


def _deployment_defaults(d: Obj) -> None:
    spec = d.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if isinstance(rolling, dict):
                rolling.setdefault("maxUnavailable", "25%")
                rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    template_defaults(spec)


def _replicaset_defaults(rs: Obj) -> None:
    spec = rs.get("spec")
    if isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        template_defaults(spec)


def _validate_strategy(spec: dict[str, Any]) -> list[FieldError]:
    strategy = spec.get("strategy") or {}
    kind = strategy.get("type")
    if kind not in ("RollingUpdate", "Recreate"):
        return [FieldError("NotSupported", "spec.strategy.type",
                           'supported values: "Recreate", "RollingUpdate"', kind)]
    if kind == "Recreate":
        if strategy.get("rollingUpdate"):
            return [FieldError("Forbidden", "spec.strategy.rollingUpdate",
                               "may not be specified when strategy `type` is 'Recreate'")]
        return []
    rolling = strategy.get("rollingUpdate") or {}
    errors: list[FieldError] = []
    for key in ("maxSurge", "maxUnavailable"):
        try:
            int_or_percent(rolling.get(key, 0), 100, round_up=True)
        except ValueError:
            errors.append(FieldError("Invalid", f"spec.strategy.rollingUpdate.{key}",
                                     "a valid percent string must be a numeric string "
                                     "followed by an ending '%'", rolling.get(key)))
    if not errors and int_or_percent(rolling.get("maxSurge", 0), 100, round_up=True) == 0 \
            and int_or_percent(rolling.get("maxUnavailable", 0), 100, round_up=True) == 0:
        errors.append(FieldError("Invalid", "spec.strategy.rollingUpdate.maxUnavailable",
                                 "may not be 0 when `maxSurge` is 0",
                                 rolling.get("maxUnavailable")))
    return errors


def _validate_workload(obj: Obj, old: Obj | None, kind: str) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec")]
    errors = validate_selector(spec.get("selector"))
    selector = spec.get("selector")
    if isinstance(selector, dict) and not selector.get("matchLabels") and \
            not selector.get("matchExpressions"):
        errors.append(FieldError("Invalid", "spec.selector",
                                 f"empty selector is invalid for {kind}", selector))
    errors += validate_template(obj, restart_policies=("Always",))
    errors += non_negative(spec, "replicas") + non_negative(spec, "minReadySeconds")
    if old is not None and selector != (old.get("spec") or {}).get("selector"):
        errors.append(FieldError("Invalid", "spec.selector", "field is immutable", selector))
    return errors


def _validate_deployment(d: Obj, old: Obj | None) -> list[FieldError]:
    errors = _validate_workload(d, old, "deployment")
    spec = d.get("spec")
    if isinstance(spec, dict):
        errors += _validate_strategy(spec) + non_negative(spec, "revisionHistoryLimit")
    return errors


def _validate_replicaset(rs: Obj, old: Obj | None) -> list[FieldError]:
    return _validate_workload(rs, old, "replicaset")


_deployment_create, _deployment_update = generation_hooks(annotations_bump=True)
_replicaset_create, _replicaset_update = generation_hooks(initial_status={"replicas": 0})

DEPLOYMENTS = ResourceType(
    kind="Deployment", plural="deployments", singular="deployment", namespaced=True,
    group="apps", short_names=("deploy",), categories=("all",), verbs=ALL_VERBS,
    subresources=_SUBRESOURCES, defaults=_deployment_defaults,
    prepare_create=_deployment_create, prepare_update=_deployment_update,
    validate=_validate_deployment, table=DEPLOYMENT_TABLE,
)

REPLICASETS = ResourceType(
    kind="ReplicaSet", plural="replicasets", singular="replicaset", namespaced=True,
    group="apps", short_names=("rs",), categories=("all",), verbs=ALL_VERBS,
    subresources=_SUBRESOURCES, defaults=_replicaset_defaults,
    fields={**metadata_fields(), "status.replicas": lambda rs: str(
        int((rs.get("status") or {}).get("replicas", 0)))},
    prepare_create=_replicaset_create, prepare_update=_replicaset_update,
    validate=_validate_replicaset, table=REPLICASET_TABLE,
)
