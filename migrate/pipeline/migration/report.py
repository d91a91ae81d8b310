"""The report of a migration (schemas/pod.schema.json): what `migrate pod`, `resume`
and a dry run print, from the journal and the stages' results."""

from __future__ import annotations

from typing import Any

from migrate.pipeline.journal import Journal
from migrate.pipeline.migration.results import (
    BuildResult,
    CheckpointResult,
    CreateResult,
    StageResult,
    SwitchoverResult,
    VerifyResult,
)
from migrate.pipeline.preflight import Plan


def report(journal: Journal, results: dict[str, StageResult],
           api_requests: int | None = None) -> dict[str, Any]:
    """What happened, and the two numbers an operator cares about.

    state_window: checkpoint taken -> source stopped (its kubelet reported the
    checkpointed containers terminated, or the pod went); what the source did in it
    is lost. unavailability: source stopped -> destination ready; zero when the
    destination was ready first (the usual case: the source stops only after
    the destination is verified).
    """
    checkpointed, built = results.get("checkpoint"), results.get("build")
    created, verified = results.get("create"), results.get("verify")
    switched = results.get("switchover")
    taken = checkpointed.taken_at if isinstance(checkpointed, CheckpointResult) else None
    ready = verified.ready_at if isinstance(verified, VerifyResult) else None
    stopped = switched.source_stopped_at if isinstance(switched, SwitchoverResult) else None
    images = built.images if isinstance(built, BuildResult) else {}
    out: dict[str, Any] = {
        "id": journal.id, "outcome": journal.outcome, "dry_run": False,
        "plan": journal.stage("preflight").data.get("plan"),
        "stages": [{"name": s.name, "status": s.status, "seconds": s.seconds,
                    **({"error": s.error} if s.error else {})} for s in journal.stages],
        "checkpoints": ({c: a.to_dict() for c, a in checkpointed.archives.items()}
                        if isinstance(checkpointed, CheckpointResult) else {}),
        # Where this machine read the archive is the journal's business (the cleanup);
        # an unknown rootfs image (a journal older than it) is left out, as it was.
        "images": {c: {k: v for k, v in i.to_dict().items()
                       if k != "local_archive" and not (k == "rootfs_image" and not v)}
                   for c, i in images.items()},
        "destination_pod": created.pod if isinstance(created, CreateResult) else None,
        "state_window_seconds": round(stopped - taken, 3) if stopped and taken else None,
        "unavailability_seconds": (round(max(0.0, ready - stopped), 3)
                                   if stopped and ready else None),
        "actions": journal.actions,
    }
    if isinstance(created, CreateResult) and created.base_images:
        out["base_images"] = dict(created.base_images)
    if api_requests is not None:
        out["api_requests"] = api_requests
    return out


def planned(stages: list[str], plan: Plan, seconds: float, requests: int) -> dict[str, Any]:
    """A dry run in the report's shape: preflight done, nothing else, no journal."""
    return {"id": None, "outcome": "planned", "dry_run": True, "plan": plan.to_dict(),
            "stages": [{"name": s, "status": "done" if s == "preflight" else "pending",
                        "seconds": round(seconds, 6) if s == "preflight" else None}
                       for s in stages],
            "checkpoints": {}, "images": {}, "destination_pod": None,
            "state_window_seconds": None, "unavailability_seconds": None,
            "api_requests": requests, "actions": []}
