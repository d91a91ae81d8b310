"""Resource types: what the API serves, and the per-kind hooks the generic handlers call.

A `ResourceType` is the simulator's equivalent of an API server "registry
strategy": naming and scope, discovery data (verbs, short names, categories,
subresources), selectable fields, and hooks for defaulting, validation,
update rules and graceful deletion. The generic REST logic (rest.py) and
discovery (discovery.py) work from these; a new kind is one more
`ResourceType` in a `Registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from e2e.sim.errors import FieldError
from e2e.sim.meta import now, rfc3339
from e2e.sim.selectors import FieldGetter
from e2e.sim.tables import DEFAULT_TABLE, TableSpec

__all__ = [
    "ALL_VERBS",
    "Registry",
    "ResourceType",
    "default_begin_delete",
    "get_path",
    "metadata_fields",
]

Obj = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


def get_path(obj: Mapping[str, Any], dotted: str) -> str:
    """A field by dotted path as a selector string: "" when unset, booleans lower-case."""
    node: Any = obj
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def _getter(dotted: str) -> FieldGetter:
    return lambda obj: get_path(obj, dotted)


def metadata_fields(*extra: str) -> dict[str, FieldGetter]:
    """Getters for metadata.name, metadata.namespace and the `extra` dotted paths."""
    return {p: _getter(p) for p in ("metadata.name", "metadata.namespace", *extra)}


def default_begin_delete(obj: Obj, grace: int | None) -> Obj:
    """Mark an object deleted now; it goes away at once unless finalizers hold it."""
    meta = obj["metadata"]
    meta.setdefault("deletionTimestamp", rfc3339(now()))
    meta["deletionGracePeriodSeconds"] = 0
    return obj


def default_ready_to_remove(obj: Obj) -> bool:
    """Deleted, no grace period left and no finalizers: remove from storage."""
    meta = obj.get("metadata", {})
    return bool(
        meta.get("deletionTimestamp")
        and meta.get("deletionGracePeriodSeconds", 0) == 0
        and not meta.get("finalizers")
    )


@dataclass(frozen=True)
class ResourceType:
    """One served resource and its behaviour.

    kind, plural, singular: names as in discovery (`Pod`, `pods`, `pod`).
    namespaced: namespace-scoped (True) or cluster-scoped.
    group, version: API group ("" for core) and version.
    short_names, categories: discovery hints kubectl uses (`po`, `all`).
    verbs: verbs on the main resource.
    subresources: name -> verbs, e.g. {"status": ("get", "patch", "update")}.
    fields: selectable fields for fieldSelector (always metadata.name/namespace).
    defaults: fills defaults into an object being written (create, and the main
        resource on update), after its name is set; must be idempotent.
    prepare_create: sets the state only the server decides on create (status).
    validate: (new, old or None on create) -> field errors (answered as 422).
    prepare_update: (new, old) adjusts a main-resource update, e.g. keeps status.
    begin_delete: (object, requested grace seconds or None) -> the object marked
        for deletion (deletionTimestamp, deletionGracePeriodSeconds); may raise.
    ready_to_remove: whether a (deleted) object may leave storage now.
    return_deleted: DELETE answers the object (pods) rather than a Success Status.
    dns_label_name: names are DNS labels (namespaces) rather than subdomains.
    table: server-side printing columns for `kubectl get`.
    """

    kind: str
    plural: str
    singular: str
    namespaced: bool
    group: str = ""
    version: str = "v1"
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fields: Mapping[str, FieldGetter] = field(default_factory=metadata_fields)
    defaults: Callable[[Obj], None] | None = None
    prepare_create: Callable[[Obj], None] | None = None
    validate: Callable[[Obj, Obj | None], list[FieldError]] | None = None
    prepare_update: Callable[[Obj, Obj], None] | None = None
    begin_delete: Callable[[Obj, int | None], Obj] = default_begin_delete
    ready_to_remove: Callable[[Obj], bool] = default_ready_to_remove
    return_deleted: bool = False
    dns_label_name: bool = False
    table: TableSpec = DEFAULT_TABLE

    @property
    def api_version(self) -> str:
        """`v1` for core, else `group/version`."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """Storage key: `pods`, `deployments.apps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


class Registry:
    """The resource types served, by group/version and plural."""

    def __init__(self, types: list[ResourceType] | None = None) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in types or []:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        """Serve one more resource type."""
        self._types[(rt.group, rt.version, rt.plural)] = rt

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The type served at /api(s)/GROUP/VERSION/PLURAL, or None."""
        return self._types.get((group, version, plural))

    def by_kind(self, kind: str, group: str = "") -> ResourceType:
        """The type of a kind (KeyError if not served)."""
        for rt in self._types.values():
            if rt.kind == kind and rt.group == group:
                return rt
        raise KeyError(kind)

    def group_versions(self) -> list[tuple[str, str]]:
        """(group, version) pairs served, core first."""
        return sorted({(g, v) for g, v, _ in self._types})

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        """Types served under one group/version, sorted by plural."""
        return sorted((rt for (g, v, _), rt in self._types.items() if (g, v) == (group, version)),
                      key=lambda rt: rt.plural)

    def namespaced(self) -> Iterator[ResourceType]:
        """Every namespace-scoped type (what deleting a namespace must empty)."""
        return (rt for rt in self._types.values() if rt.namespaced)
