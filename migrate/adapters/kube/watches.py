"""Watching one object until a condition holds: a list, then events, resumed on expiry."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Generator
from typing import Any

from migrate.adapters.kube.client import Cluster, T, request_json, send, translate
from migrate.errors import TransientClusterError, WatchTimeout


def watch_object(cluster: Cluster, collection: str, what: str, namespace: str, name: str,
           until: Callable[[dict[str, Any] | None], T | None], timeout: float,
           since: str | None = None) -> T:
    """Watch one object of ``collection`` until ``until(obj)`` returns something.

    A watch, not a polling loop: one list for the starting resourceVersion
    (or ``since``, when the caller knows one), then events; an expired
    resourceVersion (410) or a dropped connection starts over from a fresh
    list. `ClusterError` after ``timeout`` seconds.
    """
    import time

    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    selector = [("fieldSelector", f"metadata.name={name}")]
    where = {"namespace": namespace}
    deadline = time.monotonic() + timeout
    while True:
        if since is None:
            listing = request_json(cluster, f"list {what}", "GET", collection,
                                   path_params=where, query=selector)
            items = listing.get("items") or []
            found = until(items[0] if items else None)
            if found is not None:
                return found
            since = str(listing["metadata"]["resourceVersion"])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        cluster.requests += 1
        query = [*selector, ("resourceVersion", since),
                 ("timeoutSeconds", str(max(1, int(remaining)))), ("watch", "true")]
        try:
            resp = send(cluster, "GET", collection, path_params=where, query=query,
                        request_timeout=remaining + 5)
            with contextlib.closing(watch_stream(resp)) as events:
                for event in events:
                    if event.get("type") == "ERROR":
                        break  # 410 Gone and friends: list again
                    found = until(None if event["type"] == "DELETED" else event["object"])
                    if found is not None:
                        return found
                    if time.monotonic() > deadline:
                        break
        except (ApiException, HTTPError, OSError) as e:
            err = translate(e, f"watch {what}")
            expired = isinstance(e, ApiException) and e.status == 410
            if not (expired or isinstance(err, TransientClusterError)):
                raise err from e
        since = None  # the stream ended: the next round lists again
        if time.monotonic() > deadline:
            break
    raise WatchTimeout(f"{what}: timed out after {timeout:g} s",
                       hint="raise --timeout, or look at its events (kubectl describe)")


def watch_stream(resp: Any) -> Generator[dict[str, Any], None, None]:
    """The watch events of a streamed response, one JSON object per line. A line
    that is not JSON (cut short by a dropped connection) ends the stream, as the
    drop would. The connection is closed at the end: a watch cut short cannot be
    reused."""
    raw = resp.response  # urllib3's, unread
    pending = b""
    try:
        for chunk in raw.stream(amt=None, decode_content=False):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        event: dict[str, Any] = json.loads(line)
                    except ValueError:
                        return
                    yield event
    finally:
        raw.close()
        raw.release_conn()
