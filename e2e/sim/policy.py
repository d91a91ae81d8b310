"""The policy/v1 kind: PodDisruptionBudgets (status: disruption.py; evictions: eviction.py).

Validation follows the API server's: minAvailable or maxUnavailable (not
both), each a non-negative integer or a percentage up to 100%; a selector
(absent: the budget selects no pod, `{}`: every pod of its namespace); an
unhealthyPodEvictionPolicy of IfHealthyBudget (what an unset one means) or
AlwaysAllow. The spec may change; each change bumps metadata.generation,
and evictions wait (429) until the disruption controller has observed it.
"""

from __future__ import annotations

import re
from typing import Any

from e2e.sim.errors import FieldError
from e2e.sim.owners import set_typed_condition
from e2e.sim.resources import ALL_VERBS, STATUS_VERBS, ResourceType
from e2e.sim.store import Obj
from e2e.sim.strategy import generation_hooks, validate_selector
from e2e.sim.workload_tables import PDB_TABLE

__all__ = ["PODDISRUPTIONBUDGETS", "set_disruption_allowed"]

_PERCENT = re.compile(r"^[0-9]+%$")
_POLICIES = ("IfHealthyBudget", "AlwaysAllow")


def _validate_int_or_percent(value: Any, path: str) -> list[FieldError]:
    if isinstance(value, bool):
        return [FieldError("Invalid", path, "must be an integer or percentage", value)]
    if isinstance(value, int):
        return [] if value >= 0 else [FieldError(
            "Invalid", path, "must be greater than or equal to 0", value)]
    text = str(value)
    if not _PERCENT.match(text):
        return [FieldError("Invalid", path, "a valid percent string must be a numeric string "
                           "followed by an ending '%' (e.g. '1%',  or '93%', regex used for "
                           "validation is '[0-9]+%')", value)]
    if int(text[:-1]) > 100:
        return [FieldError("Invalid", path, "must not be greater than 100%", value)]
    return []


def _validate_pdb(pdb: Obj, old: Obj | None) -> list[FieldError]:
    spec = pdb.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec")]
    errors: list[FieldError] = []
    if "minAvailable" in spec and "maxUnavailable" in spec:
        errors.append(FieldError("Invalid", "spec", "minAvailable and maxUnavailable cannot "
                                 "be both set", spec))
    for key in ("minAvailable", "maxUnavailable"):
        if key in spec:
            errors += _validate_int_or_percent(spec[key], f"spec.{key}")
    if spec.get("selector") is not None:
        errors += validate_selector(spec["selector"])
    policy = spec.get("unhealthyPodEvictionPolicy")
    if policy is not None and policy not in _POLICIES:
        errors.append(FieldError("NotSupported", "spec.unhealthyPodEvictionPolicy",
                                 'supported values: "AlwaysAllow", "IfHealthyBudget"', policy))
    return errors


def set_disruption_allowed(status: dict[str, Any], message: str = "",
                           reason: str | None = None) -> None:
    """The DisruptionAllowed condition (pdbhelper.UpdateDisruptionAllowedCondition):
    SufficientPods while disruptions are allowed, else InsufficientPods (or `reason`)."""
    allowed = int(status.get("disruptionsAllowed", 0)) > 0 and reason is None
    entry = {"type": "DisruptionAllowed", "status": "True" if allowed else "False",
             "observedGeneration": status.get("observedGeneration", 0),
             "reason": reason or ("SufficientPods" if allowed else "InsufficientPods"),
             "message": message}
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    set_typed_condition(conditions, entry, same=lambda c: all(
        c.get(k) == entry[k] for k in ("status", "reason", "message", "observedGeneration")))


_pdb_create, _pdb_update = generation_hooks(initial_status={
    "disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0})

PODDISRUPTIONBUDGETS = ResourceType(
    kind="PodDisruptionBudget", plural="poddisruptionbudgets",
    singular="poddisruptionbudget", namespaced=True, group="policy", short_names=("pdb",),
    verbs=ALL_VERBS, subresources={"status": STATUS_VERBS},
    prepare_create=_pdb_create, prepare_update=_pdb_update, validate=_validate_pdb,
    table=PDB_TABLE,
)
