"""The batch/v1 kind CronJob (controller: cronjob_controller.py; schedules: cron.py).

As the API server's cronjob strategy does: concurrencyPolicy defaults to
Allow, suspend to false, successfulJobsHistoryLimit to 3 and
failedJobsHistoryLimit to 1; the job template's pod template gets pod
defaults. Validation: the name is at most 52 characters (the Job name adds
`-` and 11 digits), the schedule parses (cron.py, `TZ=` refused), timeZone
is a known IANA zone, concurrencyPolicy is Allow, Forbid or Replace, the
deadline and limits are not negative, and the job template's pods restart
Never or OnFailure and name no selector (the Job's is generated).

`kubectl get cronjobs` columns, as the API server's printer makes them:
NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST SCHEDULE AGE (wide: CONTAINERS
IMAGES SELECTOR).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e2e.sim.core import pod_template_defaults, validate_pod_template
from e2e.sim.cron import load_zone, parse_schedule
from e2e.sim.errors import FieldError
from e2e.sim.meta import human_duration, now, parse_time
from e2e.sim.owners import selector_string
from e2e.sim.resources import ALL_VERBS, STATUS_VERBS, ResourceType
from e2e.sim.store import Obj
from e2e.sim.strategy import generation_hooks, non_negative
from e2e.sim.tables import Column, TableSpec

__all__ = ["CONCURRENCY_POLICIES", "CRONJOBS", "CRONJOB_TABLE", "SCHEDULED_TIMESTAMP"]

CONCURRENCY_POLICIES = ("Allow", "Forbid", "Replace")
#: The annotation each scheduled Job gets: its scheduled time in the CronJob's zone.
SCHEDULED_TIMESTAMP = "batch.kubernetes.io/cronjob-scheduled-timestamp"
_MAX_NAME = 52


def _defaults(cronjob: Obj) -> None:
    spec = cronjob.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("concurrencyPolicy", "Allow")
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)
    job_spec = (spec.get("jobTemplate") or {}).get("spec")
    template = job_spec.get("template") if isinstance(job_spec, dict) else None
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        pod_template_defaults(template["spec"])


def _validate_schedule(spec: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    zone = spec.get("timeZone")
    if zone is not None:
        try:
            load_zone(str(zone))
        except ValueError as e:
            errors.append(FieldError("Invalid", "spec.timeZone", str(e), zone))
            zone = None
    schedule = spec.get("schedule")
    if not schedule:
        return [*errors, FieldError("Required", "spec.schedule")]
    try:
        parse_schedule(str(schedule), zone)
    except ValueError as e:
        errors.append(FieldError("Invalid", "spec.schedule", str(e), schedule))
    return errors


def _validate_job_template(spec: Mapping[str, Any]) -> list[FieldError]:
    job_spec = (spec.get("jobTemplate") or {}).get("spec")
    if not isinstance(job_spec, dict):
        return [FieldError("Required", "spec.jobTemplate.spec")]
    errors: list[FieldError] = []
    if job_spec.get("selector") is not None:
        errors.append(FieldError("Invalid", "spec.jobTemplate.spec.selector",
                                 "`selector` will be auto-generated", job_spec["selector"]))
    if job_spec.get("manualSelector"):
        errors.append(FieldError("NotSupported", "spec.jobTemplate.spec.manualSelector",
                                 'supported values: "nil", "false"', True))
    template = job_spec.get("template")
    if not isinstance(template, dict):
        return [*errors, FieldError("Required", "spec.jobTemplate.spec.template")]
    errors += validate_pod_template(template.get("spec"), "spec.jobTemplate.spec.template.")
    policy = (template.get("spec") or {}).get("restartPolicy")
    if policy not in ("OnFailure", "Never"):
        errors.append(FieldError("NotSupported", "spec.jobTemplate.spec.template.spec."
                                 "restartPolicy", 'supported values: "OnFailure", "Never"',
                                 policy))
    return errors


def _validate(cronjob: Obj, old: Obj | None) -> list[FieldError]:
    spec = cronjob.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec")]
    errors: list[FieldError] = []
    name = str(cronjob["metadata"].get("name", ""))
    if old is None and len(name) > _MAX_NAME:
        errors.append(FieldError("Invalid", "metadata.name",
                                 f"must be no more than {_MAX_NAME} characters", name))
    errors += _validate_schedule(spec)
    if spec.get("concurrencyPolicy") not in CONCURRENCY_POLICIES:
        errors.append(FieldError("NotSupported", "spec.concurrencyPolicy",
                                 'supported values: "Allow", "Forbid", "Replace"',
                                 spec.get("concurrencyPolicy")))
    for field in ("startingDeadlineSeconds", "successfulJobsHistoryLimit",
                  "failedJobsHistoryLimit"):
        errors += non_negative(spec, field)
    return errors + _validate_job_template(spec)


def _age(obj: Mapping[str, Any], field: str | None) -> str:
    stamp = obj.get(field) if field else obj.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return "<none>" if field else "<unknown>"
    return human_duration((now() - parse_time(str(stamp))).total_seconds())


def _cells(cronjob: Mapping[str, Any]) -> list[Any]:
    spec, status = cronjob.get("spec", {}), cronjob.get("status", {})
    suspend = spec.get("suspend")
    job_spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    containers = ((job_spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return [cronjob["metadata"]["name"], spec.get("schedule", ""),
            spec.get("timeZone") or "<none>",
            "<unset>" if suspend is None else ("True" if suspend else "False"),
            len(status.get("active") or []), _age(status, "lastScheduleTime"),
            _age(cronjob, None),
            ",".join(str(c.get("name", "")) for c in containers),
            ",".join(str(c.get("image", "")) for c in containers),
            selector_string(job_spec.get("selector"))]


CRONJOB_TABLE = TableSpec(
    (Column("Name", format="name", description="Name must be unique within a namespace."),
     Column("Schedule", description="The schedule in Cron format."),
     Column("Timezone", description="The time zone name for the given schedule."),
     Column("Suspend", type="boolean", description="This flag tells the controller to "
            "suspend subsequent executions."),
     Column("Active", type="integer", description="A list of pointers to currently running "
            "jobs."),
     Column("Last Schedule", description="Information when was the last time the job was "
            "successfully scheduled."),
     Column("Age", description="CreationTimestamp"),
     Column("Containers", priority=1, description="Names of each container in the template."),
     Column("Images", priority=1, description="Images referenced by each container in the "
            "template."),
     Column("Selector", priority=1, description="A label query over pods.")),
    _cells,
)

_prepare_create, _prepare_update = generation_hooks()

CRONJOBS = ResourceType(
    kind="CronJob", plural="cronjobs", singular="cronjob", namespaced=True, group="batch",
    short_names=("cj",), categories=("all",), verbs=ALL_VERBS,
    subresources={"status": STATUS_VERBS}, defaults=_defaults,
    prepare_create=_prepare_create, prepare_update=_prepare_update, validate=_validate,
    table=CRONJOB_TABLE,
)
