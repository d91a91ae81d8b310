"""The simulator's etcd: objects, one global resourceVersion, and a watchable history.

Objects are plain JSON dicts keyed by (resource, namespace, name); `resource`
is the storage key of a resource type ("pods", later "deployments.apps").
Every write bumps one cluster-wide counter, as etcd's revision does, and is
recorded as an `Event` that watchers read from the history (bounded: a watch
from a resourceVersion older than the history fails with 410 Expired, which is
what clients must cope with on a real cluster too).

Thread safety: one re-entrant lock guards every write and every read of
more than one object (peek_one and resource_version need none: a single
lookup is atomic). It is held as briefly as possible: the copies handed out
are made after releasing it. Watchers and
controllers sleep on a Condition of their own (over that lock), registered
for the resources they wait for, so that a write wakes only those waiting for
its resource (or for any). Stored dicts are never
mutated in place (writes replace them), so events can share them; callers get
deep copies, except from `peek` and `peek_one`: those hand out the stored
dicts themselves, for the simulator's own readers (controllers) that must
never mutate them, and save copying every object on every pass.

Indexes (`add_index`) map a value computed from each object of a resource
(e.g. a pod's node) to the objects with it, kept up to date by every write,
so that `peek` can select from a few objects instead of all.
"""

from __future__ import annotations

import bisect
import builtins
import copy
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from e2e.sim.errors import already_exists, expired, not_found
from e2e.sim.meta import now, rfc3339

__all__ = ["Event", "IndexFunc", "Obj", "Store"]

Obj = dict[str, Any]
_Key = tuple[str, str]
#: What an index maps an object to: the values it is found under.
IndexFunc = Callable[[Obj], Iterable[str]]

#: How long a blocked wait sleeps before re-checking for close(): bounds shutdown latency.
_WAKE_INTERVAL = 0.5


@dataclass(frozen=True)
class Event:
    """One write: `type` is ADDED, MODIFIED or DELETED; `old` is the previous state."""

    type: str
    resource: str
    rv: int
    object: Obj
    old: Obj | None


def _namespace(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("namespace") or "")


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _without_rv(obj: Obj) -> Obj:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return out


class Store:
    """Thread-safe object storage with resourceVersions and a watchable event history.

    history: how many events are kept for watches that resume from a resourceVersion.
    """

    def __init__(self, history: int = 10_000) -> None:
        self._lock = threading.RLock()
        # resource (None: any) -> the Conditions of the waits for its writes
        self._waiters: dict[str | None, set[threading.Condition]] = {}
        self._last_write: dict[str, int] = {}  # resource -> rv of its latest write
        self._objects: dict[str, dict[_Key, Obj]] = {}
        self._rv = 0
        self._events: list[Event] = []
        self._event_rvs: list[int] = []
        self._history = history
        # Events with rv <= this were dropped from the history.
        self._compacted = 0
        self._closed = False
        # resource -> index name -> (its function, value -> keys of the objects with it)
        self._indexes: dict[str, dict[str, tuple[IndexFunc, dict[str, set[_Key]]]]] = {}

    # -- reading -------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion (0 before the first write)."""
        return self._rv  # one attribute read: atomic, needs no lock

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, resource: str, namespace: str, name: str, *, group: str = "") -> Obj:
        """A copy of one object; ApiError 404 if absent."""
        obj = self.peek_one(resource, namespace, name)
        if obj is None:
            raise not_found(resource.split(".")[0], name, group)
        return copy.deepcopy(obj)  # outside the lock: stored objects never change

    def find(self, resource: str, namespace: str, name: str) -> Obj | None:
        """A copy of one object, or None."""
        obj = self.peek_one(resource, namespace, name)
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> tuple[list[Obj], int]:
        """Copies of the objects (of `namespace`, or all), in key order, and the list's rv."""
        objects, rv = self.snapshot(resource, namespace, predicate)
        return [copy.deepcopy(obj) for obj in objects], rv

    def peek(
        self,
        resource: str,
        namespace: str | None = None,
        predicate: Callable[[Obj], bool] | None = None,
        *,
        index: tuple[str, str] | None = None,
    ) -> builtins.list[Obj]:
        """The stored objects themselves (callers must not mutate them), in key order.

        namespace: only that namespace's (None: all). index: (index name, value):
        only the objects that index maps to that value (see add_index).
        """
        with self._lock:
            objects = self._objects.get(resource, {})
            if index is not None:
                keys: Iterable[_Key] = self._indexes[resource][index[0]][1].get(index[1], ())
            else:
                keys = objects.keys()
            return [objects[key] for key in sorted(
                k for k in keys if namespace is None or k[0] == namespace)
                if predicate is None or predicate(objects[key])]

    def snapshot(
        self,
        resource: str,
        namespace: str | None = None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> tuple[builtins.list[Obj], int]:
        """peek() and the resourceVersion it is current at: what a list answer is
        serialized from (callers must not mutate the objects)."""
        with self._lock:
            return self.peek(resource, namespace, predicate), self._rv

    def peek_one(self, resource: str, namespace: str, name: str) -> Obj | None:
        """One stored object itself (callers must not mutate it), or None."""
        # Without the lock: dict lookups are atomic, and a write stores a finished object
        # with one assignment, so this sees the object before or after any write.
        return self._objects.get(resource, {}).get((namespace, name))

    def add_index(self, resource: str, name: str, values: IndexFunc) -> None:
        """Index `resource`'s objects by `values(obj)`, for peek(index=(name, value)).

        Adding an index under a name that already has one changes nothing.
        """
        with self._lock:
            indexes = self._indexes.setdefault(resource, {})
            if name in indexes:
                return
            table: dict[str, set[_Key]] = {}
            for key, obj in self._objects.get(resource, {}).items():
                for value in values(obj):
                    table.setdefault(value, set()).add(key)
            indexes[name] = (values, table)

    def _reindex(self, resource: str, key: _Key, old: Obj | None, new: Obj | None) -> None:
        for values, table in self._indexes.get(resource, {}).values():
            for value in values(old) if old is not None else ():
                keys = table.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del table[value]
            for value in values(new) if new is not None else ():
                table.setdefault(value, set()).add(key)

    # -- writing -------------------------------------------------------------------

    def create(self, resource: str, obj: Obj, *, group: str = "") -> Obj:
        """Store a new object: assigns uid, creationTimestamp and resourceVersion.

        ApiError 409 AlreadyExists if the name is taken.
        """
        stored = copy.deepcopy(obj)
        key = (_namespace(obj), _name(obj))
        with self._lock:
            objects = self._objects.setdefault(resource, {})
            if key in objects:
                raise already_exists(resource.split(".")[0], key[1], group)
            meta = stored["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", rfc3339(now()))
            written = self._write("ADDED", resource, key, stored, None)
        return copy.deepcopy(written)

    def update(
        self,
        resource: str,
        namespace: str,
        name: str,
        mutate: Callable[[Obj], Obj | None],
        *,
        remove_if: Callable[[Obj], bool] | None = None,
        group: str = "",
    ) -> Obj:
        """Atomically read-modify-write one object.

        `mutate` gets a private copy and returns the new state (None: leave it).
        A result equal to the stored object is not a write (no new
        resourceVersion, no event), as on the real API server. A new state for
        which `remove_if` holds (deleted, nothing holding it) is removed instead:
        DELETED carries that last state.
        ApiError 404 if absent; errors raised by `mutate` propagate.
        """
        with self._lock:
            objects = self._objects.get(resource, {})
            key = (namespace, name)
            old = objects.get(key)
            if old is None:
                raise not_found(resource.split(".")[0], name, group)
            new = mutate(copy.deepcopy(old))
            if new is None or _without_rv(new) == _without_rv(old):
                written = old
            elif remove_if is not None and remove_if(new):
                written = self._remove(resource, key, new)
            else:
                written = self._write("MODIFIED", resource, key, copy.deepcopy(new), old)
        return copy.deepcopy(written)

    def remove(self, resource: str, namespace: str, name: str, *, group: str = "") -> Obj:
        """Delete one object now (DELETED event); returns its last state. 404 if absent."""
        with self._lock:
            key = (namespace, name)
            obj = self._objects.get(resource, {}).get(key)
            if obj is None:
                raise not_found(resource.split(".")[0], name, group)
            written = self._remove(resource, key, obj)
        return copy.deepcopy(written)

    # _remove and _write return the stored (event's) object itself: callers copy it
    # once they have released the lock.
    def _remove(self, resource: str, key: _Key, last: Obj) -> Obj:
        old = self._objects[resource].pop(key)
        return self._write("DELETED", resource, key, copy.deepcopy(last), old, store=False)

    def _write(
        self, type_: str, resource: str, key: _Key, obj: Obj, old: Obj | None, *, store: bool = True
    ) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if store:
            self._objects.setdefault(resource, {})[key] = obj
        self._reindex(resource, key, old, obj if store else None)
        self._events.append(Event(type_, resource, self._rv, obj, old))
        self._event_rvs.append(self._rv)
        if len(self._events) > self._history:
            drop = len(self._events) - self._history
            self._compacted = self._event_rvs[drop - 1]
            del self._events[:drop]
            del self._event_rvs[:drop]
        self._last_write[resource] = self._rv
        for waiting in (resource, None):
            for waiter in self._waiters.get(waiting, set()):
                waiter.notify()
        return obj

    # -- waiting and watching --------------------------------------------------------

    def wait(
        self, since: int, timeout: float | None, stopped: Callable[[], bool] | None = None,
        resources: Collection[str] | None = None,
    ) -> int:
        """Block until a write after `since` (of one of `resources`; None: of any), the
        timeout, `stopped()` (checked when poke()d and every half second) or close();
        returns the latest resourceVersion."""
        deadline = None if timeout is None else time.monotonic() + timeout
        keys: Collection[str | None] = (None,) if resources is None else resources
        with self._lock:
            waiter = threading.Condition(self._lock)
            for key in keys:
                self._waiters.setdefault(key, set()).add(waiter)
            try:
                while self._latest(resources) <= since and not self._closed \
                        and not (stopped and stopped()):
                    left = _WAKE_INTERVAL if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        break
                    waiter.wait(min(left, _WAKE_INTERVAL))
            finally:
                for key in keys:
                    self._waiters[key].discard(waiter)
            return self._rv

    def _latest(self, resources: Collection[str] | None) -> int:
        if resources is None:
            return self._rv
        return max((self._last_write.get(r, 0) for r in resources), default=0)

    def poke(self) -> None:
        """Wake every waiter (e.g. a controller being stopped)."""
        with self._lock:
            self._notify_all()

    def _notify_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.notify()

    def events_since(self, resource: str | None, since: int) -> builtins.list[Event]:
        """History events of `resource` (None: of all) with rv > `since`; ApiError 410 if
        compacted away."""
        with self._lock:
            if since < self._compacted:
                raise expired(f"too old resource version: {since} ({self._compacted + 1})")
            start = bisect.bisect_right(self._event_rvs, since)
            return [e for e in self._events[start:] if resource is None or e.resource == resource]

    def watch(
        self, resource: str, since: int, *, deadline: float, stopped: Callable[[], bool]
    ) -> Iterator[Event]:
        """Events of `resource` after `since`, as they happen, until the monotonic
        `deadline`, `stopped()` or close(). The first events may be replayed history."""
        last = since
        while not self._closed and not stopped():
            batch = self.events_since(resource, last)
            if batch:
                yield from batch
                last = batch[-1].rv
                continue
            with self._lock:
                # Skip other resources' writes, so `since` never falls out of the history.
                last = max(last, self._rv) if not self.events_since(resource, last) else last
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wait(last, min(left, _WAKE_INTERVAL), resources=(resource,))

    def close(self) -> None:
        """End every watch and wait: the server is going away."""
        with self._lock:
            self._closed = True
            self._notify_all()
