"""Users of a simulated cluster: bearer tokens, groups, and rules granted through RBAC.

`Simulator.add_user()` and the `users:` key of `python -m e2e.sim --config`
take a `UserSpec`. Its rules are RBAC PolicyRules (apiGroups, resources with
the `pods/eviction` subresource syntax, verbs, resourceNames, nonResourceURLs,
"*" wildcards) plus one key of the simulator's: `namespaces`, where the rule
applies (absent: cluster-wide). They become real RBAC objects, named
`sim:user:NAME`: a ClusterRole and ClusterRoleBinding for the cluster-wide
rules, and a Role and RoleBinding in each namespace named; the authorizer
(rbac_authorizer.py) then treats them like any applied manifest.

A user named `system:serviceaccount:NS:NAME` is bound as that ServiceAccount
(subject kind ServiceAccount), so service-account tokens fit the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from e2e.sim.rbac import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    GROUP,
    ROLE_BINDINGS,
    ROLES,
    validate_rule,
)
from e2e.sim.resources import ResourceType

__all__ = ["UserSpec", "parse_users", "user_grants"]

Obj = dict[str, Any]
_USER_KEYS = ("name", "token", "groups", "rules")
_RULE_KEYS = ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs",
              "namespaces")
_SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class UserSpec:
    """One user: name, groups, RBAC rules (with optional `namespaces`), and a fixed
    bearer token (None: a random one)."""

    name: str
    groups: tuple[str, ...] = ()
    rules: tuple[Mapping[str, Any], ...] = ()
    token: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a user needs a name")
        for i, rule in enumerate(self.rules):
            _check_rule(rule, f"user {self.name!r}: rules[{i}]")


def _check_rule(rule: Any, where: str) -> None:
    if not isinstance(rule, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    unknown = sorted(set(rule) - set(_RULE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} "
                         f"(known: {', '.join(_RULE_KEYS)})")
    for key, value in rule.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}.{key}: expected a list of strings")
    errors = validate_rule(rule, "rule", namespaced=bool(rule.get("namespaces")))
    if errors:
        raise ValueError(f"{where}: " + "; ".join(str(e) for e in errors))


def parse_users(raw: Any) -> list[UserSpec]:
    """The config's `users:` list as UserSpecs (ValueError on anything unknown)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("`users` must be a list")
    users: list[UserSpec] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ValueError(f"users[{i}]: expected a mapping with at least `name`")
        unknown = sorted(set(entry) - set(_USER_KEYS))
        if unknown:
            raise ValueError(f"users[{i}]: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(_USER_KEYS)})")
        name, token = entry.get("name"), entry.get("token")
        groups, rules = entry.get("groups") or [], entry.get("rules") or []
        if not isinstance(name, str) or not name:
            raise ValueError(f"users[{i}]: `name` is required")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError(f"users[{i}]: `token` must be a non-empty string")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError(f"users[{i}]: `groups` must be a list of strings")
        if not isinstance(rules, list):
            raise ValueError(f"users[{i}]: `rules` must be a list")
        users.append(UserSpec(name, tuple(groups), tuple(rules), token))
    names = [u.name for u in users]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"users listed twice: {', '.join(twice)}")
    return users


def _subject(user: str) -> Obj:
    if user.startswith(_SA_PREFIX) and user.count(":") == 3:
        namespace, name = user[len(_SA_PREFIX):].split(":")
        return {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    return {"apiGroup": GROUP, "kind": "User", "name": user}


def _pair(user: str, role_rt: ResourceType, binding_rt: ResourceType, namespace: str,
          rules: list[Obj]) -> list[tuple[ResourceType, str, Obj]]:
    name = f"sim:user:{user}"
    meta: Obj = {"name": name, **({"namespace": namespace} if namespace else {})}
    role = {"apiVersion": f"{GROUP}/v1", "kind": role_rt.kind, "metadata": dict(meta),
            "rules": rules}
    binding = {"apiVersion": f"{GROUP}/v1", "kind": binding_rt.kind, "metadata": dict(meta),
               "roleRef": {"apiGroup": GROUP, "kind": role_rt.kind, "name": name},
               "subjects": [_subject(user)]}
    return [(role_rt, namespace, role), (binding_rt, namespace, binding)]


def user_grants(spec: UserSpec) -> list[tuple[ResourceType, str, Obj]]:
    """The RBAC objects (type, namespace, object) that grant `spec.rules`."""
    cluster: list[Obj] = []
    by_namespace: dict[str, list[Obj]] = {}
    for rule in spec.rules:
        plain = {k: list(v) for k, v in rule.items() if k != "namespaces"}
        namespaces = list(rule.get("namespaces") or [])
        if not namespaces:
            cluster.append(plain)
        for namespace in namespaces:
            by_namespace.setdefault(namespace, []).append(plain)
    grants: list[tuple[ResourceType, str, Obj]] = []
    if cluster:
        grants += _pair(spec.name, CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, "", cluster)
    for namespace, rules in by_namespace.items():
        grants += _pair(spec.name, ROLES, ROLE_BINDINGS, namespace, rules)
    return grants
