"""The adapter's own watch (kube.watch_pod, kube._events) against a scripted API client.

What the simulator does not easily provoke: an expired resourceVersion (an
ERROR event), a connection dropped mid-line, and the streamed connection being
closed whether the watch ends early or not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from migrate.adapters import kube
from migrate.errors import AuthError
from migrate.settings import KubeSettings, RetrySettings


class FakeStream:
    """urllib3's streamed response: chunks as given; records that it was closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = self.released = False

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self.chunks

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True


class FakeResponse:
    """The client's RESTResponse."""

    def __init__(self, data: bytes = b"", chunks: list[bytes] | None = None,
                 status: int = 200) -> None:
        self.status, self.reason, self.data = status, "", data
        self.response = FakeStream(chunks or [])
        self.headers: dict[str, str] = {}

    def read(self) -> bytes:
        return self.data


class FakeApi:
    """ApiClient's param_serialize/call_api: answers scripted in order, requests kept."""

    def __init__(self, answers: list[FakeResponse]) -> None:
        self.answers = answers
        self.sent: list[str] = []

    def param_serialize(self, method: str, path: str, path_params: dict[str, str] | None = None,
                        query_params: list[tuple[str, str]] | None = None,
                        **_: Any) -> tuple[Any, ...]:
        for key, value in (path_params or {}).items():
            path = path.replace("{" + key + "}", value)
        query = "&".join(f"{k}={v}" for k, v in query_params or [])
        return method, path + (f"?{query}" if query else ""), {}, None, None

    def call_api(self, method: str, url: str, *_: Any, **__: Any) -> FakeResponse:
        self.sent.append(f"{method} {url}")
        return self.answers.pop(0)


def listing(version: str, *pods: dict[str, Any]) -> FakeResponse:
    return FakeResponse(json.dumps({"metadata": {"resourceVersion": version},
                                    "items": list(pods)}).encode())


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def pod(phase: str) -> dict[str, Any]:
    return {"metadata": {"name": "web", "uid": "u1"}, "status": {"phase": phase}}


def cluster(api: FakeApi) -> kube.Cluster:
    retry = RetrySettings(attempts=1, initial_wait=0, max_wait=0)
    return kube.Cluster(api=api, namespace="default", settings=KubeSettings(retry=retry))


def running(p: dict[str, Any] | None) -> str | None:
    return "gone" if p is None else ("up" if p["status"]["phase"] == "Running" else None)


def test_events_split_across_chunks_and_the_connection_is_closed() -> None:
    line = event("MODIFIED", pod("Running"))
    watch = FakeResponse(chunks=[event("ADDED", pod("Pending")) + line[:7], line[7:]])
    api = FakeApi([listing("5", pod("Pending")), watch])
    c = cluster(api)
    assert kube.watch_pod(c, "default", "web", running, timeout=5) == "up"
    assert api.sent[1].startswith("GET /api/v1/namespaces/default/pods?fieldSelector="
                                  "metadata.name=web&resourceVersion=5&timeoutSeconds=")
    assert api.sent[1].endswith("&watch=true")
    assert watch.response.closed and watch.response.released  # ended early: closed
    assert c.requests == 2


def test_an_error_event_lists_again() -> None:
    expired = {"kind": "Status", "code": 410, "reason": "Expired"}
    first = FakeResponse(chunks=[event("ERROR", expired)])
    api = FakeApi([listing("5", pod("Pending")), first, listing("9", pod("Running"))])
    assert kube.watch_pod(cluster(api), "default", "web", running, timeout=5) == "up"
    assert [s.split("?")[0] for s in api.sent] == ["GET /api/v1/namespaces/default/pods"] * 3
    assert first.response.closed


def test_a_line_cut_short_ends_the_stream_and_lists_again() -> None:
    cut = FakeResponse(chunks=[event("MODIFIED", pod("Pending"))[:20]])
    api = FakeApi([listing("5", pod("Pending")), cut, listing("7")])
    assert kube.watch_pod(cluster(api), "default", "web", running, timeout=5) == "gone"
    assert cut.response.closed


def test_deleted_means_gone_and_a_refused_watch_is_an_error() -> None:
    api = FakeApi([listing("5", pod("Running")),
                   FakeResponse(chunks=[event("DELETED", pod("Running"))])])
    assert kube.watch_pod(cluster(api), "default", "web", lambda p: p is None or None,
                          timeout=5) is True
    forbidden = FakeResponse(json.dumps({"kind": "Status", "message": "no watching"}).encode(),
                             status=403)
    api = FakeApi([listing("5", pod("Pending")), forbidden])
    with pytest.raises(AuthError, match="watch pod default/web: no watching"):
        kube.watch_pod(cluster(api), "default", "web", running, timeout=5)


def test_a_known_resource_version_starts_the_watch_without_a_list() -> None:
    # A create answered it: every later change of the pod is an event after it.
    api = FakeApi([FakeResponse(chunks=[event("MODIFIED", pod("Running"))])])
    c = cluster(api)
    assert kube.watch_pod(c, "default", "web", running, timeout=5, since="41") == "up"
    (sent,) = api.sent
    assert "&resourceVersion=41&" in sent and sent.endswith("&watch=true")
    assert c.requests == 1


@pytest.mark.parametrize("status", [200, 410])
def test_a_known_resource_version_too_old_lists_after_all(status: int) -> None:
    # A resumed run's create answered long ago: the server says 410, in an ERROR
    # event (what the API server does) or as the response's status.
    expired = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    refused = (FakeResponse(chunks=[event("ERROR", expired)]) if status == 200 else
               FakeResponse(json.dumps(expired).encode(), status=410))
    api = FakeApi([refused, listing("90", pod("Running"))])
    assert kube.watch_pod(cluster(api), "default", "web", running, timeout=5,
                          since="3") == "up"
    assert "resourceVersion=3" in api.sent[0] and "watch=true" not in api.sent[1]
