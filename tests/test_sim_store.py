"""The simulator's store (e2e/sim/store.py): the read-only `peek` accessors, indexes, and
the garbage collector that reads the store incrementally (e2e/sim/gc.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from e2e.sim.controllers import Controller
from e2e.sim.core import CONFIGMAPS, core_registry
from e2e.sim.errors import ApiError
from e2e.sim.gc import GarbageCollector
from e2e.sim.rest import Rest
from e2e.sim.store import Obj, Store


def _cm(name: str, ns: str = "default", **meta: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, **meta}, "data": {"k": name}}


def _colour(obj: Obj) -> list[str]:
    colour = obj["metadata"].get("labels", {}).get("colour")
    return [colour] if colour else []


def _names(objs: list[Obj]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_peek_hands_out_the_stored_objects_in_key_order() -> None:
    store = Store()
    for ns, name in (("b", "x"), ("a", "z"), ("a", "y")):
        store.create("configmaps", _cm(name, ns))
    first = store.peek("configmaps")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in first] == [
        ("a", "y"), ("a", "z"), ("b", "x")]
    assert all(a is b for a, b in zip(first, store.peek("configmaps"), strict=True))
    assert store.peek_one("configmaps", "a", "y") is first[0]
    assert store.peek_one("configmaps", "a", "nope") is None
    assert _names(store.peek("configmaps", "a", lambda o: o["metadata"]["name"] == "z")) == ["z"]
    snap, rv = store.snapshot("configmaps", "a")
    assert snap == first[:2] and snap[0] is first[0] and rv == store.resource_version == 3
    # list() and find() still copy.
    listed, _ = store.list("configmaps")
    assert listed == first and listed[0] is not first[0]
    assert store.find("configmaps", "a", "y") is not first[0]


def test_a_write_replaces_what_peek_handed_out() -> None:
    # The contract peek relies on: stored dicts are never changed in place.
    store = Store()
    store.create("configmaps", _cm("x"))
    before = store.peek_one("configmaps", "default", "x")
    assert before is not None
    snapshot = {**before, "data": dict(before["data"])}

    def change(obj: Obj) -> Obj:
        obj["data"]["k"] = "changed"
        return obj

    store.update("configmaps", "default", "x", change)
    assert before == snapshot
    after = store.peek_one("configmaps", "default", "x")
    assert after is not None and after["data"]["k"] == "changed"


def test_an_index_follows_every_write() -> None:
    store = Store()
    store.create("configmaps", _cm("old", labels={"colour": "red"}))
    store.add_index("configmaps", "colour", _colour)  # objects already there are indexed
    store.add_index("configmaps", "colour", lambda o: ["ignored"])  # the first one stays
    store.create("configmaps", _cm("new", labels={"colour": "red"}))
    store.create("configmaps", _cm("plain"))
    assert _names(store.peek("configmaps", index=("colour", "red"))) == ["new", "old"]

    def paint(obj: Obj) -> Obj:
        obj["metadata"]["labels"]["colour"] = "blue"
        return obj

    store.update("configmaps", "default", "old", paint)
    assert _names(store.peek("configmaps", index=("colour", "red"))) == ["new"]
    assert _names(store.peek("configmaps", index=("colour", "blue"))) == ["old"]
    store.remove("configmaps", "default", "new")
    assert store.peek("configmaps", index=("colour", "red")) == []
    assert store.peek("configmaps", index=("colour", "ignored")) == []
    assert _names(store.peek("configmaps", "other", index=("colour", "blue"))) == []


def test_events_since_all_resources() -> None:
    store = Store()
    store.create("configmaps", _cm("x"))
    store.create("secrets", {"metadata": {"name": "s", "namespace": "default"}})
    assert [e.resource for e in store.events_since(None, 0)] == ["configmaps", "secrets"]
    assert [e.resource for e in store.events_since("secrets", 0)] == ["secrets"]


# -- the garbage collector's graph ---------------------------------------------------------


class CountingGC(GarbageCollector):
    """Counts the objects each pass looks at for missing owners."""

    checked: list[str]

    def _check_owners(self, rt: Any, obj: Obj) -> None:
        self.checked.append(obj["metadata"]["name"])
        super()._check_owners(rt, obj)


def _cluster(history: int = 10_000) -> tuple[Rest, CountingGC]:
    rest = Rest(Store(history=history), core_registry())
    rest.store.create("namespaces", {"metadata": {"name": "default"}})
    gc = CountingGC(rest)
    gc.checked = []
    return rest, gc


def _owned_by(owner: Obj, name: str) -> Obj:
    return _cm(name, ownerReferences=[{"apiVersion": "v1", "kind": "ConfigMap",
                                       "name": owner["metadata"]["name"],
                                       "uid": owner["metadata"]["uid"]}])


def test_gc_examines_only_what_changed() -> None:
    rest, gc = _cluster()
    owner = rest.create(CONFIGMAPS, "default", _cm("owner"))
    rest.create(CONFIGMAPS, "default", _owned_by(owner, "dep"))
    other = rest.create(CONFIGMAPS, "default", _cm("other-owner"))
    rest.create(CONFIGMAPS, "default", _owned_by(other, "other-dep"))
    gc.reconcile()
    assert sorted(gc.checked) == ["dep", "other-dep"]  # the first pass: everything
    gc.checked.clear()
    rest.create(CONFIGMAPS, "default", _cm("unrelated"))
    gc.reconcile()
    assert gc.checked == []
    rest.delete(CONFIGMAPS, "default", "owner")
    gc.reconcile()
    assert gc.checked == ["dep"]  # the owner's dependents, not the other ones
    assert rest.store.peek_one("configmaps", "default", "dep") is None
    assert rest.store.peek_one("configmaps", "default", "other-dep") is not None


def test_gc_rebuilds_its_graph_when_it_falls_out_of_the_history() -> None:
    rest, gc = _cluster(history=3)
    owner = rest.create(CONFIGMAPS, "default", _cm("owner"))
    rest.create(CONFIGMAPS, "default", _owned_by(owner, "dep"))
    gc.reconcile()
    rest.delete(CONFIGMAPS, "default", "owner")
    for i in range(5):  # the deletion leaves the history
        rest.create(CONFIGMAPS, "default", _cm(f"filler-{i}"))
    with pytest.raises(Exception, match="too old"):
        rest.store.events_since(None, 3)
    gc.reconcile()
    assert rest.store.peek_one("configmaps", "default", "dep") is None


def test_gc_examines_again_after_a_failed_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    rest, gc = _cluster()
    owner = rest.create(CONFIGMAPS, "default", _cm("owner"))
    rest.create(CONFIGMAPS, "default", _owned_by(owner, "dep"))
    gc.reconcile()
    rest.delete(CONFIGMAPS, "default", "owner")
    real_delete = rest.delete

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the API server is down")

    monkeypatch.setattr(rest, "delete", failing)
    with pytest.raises(RuntimeError):
        gc.reconcile()
    monkeypatch.setattr(rest, "delete", real_delete)
    gc.reconcile()  # nothing was written meanwhile: still examined
    assert rest.store.peek_one("configmaps", "default", "dep") is None


# -- waiting for writes of some resources ----------------------------------------------------


def test_a_wait_for_some_resources_sleeps_through_other_writes() -> None:
    store = Store()
    checks: list[int] = []
    woke: list[int] = []

    def stopped() -> bool:  # evaluated once per wake-up of the waiter
        checks.append(1)
        return False

    def waiter() -> None:
        woke.append(store.wait(0, None, stopped, resources=("configmaps",)))

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 10
    while not checks and time.monotonic() < deadline:
        time.sleep(0.01)  # until it waits
    for i in range(50):
        store.create("secrets", {"metadata": {"name": f"s{i}", "namespace": "default"}})
    assert not woke
    store.create("configmaps", _cm("x"))
    thread.join(10)
    assert woke == [51]
    # One check per wake-up: not one per secret (at most a few half-second timers).
    assert len(checks) < 10


def test_a_controller_waits_for_its_resources_and_after_an_error_for_any() -> None:
    class Picky(Controller):
        resources = ("configmaps",)
        fail = False

        def reconcile(self) -> None:
            if self.fail:
                raise ApiError(500, "InternalError", "boom")

    rest = Rest(Store(), core_registry())
    picky = Picky(rest)
    waits: list[Any] = []

    def recording_wait(since: int, timeout: float | None, stopped: Any = None,
                       resources: Any = None) -> int:
        waits.append(resources)
        if len(waits) == 2:
            picky._stop.set()
        picky.fail = True
        return since

    rest.store.wait = recording_wait  # type: ignore[method-assign]
    picky._run()
    assert waits == [("configmaps",), None]
