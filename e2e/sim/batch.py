"""The batch/v1 kind: Jobs (controller: job.py).

As the API server's job strategy does: completions and parallelism default
to 1 (parallelism alone when completions is set or left open), backoffLimit
to 6, completionMode NonIndexed, suspend false, podReplacementPolicy
TerminatingOrFailed; the pod template gets pod defaults. Unless
`manualSelector` is true, the server generates the selector from the Job's
uid and labels the template with it:

    batch.kubernetes.io/controller-uid, controller-uid   the Job's uid
    batch.kubernetes.io/job-name, job-name               the Job's name

(a Job created without labels gets the template's, generated ones included,
as on a real cluster). The template's restartPolicy must be Never or
OnFailure; template, selector and completions never change. Deleting a Job
orphans its pods unless a propagationPolicy says otherwise (batch/v1's
compatibility default; kubectl sends Background). Indexed completion mode
is refused (422): this simulator does not run it.
"""

from __future__ import annotations

import uuid
from typing import Any

from e2e.sim.errors import FieldError
from e2e.sim.resources import ALL_VERBS, STATUS_VERBS, ResourceType, metadata_fields
from e2e.sim.store import Obj
from e2e.sim.strategy import (
    generation_hooks,
    non_negative,
    template_defaults,
    validate_selector,
    validate_template,
)
from e2e.sim.workload_tables import JOB_TABLE

__all__ = ["CONTROLLER_UID", "JOBS", "JOB_NAME"]

JOB_NAME = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID = ("batch.kubernetes.io/controller-uid", "controller-uid")
_IMMUTABLE = ("template", "selector", "completions", "completionMode")


def _job_defaults(job: Obj) -> None:
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    template = spec.get("template")
    labels = (template.get("metadata") or {}).get("labels") if isinstance(template, dict) \
        else None
    if labels and not job["metadata"].get("labels"):
        job["metadata"]["labels"] = dict(labels)
    template_defaults(spec)


_generation_create, _job_update = generation_hooks()


def _job_prepare_create(job: Obj) -> None:
    _generation_create(job)
    spec = job.get("spec")
    if not isinstance(spec, dict) or spec.get("manualSelector") is True:
        return
    template = spec.get("template")
    if not isinstance(template, dict):
        return
    # The uid is assigned now (the store keeps it) because the selector names it.
    meta = job["metadata"]
    uid = meta.setdefault("uid", str(uuid.uuid4()))
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    mirrored = meta.get("labels") == labels  # defaulted from the template: one map upstream
    for key in JOB_NAME:
        labels.setdefault(key, meta["name"])
    for key in CONTROLLER_UID:
        labels.setdefault(key, uid)
    if mirrored:
        meta["labels"] = dict(labels)
    selector = spec.get("selector")
    if not isinstance(selector, dict):
        selector = spec["selector"] = {}
    selector.setdefault("matchLabels", {}).setdefault(CONTROLLER_UID[0], uid)


def _validate_job(job: Obj, old: Obj | None) -> list[FieldError]:
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec")]
    errors = validate_selector(spec.get("selector"))
    errors += validate_template(job, restart_policies=("OnFailure", "Never"))
    for field in ("parallelism", "completions", "backoffLimit"):
        errors += non_negative(spec, field)
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
        errors.append(FieldError("Invalid", "spec.activeDeadlineSeconds",
                                 "must be greater than 0", deadline))
    if spec.get("completionMode") != "NonIndexed":
        errors.append(FieldError("NotSupported", "spec.completionMode",
                                 'supported values: "NonIndexed" (the simulator does not run '
                                 "Indexed Jobs)", spec.get("completionMode")))
    if old is not None:
        errors += _immutable(spec, old.get("spec") or {})
    return errors


def _immutable(spec: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    return [FieldError("Invalid", f"spec.{field}", "field is immutable", spec.get(field))
            for field in _IMMUTABLE if spec.get(field) != old.get(field)]


JOBS = ResourceType(
    kind="Job", plural="jobs", singular="job", namespaced=True, group="batch",
    categories=("all",), verbs=ALL_VERBS, subresources={"status": STATUS_VERBS},
    # The API server's one extra selectable field: succeeded pods, as status.successful.
    fields={**metadata_fields(), "status.successful": lambda job: str(
        int((job.get("status") or {}).get("succeeded", 0)))},
    defaults=_job_defaults, prepare_create=_job_prepare_create, prepare_update=_job_update,
    validate=_validate_job, table=JOB_TABLE,
)
