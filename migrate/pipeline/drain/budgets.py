"""PodDisruptionBudgets, with the drain's own migrations counted against them.

The API server enforces a budget on evictions (a 429 says "not now"). A
migration ends by removing its source pod, which the API server does not
see as an eviction, so the drain keeps its own count: a migration starts
only when every budget covering the pod allows a disruption beyond the
migrations of that budget already in flight, and holds its share until it
ends. Evictions wait the same way before asking, so they do not take a
disruption a running migration counted on. Waiting re-reads the budgets
(their status moves as pods come and go) with a growing pause, until the
pod's deadline.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from migrate.adapters import kube
from migrate.errors import ClusterError
from migrate.pipeline.selectors import selects

Obj = dict[str, Any]
FIRST_PAUSE, MAX_PAUSE = 0.2, 2.0  # seconds between two looks at a budget


class BudgetTimeout(ClusterError):
    """A disruption budget allowed no disruption until the pod's deadline."""


class Interrupted(Exception):
    """The drain is stopping (Ctrl-C, or a pod's run was interrupted)."""


def covering(pod: Obj, budgets: list[Obj]) -> list[str]:
    """Names of the budgets in the pod's namespace that select it."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    return sorted(b["metadata"]["name"] for b in budgets
                  if b["metadata"].get("namespace") == meta.get("namespace")
                  and selects((b.get("spec") or {}).get("selector"), labels))


def allowed(budget: Obj) -> int:
    """``status.disruptionsAllowed`` (0 until the controller has looked at it)."""
    return int((budget.get("status") or {}).get("disruptionsAllowed") or 0)


class Budgets:
    """The drain's view of disruption budgets, shared by its workers."""

    def __init__(self, stop: threading.Event) -> None:
        self._lock = threading.Lock()
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self.stop = stop

    def _short(self, cluster: kube.Cluster, namespace: str, names: list[str]) -> list[str]:
        """The budgets among ``names`` with no disruption to spare (the lock is held)."""
        live = {b["metadata"]["name"]: b for b in kube.list_pdbs(cluster, namespace)}
        return [f"{n} allows {allowed(live[n])} disruption(s), "
                f"{self._in_flight[(namespace, n)]} taken by migrations in flight"
                for n in names if n in live
                and allowed(live[n]) - self._in_flight[(namespace, n)] <= 0]

    def wait(self, cluster: kube.Cluster, namespace: str, names: list[str],
             deadline: float, *, hold: bool,
             waiting: Callable[[str], None] = lambda why: None) -> float:
        """Wait until every budget in ``names`` allows a disruption; returns the seconds
        waited. ``hold``: count one more migration in flight against each (`release`
        gives it back). ``waiting(why)`` is called once if it has to wait.
        `BudgetTimeout` at ``deadline``, `Interrupted` on stop."""
        started, pause = time.monotonic(), FIRST_PAUSE
        while True:
            with self._lock:
                short = self._short(cluster, namespace, names) if names else []
                if not short:
                    if hold:
                        self._in_flight.update((namespace, n) for n in names)
                    return round(time.monotonic() - started, 3)
            if pause == FIRST_PAUSE:
                waiting(f"disruption budget {namespace}/{short[0]}")
            if time.monotonic() + pause > deadline:
                raise BudgetTimeout(f"disruption budget {namespace}/{short[0]}, until the "
                                    "deadline", hint="raise --timeout, or wait for the "
                                    "workload to have replicas to spare, then resume")
            if self.stop.wait(pause):
                raise Interrupted
            pause = min(pause * 2, MAX_PAUSE)

    def release(self, namespace: str, names: list[str]) -> None:
        """A migration counted by `wait(hold=True)` has ended."""
        with self._lock:
            self._in_flight.subtract((namespace, n) for n in names)
