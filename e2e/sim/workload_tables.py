"""`kubectl get` columns for the workload kinds, as the API server's printers
(pkg/printers/internalversion) make them for Kubernetes 1.30:

    deployments          NAME READY UP-TO-DATE AVAILABLE AGE   (wide: CONTAINERS IMAGES SELECTOR)
    replicasets          NAME DESIRED CURRENT READY AGE        (wide: the same three)
    jobs                 NAME STATUS COMPLETIONS DURATION AGE  (wide: the same three)
    poddisruptionbudgets NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e2e.sim.meta import human_duration, now, parse_time
from e2e.sim.owners import selector_string
from e2e.sim.tables import Column, TableSpec

__all__ = ["DEPLOYMENT_TABLE", "JOB_TABLE", "PDB_TABLE", "REPLICASET_TABLE"]

Obj = Mapping[str, Any]

_NAME = Column("Name", format="name", description="Name must be unique within a namespace.")
_AGE = Column("Age", description="CreationTimestamp")
_WIDE = (
    Column("Containers", priority=1, description="Names of each container in the template."),
    Column("Images", priority=1, description="Images referenced by each container in the "
           "template."),
    Column("Selector", priority=1, description="A label query over pods."),
)


def _age(obj: Obj) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    return human_duration((now() - parse_time(created)).total_seconds())


def _wide(obj: Obj) -> list[str]:
    spec = obj.get("spec", {})
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return [",".join(str(c.get("name", "")) for c in containers),
            ",".join(str(c.get("image", "")) for c in containers),
            selector_string(spec.get("selector"))]


def _deployment_cells(d: Obj) -> list[Any]:
    spec, status = d.get("spec", {}), d.get("status", {})
    return [d["metadata"]["name"],
            f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0), _age(d),
            *_wide(d)]


DEPLOYMENT_TABLE = TableSpec(
    (_NAME, Column("Ready", description="Number of the pod with ready state"),
     Column("Up-to-date", description="Total number of non-terminated pods targeted by this "
            "deployment that have the desired template spec."),
     Column("Available", description="Total number of available pods (ready for at least "
            "minReadySeconds) targeted by this deployment."),
     _AGE, *_WIDE),
    _deployment_cells,
)


def _replicaset_cells(rs: Obj) -> list[Any]:
    spec, status = rs.get("spec", {}), rs.get("status", {})
    return [rs["metadata"]["name"], spec.get("replicas", 0), status.get("replicas", 0),
            status.get("readyReplicas", 0), _age(rs), *_wide(rs)]


REPLICASET_TABLE = TableSpec(
    (_NAME, Column("Desired", type="integer", description="Replicas is the number of desired "
                   "pods."),
     Column("Current", type="integer", description="Replicas is the most recently observed "
            "number of non-terminating pods."),
     Column("Ready", type="integer", description="The number of non-terminating pods "
            "targeted by this ReplicaSet with a Ready Condition."),
     _AGE, *_WIDE),
    _replicaset_cells,
)


def _has_condition(status: Obj, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True"
               for c in status.get("conditions") or [])


def _job_state(job: Obj) -> str:
    status = job.get("status", {})
    for type_ in ("Complete", "Failed"):
        if _has_condition(status, type_):
            return type_
    if job["metadata"].get("deletionTimestamp"):
        return "Terminating"
    for type_ in ("Suspended", "FailureTarget"):
        if _has_condition(status, type_):
            return type_
    return "Running"


def _job_cells(job: Obj) -> list[Any]:
    spec, status = job.get("spec", {}), job.get("status", {})
    succeeded = status.get("succeeded", 0)
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif int(spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    duration = ""
    if status.get("startTime"):
        end = parse_time(status["completionTime"]) if status.get("completionTime") else now()
        duration = human_duration((end - parse_time(status["startTime"])).total_seconds())
    return [job["metadata"]["name"], _job_state(job), completions, duration, _age(job),
            *_wide(job)]


JOB_TABLE = TableSpec(
    (_NAME, Column("Status", description="Status of the job."),
     Column("Completions", description="The number of pods which reached phase Succeeded."),
     Column("Duration", description="Time required to complete the job."),
     _AGE, *_WIDE),
    _job_cells,
)


def _pdb_cells(pdb: Obj) -> list[Any]:
    spec = pdb.get("spec", {})
    return [pdb["metadata"]["name"], str(spec.get("minAvailable", "N/A")),
            str(spec.get("maxUnavailable", "N/A")),
            pdb.get("status", {}).get("disruptionsAllowed", 0), _age(pdb)]


PDB_TABLE = TableSpec(
    (_NAME, Column("Min Available", description="The minimum number of pods that must be "
                   "available."),
     Column("Max Unavailable", description="The maximum number of pods that may be "
            "unavailable."),
     Column("Allowed Disruptions", type="integer", description="Calculated number of pods "
            "that may be disrupted at this time."),
     _AGE),
    _pdb_cells,
)
