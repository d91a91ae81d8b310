"""The node agents' timing on its own: their Event recorder (e2e/nodes/kubelet_events.py)
records as client-go's does, without waiting for the API server, in order, aggregating
repeats; a pull's simulated time holds the real transfer (image_manager.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from e2e.nodes import NodeConfig, kubelet_events
from e2e.nodes.api import Obj
from e2e.nodes.image_manager import ImageManager
from e2e.nodes.images import parse_image, preloaded
from e2e.nodes.kubelet_events import EventRecorder
from e2e.nodes.registry_pull import PullError

POD: Obj = {"metadata": {"namespace": "default", "name": "web", "uid": "u-1",
                         "resourceVersion": "7"}}


class SlowApi:
    """The Event calls a recorder makes, each held until ``answer`` is set."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.calls: list[tuple[str, Any]] = []
        self.entered = threading.Event()

    def create_event(self, event: Obj) -> None:
        self.entered.set()
        self.answer.wait(3)  # a synchronous recorder would be held this long
        self.calls.append(("create", event))

    def patch_event(self, namespace: str, name: str, patch: Obj) -> None:
        self.answer.wait(3)  # a synchronous recorder would be held this long
        self.calls.append(("patch", (name, patch)))


def _recorder(api: SlowApi, logged: list[str]) -> EventRecorder:
    return EventRecorder(api, "node-a", logged.append)  # type: ignore[arg-type]


def test_recording_does_not_wait_for_the_api_server() -> None:
    api, logged = SlowApi(), []
    recorder = _recorder(api, logged)
    started = time.monotonic()
    recorder.container(POD, "app", "Normal", "Pulling", 'Pulling image "x"')
    recorder.container(POD, "app", "Normal", "Pulled", "Successfully pulled")
    assert api.entered.wait(5)  # the writer is inside the first create, held
    assert time.monotonic() - started < 1.0 and api.calls == []
    api.answer.set()
    recorder.close()
    assert [(kind, e["reason"]) for kind, e in api.calls] == [
        ("create", "Pulling"), ("create", "Pulled")]
    first = api.calls[0][1]
    assert first["involvedObject"] == {
        "kind": "Pod", "namespace": "default", "name": "web", "uid": "u-1",
        "apiVersion": "v1", "resourceVersion": "7", "fieldPath": "spec.containers{app}"}
    assert first["source"] == {"component": "kubelet", "host": "node-a"} and not logged


def test_a_repeat_raises_the_count_of_the_first() -> None:
    api, logged = SlowApi(), []
    api.answer.set()
    recorder = _recorder(api, logged)
    for _ in range(3):
        recorder.container(POD, "app", "Warning", "Failed", "Error: ImagePullBackOff")
    recorder.close()
    kinds = [kind for kind, _ in api.calls]
    assert kinds == ["create", "patch", "patch"]
    name = api.calls[0][1]["metadata"]["name"]
    assert [(n, p["count"]) for _, (n, p) in api.calls[1:]] == [(name, 2), (name, 3)]


def test_a_full_queue_drops_and_a_hung_api_server_does_not_hold_a_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubelet_events, "_QUEUED", 2)
    api, logged = SlowApi(), []
    recorder = _recorder(api, logged)
    recorder.pod(POD, "Normal", "One", "1")
    assert api.entered.wait(5)  # taken off the queue, held in the API call
    for n in range(3):
        recorder.pod(POD, "Normal", f"Queued{n}", str(n))
    assert logged == ["kubelet-node-a: too many queued events, dropped Queued2 for web"]
    started = time.monotonic()
    recorder.close(timeout=0.5)
    assert time.monotonic() - started < 3.0
    api.answer.set()


# -- a pull's simulated time -------------------------------------------------------------


class TimedPuller:
    """A Puller whose pulls take ``seconds`` of real work (or fail after it)."""

    def __init__(self, seconds: float, fails: bool = False) -> None:
        self.seconds, self.fails = seconds, fails
        self.stopped = threading.Event()

    def pull(self, image: str, ref: Any, creds: Any) -> Any:
        time.sleep(self.seconds)
        if self.fails:
            raise PullError("manifest unknown")
        return preloaded(image, ref)


@pytest.mark.parametrize("fails", [False, True])
def test_a_pulls_simulated_time_holds_its_real_transfer(fails: bool) -> None:
    # 0.6 s simulated around 0.4 s of real transfer: 0.6 s in all, not 1.0.
    puller = TimedPuller(0.4, fails)
    config = NodeConfig(image_pull_seconds=0.6)
    manager = ImageManager(SlowApi(), puller, None, lambda: config)  # type: ignore[arg-type]
    image = "127.0.0.1:5000/app:1"
    started = time.monotonic()
    try:
        manager._fetch({**POD, "spec": {}}, image, parse_image(image), config)
    except PullError:
        assert fails
    took = time.monotonic() - started
    assert 0.6 <= took < 0.95, took
