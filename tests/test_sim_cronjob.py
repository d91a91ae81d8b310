"""batch/v1 CronJobs in the cluster simulator: schedules, the controller on a set clock, kubectl.

The controller's clock is moved with `Simulator.advance_cron`, never waited
for: every test runs in well under a second of wall time per scheduled run.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.sim import Simulator
from e2e.sim.cron import most_recent, parse_schedule
from tests.simulated import kubectl_runner, needs_kubectl, sim_client, wait_for

UTC = dt.UTC
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


# -- schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "zone", "after", "expected"), [
    ("0 2 * * 6", None, "2025-03-05T12:00:00", "2025-03-08T02:00:00"),  # Saturday
    ("0 2 * * sat", None, "2025-03-08T02:00:00", "2025-03-15T02:00:00"),  # strictly after
    ("*/15 9-17 * * mon-fri", None, "2025-03-05T17:50:00", "2025-03-06T09:00:00"),
    ("5,35 */6 * * *", None, "2025-03-05T06:40:00", "2025-03-05T12:05:00"),
    ("0 0 1 jan-mar/2 *", None, "2025-01-02T00:00:00", "2025-03-01T00:00:00"),
    ("0 0 1,15 * 1", None, "2025-03-05T00:00:00", "2025-03-10T00:00:00"),  # dom OR dow
    ("0 0 13 * fri", None, "2025-06-01T00:00:00", "2025-06-06T00:00:00"),
    ("@hourly", None, "2025-03-05T12:00:00", "2025-03-05T13:00:00"),
    ("@weekly", None, "2025-03-05T12:00:00", "2025-03-09T00:00:00"),
    ("0 2 * * *", "Asia/Tokyo", "2025-03-05T12:00:00", "2025-03-05T17:00:00"),
    # 02:30 does not exist in Berlin on 2025-03-30 (clocks jump to 03:00): skipped.
    ("30 2 * * *", "Europe/Berlin", "2025-03-29T12:00:00", "2025-03-31T00:30:00"),
])
def test_next_scheduled_time(schedule: str, zone: str | None, after: str,
                             expected: str) -> None:
    start = dt.datetime.fromisoformat(after).replace(tzinfo=UTC)
    assert parse_schedule(schedule, zone).next(start) == \
        dt.datetime.fromisoformat(expected).replace(tzinfo=UTC)


def test_a_schedule_that_never_comes() -> None:
    assert parse_schedule("0 0 30 2 *").next(dt.datetime(2025, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize(("schedule", "message"), [
    ("60 * * * *", "end of range (60) above maximum (59)"),
    ("* * * *", "expected exactly 5 fields, found 4"),
    ("* * * * 7", "end of range (7) above maximum (6)"),
    ("*/0 * * * *", "invalid step"),
    ("5-1 * * * *", "beginning of range (5) beyond end of range (1)"),
    ("x * * * *", "failed to parse int from x"),
    ("TZ=UTC 0 * * * *", "use timeZone field instead"),
    ("@fortnightly", "unrecognized descriptor"),
])
def test_bad_schedules(schedule: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_schedule(schedule)


def test_only_the_most_recent_missed_time_counts() -> None:
    every_minute = parse_schedule("* * * * *")
    start = dt.datetime(2025, 1, 1, tzinfo=UTC)
    due, missed = most_recent(every_minute, start, start + dt.timedelta(days=7, seconds=30))
    assert (due, missed) == (start + dt.timedelta(days=7), 10080)
    assert most_recent(every_minute, start, start + dt.timedelta(seconds=59)) == (None, 0)
    irregular = parse_schedule("30 6-16/4 * * 1-5")
    due, _ = most_recent(irregular, start, dt.datetime(2025, 1, 20, 12, 0, tzinfo=UTC))
    assert due == dt.datetime(2025, 1, 20, 10, 30, tzinfo=UTC)


# -- the API ---------------------------------------------------------------------------------


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    """A fresh cluster per test: the cron clock only goes forward."""
    with Simulator(tmp_path / "state", start_latency=0.02, stop_latency=0.02) as cluster:
        yield cluster


@pytest.fixture
def api(sim: Simulator) -> Iterator[client.ApiClient]:
    with sim_client(sim) as api_client:
        yield api_client


@pytest.fixture
def batch(api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api)


def cronjob(name: str, schedule: str = "0 2 * * 6", run_seconds: float = 0.05,
            **spec: Any) -> dict[str, Any]:
    annotations = {"sim.migrate.dev/run-seconds": str(run_seconds)}
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
            "spec": {"schedule": schedule, **spec, "jobTemplate": {
                "metadata": {"labels": {"app": name}},
                "spec": {"backoffLimit": 0, "template": {
                    "metadata": {"annotations": annotations},
                    "spec": {"restartPolicy": "Never", "containers": [
                        {"name": "work", "image": "docker.io/library/busybox:1.36"}]}}}}}}


def create(batch: client.BatchV1Api, body: dict[str, Any]) -> tuple[Any, dt.datetime]:
    """The CronJob as stored, and its first scheduled time after its creation."""
    made = batch.create_namespaced_cron_job("default", body)
    created = made.metadata.creation_timestamp
    first = parse_schedule(body["spec"]["schedule"], body["spec"].get("timeZone")).next(created)
    assert first is not None
    return made, first


def jobs(batch: client.BatchV1Api, name: str) -> dict[str, Any]:
    return {j.metadata.name: j for j in batch.list_namespaced_job(
        "default", label_selector=f"app={name}").items if not j.metadata.deletion_timestamp}


def reasons(api: client.ApiClient, name: str) -> list[str]:
    events = client.CoreV1Api(api).list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name},involvedObject.kind=CronJob")
    return [e.reason for e in events.items]


def job_name(name: str, t: dt.datetime) -> str:
    return f"{name}-{int(t.timestamp()) // 60}"


def test_defaults_and_validation(batch: client.BatchV1Api) -> None:
    made, _ = create(batch, cronjob("nightly"))
    spec = made.spec
    assert (spec.concurrency_policy, spec.suspend, spec.successful_jobs_history_limit,
            spec.failed_jobs_history_limit) == ("Allow", False, 3, 1)
    assert spec.job_template.spec.template.spec.termination_grace_period_seconds == 30
    for body, field, message in [
        (cronjob("bad", schedule="61 * * * *"), "spec.schedule", "above maximum (59)"),
        (cronjob("bad", timeZone="Mars/Olympus"), "spec.timeZone", "unknown time zone"),
        (cronjob("bad", concurrencyPolicy="Sometimes"), "spec.concurrencyPolicy",
         '"Allow", "Forbid", "Replace"'),
        (cronjob("x" * 53), "metadata.name", "must be no more than 52 characters"),
    ]:
        with pytest.raises(ApiException) as caught:
            batch.create_namespaced_cron_job("default", body)
        assert caught.value.status == 422
        status = json.loads(caught.value.body)
        assert field in status["message"] and message in status["message"]
    always = cronjob("always")
    always["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(ApiException, match="restartPolicy"):
        batch.create_namespaced_cron_job("default", always)


def test_a_cronjob_fires_when_its_clock_says(sim: Simulator, api: client.ApiClient,
                                             batch: client.BatchV1Api) -> None:
    made, first = create(batch, cronjob("weekly"))
    sim.advance_cron(to=first - dt.timedelta(seconds=1))
    assert jobs(batch, "weekly") == {}
    sim.advance_cron(to=first + dt.timedelta(seconds=5))
    job = jobs(batch, "weekly")[job_name("weekly", first)]  # there once advance_cron returns
    assert job.metadata.owner_references[0].kind == "CronJob"
    assert job.metadata.owner_references[0].uid == made.metadata.uid
    assert job.metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] == \
        first.strftime("%Y-%m-%dT%H:%M:%SZ")
    status = batch.read_namespaced_cron_job("weekly", "default").status
    assert [a.name for a in status.active] == [job.metadata.name]
    assert status.last_schedule_time == first
    done = wait_for(lambda: (s := batch.read_namespaced_cron_job("weekly", "default").status)
                    .last_successful_time and s, what="the Job to complete")
    assert not done.active
    assert {"SuccessfulCreate", "SawCompletedJob"} <= set(reasons(api, "weekly"))


def test_only_the_latest_missed_run_starts(sim: Simulator, batch: client.BatchV1Api) -> None:
    _, first = create(batch, cronjob("missed", schedule="0 * * * *"))
    later = sim.advance_cron(to=first + dt.timedelta(hours=5, minutes=10))
    latest = later.replace(minute=0, second=0, microsecond=0)
    assert list(jobs(batch, "missed")) == [job_name("missed", latest)]


def test_forbid_and_replace(sim: Simulator, api: client.ApiClient,
                            batch: client.BatchV1Api) -> None:
    _, first = create(batch, cronjob("forbid", schedule="*/5 * * * *", run_seconds=60,
                                     concurrencyPolicy="Forbid"))
    create(batch, cronjob("replace", schedule="*/5 * * * *", run_seconds=60,
                          concurrencyPolicy="Replace"))
    sim.advance_cron(to=first + dt.timedelta(seconds=1))
    assert len(jobs(batch, "forbid")) == len(jobs(batch, "replace")) == 1
    old = next(iter(jobs(batch, "replace")))
    sim.advance_cron(by=dt.timedelta(minutes=5))
    assert len(jobs(batch, "forbid")) == 1
    assert "JobAlreadyActive" in reasons(api, "forbid")
    replaced = jobs(batch, "replace")
    assert old not in replaced and len(replaced) == 1
    assert "SuccessfulDelete" in reasons(api, "replace")


def test_starting_deadline_and_suspend(sim: Simulator, api: client.ApiClient,
                                       batch: client.BatchV1Api) -> None:
    _, first = create(batch, cronjob("late", startingDeadlineSeconds=100))
    create(batch, cronjob("in-time", startingDeadlineSeconds=300))
    create(batch, cronjob("paused", suspend=True))
    sim.advance_cron(to=first + dt.timedelta(seconds=200))
    # As the real controller: a run older than the deadline is skipped, silently.
    assert jobs(batch, "late") == {} and jobs(batch, "paused") == {}
    assert list(jobs(batch, "in-time")) == [job_name("in-time", first)]
    assert "SuccessfulCreate" not in reasons(api, "late")


def test_history_limits(sim: Simulator, batch: client.BatchV1Api) -> None:
    _, first = create(batch, cronjob("history", schedule="0 * * * *",
                                     successfulJobsHistoryLimit=1))
    names = []
    for hour in range(3):
        sim.advance_cron(to=first + dt.timedelta(hours=hour, seconds=1))
        names.append(job_name("history", first + dt.timedelta(hours=hour)))
        wait_for(lambda n=names[-1]: (j := jobs(batch, "history").get(n)) and
                 j.status.succeeded, what=f"{names[-1]} to succeed")
    sim.advance_cron(by=dt.timedelta(seconds=1))  # a pass that sees the last one finished
    assert wait_for(lambda: list(jobs(batch, "history")) == names[-1:] or None,
                    what="the older Jobs to be deleted")


def test_time_zone(sim: Simulator, batch: client.BatchV1Api) -> None:
    _, first = create(batch, cronjob("tokyo", schedule="0 2 * * *", timeZone="Asia/Tokyo"))
    assert first.astimezone(dt.timezone(dt.timedelta(hours=9))).hour == 2
    sim.advance_cron(to=first)
    job = jobs(batch, "tokyo")[job_name("tokyo", first)]
    assert job.metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] \
        .endswith("T02:00:00+09:00")


def test_the_clock_never_goes_back(sim: Simulator) -> None:
    now = sim.advance_cron(by=dt.timedelta(hours=1))
    with pytest.raises(ValueError, match="cannot go back"):
        sim.advance_cron(to=now - dt.timedelta(minutes=1))


@needs_kubectl
def test_kubectl_get_and_create_job_from_a_cronjob(sim: Simulator, api: client.ApiClient,
                                                   batch: client.BatchV1Api,
                                                   tmp_path: Path) -> None:
    kubectl: Kubectl = kubectl_runner(tmp_path / "home")
    create(batch, cronjob("manual", timeZone="Europe/Paris", run_seconds=1))
    table = kubectl(sim.kubeconfig, "get", "cj").stdout.splitlines()
    assert table[0].split() == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE",
                                "LAST", "SCHEDULE", "AGE"]
    assert table[1].split()[:6] == ["manual", "0", "2", "*", "*", "6"]
    assert table[1].split()[6:10] == ["Europe/Paris", "False", "0", "<none>"]
    kubectl(sim.kubeconfig, "create", "job", "by-hand", "--from=cronjob/manual")
    job = batch.read_namespaced_job("by-hand", "default")
    assert job.metadata.annotations["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job.metadata.owner_references[0].name == "manual"
    # Seen while it runs, as the real controller does, but never adopted into `active`.
    wait_for(lambda: "UnexpectedJob" in reasons(api, "manual"), what="UnexpectedJob")
    assert not batch.read_namespaced_cron_job("manual", "default").status.active
    wait_for(lambda: batch.read_namespaced_job("by-hand", "default").status.succeeded,
             what="the manual Job to succeed")
    assert "cronjobs" in kubectl(sim.kubeconfig, "api-resources", "--api-group=batch").stdout


def test_the_scheduler_honours_required_node_affinity(api: client.ApiClient) -> None:
    # The scheduled drain's pod keeps off the node it drains this way.
    v1 = client.CoreV1Api(api)

    def pod(name: str, operator: str, values: list[str]) -> Any:
        term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": operator,
                                      "values": values}]}
        v1.create_namespaced_pod("default", {"metadata": {"name": name}, "spec": {
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [term]}}},
            "containers": [{"name": "c", "image": "docker.io/library/busybox:1.36"}]}})
        return wait_for(lambda: (p := v1.read_namespaced_pod(name, "default")).status
                        .conditions and p, what=f"{name} scheduled or not")

    assert {pod(f"away-{i}", "NotIn", ["node-a"]).spec.node_name for i in range(3)} == \
        {"node-b"}
    nowhere = pod("nowhere", "In", ["node-z"])
    assert nowhere.spec.node_name is None
    assert nowhere.status.conditions[0].message == "0/2 nodes are available: 2 node(s) " \
        "didn't match Pod's node affinity/selector."
