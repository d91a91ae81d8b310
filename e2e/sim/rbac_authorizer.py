"""The RBAC authorizer: stored Roles, ClusterRoles and bindings decide every request.

What the API server runs with `--authorization-mode=RBAC`, preceded by its
privileged-group shortcut: members of `system:masters` may do anything. For
anyone else the ClusterRoleBindings are visited first, then (for a request in
a namespace) that namespace's RoleBindings; a binding applies when one of its
subjects is the user, one of the user's groups, or the user's service account
(`system:serviceaccount:NS:NAME`). The first rule of a bound role that covers
the request allows it, and the decision names it as the API server does:

    RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to User "bob"

RBAC never denies; when nothing allows, the reason lists what could not be
evaluated (a binding to a missing role), if anything. Every authenticated
user is in `system:authenticated`, whether or not its token says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from e2e.nodes.protocol import Attributes, Decision, User
from e2e.sim.rbac import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, ROLE_BINDINGS, ROLES
from e2e.sim.resources import ResourceType
from e2e.sim.store import Obj, Store

__all__ = ["AUTHENTICATED", "MASTERS", "RbacAuthorizer", "rule_allows",
           "service_account_user"]

#: Allowed everything before RBAC is asked (the API server's privileged group).
MASTERS = "system:masters"
#: The group every authenticated user is in.
AUTHENTICATED = "system:authenticated"
_SA_PREFIX = "system:serviceaccount:"


def service_account_user(namespace: str, name: str) -> User:
    """The user a service account's token authenticates as (with its groups)."""
    return User(f"{_SA_PREFIX}{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED))


def _matches(values: Sequence[str], wanted: str) -> bool:
    return "*" in values or wanted in values


def _resource_matches(rule_resources: Sequence[str], resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for allowed in rule_resources:
        if allowed in ("*", combined):
            return True
        # `*/scale` covers the scale subresource of every resource.
        if subresource and allowed == f"*/{subresource}":
            return True
    return False


def _url_matches(rule_urls: Sequence[str], path: str) -> bool:
    return any(url == "*" or url == path or (url.endswith("*") and path.startswith(url[:-1]))
               for url in rule_urls)


def _list(rule: Mapping[str, Any], key: str) -> list[str]:
    values = rule.get(key)
    return [str(v) for v in values] if isinstance(values, list) else []


def rule_allows(attrs: Attributes, rule: Mapping[str, Any]) -> bool:
    """Whether one PolicyRule covers the request (RBAC's RuleAllows)."""
    if not _matches(_list(rule, "verbs"), attrs.verb):
        return False
    if not attrs.resource:
        return _url_matches(_list(rule, "nonResourceURLs"), attrs.path)
    names = _list(rule, "resourceNames")
    return (_matches(_list(rule, "apiGroups"), attrs.group)
            and _resource_matches(_list(rule, "resources"), attrs.resource, attrs.subresource)
            and (not names or attrs.name in names))


def _subject_applies(subject: Any, user: User, groups: set[str], namespace: str) -> bool:
    if not isinstance(subject, Mapping):
        return False
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == user.name)
    if kind == "Group":
        return name in groups
    if kind == "ServiceAccount":
        sa_namespace = subject.get("namespace") or namespace
        return bool(sa_namespace) and user.name == f"{_SA_PREFIX}{sa_namespace}:{name}"
    return False


def _describe(binding: Obj, subject: Mapping[str, Any]) -> str:
    meta, ref = binding["metadata"], binding.get("roleRef") or {}
    namespace = meta.get("namespace", "")
    name = f'{meta["name"]}/{namespace}' if namespace else meta["name"]
    who = subject.get("name", "")
    if subject.get("kind") == "ServiceAccount":
        who = f'{who}/{subject.get("namespace") or namespace}'
    return (f'{binding["kind"]} "{name}" of {ref.get("kind")} "{ref.get("name")}" to '
            f'{subject.get("kind")} "{who}"')


def _aggregate(errors: list[str]) -> str:
    # apimachinery's error aggregate: one error as itself, several in brackets.
    return errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"


class RbacAuthorizer:
    """An `Authorizer` over the RBAC objects in `store` (read at every request, so a
    binding applied a moment ago counts at once)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __call__(self, attrs: Attributes) -> Decision:
        groups = {*attrs.user.groups, AUTHENTICATED}
        if MASTERS in groups:
            return Decision(True)
        errors: list[str] = []
        for binding, subject, rules in self._bound_rules(attrs, groups, errors):
            if any(isinstance(r, Mapping) and rule_allows(attrs, r) for r in rules):
                return Decision(True, reason=f"RBAC: allowed by {_describe(binding, subject)}")
        return Decision(False, reason=f"RBAC: {_aggregate(errors)}" if errors else "")

    def _bound_rules(
        self, attrs: Attributes, groups: set[str], errors: list[str]
    ) -> Iterator[tuple[Obj, Mapping[str, Any], list[Any]]]:
        """(binding, the subject that matched, the bound role's rules), in RBAC's order."""
        scopes: list[tuple[ResourceType, str | None]] = [(CLUSTER_ROLE_BINDINGS, None)]
        if attrs.namespace:
            scopes.append((ROLE_BINDINGS, attrs.namespace))
        for rt, namespace in scopes:
            for binding in self._applying(rt, namespace, attrs.user, groups):
                subject = next(s for s in binding.get("subjects") or []
                               if _subject_applies(s, attrs.user, groups, namespace or ""))
                rules = self._role_rules(binding, namespace or "", errors)
                if rules is not None:
                    yield binding, subject, rules

    def _applying(self, rt: ResourceType, namespace: str | None, user: User,
                  groups: set[str]) -> list[Obj]:
        def applies(binding: Obj) -> bool:
            return any(_subject_applies(s, user, groups, namespace or "")
                       for s in binding.get("subjects") or [])

        return self.store.list(rt.key, namespace, applies)[0]

    def _role_rules(self, binding: Obj, namespace: str, errors: list[str]) -> list[Any] | None:
        ref = binding.get("roleRef") or {}
        rt = ROLES if ref.get("kind") == "Role" else CLUSTER_ROLES
        role = self.store.find(rt.key, namespace if rt is ROLES else "", str(ref.get("name")))
        if role is None:
            errors.append(f'{rt.singular}.{rt.group} "{ref.get("name")}" not found')
            return None
        rules = role.get("rules")
        return rules if isinstance(rules, list) else []
