"""rbac.authorization.k8s.io/v1: Roles, ClusterRoles and their bindings, as stored objects.

The four kinds are served like any other (create, apply, list, watch...), with
the API server's validation of rules, role references and subjects, so what a
tool emits and applies is checked as a real cluster would check it.
rbac_authorizer.py evaluates them for every request. `default_policy()` is
the part of the API server's bootstrap policy a client meets: cluster-admin
for system:masters, discovery and self-reviews for every authenticated user.

Not modelled: escalation checks (the API server refuses to let a user grant
permissions it does not hold, without the `escalate`/`bind` verbs) and
aggregated ClusterRoles (`aggregationRule`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from e2e.sim.errors import FieldError
from e2e.sim.resources import Registry, ResourceType

__all__ = [
    "CLUSTER_ROLES",
    "CLUSTER_ROLE_BINDINGS",
    "GROUP",
    "ROLES",
    "ROLE_BINDINGS",
    "default_policy",
    "register",
    "validate_rule",
]

GROUP = "rbac.authorization.k8s.io"
_SUBJECT_KINDS = ("ServiceAccount", "User", "Group")

Obj = dict[str, Any]
Validator = Callable[[Obj, Obj | None], list[FieldError]]


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def validate_rule(rule: Any, path: str, *, namespaced: bool) -> list[FieldError]:
    """The API server's ValidatePolicyRule: verbs, and either resources or URLs."""
    if not isinstance(rule, Mapping):
        return [FieldError("Invalid", path, "must be an object", rule)]
    errors: list[FieldError] = []
    if not _strings(rule.get("verbs")):
        errors.append(FieldError("Required", f"{path}.verbs",
                                 "verbs must contain at least one value"))
    urls = _strings(rule.get("nonResourceURLs"))
    if urls:
        if namespaced:
            errors.append(FieldError("Invalid", f"{path}.nonResourceURLs",
                                     "namespaced rules cannot apply to non-resource URLs", urls))
        if any(_strings(rule.get(k)) for k in ("apiGroups", "resources", "resourceNames")):
            errors.append(FieldError(
                "Invalid", f"{path}.nonResourceURLs",
                "rules cannot apply to both regular resources and non-resource URLs", urls))
        return errors
    if not _strings(rule.get("apiGroups")):
        errors.append(FieldError("Required", f"{path}.apiGroups",
                                 "resource rules must supply at least one api group"))
    if not _strings(rule.get("resources")):
        errors.append(FieldError("Required", f"{path}.resources",
                                 "resource rules must supply at least one resource"))
    return errors


def _validate_role(namespaced: bool) -> Validator:
    def validate(role: Obj, old: Obj | None) -> list[FieldError]:
        errors: list[FieldError] = []
        for i, rule in enumerate(role.get("rules") or []):
            errors += validate_rule(rule, f"rules[{i}]", namespaced=namespaced)
        return errors

    return validate


def _validate_subject(subject: Any, path: str, *, namespaced: bool) -> list[FieldError]:
    if not isinstance(subject, Mapping):
        return [FieldError("Invalid", path, "must be an object", subject)]
    errors: list[FieldError] = []
    kind, group = subject.get("kind"), subject.get("apiGroup") or ""
    if not subject.get("name"):
        errors.append(FieldError("Required", f"{path}.name"))
    if kind == "ServiceAccount":
        if group:
            errors.append(FieldError("NotSupported", f"{path}.apiGroup",
                                     'supported values: ""', group))
        if not namespaced and not subject.get("namespace"):
            errors.append(FieldError("Required", f"{path}.namespace"))
    elif kind in ("User", "Group"):
        if group != GROUP:
            errors.append(FieldError("NotSupported", f"{path}.apiGroup",
                                     f'supported values: "{GROUP}"', group))
    else:
        errors.append(FieldError("NotSupported", f"{path}.kind",
                                 'supported values: "ServiceAccount", "User", "Group"', kind))
    return errors


def _validate_binding(namespaced: bool) -> Validator:
    role_kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)

    def validate(binding: Obj, old: Obj | None) -> list[FieldError]:
        errors: list[FieldError] = []
        ref = binding.get("roleRef")
        ref = ref if isinstance(ref, Mapping) else {}
        if ref.get("apiGroup") != GROUP:
            errors.append(FieldError("NotSupported", "roleRef.apiGroup",
                                     f'supported values: "{GROUP}"', ref.get("apiGroup")))
        if ref.get("kind") not in role_kinds:
            errors.append(FieldError("NotSupported", "roleRef.kind", "supported values: " +
                                     ", ".join(f'"{k}"' for k in role_kinds), ref.get("kind")))
        if not ref.get("name"):
            errors.append(FieldError("Required", "roleRef.name"))
        for i, subject in enumerate(binding.get("subjects") or []):
            errors += _validate_subject(subject, f"subjects[{i}]", namespaced=namespaced)
        if old is not None and old.get("roleRef") != binding.get("roleRef"):
            errors.append(FieldError("Invalid", "roleRef", "cannot change roleRef",
                                     binding.get("roleRef")))
        return errors

    return validate


ROLES = ResourceType(
    kind="Role", plural="roles", singular="role", namespaced=True, group=GROUP,
    validate=_validate_role(True),
)
CLUSTER_ROLES = ResourceType(
    kind="ClusterRole", plural="clusterroles", singular="clusterrole", namespaced=False,
    group=GROUP, validate=_validate_role(False),
)
ROLE_BINDINGS = ResourceType(
    kind="RoleBinding", plural="rolebindings", singular="rolebinding", namespaced=True,
    group=GROUP, validate=_validate_binding(True),
)
CLUSTER_ROLE_BINDINGS = ResourceType(
    kind="ClusterRoleBinding", plural="clusterrolebindings", singular="clusterrolebinding",
    namespaced=False, group=GROUP, validate=_validate_binding(False),
)


def register(registry: Registry) -> None:
    """Serve the four RBAC kinds in `registry`."""
    for rt in (ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS):
        registry.add(rt)


# -- the bootstrap policy ---------------------------------------------------------------

_DEFAULT_META = {
    "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
    "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
}
_PUBLIC_INFO = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
_DISCOVERY = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
              "/openapi/*", "/readyz", "/version", "/version/"]


def _cluster_role(name: str, rules: list[Obj]) -> Obj:
    return {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRole",
            "metadata": {"name": name, **_DEFAULT_META}, "rules": rules}


def _cluster_binding(name: str, group: str) -> Obj:
    return {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, **_DEFAULT_META},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": group}]}


def default_policy() -> list[tuple[ResourceType, Obj]]:
    """The bootstrap ClusterRoles and ClusterRoleBindings the simulator starts with."""
    everything = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                  {"nonResourceURLs": ["*"], "verbs": ["*"]}]
    self_reviews = [
        {"apiGroups": ["authorization.k8s.io"],
         "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"],
         "verbs": ["create"]},
    ]
    roles = {
        "cluster-admin": (everything, "system:masters"),
        "system:discovery": ([{"nonResourceURLs": _DISCOVERY, "verbs": ["get"]}],
                             "system:authenticated"),
        "system:basic-user": (self_reviews, "system:authenticated"),
        "system:public-info-viewer": ([{"nonResourceURLs": _PUBLIC_INFO, "verbs": ["get"]}],
                                      "system:authenticated"),
    }
    policy: list[tuple[ResourceType, Obj]] = []
    for name, (rules, group) in roles.items():
        policy.append((CLUSTER_ROLES, _cluster_role(name, rules)))
        policy.append((CLUSTER_ROLE_BINDINGS, _cluster_binding(name, group)))
    return policy
