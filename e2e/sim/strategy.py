"""Registry-strategy pieces the workload kinds share (apps, batch, policy).

Like the API server's strategies for Deployments, ReplicaSets, Jobs and
PodDisruptionBudgets: `metadata.generation` starts at 1 and grows by one
whenever the spec changes (rest.py carries it over on every update, these
hooks decide the bump), status is cleared on create and only the `status`
subresource changes it; label selectors and pod templates are validated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from e2e.sim.core import pod_template_defaults, validate_pod_template
from e2e.sim.errors import FieldError
from e2e.sim.owners import selector_matches
from e2e.sim.store import Obj

__all__ = [
    "generation_hooks",
    "non_negative",
    "template_defaults",
    "validate_selector",
    "validate_template",
]

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def generation_hooks(*, annotations_bump: bool = False,
                     initial_status: Mapping[str, Any] | None = None,
                     ) -> tuple[Callable[[Obj], None], Callable[[Obj, Obj], None]]:
    """(prepare_create, prepare_update) hooks: generation 1 and a fresh status (its
    non-omitempty zeros, `initial_status`) on create; on update status kept,
    generation + 1 when the spec (or, for Deployments, the annotations: they are
    copied to ReplicaSets) changed."""

    def prepare_create(obj: Obj) -> None:
        obj["metadata"]["generation"] = 1
        obj["status"] = dict(initial_status or {})

    def prepare_update(new: Obj, old: Obj) -> None:
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
        changed = new.get("spec") != old.get("spec")
        if annotations_bump:
            changed = changed or (new["metadata"].get("annotations") or {}) != (
                old["metadata"].get("annotations") or {})
        generation = int(old["metadata"].get("generation") or 1)
        new["metadata"]["generation"] = generation + 1 if changed else generation

    return prepare_create, prepare_update


def template_defaults(spec: Mapping[str, Any]) -> None:
    """Pod defaults inside `spec.template.spec` (if the template is there at all)."""
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        pod_template_defaults(template["spec"])


def validate_selector(selector: Any, path: str = "spec.selector") -> list[FieldError]:
    """A metav1.LabelSelector: present, operators known, values as they require."""
    if selector is None:
        return [FieldError("Required", path)]
    if not isinstance(selector, dict):
        return [FieldError("Invalid", path, "must be a label selector", selector)]
    errors: list[FieldError] = []
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        where = f"{path}.matchExpressions[{i}]"
        op = expr.get("operator") if isinstance(expr, dict) else None
        if op not in _OPERATORS:
            errors.append(FieldError("NotSupported", f"{where}.operator", 'supported values: '
                                     '"In", "NotIn", "Exists", "DoesNotExist"', op))
            continue
        has_values = bool(expr.get("values"))
        if op in ("In", "NotIn") and not has_values:
            errors.append(FieldError("Required", f"{where}.values",
                                     "must be specified when `operator` is 'In' or 'NotIn'"))
        if op in ("Exists", "DoesNotExist") and has_values:
            errors.append(FieldError("Forbidden", f"{where}.values", "may not be specified "
                                     "when `operator` is 'Exists' or 'DoesNotExist'"))
    return errors


def validate_template(obj: Obj, *, restart_policies: tuple[str, ...]) -> list[FieldError]:
    """spec.template: selected by spec.selector, valid containers, an allowed restartPolicy."""
    spec = obj.get("spec") or {}
    template = spec.get("template")
    if not isinstance(template, dict):
        return [FieldError("Required", "spec.template")]
    errors = validate_pod_template(template.get("spec"), "spec.template.")
    labels = (template.get("metadata") or {}).get("labels") or {}
    selector = spec.get("selector")
    if isinstance(selector, dict) and not selector_matches(selector, labels):
        errors.append(FieldError("Invalid", "spec.template.metadata.labels",
                                 "`selector` does not match template `labels`", labels))
    policy = (template.get("spec") or {}).get("restartPolicy")
    if policy not in restart_policies:
        quoted = ", ".join(f'"{p}"' for p in restart_policies)
        errors.append(FieldError("NotSupported", "spec.template.spec.restartPolicy",
                                 f"supported values: {quoted}", policy))
    return errors


def non_negative(spec: Mapping[str, Any], field: str) -> list[FieldError]:
    """`spec.<field>`, when set, is an integer >= 0."""
    value = spec.get(field)
    if value is None:
        return []
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return [FieldError("Invalid", f"spec.{field}", "must be greater than or equal to 0",
                           value)]
    return []
