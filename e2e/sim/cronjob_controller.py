"""The CronJob controller (cronjob/cronjob_controllerv2.go, 1.30), on a clock tests can set.

Each pass over a CronJob:

1. its Jobs (controller reference to it) update status: a finished Job in
   `status.active` leaves it (Event SawCompletedJob), a succeeded one moves
   `lastSuccessfulTime`, an unfinished one the controller did not start
   (`kubectl create job --from=cronjob/NAME`) is noted (Event UnexpectedJob)
   but not adopted into `active`, a Job gone from the API leaves it (MissingJob);
2. unless it is being deleted, suspended or its schedule or time zone is bad
   (Events UnparseableSchedule, UnknownTimeZone): the most recent scheduled
   time after `lastScheduleTime` (else the creation time, or
   now - startingDeadlineSeconds if later) and not after now is due, once:
   too late for startingDeadlineSeconds -> Event MissSchedule; concurrencyPolicy
   Forbid with Jobs active -> skipped (JobAlreadyActive); Replace -> the active
   Jobs are deleted first; then the Job `<cronjob>-<scheduled time in Unix
   minutes>` is created from `jobTemplate` (its labels and annotations, plus
   `batch.kubernetes.io/cronjob-scheduled-timestamp`), added to `active`, and
   `lastScheduleTime` set. Only the most recent missed time runs, never a backlog;
3. finished Jobs beyond successfulJobsHistoryLimit / failedJobsHistoryLimit
   are deleted, oldest start first (Event SuccessfulDelete).

Times come from a `CronClock`: the wall clock, until a test sets it
(`Simulator.advance_cron(to=...)`), after which it stays where it was put;
`lastScheduleTime` and the Job names follow it, the objects' own timestamps
(creation, Job start) stay on the wall clock. A schedule without a zone runs
in UTC (the simulated controller manager's local time).
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

from e2e.sim.batch import JOBS
from e2e.sim.controllers import Controller
from e2e.sim.core import EVENTS
from e2e.sim.cron import (
    MISSED_TOO_MANY,
    CronClock,
    Schedule,
    load_zone,
    most_recent,
    parse_schedule,
)
from e2e.sim.cronjob import CRONJOBS, SCHEDULED_TIMESTAMP
from e2e.sim.errors import ApiError
from e2e.sim.meta import now, parse_time, rfc3339
from e2e.sim.owners import controller_ref, owner_reference
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["CronJobController"]

_SOURCE = "cronjob-controller"


def _finished(job: Obj) -> str | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return str(c["type"])
    return None


def _stamp(t: dt.datetime, zone: dt.tzinfo) -> str:
    """Go's RFC 3339 of `t` in `zone`: `Z` for UTC, else the offset."""
    local = t.astimezone(zone)
    return rfc3339(t) if local.utcoffset() == dt.timedelta(0) else local.isoformat()


def _start_key(job: Obj) -> tuple[int, str, str]:
    # byJobStartTime: Jobs not started yet sort last, names break ties.
    start = (job.get("status") or {}).get("startTime")
    return (0 if start else 1, str(start or ""), job["metadata"]["name"])


class CronJobController(Controller):
    """Starts every CronJob's Jobs on schedule (see the module docstring)."""

    name = "cronjob-controller"
    resources = (CRONJOBS.key, JOBS.key)

    def __init__(self, rest: Rest, clock: CronClock, *,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(rest, log=log)
        self.clock = clock
        self._wakeup: float | None = None
        self._said: set[tuple[str, str, str]] = set()  # Events already recorded, once each
        self._passes = threading.Condition()
        self._started = self._finished = 0

    # -- passes a test can wait for ------------------------------------------------------

    def run_pass(self, timeout: float = 10.0) -> None:
        """Wake the loop and wait until a pass that started after this call has ended."""
        with self._passes:
            want = self._started + 1
        self.wake()
        with self._passes:
            if not self._passes.wait_for(lambda: self._finished >= want, timeout):
                raise TimeoutError(f"{self.name}: no pass within {timeout} s")

    def next_wakeup(self) -> float | None:
        return self._wakeup

    def reconcile(self) -> None:
        with self._passes:
            self._started += 1
        try:
            self._reconcile()
        finally:
            with self._passes:
                self._finished += 1
                self._passes.notify_all()

    def _reconcile(self) -> None:
        self._wakeup = None
        # The stored objects themselves (Store.peek): nothing here mutates them.
        jobs = self.rest.store.peek(JOBS.key)
        for cronjob in self.rest.store.peek(CRONJOBS.key):
            uid = cronjob["metadata"]["uid"]
            mine = [j for j in jobs if j["metadata"]["namespace"] == cronjob["metadata"][
                "namespace"] and (controller_ref(j) or {}).get("uid") == uid]
            self._sync(cronjob, mine)

    # -- one CronJob ---------------------------------------------------------------------

    def _sync(self, cronjob: Obj, jobs: list[Obj]) -> None:
        status: dict[str, Any] = copy.deepcopy(cronjob.get("status") or {})
        self._observe(cronjob, status, jobs)
        if not cronjob["metadata"].get("deletionTimestamp"):
            schedule = self._schedule(cronjob)
            if schedule is not None and not cronjob["spec"].get("suspend"):
                self._start_due(cronjob, status, schedule)
                self._plan_wakeup(schedule)
            self._clean_up(cronjob, status, jobs)
        if status != (cronjob.get("status") or {}):
            self._write(cronjob, status)

    def _observe(self, cronjob: Obj, status: dict[str, Any], jobs: list[Obj]) -> None:
        active: list[dict[str, Any]] = list(status.get("active") or [])
        listed = {a.get("uid") for a in active}
        for job in jobs:
            meta, outcome = job["metadata"], _finished(job)
            if outcome is None and meta["uid"] not in listed:
                self._event(cronjob, "Warning", "UnexpectedJob",
                            f"Saw a job that the controller did not create or forgot: "
                            f"{meta['name']}")
            elif outcome is not None:
                if meta["uid"] in listed:
                    active = [a for a in active if a.get("uid") != meta["uid"]]
                    self._event(cronjob, "Normal", "SawCompletedJob",
                                f"Saw completed job: {meta['name']}, condition: {outcome}")
                done = (job.get("status") or {}).get("completionTime")
                last = status.get("lastSuccessfulTime")
                if outcome == "Complete" and done and (
                        not last or parse_time(done) > parse_time(last)):
                    status["lastSuccessfulTime"] = done
        uids = {j["metadata"]["uid"] for j in jobs}
        for ref in [a for a in active if a.get("uid") not in uids]:
            if self.rest.store.find(JOBS.key, ref.get("namespace", ""), ref.get("name", "")):
                continue
            self._event(cronjob, "Normal", "MissingJob", f"Active job went missing: "
                        f"{ref.get('name')}")
            active.remove(ref)
        _set_active(status, active)

    def _schedule(self, cronjob: Obj) -> Schedule | None:
        spec = cronjob["spec"]
        try:
            load_zone(spec.get("timeZone"))
        except ValueError as e:
            self._event(cronjob, "Warning", "UnknownTimeZone",
                        f"invalid timeZone: {spec.get('timeZone')!r}: {e}")
            return None
        try:
            return parse_schedule(str(spec.get("schedule", "")), spec.get("timeZone"))
        except ValueError as e:
            self._event(cronjob, "Warning", "UnparseableSchedule",
                        f"unparseable schedule: {spec.get('schedule')!r} : {e}")
            return None

    def _start_due(self, cronjob: Obj, status: dict[str, Any], schedule: Schedule) -> None:
        spec, current = cronjob["spec"], self.clock.now()
        earliest = parse_time(status.get("lastScheduleTime") or
                              cronjob["metadata"]["creationTimestamp"])
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None:
            earliest = max(earliest, current - dt.timedelta(seconds=int(deadline)))
        due, missed = most_recent(schedule, earliest, current)
        if due is None:
            return
        if missed > MISSED_TOO_MANY:
            self._event(cronjob, "Warning", "TooManyMissedTimes", "too many missed start "
                        "times. Set or decrease .spec.startingDeadlineSeconds or check clock "
                        "skew")
        name = f"{cronjob['metadata']['name']}-{int(due.timestamp()) // 60}"
        active = list(status.get("active") or [])
        if deadline is not None and due + dt.timedelta(seconds=int(deadline)) < current:
            self._event(cronjob, "Warning", "MissSchedule", "Missed scheduled time to start "
                        f"a job: {due.strftime('%a, %d %b %Y %H:%M:%S +0000')}")
            return
        if any(a.get("name") == name for a in active) or \
                status.get("lastScheduleTime") == rfc3339(due):
            return
        if spec.get("concurrencyPolicy") == "Forbid" and active:
            self._event(cronjob, "Normal", "JobAlreadyActive", "Not starting job because "
                        "prior execution is running and concurrency policy is Forbid")
            return
        if spec.get("concurrencyPolicy") == "Replace":
            for ref in list(active):
                if self._delete_job(cronjob, ref.get("name", ""), ref.get("uid")):
                    active.remove(ref)
            _set_active(status, active)
        job = self._create_job(cronjob, name, due, schedule.zone)
        if job is not None:
            _set_active(status, [*active, _reference(job)])
            status["lastScheduleTime"] = rfc3339(due)

    def _create_job(self, cronjob: Obj, name: str, due: dt.datetime,
                    zone: dt.tzinfo) -> Obj | None:
        template = cronjob["spec"].get("jobTemplate") or {}
        tmeta = template.get("metadata") or {}
        meta: dict[str, Any] = {
            "name": name, "labels": dict(tmeta.get("labels") or {}),
            "annotations": {**(tmeta.get("annotations") or {}),
                            SCHEDULED_TIMESTAMP: _stamp(due, zone)},
            "ownerReferences": [owner_reference(cronjob, CRONJOBS)]}
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                "spec": copy.deepcopy(template.get("spec") or {})}
        ns = cronjob["metadata"]["namespace"]
        try:
            job = self.rest.create(JOBS, ns, body)
        except ApiError as e:
            if e.reason != "AlreadyExists":
                self._event(cronjob, "Warning", "FailedCreate", f"Error creating job: {e}")
                self.failed(f"{ns}/{cronjob['metadata']['name']}: {e}")
                return None
            existing = self.rest.store.find(JOBS.key, ns, name)
            if existing is None or (controller_ref(existing) or {}).get("uid") != \
                    cronjob["metadata"]["uid"]:
                return None
            return existing
        self._event(cronjob, "Normal", "SuccessfulCreate", f"Created job {name}")
        self._log(f"{self.name}: {ns}/{cronjob['metadata']['name']}: created job {name} for "
                  f"{rfc3339(due)}")
        return job

    def _clean_up(self, cronjob: Obj, status: dict[str, Any], jobs: list[Obj]) -> None:
        spec = cronjob["spec"]
        for outcome, field in (("Complete", "successfulJobsHistoryLimit"),
                               ("Failed", "failedJobsHistoryLimit")):
            limit = spec.get(field)
            done = sorted((j for j in jobs if _finished(j) == outcome
                           and not j["metadata"].get("deletionTimestamp")), key=_start_key)
            if limit is None or len(done) <= int(limit):
                continue
            for job in done[:len(done) - int(limit)]:
                if self._delete_job(cronjob, job["metadata"]["name"], job["metadata"]["uid"]):
                    _set_active(status, [a for a in status.get("active") or []
                                         if a.get("uid") != job["metadata"]["uid"]])

    def _delete_job(self, cronjob: Obj, name: str, uid: str | None) -> bool:
        try:
            self.rest.delete(JOBS, cronjob["metadata"]["namespace"], name,
                             preconditions={"uid": uid} if uid else None,
                             propagation="Background")
        except ApiError as e:
            if e.code not in (404, 409):
                self._event(cronjob, "Warning", "FailedDelete", f"Deleted job: {e}")
                self.failed(f"{cronjob['metadata']['namespace']}/{name}: {e}")
                return False
        self._event(cronjob, "Normal", "SuccessfulDelete", f"Deleted job {name}")
        return True

    def _plan_wakeup(self, schedule: Schedule) -> None:
        upcoming = schedule.next(self.clock.now())
        if upcoming is None:
            return
        left = self.clock.seconds_until(upcoming)
        if left is not None:
            left += 0.1  # nextScheduleDelta: land just after the minute
            self._wakeup = left if self._wakeup is None else min(self._wakeup, left)

    # -- writing ---------------------------------------------------------------------------

    def _write(self, cronjob: Obj, status: dict[str, Any]) -> None:
        uid = cronjob["metadata"]["uid"]

        def change(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid:
                return None
            current["status"] = status
            return current

        try:
            self.rest.mutate(CRONJOBS, cronjob["metadata"]["namespace"],
                             cronjob["metadata"]["name"], change)
        except ApiError as e:
            if e.code != 404:
                raise

    def _event(self, cronjob: Obj, type_: str, reason: str, message: str) -> None:
        # Level-triggered passes see the same thing many times: each Event is said once.
        meta = cronjob["metadata"]
        key = (meta["uid"], reason, message)
        if key in self._said:
            return
        self._said.add(key)
        stamp = rfc3339(now())
        try:
            self.rest.create(EVENTS, meta["namespace"], {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{time.time_ns():x}",
                             "namespace": meta["namespace"]},
                "involvedObject": {"kind": "CronJob", "namespace": meta["namespace"],
                                   "name": meta["name"], "uid": meta["uid"],
                                   "apiVersion": "batch/v1",
                                   "resourceVersion": meta.get("resourceVersion", "")},
                "reason": reason, "message": message, "type": type_,
                "source": {"component": _SOURCE}, "firstTimestamp": stamp,
                "lastTimestamp": stamp, "count": 1, "reportingComponent": _SOURCE,
                "reportingInstance": "",
            })
        except ApiError as e:  # e.g. the namespace is terminating
            self._log(f"{self.name}: event {reason} for {meta['name']} not recorded: {e}")


def _reference(job: Obj) -> dict[str, Any]:
    meta = job["metadata"]
    return {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
            "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion", "")}


def _set_active(status: dict[str, Any], active: list[dict[str, Any]]) -> None:
    if active:
        status["active"] = active
    else:
        status.pop("active", None)
