"""Events a kubelet records about a pod's containers (core/v1 Event, source kubelet).

Repeats are aggregated as client-go's recorder does (its EventCorrelator): an
Event with the same object, field path, type, reason and message gets its
`count` raised and its `lastTimestamp` moved instead of a new object
(`kubectl describe` shows "(x3 over 20s)"). The recorder remembers the Events
it made, as client-go's does (in memory, per recorder); one that has gone
meanwhile (expired, or its namespace deleted) is made afresh.

Recording does not wait for the API server, as in client-go (tools/record,
v0.37.2): the recorder queues the Event (at most 1000, later ones dropped) and
one writer thread per node sends them in order, so a pod's start or stop never
waits for its Events' writes. Their timestamps are those of the recording.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable

from e2e.nodes.api import Gone, NodeApi, Obj, now, rfc3339

__all__ = ["EventRecorder"]

_serial = itertools.count()
#: How many aggregated Events a recorder remembers (client-go keeps 4096).
_REMEMBERED = 4096
#: How many Events wait for the writer before new ones are dropped (client-go's
#: maxQueuedEvents, its broadcaster's DropIfChannelFull).
_QUEUED = 1000
_Key = tuple[str, str, str, str, str]
_Queued = tuple[Obj, _Key, str]  # the pod, the Event's key, when it was recorded


class EventRecorder:
    """Records Events for pods on one node."""

    def __init__(self, api: NodeApi, node: str, log: Callable[[str], None]) -> None:
        self.api = api
        self.node = node
        self._log = log
        # key -> (Event name, count); only the writer thread reads or changes it.
        self._seen: dict[_Key, tuple[str, int]] = {}
        self._queue: queue.Queue[_Queued | None] = queue.Queue(_QUEUED)
        self._writer = threading.Thread(target=self._write_all, name=f"sim-events-{node}",
                                        daemon=True)
        self._writer.start()

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, then stop the writer; what is left after ``timeout``
        seconds (an API server that stopped answering) is dropped, as a stopping
        kubelet's queued Events are."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._writer.join(timeout)

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
        key = (str(meta["uid"]), field_path, type_, reason, message)
        involved = {"metadata": {k: meta.get(k, "") for k in
                                 ("namespace", "name", "uid", "resourceVersion")}}
        try:
            self._queue.put_nowait((involved, key, rfc3339(now())))
        except queue.Full:
            self._log(f"kubelet-{self.node}: too many queued events, dropped {reason} for "
                      f"{meta['name']}")

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            pod, key, stamp = item
            try:
                if not self._bump(pod["metadata"]["namespace"], key, stamp):
                    self._create(pod, key, stamp)
            except Exception as e:  # e.g. ApiFailure: the namespace is terminating
                self._log(f"kubelet-{self.node}: event {key[3]} for "
                          f"{pod['metadata']['name']} not recorded: {type(e).__name__}: {e}")

    def _bump(self, namespace: str, key: _Key, stamp: str) -> bool:
        seen = self._seen.get(key)
        if seen is None:
            return False
        name, count = seen[0], seen[1] + 1
        self._seen[key] = (name, count)
        try:
            self.api.patch_event(namespace, name, {"count": count, "lastTimestamp": stamp})
        except Gone:
            self._seen.pop(key, None)
            return False
        return True

    def _create(self, pod: Obj, key: _Key, stamp: str) -> None:
        meta = pod["metadata"]
        _, field_path, type_, reason, message = key
        # The recorder's name: the object's, then the time in hex nanoseconds.
        name = f"{meta['name']}.{time.time_ns() + next(_serial):x}"
        self.api.create_event({
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
        if len(self._seen) >= _REMEMBERED:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = (name, 1)
