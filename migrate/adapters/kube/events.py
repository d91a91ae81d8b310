"""Events: recording the tool's own, and following those the kubelet records."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from migrate.adapters.kube.client import Cluster, request_json, send
from migrate.adapters.kube.watches import watch_stream
from migrate.errors import MigrateError
from migrate.settings import RetrySettings

log = logging.getLogger(__name__)


class EventWatch:
    """The Events about one object, as the API server records them, on a thread of its own.

    ``on_event(event)`` hears each Event (ADDED or MODIFIED: a repeat raises its
    count), those recorded before the watch began first (``since``: a resourceVersion
    no Event of the object can precede, its create's: the watch starts there, without a
    list); ``on_idle()`` is called
    after each ``idle_seconds`` without one. It is a courtesy (progress for a human):
    errors end it silently. `stop` ends it at once, whatever it is waiting for.
    Requests go through a copy of the cluster; `requests` counts them.
    """

    def __init__(self, cluster: Cluster, namespace: str, uid: str,
                 on_event: Callable[[dict[str, Any]], None], on_idle: Callable[[], None],
                 idle_seconds: float = 15.0, since: str | None = None) -> None:
        import threading

        self._since = since
        self._cluster = dataclasses.replace(cluster, requests=0)
        self._where = {"namespace": namespace}
        self._selector = [("fieldSelector", f"involvedObject.uid={uid}")]
        self._on_event, self._on_idle, self._idle = on_event, on_idle, idle_seconds
        self._stopped = threading.Event()
        self._current: Any = None  # the streaming response being read
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)

    @property
    def requests(self) -> int:
        """API requests this watch sent."""
        return self._cluster.requests

    def start(self) -> EventWatch:
        """Begin watching; returns self."""
        self._thread.start()
        return self

    def stop(self, catch_up: bool = True) -> None:
        """Stop the thread now; ``catch_up``: first report, on the caller's thread, the
        Events recorded that its watch has not delivered yet (the two streams race: the
        pod can be seen ready before its "Started" arrives). Nothing is reported after
        this returns."""
        self._stopped.set()
        current = self._current
        if current is not None:
            with contextlib.suppress(Exception):
                current.response.shutdown()  # unblocks the read on the other thread
        if catch_up:
            once = dataclasses.replace(self._cluster.settings.retry, attempts=1)
            with contextlib.suppress(Exception):
                self._list(once, final=True)

    def _run(self) -> None:
        since = self._since
        once = dataclasses.replace(self._cluster.settings.retry, attempts=1)
        while not self._stopped.is_set():
            try:
                if since is None:
                    since = self._list(once)
                since = self.watch_object(since)
            except Exception:  # a courtesy: whatever went wrong, stop reporting
                return

    def _list(self, retry: RetrySettings, final: bool = False) -> str:
        listing = request_json(self._cluster, "list events", "GET", _EVENTS,
                               path_params=self._where, query=self._selector, _retry=retry)
        items = sorted(listing.get("items") or [],
                       key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        for event in items:
            if final:
                self._on_event(event)
            else:
                self._report(event)
        return str(listing["metadata"]["resourceVersion"])

    def watch_object(self, since: str) -> str | None:
        self._cluster.requests += 1
        query = [*self._selector, ("resourceVersion", since),
                 ("timeoutSeconds", str(max(1, int(self._idle)))), ("watch", "true")]
        self._current = send(self._cluster, "GET", _EVENTS, path_params=self._where,
                             query=query, request_timeout=self._idle + 5)
        quiet = True
        with contextlib.closing(watch_stream(self._current)) as events:
            for event in events:
                if event.get("type") == "ERROR":
                    return None  # expired: list again
                obj = event.get("object") or {}
                since = str((obj.get("metadata") or {}).get("resourceVersion") or since)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    quiet = False
                    self._report(obj)
        if quiet and not self._stopped.is_set():
            self._on_idle()
        return since

    def _report(self, event: dict[str, Any]) -> None:
        if not self._stopped.is_set():
            self._on_event(event)


_EVENTS = "/api/v1/namespaces/{namespace}/events"


def watch_events(cluster: Cluster, namespace: str, uid: str,
                 on_event: Callable[[dict[str, Any]], None], on_idle: Callable[[], None],
                 idle_seconds: float = 15.0, since: str | None = None) -> EventWatch:
    """Start an `EventWatch` on the object ``uid`` in ``namespace``; `EventWatch.stop` it."""
    return EventWatch(cluster, namespace, uid, on_event, on_idle, idle_seconds,
                      since).start()


def create_event(cluster: Cluster, pod: dict[str, Any], reason: str, message: str,
                 *, warning: bool = False) -> None:
    """Record a core/v1 Event on ``pod``; failing to is logged, never fatal."""
    meta = pod["metadata"]
    now = _rfc3339()
    body = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid", "")},
        "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
        "source": {"component": "migrate"}, "reportingComponent": "migrate",
        "reportingInstance": os.uname().nodename, "firstTimestamp": now, "lastTimestamp": now,
        "count": 1,
    }

    def send(target: Cluster) -> None:
        try:
            request_json(target, f"record event {reason}", "POST",
                         "/api/v1/namespaces/{namespace}/events",
                         path_params={"namespace": meta["namespace"]}, body=body)
        except MigrateError as e:
            log.warning("could not record event %s on pod %s: %s", reason, meta["name"],
                        e.message)

    if cluster.events is None:
        send(cluster)
        return
    # Counted now, for the caller's report; sent on a copy whose counter nobody reads,
    # so that no two threads add to one counter.
    cluster.requests += 1
    cluster.events.submit(lambda: send(dataclasses.replace(cluster, requests=0)))


def _rfc3339() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
