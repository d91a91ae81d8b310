"""What a drain did, per pod (schemas/drain.schema.json), and its dry-run form."""

from __future__ import annotations

from typing import Any

from migrate.pipeline.drain.plan import DrainRequest, PodPlan
from migrate.pipeline.drain.state import PENDING, SUCCESSFUL, DrainState
from migrate.pipeline.journal import Journal

_RESULT_KEYS = ("outcome", "error", "hint", "restored_pod", "journals", "attempts",
                "budget_wait_seconds", "eviction_refusals", "started_at", "ended_at",
                "seconds", "api_requests")


def _pod(entry: PodPlan, result: dict[str, Any]) -> dict[str, Any]:
    out = entry.to_dict()
    defaults: dict[str, Any] = {"outcome": PENDING, "journals": [], "attempts": 0,
                                "api_requests": 0}
    out.update({k: result.get(k, defaults.get(k)) for k in _RESULT_KEYS})
    return out


def counts(pods: list[dict[str, Any]], key: str) -> dict[str, int]:
    """How many pods have each value of ``key``."""
    out: dict[str, int] = {}
    for p in pods:
        out[p[key]] = out.get(p[key], 0) + 1
    return out


def report(journal: Journal) -> dict[str, Any]:
    """The drain's report from its journal."""
    state = DrainState(journal)
    pods = [_pod(e, state.result(e.key)) for e in state.plan()]
    drain = journal.stage("drain")
    return {
        "id": journal.id, "node": journal.request["node"], "dry_run": False,
        "outcome": journal.outcome,
        "cordoned": journal.done("cordon"),
        "pods": pods,
        "summary": counts(pods, "outcome"),
        "failed": [p["namespace"] + "/" + p["name"] for p in pods
                   if p["outcome"] not in SUCCESSFUL],
        "seconds": drain.seconds,
        "api_requests": int(drain.data.get("api_requests", 0))
        + sum(int(p["api_requests"] or 0) for p in pods),
    }


def dry_run(req: DrainRequest, entries: list[PodPlan]) -> dict[str, Any]:
    """The plan of a `--dry-run`, in the report's shape (nothing ran: outcome planned)."""
    pods = [{**e.to_dict(), **{k: None for k in _RESULT_KEYS}, "outcome": "planned",
             "journals": [], "attempts": 0, "api_requests": 0} for e in entries]
    return {"id": None, "node": req.node, "dry_run": True, "outcome": "planned",
            "cordoned": False, "pods": pods, "summary": counts(pods, "action"),
            "failed": [], "seconds": None, "api_requests": None}
