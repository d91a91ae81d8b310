"""The background sender of best-effort requests (Events): off the caller's thread,
flushed before a command reports, never losing a job silently."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from migrate.adapters import kube
from migrate.adapters.background import BackgroundSender
from migrate.settings import KubeSettings


def test_jobs_run_off_the_callers_thread_and_flush_waits_for_them() -> None:
    sender = BackgroundSender(workers=2)
    release, ran = threading.Event(), []

    def job(i: int) -> None:
        release.wait(5)
        ran.append((i, threading.current_thread().name))

    for i in range(5):
        sender.submit(lambda i=i: job(i))  # type: ignore[misc]
    assert ran == []  # queued, not run inline
    release.set()
    assert sender.flush(5) == 0
    assert sorted(i for i, _ in ran) == [0, 1, 2, 3, 4]
    assert {name for _, name in ran} <= {"migrate-events-0", "migrate-events-1"}


def test_flush_is_bounded_and_says_what_is_left() -> None:
    sender = BackgroundSender(workers=1)
    release = threading.Event()

    def blocked() -> None:
        release.wait(5)

    for _ in range(3):
        sender.submit(blocked)
    assert sender.flush(0.05) == 3  # one running, two queued: none finished
    release.set()
    assert sender.flush(5) == 0


def test_a_failing_job_is_logged_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    sender = BackgroundSender(workers=1)
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("bug")

    sender.submit(boom)
    sender.submit(lambda: ran.append(1))
    with caplog.at_level(logging.WARNING):
        assert sender.flush(5) == 0
    assert ran == [1]
    assert "background request failed" in caplog.text


def test_a_full_queue_runs_the_job_inline() -> None:
    # Back-pressure, not loss: the caller pays for the job itself.
    sender = BackgroundSender(workers=1, capacity=1)
    release, where = threading.Event(), []

    def blocked() -> None:
        release.wait(5)

    sender.submit(blocked)  # taken by the worker, blocks it
    while sender._queue.qsize():  # wait until the worker holds it
        threading.Event().wait(0.01)
    sender.submit(lambda: where.append(threading.current_thread().name))  # fills the queue
    sender.submit(lambda: where.append(threading.current_thread().name))  # runs here
    assert where == [threading.current_thread().name]
    release.set()
    assert sender.flush(5) == 0
    assert where[1] == "migrate-events-0"


def _cluster(background: bool) -> kube.Cluster:
    return kube.Cluster(api=None, namespace="default", settings=KubeSettings(),
                        events=BackgroundSender() if background else None)


@pytest.mark.parametrize("background", [False, True])
def test_an_event_is_counted_for_its_caller_and_sent_by_close(
        monkeypatch: pytest.MonkeyPatch, background: bool) -> None:
    sent: list[dict[str, Any]] = []
    gate = threading.Event()
    if not background:
        gate.set()

    def request_json(cluster: kube.Cluster, what: str, method: str, path: str,
                     **kw: Any) -> dict[str, Any]:
        gate.wait(5)
        cluster.requests += 1
        sent.append({"what": what, "path": path, **kw["body"]})
        return {}

    monkeypatch.setattr(kube.events, "request_json", request_json)
    cluster = _cluster(background)
    pod = {"metadata": {"name": "web", "namespace": "shop", "uid": "u-1"}}
    kube.create_event(cluster, pod, "Checkpointed", "checkpointed web")
    assert cluster.requests == 1  # the caller's report counts it either way
    assert len(sent) == (0 if background else 1)
    gate.set()
    kube.close(cluster)
    assert cluster.requests == 1  # the copy it was sent on counted the send, not this one
    (event,) = sent
    assert (event["path"], event["reason"], event["involvedObject"]["uid"]) == (
        "/api/v1/namespaces/{namespace}/events", "Checkpointed", "u-1")


def test_close_warns_about_events_it_could_not_send(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    monkeypatch.setattr(kube.events, "request_json", lambda *a, **kw: gate.wait(5) and {})
    cluster = _cluster(True)
    kube.create_event(cluster, {"metadata": {"name": "web", "namespace": "shop"}}, "R", "m")
    with caplog.at_level(logging.WARNING):
        kube.close(cluster, timeout=0.05)
    gate.set()
    assert "1 event(s) not recorded after 0.05 s" in caplog.text
