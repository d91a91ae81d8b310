"""Evict one pod of the drain through the Eviction API, as kubectl drain does.

The API server applies the pod's disruption budget: a 429 means "not now",
and the drain asks again after a pause (the server's Retry-After when it
gives one, else growing up to a few seconds) until the pod's deadline. An
accepted eviction is followed until the pod is gone, so that "evicted"
means the node no longer runs it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from migrate.adapters import kube
from migrate.errors import MigrateError
from migrate.pipeline import switchover
from migrate.pipeline.drain.budgets import FIRST_PAUSE, MAX_PAUSE, BudgetTimeout, Interrupted
from migrate.pipeline.drain.plan import PodPlan
from migrate.pipeline.drain.state import EVICTED, FAILED, GONE, INTERRUPTED, Context


def _evict(ctx: Context, cluster: kube.Cluster, entry: PodPlan, deadline: float) -> int:
    """Ask until the eviction is accepted or the pod is gone; returns the refusals met."""
    pause, refusals = FIRST_PAUSE, 0
    while True:
        answer = kube.evict_pod(cluster, entry.namespace, entry.name, uid=entry.uid)
        if answer.outcome != kube.REFUSED:
            if answer.outcome == kube.EVICTED:
                remaining = max(1.0, deadline - time.monotonic())
                switchover.wait_gone(cluster, entry.namespace, entry.name, entry.uid,
                                     remaining)
                return refusals
            raise _AlreadyGone
        refusals += 1
        if refusals == 1:
            ctx.waiting(entry)(f"eviction refused: {answer.message}")
        wait = answer.retry_after if answer.retry_after is not None else pause
        if time.monotonic() + wait > deadline:
            raise BudgetTimeout(f"eviction refused until the deadline: {answer.message}",
                                hint="raise --timeout, or wait for the workload to have "
                                "replicas to spare, then resume the drain")
        if ctx.stop.wait(wait):
            raise Interrupted
        pause = min(pause * 2, MAX_PAUSE)


class _AlreadyGone(Exception):
    """The pod was gone before its eviction."""


def evict_pod(ctx: Context, entry: PodPlan, deadline: float) -> dict[str, Any]:
    """Evict one pod; the result's fields."""
    cluster = dataclasses.replace(ctx.cluster, requests=0)  # a counter per thread
    out: dict[str, Any] = {"budget_wait_seconds": 0.0}
    try:
        out["budget_wait_seconds"] = ctx.budgets.wait(cluster, entry.namespace, entry.budgets,
                                                      deadline, hold=False,
                                                      waiting=ctx.waiting(entry))
        ctx.progress(entry.key, "evicting")
        out["eviction_refusals"] = _evict(ctx, cluster, entry, deadline)
        out.update(outcome=EVICTED, error=None)
    except _AlreadyGone:
        out.update(outcome=GONE, error=None)
    except Interrupted:
        out.update(outcome=INTERRUPTED)
    except MigrateError as e:
        out.update(outcome=FAILED, error=e.message)
    out["api_requests"] = cluster.requests
    return out
