"""The drain's journal, shared by its workers, and what every worker needs.

The journal (journal.Journal, kind "drain") holds the request, the plan
(stage "plan": every pod, its action, reason and destination) and, per pod,
the result (stage "drain"): outcome, the `migrate pod` journals it ran,
attempts, times, errors. Workers update it from several threads, so every
change goes through one lock (a Journal is not thread-safe: its saves share
one temporary file name).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.adapters import kube
from migrate.pipeline.drain.budgets import Budgets
from migrate.pipeline.drain.plan import DrainRequest, PodPlan
from migrate.pipeline.journal import Journal, drain_directory
from migrate.settings import Settings

STAGES = ["cordon", "plan", "drain"]
Progress = Callable[[str, str], None]  # (subject, message)

# Per-pod outcomes.
PENDING, MIGRATED, EVICTED, GONE, SKIPPED = "pending", "migrated", "evicted", "gone", "skipped"
BLOCKED, FAILED, INTERRUPTED = "blocked", "failed", "interrupted"
#: Outcomes that need no more work: a resume leaves these pods alone.
FINAL = frozenset({MIGRATED, EVICTED, GONE, SKIPPED, BLOCKED})
#: Outcomes that count as done for the exit code.
SUCCESSFUL = frozenset({MIGRATED, EVICTED, GONE, SKIPPED})


def journal_dir(settings: Settings) -> Path:
    """Where drain journals live: beside, not among, the `migrate pod` journals."""
    return drain_directory(settings.state_dir)


class DrainState:
    """Thread-safe access to one drain's journal."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._lock = threading.Lock()

    @property
    def request(self) -> DrainRequest:
        """The drain's request."""
        return DrainRequest.from_dict(self.journal.request)

    def plan(self) -> list[PodPlan]:
        """The planned pods, in plan order."""
        return [PodPlan.from_dict(p) for p in self.journal.stage("plan").data.get("pods", [])]

    def _results(self) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = self.journal.stage("drain").data.setdefault(
            "pods", {})
        return data

    def result(self, key: str) -> dict[str, Any]:
        """A copy of one pod's result so far (``outcome`` pending if none)."""
        with self._lock:
            return copy.deepcopy(self._results().get(key, {"outcome": PENDING}))

    def update(self, key: str, **fields: Any) -> None:
        """Change a pod's result and save."""
        with self._lock:
            self._results().setdefault(key, {"outcome": PENDING}).update(fields)
            self.journal.save()

    def record(self, action: str, **detail: Any) -> None:
        """Log an action in the journal."""
        with self._lock:
            self.journal.record(action, **detail)

    def add_requests(self, count: int) -> None:
        """Count API requests the drain itself sent (cordon, plan)."""
        with self._lock:
            data = self.journal.stage("drain").data
            data["api_requests"] = int(data.get("api_requests", 0)) + count
            self.journal.save()


@dataclass
class Context:
    """What every worker of one drain shares."""

    cluster: kube.Cluster
    settings: Settings
    state: DrainState
    budgets: Budgets
    stop: threading.Event
    progress: Progress

    def waiting(self, entry: PodPlan) -> Callable[[str], None]:
        """What a worker calls when ``entry`` has to wait: said and journaled."""
        def waiting(why: str) -> None:
            self.progress(entry.key, f"waiting: {why}")
            self.state.record("waiting", pod=entry.key, reason=why)
        return waiting

    @property
    def req(self) -> DrainRequest:
        """The drain's request."""
        return self.state.request
