"""The garbage collector: objects go when their owners go, by ownerReference uid.

What the deleting client asked for (rest.py turns propagationPolicy into a
finalizer on the owner) decides what happens to dependents:

    Background  the owner goes at once; a dependent all of whose owners are gone
                is then deleted (in the background itself); one that still has a
                live owner only loses the references to the missing ones.
    Orphan      the owner keeps the `orphan` finalizer until every dependent's
                reference to it is removed; the dependents stay.
    Foreground  the owner keeps `foregroundDeletion` while its dependents are
                deleted (in the foreground too) and lets go once none with
                blockOwnerDeletion=true is left.

An owner is looked up by uid in the dependent's namespace (or cluster-wide
for cluster-scoped kinds); before a dependent is deleted for a missing owner,
the owner is looked up again by kind and name, as the real collector does, so
an owner created after this pass's listing is never mistaken for gone.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from e2e.sim.controllers import Controller
from e2e.sim.errors import ApiError
from e2e.sim.resources import ResourceType
from e2e.sim.rest import FOREGROUND_FINALIZER, ORPHAN_FINALIZER
from e2e.sim.store import Obj

__all__ = ["GarbageCollector"]

_Item = tuple[ResourceType, Obj]


def _ns(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace") or "")


def _finalizing(obj: Obj, finalizer: str) -> bool:
    meta = obj["metadata"]
    return bool(meta.get("deletionTimestamp")) and finalizer in (meta.get("finalizers") or [])


class GarbageCollector(Controller):
    """Deletes or orphans dependents of deleted owners (see the module docstring)."""

    name = "garbage-collector"

    def reconcile(self) -> None:
        items: list[_Item] = []
        for rt in self._types():
            objs, _ = self.rest.list(rt, None)
            items += [(rt, o) for o in objs]
        by_uid = {o["metadata"]["uid"]: (rt, o) for rt, o in items}
        dependents: dict[str, list[_Item]] = defaultdict(list)
        for rt, obj in items:
            for ref in obj["metadata"].get("ownerReferences") or []:
                dependents[str(ref.get("uid"))].append((rt, obj))
        for rt, obj in items:
            uid = obj["metadata"]["uid"]
            if _finalizing(obj, ORPHAN_FINALIZER):
                self._orphan(rt, obj, dependents.get(uid, []))
            elif _finalizing(obj, FOREGROUND_FINALIZER):
                self._foreground(rt, obj, dependents.get(uid, []))
        for rt, obj in items:
            if obj["metadata"].get("ownerReferences"):
                self._check_owners(rt, obj, by_uid)

    def _types(self) -> list[ResourceType]:
        seen: dict[str, ResourceType] = {}
        for group, version in self.rest.registry.group_versions():
            for rt in self.rest.registry.in_group_version(group, version):
                seen[rt.key] = rt
        return list(seen.values())

    # -- owners being deleted ----------------------------------------------------------

    def _orphan(self, rt: ResourceType, owner: Obj, dependents: list[_Item]) -> None:
        uid = owner["metadata"]["uid"]
        for drt, dep in dependents:
            self._drop_refs(drt, dep, {uid})
        self._drop_finalizer(rt, owner, ORPHAN_FINALIZER)

    def _foreground(self, rt: ResourceType, owner: Obj, dependents: list[_Item]) -> None:
        uid = owner["metadata"]["uid"]
        blocking = 0
        for drt, dep in dependents:
            ref = next(r for r in dep["metadata"]["ownerReferences"] if r.get("uid") == uid)
            blocking += bool(ref.get("blockOwnerDeletion"))
            if not dep["metadata"].get("deletionTimestamp"):
                self._delete(drt, dep, "Foreground")
        if not blocking:
            self._drop_finalizer(rt, owner, FOREGROUND_FINALIZER)

    # -- dependents whose owners are gone ----------------------------------------------

    def _check_owners(self, rt: ResourceType, obj: Obj, by_uid: dict[str, _Item]) -> None:
        refs = obj["metadata"]["ownerReferences"]
        missing = {str(r.get("uid")) for r in refs if not self._owner_exists(obj, r, by_uid)}
        if not missing:
            return
        if len(missing) < len({str(r.get("uid")) for r in refs}):
            self._drop_refs(rt, obj, missing)
        elif not obj["metadata"].get("deletionTimestamp"):
            self._log(f"{self.name}: deleting {rt.plural} {_ns(obj)}/"
                      f"{obj['metadata']['name']}: its owners are gone")
            self._delete(rt, obj, "Background")

    def _owner_exists(self, obj: Obj, ref: dict[str, Any], by_uid: dict[str, _Item]) -> bool:
        known = by_uid.get(str(ref.get("uid")))
        if known is not None:
            owner_rt, owner = known
            return not owner_rt.namespaced or _ns(owner) == _ns(obj)
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        try:
            owner_rt = self.rest.registry.by_kind(str(ref.get("kind")), group)
        except KeyError:
            return True  # a kind this cluster does not serve: never judged absent
        current = self.rest.store.find(owner_rt.key, _ns(obj) if owner_rt.namespaced else "",
                                       str(ref.get("name")))
        return current is not None and current["metadata"]["uid"] == ref.get("uid")

    # -- writes ------------------------------------------------------------------------

    def _delete(self, rt: ResourceType, obj: Obj, propagation: str) -> None:
        try:
            self.rest.delete(rt, _ns(obj), obj["metadata"]["name"],
                             preconditions={"uid": obj["metadata"]["uid"]},
                             propagation=propagation)
        except ApiError as e:
            if e.code not in (404, 409):
                raise

    def _drop_refs(self, rt: ResourceType, obj: Obj, uids: set[str]) -> None:
        uid = obj["metadata"]["uid"]

        def change(current: Obj) -> Obj | None:
            meta = current["metadata"]
            if meta["uid"] != uid:
                return None
            refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") not in uids]
            if refs:
                meta["ownerReferences"] = refs
            else:
                meta.pop("ownerReferences", None)
            return current

        self._mutate(rt, obj, change)

    def _drop_finalizer(self, rt: ResourceType, obj: Obj, finalizer: str) -> None:
        uid = obj["metadata"]["uid"]

        def change(current: Obj) -> Obj | None:
            meta = current["metadata"]
            if meta["uid"] != uid:
                return None
            left = [f for f in meta.get("finalizers") or [] if f != finalizer]
            if left:
                meta["finalizers"] = left
            else:
                meta.pop("finalizers", None)
            return current

        self._mutate(rt, obj, change)

    def _mutate(self, rt: ResourceType, obj: Obj, change: Any) -> None:
        try:
            self.rest.mutate(rt, _ns(obj), obj["metadata"]["name"], change)
        except ApiError as e:
            if e.code != 404:
                raise
