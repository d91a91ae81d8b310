"""The simulator's etcd: objects, one global resourceVersion, and a watchable history.

Objects are plain JSON dicts keyed by (resource, namespace, name); `resource`
is the storage key of a resource type ("pods", later "deployments.apps").
Every write bumps one cluster-wide counter, as etcd's revision does, and is
recorded as an `Event` that watchers read from the history (bounded: a watch
from a resourceVersion older than the history fails with 410 Expired, which is
what clients must cope with on a real cluster too).

Thread safety: one re-entrant lock guards everything, with a Condition so
watchers and controllers sleep until something changes. Stored dicts are never
mutated in place (writes replace them), so events can share them; callers get
deep copies.
"""

from __future__ import annotations

import bisect
import builtins
import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from e2e.sim.errors import already_exists, expired, not_found
from e2e.sim.meta import now, rfc3339

__all__ = ["Event", "Obj", "Store"]

Obj = dict[str, Any]
_Key = tuple[str, str]

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
        self._changed = threading.Condition(self._lock)
        self._objects: dict[str, dict[_Key, Obj]] = {}
        self._rv = 0
        self._events: list[Event] = []
        self._event_rvs: list[int] = []
        self._history = history
        # Events with rv <= this were dropped from the history.
        self._compacted = 0
        self._closed = False

    # -- reading -------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion (0 before the first write)."""
        with self._lock:
            return self._rv

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, resource: str, namespace: str, name: str, *, group: str = "") -> Obj:
        """A copy of one object; ApiError 404 if absent."""
        with self._lock:
            obj = self._objects.get(resource, {}).get((namespace, name))
            if obj is None:
                raise not_found(resource.split(".")[0], name, group)
            return copy.deepcopy(obj)

    def find(self, resource: str, namespace: str, name: str) -> Obj | None:
        """A copy of one object, or None."""
        with self._lock:
            obj = self._objects.get(resource, {}).get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> tuple[list[Obj], int]:
        """Copies of the objects (of `namespace`, or all), in key order, and the list's rv."""
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for key, obj in sorted(self._objects.get(resource, {}).items())
                if (namespace is None or key[0] == namespace)
                and (predicate is None or predicate(obj))
            ]
            return items, self._rv

    # -- writing -------------------------------------------------------------------

    def create(self, resource: str, obj: Obj, *, group: str = "") -> Obj:
        """Store a new object: assigns uid, creationTimestamp and resourceVersion.

        ApiError 409 AlreadyExists if the name is taken.
        """
        with self._lock:
            objects = self._objects.setdefault(resource, {})
            key = (_namespace(obj), _name(obj))
            if key in objects:
                raise already_exists(resource.split(".")[0], key[1], group)
            stored = copy.deepcopy(obj)
            meta = stored["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", rfc3339(now()))
            return self._write("ADDED", resource, key, stored, None)

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
                return copy.deepcopy(old)
            if remove_if is not None and remove_if(new):
                return self._remove(resource, key, new)
            return self._write("MODIFIED", resource, key, copy.deepcopy(new), old)

    def remove(self, resource: str, namespace: str, name: str, *, group: str = "") -> Obj:
        """Delete one object now (DELETED event); returns its last state. 404 if absent."""
        with self._lock:
            key = (namespace, name)
            obj = self._objects.get(resource, {}).get(key)
            if obj is None:
                raise not_found(resource.split(".")[0], name, group)
            return self._remove(resource, key, obj)

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
        self._events.append(Event(type_, resource, self._rv, obj, old))
        self._event_rvs.append(self._rv)
        if len(self._events) > self._history:
            drop = len(self._events) - self._history
            self._compacted = self._event_rvs[drop - 1]
            del self._events[:drop]
            del self._event_rvs[:drop]
        self._changed.notify_all()
        return copy.deepcopy(obj)

    # -- waiting and watching --------------------------------------------------------

    def wait(
        self, since: int, timeout: float | None, stopped: Callable[[], bool] | None = None
    ) -> int:
        """Block until the resourceVersion passes `since`, the timeout, `stopped()`
        (checked when poke()d and every half second) or close()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._rv <= since and not self._closed and not (stopped and stopped()):
                left = _WAKE_INTERVAL if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, _WAKE_INTERVAL))
            return self._rv

    def poke(self) -> None:
        """Wake every waiter (e.g. a controller being stopped)."""
        with self._lock:
            self._changed.notify_all()

    def events_since(self, resource: str, since: int) -> builtins.list[Event]:
        """History events of `resource` with rv > `since`; ApiError 410 if compacted away."""
        with self._lock:
            if since < self._compacted:
                raise expired(f"too old resource version: {since} ({self._compacted + 1})")
            start = bisect.bisect_right(self._event_rvs, since)
            return [e for e in self._events[start:] if e.resource == resource]

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
            self.wait(last, min(left, _WAKE_INTERVAL))

    def close(self) -> None:
        """End every watch and wait: the server is going away."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
