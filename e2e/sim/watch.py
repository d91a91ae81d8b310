"""Watches: `?watch=true` answered as a stream of JSON lines, one event each.

    {"type": "ADDED" | "MODIFIED" | "DELETED" | "ERROR", "object": {...}}

Without a resourceVersion (or with "0") the stream starts with a synthetic
ADDED per existing object, then follows changes; with one, it replays the
store's history after it. A watch from a version older than that history gets
a single ERROR event carrying a 410 Expired Status, which is what clients
re-list on. Selectors are applied to each change as the API server does: an
object leaving the selection is DELETED for the watcher, one entering it is
ADDED. A watch ends at timeoutSeconds, when the client hangs up, or when the
store closes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from e2e.nodes.protocol import Request, Response, table_version
from e2e.sim.errors import ApiError, bad_request
from e2e.sim.resources import ResourceType
from e2e.sim.rest import Rest
from e2e.sim.store import Event, Obj
from e2e.sim.tables import render_table

__all__ = ["DEFAULT_WATCH_SECONDS", "translate", "watch_response"]

#: A watch without timeoutSeconds ends after this long (the API server picks
#: 30-60 minutes at random; clients must re-watch either way).
DEFAULT_WATCH_SECONDS = 1800


def watch_response(
    rest: Rest, req: Request, rt: ResourceType, namespace: str | None, name: str | None
) -> Response:
    """The streaming response to a watch of `rt` (in `namespace`, or all; one `name`)."""
    selected = rest.matcher(rt, req.param("labelSelector"), req.param("fieldSelector"))

    def match(obj: Obj) -> bool:
        # GET .../pods/NAME?watch=true (or /watch/.../NAME) watches one object.
        return selected(obj) and (name is None or obj["metadata"]["name"] == name)

    timeout = req.int_param("timeoutSeconds") or DEFAULT_WATCH_SECONDS
    since_param = req.param("resourceVersion")
    initial: list[Obj] = []
    if since_param in (None, "", "0"):
        # "Start at most recent": synthetic ADDED events for the current state.
        initial, since = rest.snapshot(rt, namespace, match)  # only serialized
    else:
        try:
            since = int(since_param)
        except ValueError:
            raise bad_request(f"invalid resourceVersion {since_param!r}") from None
    table = table_version(req.headers.get("Accept", ""))
    encode = _encoder(req, rt, table)
    deadline = time.monotonic() + timeout
    stream = _stream(rest, req, rt, namespace, match, initial, since, deadline, encode)
    content_type = f"application/json;as=Table;v={table.split('/')[1]};g=meta.k8s.io" \
        if table else "application/json"
    return Response(200, content_type=content_type, stream=stream)


def _encoder(req: Request, rt: ResourceType, table: str | None) -> Callable[[str, Any], bytes]:
    include = req.param("includeObject") or "Metadata"

    def encode(type_: str, obj: Any) -> bytes:
        if table and type_ != "ERROR":
            # kubectl get -w: each event carries a one-row Table.
            obj = render_table(rt.table, [obj], resource_version=obj["metadata"].get(
                "resourceVersion", ""), include_object=include, api_version=table)
        return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"

    return encode


def _stream(
    rest: Rest, req: Request, rt: ResourceType, namespace: str | None,
    match: Callable[[Obj], bool], initial: list[Obj], since: int, deadline: float,
    encode: Callable[[str, Any], bytes],
) -> Iterator[bytes]:
    for obj in initial:
        yield encode("ADDED", obj)
    try:
        events = rest.store.watch(rt.key, since, deadline=deadline, stopped=req.connection_closed)
        for event in events:
            translated = translate(event, namespace, match)
            if translated is not None:
                yield encode(*translated)
    except ApiError as e:
        # A watch that cannot start (410 Expired) still answers 200: the
        # error travels as an ERROR event.
        yield encode("ERROR", e.status())


def translate(
    event: Event, namespace: str | None, match: Callable[[Obj], bool]
) -> tuple[str, Obj] | None:
    """The event a filtered watcher sees: objects moving out of the selection
    are DELETED for it, objects moving in are ADDED, as on the real API server."""
    obj = event.object
    if namespace is not None and obj["metadata"].get("namespace") != namespace:
        return None
    now_in = match(obj)
    if event.type == "DELETED":
        return ("DELETED", obj) if now_in or (event.old and match(event.old)) else None
    was_in = event.old is not None and match(event.old)
    if event.type == "ADDED" or not was_in:
        return ("ADDED", obj) if now_in else None
    return ("MODIFIED", obj) if now_in else ("DELETED", obj)

