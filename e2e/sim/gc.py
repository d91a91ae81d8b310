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

Like the real collector, it works incrementally: it keeps its own graph of
every object's owner references (the stored objects themselves, never
mutated), built once from the store and then updated from the store's event
history, and each pass examines only what a write may have changed: the
object written, its owners and its dependents. If it falls out of the history
(410), or the served types change, it builds the graph again and examines
everything, as its first pass does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from e2e.sim.controllers import Controller
from e2e.sim.errors import ApiError
from e2e.sim.resources import ResourceType
from e2e.sim.rest import FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Rest
from e2e.sim.store import Event, Obj

__all__ = ["GarbageCollector"]

_Item = tuple[ResourceType, Obj]


def _ns(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace") or "")


def _owner_uids(obj: Obj) -> set[str]:
    return {str(r.get("uid")) for r in obj["metadata"].get("ownerReferences") or []}


def _finalizing(obj: Obj, finalizer: str) -> bool:
    meta = obj["metadata"]
    return bool(meta.get("deletionTimestamp")) and finalizer in (meta.get("finalizers") or [])


class GarbageCollector(Controller):
    """Deletes or orphans dependents of deleted owners (see the module docstring)."""

    name = "garbage-collector"

    def __init__(self, rest: Rest, *, log: Callable[[str], None] | None = None) -> None:
        super().__init__(rest, log=log)
        self._served: dict[str, ResourceType] = {}  # storage key -> type, in listing order
        self._order: dict[str, int] = {}  # storage key -> position in that order
        self._graph: dict[str, _Item] = {}  # uid -> (type, stored object)
        self._dependents: dict[str, set[str]] = {}  # owner uid -> dependents' uids
        self._dirty: set[str] = set()  # uids a pass must examine
        self._synced: int | None = None  # the resourceVersion the graph is current at

    def reconcile(self) -> None:
        self._catch_up()
        work = sorted((self._graph[uid] for uid in self._dirty if uid in self._graph),
                      key=self._sort_key)
        for rt, obj in work:
            uid = obj["metadata"]["uid"]
            if _finalizing(obj, ORPHAN_FINALIZER):
                self._orphan(rt, obj, self._dependents_of(uid))
            elif _finalizing(obj, FOREGROUND_FINALIZER):
                self._foreground(rt, obj, self._dependents_of(uid))
        for rt, obj in work:
            if obj["metadata"].get("ownerReferences"):
                self._check_owners(rt, obj)
        # Only once all went well: after an error the next pass examines all of it again.
        self._dirty.clear()

    # -- the graph -----------------------------------------------------------------------

    def _catch_up(self) -> None:
        served = {rt.key: rt for rt in self._types()}
        if self._synced is None or served.keys() != self._served.keys():
            self._resync(served)
        assert self._synced is not None
        try:
            events = self.rest.store.events_since(None, self._synced)
        except ApiError as e:
            if e.code != 410:
                raise
            self._resync(served)
            events = self.rest.store.events_since(None, self._synced)
        for event in events:
            self._apply(event)
        if events:
            self._synced = events[-1].rv

    def _resync(self, served: dict[str, ResourceType]) -> None:
        # Events after `rv` are applied on top: the graph ends at their latest state
        # even if some of them are already in what is read here.
        self._synced = self.rest.store.resource_version
        self._served = served
        self._order = {key: i for i, key in enumerate(served)}
        self._graph.clear()
        self._dependents.clear()
        for rt in served.values():
            for obj in self.rest.store.peek(rt.key):
                self._put(rt, obj)
        self._dirty = set(self._graph)

    def _apply(self, event: Event) -> None:
        rt = self._served.get(event.resource)
        if rt is None:
            return
        uid = str(event.object["metadata"]["uid"])
        before = self._graph.get(uid)
        if before is not None:
            self._dirty.update(_owner_uids(before[1]))
            self._unlink(uid, before[1])
            del self._graph[uid]
        if event.type != "DELETED":
            self._put(rt, event.object)
        # What this write may change: the object's own fate, its owners' (foreground,
        # orphan), its dependents' (their owner came or went).
        self._dirty.update(_owner_uids(event.object))
        self._dirty.add(uid)
        self._dirty.update(self._dependents.get(uid, ()))

    def _put(self, rt: ResourceType, obj: Obj) -> None:
        uid = str(obj["metadata"]["uid"])
        self._graph[uid] = (rt, obj)
        for owner in _owner_uids(obj):
            self._dependents.setdefault(owner, set()).add(uid)

    def _unlink(self, uid: str, obj: Obj) -> None:
        for owner in _owner_uids(obj):
            deps = self._dependents.get(owner)
            if deps is not None:
                deps.discard(uid)
                if not deps:
                    del self._dependents[owner]

    def _dependents_of(self, uid: str) -> list[_Item]:
        return sorted((self._graph[d] for d in self._dependents.get(uid, ())
                       if d in self._graph), key=self._sort_key)

    def _sort_key(self, item: _Item) -> tuple[int, str, str]:
        # The order of a full listing: by type, then namespace and name.
        rt, obj = item
        return self._order[rt.key], _ns(obj), str(obj["metadata"]["name"])

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

    def _check_owners(self, rt: ResourceType, obj: Obj) -> None:
        refs = obj["metadata"]["ownerReferences"]
        missing = {str(r.get("uid")) for r in refs if not self._owner_exists(obj, r)}
        if not missing:
            return
        if len(missing) < len({str(r.get("uid")) for r in refs}):
            self._drop_refs(rt, obj, missing)
        elif not obj["metadata"].get("deletionTimestamp"):
            self._log(f"{self.name}: deleting {rt.plural} {_ns(obj)}/"
                      f"{obj['metadata']['name']}: its owners are gone")
            self._delete(rt, obj, "Background")

    def _owner_exists(self, obj: Obj, ref: dict[str, Any]) -> bool:
        known = self._graph.get(str(ref.get("uid")))
        if known is not None:
            owner_rt, owner = known
            return not owner_rt.namespaced or _ns(owner) == _ns(obj)
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        try:
            owner_rt = self.rest.registry.by_kind(str(ref.get("kind")), group)
        except KeyError:
            return True  # a kind this cluster does not serve: never judged absent
        current = self.rest.store.peek_one(
            owner_rt.key, _ns(obj) if owner_rt.namespaced else "", str(ref.get("name")))
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
