"""Events a kubelet records about a pod's containers (core/v1 Event, source kubelet).

Repeats are aggregated as client-go's recorder does: an Event with the same
object, field path, type, reason and message gets its `count` raised and its
`lastTimestamp` moved instead of a new object (`kubectl describe` shows
"(x3 over 20s)").
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from e2e.sim.core import EVENTS
from e2e.sim.errors import ApiError
from e2e.sim.meta import now, rfc3339
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["EventRecorder"]

_serial = itertools.count()
#: The store's index of Events by the uid of the object they are about.
INVOLVED_INDEX = "involvedObject.uid"


def _involved_uid(event: Obj) -> list[str]:
    uid = (event.get("involvedObject") or {}).get("uid")
    return [str(uid)] if uid else []


class EventRecorder:
    """Records Events for pods on one node."""

    def __init__(self, rest: Rest, node: str, log: Callable[[str], None]) -> None:
        self.rest = rest
        self.node = node
        self._log = log
        rest.store.add_index(EVENTS.key, INVOLVED_INDEX, _involved_uid)

    def container(self, pod: Obj, container: str, type_: str, reason: str,
                  message: str) -> None:
        """An Event about one container of `pod` (fieldPath spec.containers{NAME})."""
        self._record(pod, f"spec.containers{{{container}}}", type_, reason, message)

    def pod(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        """An Event about `pod` as a whole."""
        self._record(pod, "", type_, reason, message)

    def _record(self, pod: Obj, field_path: str, type_: str, reason: str,
                message: str) -> None:
        meta = pod["metadata"]
        try:
            if not self._bump(meta, field_path, type_, reason, message):
                self._create(pod, field_path, type_, reason, message)
        except ApiError as e:  # e.g. the namespace is terminating
            self._log(f"kubelet-{self.node}: event {reason} for {meta['name']} not "
                      f"recorded: {e}")

    def _bump(self, meta: Obj, field_path: str, type_: str, reason: str, message: str) -> bool:
        def same(ev: Obj) -> bool:
            involved = ev.get("involvedObject") or {}
            return (involved.get("uid") == meta["uid"]
                    and involved.get("fieldPath", "") == field_path
                    and ev.get("type") == type_ and ev.get("reason") == reason
                    and ev.get("message") == message
                    and (ev.get("source") or {}).get("host") == self.node)

        found = self.rest.store.peek(EVENTS.key, meta["namespace"], same,
                                     index=(INVOLVED_INDEX, str(meta["uid"])))
        if not found:
            return False
        stamp = rfc3339(now())

        def bump(current: Obj) -> Obj:
            current["count"] = int(current.get("count") or 1) + 1
            current["lastTimestamp"] = stamp
            return current

        self.rest.mutate(EVENTS, meta["namespace"], found[0]["metadata"]["name"], bump)
        return True

    def _create(self, pod: Obj, field_path: str, type_: str, reason: str,
                message: str) -> None:
        meta, stamp = pod["metadata"], rfc3339(now())
        # The recorder's name: the object's, then the time in hex nanoseconds.
        name = f"{meta['name']}.{time.time_ns() + next(_serial):x}"
        self.rest.create(EVENTS, meta["namespace"], {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "namespace": meta["namespace"],
                               "name": meta["name"], "uid": meta["uid"], "apiVersion": "v1",
                               "resourceVersion": meta.get("resourceVersion", ""),
                               **({"fieldPath": field_path} if field_path else {})},
            "reason": reason, "message": message,
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1, "type": type_,
            "reportingComponent": "kubelet", "reportingInstance": self.node,
        })
