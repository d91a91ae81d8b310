"""Generic object semantics over the store: create, get, list, update, patch, delete.

This is the simulator's "generic registry": what every resource type shares
(name generation, server-owned metadata, optimistic concurrency, status as a
subresource, namespace lifecycle checks, graceful deletion and finalizers),
calling the type's hooks for what differs. The HTTP layer (api.py) and the
controllers (controllers.py, kubelet.py) both go through it, so a controller's
writes obey the same rules as a client's.
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Callable, Mapping
from typing import Any

from e2e.sim.errors import (
    MODIFIED,
    ApiError,
    FieldError,
    bad_request,
    conflict,
    forbidden,
    invalid,
    not_found,
    unsupported_media_type,
)
from e2e.sim.meta import generate_name, validate_metadata
from e2e.sim.patch import json_patch, merge_patch, strategic_merge
from e2e.sim.resources import Registry, ResourceType
from e2e.sim.schema import Node, Schemas
from e2e.sim.selectors import (
    match_fields,
    match_labels,
    parse_field_selector,
    parse_label_selector,
)
from e2e.sim.store import Obj, Store
from e2e.sim.validation import Patch, decode, required_errors

__all__ = ["FOREGROUND_FINALIZER", "ORPHAN_FINALIZER", "PATCH_TYPES", "PROPAGATION_POLICIES",
           "Rest"]

#: Patch media types -> how to apply them to the stored object.
PATCH_TYPES: dict[str, Callable[[Any, Any], Any]] = {
    "application/json-patch+json": json_patch,
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge,
}

# Set by the server, never taken from a client's body.
_SERVER_OWNED = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                 "resourceVersion", "selfLink", "generation", "managedFields")
# Carried from the stored object into every update.
_IMMUTABLE = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
              "deletionGracePeriodSeconds", "generation")
_GENERATE_ATTEMPTS = 8
# Groups whose objects are named by any path segment (`system:discovery`), not DNS rules.
_PATH_SEGMENT_NAMED = frozenset({"rbac.authorization.k8s.io"})


#: ObjectMeta fields Go serializes with `omitempty`: stored empty, they are not there at
#: all (a patch removing an object's last annotation leaves no `annotations: {}`).
_OMIT_EMPTY = ("labels", "annotations", "finalizers", "ownerReferences")


def _omit_empty(meta: dict[str, Any]) -> None:
    for key in _OMIT_EMPTY:
        if key in meta and not meta[key]:
            del meta[key]


def _metadata_errors(rt: ResourceType, meta: dict[str, Any]) -> list[FieldError]:
    name = meta.get("name")
    if rt.group not in _PATH_SEGMENT_NAMED or not name:
        return validate_metadata(meta, dns_label_name=rt.dns_label_name)
    # Labels and annotations as usual; the name as apimachinery's IsValidPathSegmentName.
    errors = validate_metadata({**meta, "name": "x"})
    name = str(name)
    if name in (".", ".."):
        errors.append(FieldError("Invalid", "metadata.name", f"may not be '{name}'", name))
    for bad in ("/", "%"):
        if bad in name:
            errors.append(FieldError("Invalid", "metadata.name", f"may not contain '{bad}'",
                                     name))
    return errors


#: DeleteOptions.propagationPolicy values; Orphan and Foreground leave a finalizer on
#: the object for the garbage collector (gc.py) to act on and remove.
PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")
ORPHAN_FINALIZER = "orphan"
FOREGROUND_FINALIZER = "foregroundDeletion"


class Rest:
    """Create/read/update/delete any registered resource type against a Store.

    schemas: the API's OpenAPI schemas (schema.py); when given, every object
        written is decoded and validated against its kind's schema, found by
        group, version and kind (validation.py).
    """

    def __init__(self, store: Store, registry: Registry, schemas: Schemas | None = None
                 ) -> None:
        self.store = store
        self.registry = registry
        #: Storage keys whose objects orphan their dependents when a deletion names no
        #: propagation policy (batch/v1 Jobs, kept so for compatibility).
        self.orphan_by_default: set[str] = set()
        self.schemas = schemas

    def _schema(self, rt: ResourceType) -> Node | None:
        return self.schemas.kind(rt.group, rt.version, rt.kind) if self.schemas else None

    # -- reading ---------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        """One object; 404 if absent."""
        return self.store.get(rt.key, namespace, name, group=rt.group)

    def matcher(
        self, rt: ResourceType, label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Callable[[Obj], bool]:
        """A predicate for the selectors (400 BadRequest if they do not parse)."""
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, rt.fields)
        return lambda obj: match_labels(labels, obj) and match_fields(fields, rt.fields, obj)

    def list(
        self, rt: ResourceType, namespace: str | None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> tuple[list[Obj], int]:
        """Matching objects (of `namespace`, or of all), in key order, and the list's rv."""
        return self.store.list(rt.key, namespace, predicate)

    def snapshot(
        self, rt: ResourceType, namespace: str | None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> tuple[builtins.list[Obj], int]:
        """As list(), but the stored objects themselves, which callers must not mutate
        (e.g. to serialize a list answer)."""
        return self.store.snapshot(rt.key, namespace, predicate)

    # -- creating ------------------------------------------------------------------------

    def decode(self, rt: ResourceType, body: Any, patch: Patch | None = None) -> Obj:
        """A private copy of a body (or a patch's result), decoded as the API server's
        decoder would: its kind checked, then its fields against the kind's schema
        (also for kinds answered without storage, like access reviews)."""
        if not isinstance(body, Mapping):
            raise bad_request(f"the body must be a {rt.kind} object")
        obj = copy.deepcopy(dict(body))
        if obj.get("kind", rt.kind) != rt.kind or obj.get("apiVersion", rt.api_version) != \
                rt.api_version:
            raise bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({rt.api_version}) or kind {obj.get('kind')!r} is not "
                f"{rt.kind!r}")
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        node = self._schema(rt)
        if node is not None:
            decode(node, rt.kind, rt.version, obj, patch)
        return obj

    def _check_namespace(self, rt: ResourceType, namespace: str, name: str) -> None:
        ns = self.store.peek_one("namespaces", "", namespace)
        if ns is None:
            raise not_found("namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise forbidden(rt.plural, name, f"unable to create new content in namespace "
                            f"{namespace} because it is being terminated", rt.group)

    def _validate(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        errors = _metadata_errors(rt, obj["metadata"])
        if rt.validate is not None:
            errors += rt.validate(obj, old)
        node = self._schema(rt)
        if node is not None:
            # Fields the kind's own checks found missing already are not reported twice.
            seen = {(e.kind, e.field) for e in errors}
            errors += [e for e in required_errors(node, obj) if (e.kind, e.field) not in seen]
        if errors:
            raise invalid(rt.kind, str(obj["metadata"].get("name", "")), errors, rt.group)

    def create(self, rt: ResourceType, namespace: str, body: Any) -> Obj:
        """Store a new object from a client's body (`generateName` honoured)."""
        obj = self.decode(rt, body)
        meta = obj["metadata"]
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            meta["namespace"] = namespace
            self._check_namespace(rt, namespace, str(meta.get("name") or ""))
        else:
            meta.pop("namespace", None)
        for key in _SERVER_OWNED:
            meta.pop(key, None)
        _omit_empty(meta)
        generated = not meta.get("name") and bool(meta.get("generateName"))
        for _ in range(_GENERATE_ATTEMPTS):
            candidate = copy.deepcopy(obj)
            if generated:
                candidate["metadata"]["name"] = generate_name(str(meta["generateName"]))
            if candidate["metadata"].get("name"):
                for hook in (rt.defaults, rt.prepare_create):
                    if hook is not None:
                        hook(candidate)
            self._validate(rt, candidate, None)
            try:
                return self.store.create(rt.key, candidate, group=rt.group)
            except ApiError as e:
                if not (generated and e.reason == "AlreadyExists"):
                    raise
        raise ApiError(409, "AlreadyExists", f"{rt.plural} could not generate a unique name")

    # -- updating ------------------------------------------------------------------------

    def _next_state(self, rt: ResourceType, old: Obj, new: Any, subresource: str | None,
                    patch: Patch | None = None) -> Obj:
        """The state to store when a client sends `new` (PUT body, or the result of
        `patch`)."""
        if not isinstance(new, dict) or not isinstance(new.get("metadata", {}), dict):
            raise bad_request(f"the body must be a {rt.kind} object")
        if subresource in (None, "status", "finalize"):  # bodies of the object's own kind
            new = self.decode(rt, new, patch)
        name = old["metadata"]["name"]
        sent_rv = new.get("metadata", {}).get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, name, MODIFIED, rt.group)
        if subresource == "status":
            result = copy.deepcopy(old)
            result["status"] = copy.deepcopy(new.get("status") or {})
        elif subresource == "finalize":
            result = copy.deepcopy(old)
            result.setdefault("spec", {})["finalizers"] = list(
                (new.get("spec") or {}).get("finalizers") or [])
        elif subresource is not None:
            raise not_found(f"{rt.plural}/{subresource}", name, rt.group)
        else:
            result = new
            meta = result["metadata"]
            for key in _IMMUTABLE:
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
                else:
                    meta.pop(key, None)
            _omit_empty(meta)
            if rt.defaults is not None:
                rt.defaults(result)
            if rt.prepare_update is not None:
                rt.prepare_update(result, old)
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._validate(rt, result, old)
        return result

    def update(
        self, rt: ResourceType, namespace: str, name: str, body: Any,
        subresource: str | None = None,
    ) -> Obj:
        """Replace an object (PUT); `subresource` "status" replaces only its status."""
        if isinstance(body, Mapping):
            sent = (body.get("metadata") or {}).get("name")
            if sent and sent != name:
                raise bad_request(f"the name of the object ({sent}) does not match the name "
                                  f"on the URL ({name})")
        return self.store.update(
            rt.key, namespace, name, lambda old: self._next_state(rt, old, body, subresource),
            remove_if=rt.ready_to_remove, group=rt.group,
        )

    def patch(
        self, rt: ResourceType, namespace: str, name: str, content_type: str, patch: Any,
        subresource: str | None = None,
    ) -> Obj:
        """Apply a patch of media type `content_type` (415 if not supported)."""
        media = content_type.split(";")[0].strip().lower()
        apply = PATCH_TYPES.get(media)
        if apply is None:
            raise unsupported_media_type(content_type)

        def mutate(old: Obj) -> Obj:
            return self._next_state(rt, old, apply(old, patch), subresource,
                                    Patch(media, patch))

        return self.store.update(rt.key, namespace, name, mutate,
                                 remove_if=rt.ready_to_remove, group=rt.group)

    def mutate(self, rt: ResourceType, namespace: str, name: str,
               change: Callable[[Obj], Obj | None]) -> Obj:
        """A controller's read-modify-write, with no client-facing checks (e.g. binding)."""
        return self.store.update(rt.key, namespace, name, change,
                                 remove_if=rt.ready_to_remove, group=rt.group)

    # -- deleting ------------------------------------------------------------------------

    def delete(
        self, rt: ResourceType, namespace: str, name: str, *,
        grace: int | None = None, preconditions: Mapping[str, Any] | None = None,
        propagation: str | None = None,
    ) -> tuple[Obj, bool]:
        """Delete (or begin to delete) an object: (its state, whether it is gone).

        grace: gracePeriodSeconds asked for (None: the type's default).
        preconditions: `{"uid": ..., "resourceVersion": ...}` that must match (409).
        propagation: what becomes of dependents (PROPAGATION_POLICIES); None: what the
            object's finalizers already say, else the type's default.
        """
        if propagation is not None and propagation not in PROPAGATION_POLICIES:
            raise invalid("DeleteOptions", "", [FieldError(
                "NotSupported", "propagationPolicy",
                'supported values: "Foreground", "Background", "Orphan", "nil"', propagation)],
                "meta.k8s.io")

        def begin(old: Obj) -> Obj:
            meta = old["metadata"]
            for key in ("uid", "resourceVersion"):
                want = (preconditions or {}).get(key)
                if want and want != meta.get(key):
                    raise conflict(rt.plural, name, f"Precondition failed: {key} in "
                                   f"precondition: {want}, {key} in object meta: {meta.get(key)}",
                                   rt.group)
            marked = rt.begin_delete(old, grace)
            self._gc_finalizers(rt, marked["metadata"], propagation)
            return marked

        obj = self.store.update(rt.key, namespace, name, begin,
                                remove_if=rt.ready_to_remove, group=rt.group)
        still = self.store.peek_one(rt.key, namespace, name)
        gone = still is None or still["metadata"].get("uid") != obj["metadata"].get("uid")
        return obj, gone

    def _gc_finalizers(self, rt: ResourceType, meta: dict[str, Any], propagation: str | None
                       ) -> None:
        # The API server's deletionFinalizersForGarbageCollection: an explicit policy wins,
        # then a GC finalizer already present, then the type's default.
        present = meta.get("finalizers") or []
        if propagation is None:
            if ORPHAN_FINALIZER in present or FOREGROUND_FINALIZER in present:
                return
            propagation = "Orphan" if rt.key in self.orphan_by_default else "Background"
        kept = [f for f in present if f not in (ORPHAN_FINALIZER, FOREGROUND_FINALIZER)]
        kept += {"Orphan": [ORPHAN_FINALIZER], "Foreground": [FOREGROUND_FINALIZER]}.get(
            propagation, [])
        if kept:
            meta["finalizers"] = kept
        else:
            meta.pop("finalizers", None)
