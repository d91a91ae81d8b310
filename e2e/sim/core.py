"""The core/v1 kinds the simulator serves: pods, nodes, namespaces, configmaps, secrets,
serviceaccounts, events.

Defaulting, validation and update rules follow the API server's pod, node and
namespace strategies closely enough that clients meet the same answers:
defaults filled on create (restartPolicy, dnsPolicy, imagePullPolicy...), a
422 for a pod without containers, pod spec updates limited to images, status
only through the `status` subresource, graceful pod deletion, and namespaces
that pass through Terminating and refuse new content meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import datetime as dt
import json
import re
from typing import Any

from e2e.sim.errors import FieldError, forbidden
from e2e.sim.meta import now, rfc3339, validate_dns_label, validate_dns_subdomain
from e2e.sim.resources import (
    STATUS_VERBS,
    Registry,
    ResourceType,
    default_ready_to_remove,
    metadata_fields,
)
from e2e.sim.tables import NAMESPACE_TABLE, NODE_TABLE, POD_TABLE

__all__ = [
    "PROTECTED_NAMESPACES",
    "SECRETS",
    "SERVICEACCOUNTS",
    "core_registry",
    "pod_template_defaults",
    "validate_pod_template",
]

Obj = dict[str, Any]

#: Namespaces the API server refuses to delete.
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_DEFAULT_GRACE = 30


# -- pods -----------------------------------------------------------------------------


def _pull_policy(image: str) -> str:
    # The API server's rule: `:latest` or no tag pulls Always, anything else IfNotPresent.
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _qos_class(spec: Obj) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers", [])
                 if isinstance(c, dict)]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k) and (r.get("requests") or {}).get(k, r["limits"][k])
        == r["limits"][k]
        for r in resources for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _default_container(c: Obj) -> None:
    c.setdefault("imagePullPolicy", _pull_policy(str(c.get("image", ""))))
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _pod_defaults(pod: Obj) -> None:
    spec = pod.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", _DEFAULT_GRACE)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    # DefaultTolerationSeconds admission: evict 5 minutes after the node is lost.
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if isinstance(tolerations, list) and not any(
            isinstance(t, dict) and t.get("key") == key for t in tolerations
        ):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": 300})
    for field in ("containers", "initContainers"):
        for c in spec.get(field) or []:
            if isinstance(c, dict):
                _default_container(c)


def _pod_prepare_create(pod: Obj) -> None:
    spec = pod["spec"] if isinstance(pod.get("spec"), dict) else {}
    pod["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}


def _validate_containers(spec: Obj, errors: list[FieldError]) -> None:
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        errors.append(FieldError("Required", "spec.containers"))
        return
    seen: set[str] = set()
    for i, c in enumerate(containers):
        path = f"spec.containers[{i}]"
        if not isinstance(c, dict):
            errors.append(FieldError("Invalid", path, "must be an object", c))
            continue
        name = c.get("name")
        if not name:
            errors.append(FieldError("Required", f"{path}.name"))
        else:
            errors += validate_dns_label(str(name), f"{path}.name")
            if name in seen:
                errors.append(FieldError("Duplicate", f"{path}.name", value=name))
            seen.add(str(name))
        if not c.get("image"):
            errors.append(FieldError("Required", f"{path}.image"))


def _mutable_spec_view(spec: Obj) -> Obj:
    # What must not change on a pod update: the spec minus images, the active
    # deadline and tolerations (the API server allows those three).
    view = copy.deepcopy(spec)
    for key in ("activeDeadlineSeconds", "tolerations"):
        view.pop(key, None)
    for field in ("containers", "initContainers"):
        for c in view.get(field) or []:
            if isinstance(c, dict):
                c.pop("image", None)
    return view


def _validate_pod(pod: Obj, old: Obj | None) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec")]
    _validate_containers(spec, errors)
    policy = spec.get("restartPolicy")
    if policy not in _RESTART_POLICIES:
        errors.append(FieldError("NotSupported", "spec.restartPolicy",
                                 'supported values: "Always", "OnFailure", "Never"', policy))
    if spec.get("nodeName"):
        errors += validate_dns_subdomain(str(spec["nodeName"]), "spec.nodeName")
    if old is not None and _mutable_spec_view(spec) != _mutable_spec_view(old.get("spec", {})):
        errors.append(FieldError(
            "Forbidden", "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,"
            "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
            "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
            "(allow it to be set to 1 if it was previously negative)"))
    return errors


def pod_template_defaults(spec: Obj) -> None:
    """The defaults the API server fills into a workload's pod template spec: the
    schema's, not the pod admission ones (service account, tolerations, priority)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", _DEFAULT_GRACE)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for field in ("containers", "initContainers"):
        for c in spec.get(field) or []:
            if isinstance(c, dict):
                _default_container(c)


def validate_pod_template(spec: Any, prefix: str) -> list[FieldError]:
    """Errors in a workload's pod template spec (containers), paths under `prefix`."""
    if not isinstance(spec, dict):
        return [FieldError("Required", f"{prefix}spec")]
    errors: list[FieldError] = []
    _validate_containers(spec, errors)
    return [dataclasses.replace(e, field=prefix + e.field) for e in errors]


def _keep_status(new: Obj, old: Obj) -> None:
    # Updates of the main resource never change status: that is the subresource's job.
    if "status" in old:
        new["status"] = copy.deepcopy(old["status"])
    else:
        new.pop("status", None)


def _pod_begin_delete(pod: Obj, grace: int | None) -> Obj:
    meta, spec = pod["metadata"], pod.get("spec", {})
    phase = pod.get("status", {}).get("phase")
    if grace is None:
        grace = int(spec.get("terminationGracePeriodSeconds", _DEFAULT_GRACE))
    # Nothing runs an unscheduled or finished pod: nothing to wait for.
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        grace = 0
    current = meta.get("deletionGracePeriodSeconds")
    if current is not None and current <= grace:
        return pod  # already terminating at least this fast
    meta["deletionGracePeriodSeconds"] = grace
    meta["deletionTimestamp"] = rfc3339(now() + dt.timedelta(seconds=grace))
    return pod


POD_FIELDS = metadata_fields(
    "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
    "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
)

PODS = ResourceType(
    kind="Pod", plural="pods", singular="pod", namespaced=True,
    short_names=("po",), categories=("all",),
    # `eviction`: eviction.py serves it (disruption budgets); `log`: podlogs.py.
    subresources={"status": STATUS_VERBS, "binding": ("create",), "eviction": ("create",),
                  "log": ("get",)},
    fields=POD_FIELDS,
    defaults=_pod_defaults, prepare_create=_pod_prepare_create, validate=_validate_pod,
    prepare_update=_keep_status,
    begin_delete=_pod_begin_delete, return_deleted=True, table=POD_TABLE,
)


# -- nodes ------------------------------------------------------------------------------

NODES = ResourceType(
    kind="Node", plural="nodes", singular="node", namespaced=False, short_names=("no",),
    # `proxy` reaches the node's kubelet (api.py forwards it), e.g. its checkpoint API.
    subresources={"status": STATUS_VERBS,
                  "proxy": ("create", "delete", "get", "patch", "update")},
    fields=metadata_fields("spec.unschedulable"),
    prepare_update=_keep_status, table=NODE_TABLE,
)


# -- namespaces -------------------------------------------------------------------------


def _namespace_defaults(ns: Obj) -> None:
    name = ns["metadata"]["name"]
    labels = ns["metadata"].get("labels")
    if not isinstance(labels, dict):
        labels = ns["metadata"]["labels"] = {}
    # The NamespaceAutoLabel feature: every namespace carries its own name.
    labels["kubernetes.io/metadata.name"] = name


def _namespace_prepare_create(ns: Obj) -> None:
    ns["spec"] = {"finalizers": ["kubernetes"]}
    ns["status"] = {"phase": "Active"}


def _namespace_prepare_update(new: Obj, old: Obj) -> None:
    # Finalizers change only through the `finalize` subresource.
    _keep_status(new, old)
    new["spec"] = copy.deepcopy(old.get("spec", {}))


def _namespace_begin_delete(ns: Obj, grace: int | None) -> Obj:
    name = ns["metadata"]["name"]
    if name in PROTECTED_NAMESPACES:
        raise forbidden("namespaces", name, "this namespace may not be deleted")
    ns["metadata"].setdefault("deletionTimestamp", rfc3339(now()))
    ns["metadata"]["deletionGracePeriodSeconds"] = 0
    ns["status"] = {**ns.get("status", {}), "phase": "Terminating"}
    return ns


def _namespace_ready_to_remove(ns: Obj) -> bool:
    # The namespace controller empties it, then drops the `kubernetes` finalizer.
    return default_ready_to_remove(ns) and not ns.get("spec", {}).get("finalizers")


NAMESPACES = ResourceType(
    kind="Namespace", plural="namespaces", singular="namespace", namespaced=False,
    short_names=("ns",), subresources={"status": STATUS_VERBS, "finalize": ("update",)},
    fields=metadata_fields("status.phase"),
    defaults=_namespace_defaults, prepare_create=_namespace_prepare_create,
    prepare_update=_namespace_prepare_update,
    begin_delete=_namespace_begin_delete, ready_to_remove=_namespace_ready_to_remove,
    return_deleted=True, dns_label_name=True, table=NAMESPACE_TABLE,
)


# -- plain data kinds -----------------------------------------------------------------

CONFIGMAPS = ResourceType(
    kind="ConfigMap", plural="configmaps", singular="configmap", namespaced=True,
    short_names=("cm",),
)

EVENTS = ResourceType(
    kind="Event", plural="events", singular="event", namespaced=True, short_names=("ev",),
    fields=metadata_fields(
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
        "involvedObject.uid", "involvedObject.fieldPath", "reason", "type", "source",
        "reportingComponent",
    ),
)


# -- secrets and service accounts ---------------------------------------------------------

_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
#: Secret types whose data must hold a key (the API server's secret validation).
_SECRET_REQUIRED_KEYS = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson",
                         "kubernetes.io/dockercfg": ".dockercfg"}


def _secret_defaults(secret: Obj) -> None:
    # stringData is write-only: merged into data (base64), as the API server does.
    secret.setdefault("type", "Opaque")
    string_data = secret.pop("stringData", None)
    if isinstance(string_data, dict):
        data = secret.setdefault("data", {})
        if isinstance(data, dict):
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()


def _decoded(value: Any) -> bytes | None:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        return None


def _validate_secret(secret: Obj, old: Obj | None) -> list[FieldError]:
    errors: list[FieldError] = []
    data = secret.get("data") or {}
    if not isinstance(data, dict):
        return [FieldError("Invalid", "data", "must be a map of base64 strings", data)]
    for key, value in data.items():
        if not _SECRET_KEY.match(str(key)):
            errors.append(FieldError("Invalid", f"data[{key}]", "a valid config key must "
                                     "consist of alphanumeric characters, '-', '_' or '.'", key))
        elif _decoded(value) is None:
            errors.append(FieldError("Invalid", f"data[{key}]", "illegal base64 data", "..."))
    required = _SECRET_REQUIRED_KEYS.get(str(secret.get("type")))
    if required and required not in data:
        errors.append(FieldError("Required", f"data[{required}]"))
    elif required and not errors:
        try:
            json.loads(_decoded(data[required]) or b"")
        except ValueError as e:
            errors.append(FieldError("Invalid", f"data[{required}]", str(e), "<secret contents "
                                     "redacted>"))
    if old is not None and old.get("immutable") and (
            data != (old.get("data") or {}) or not secret.get("immutable")):
        errors.append(FieldError("Forbidden", "data", "field is immutable when `immutable` "
                                 "is set"))
    if old is not None and secret.get("type") != old.get("type"):
        errors.append(FieldError("Invalid", "type", "field is immutable", secret.get("type")))
    return errors


SECRETS = ResourceType(
    kind="Secret", plural="secrets", singular="secret", namespaced=True,
    fields=metadata_fields("type"), defaults=_secret_defaults, validate=_validate_secret,
)

SERVICEACCOUNTS = ResourceType(
    kind="ServiceAccount", plural="serviceaccounts", singular="serviceaccount",
    namespaced=True, short_names=("sa",),
)


def core_registry() -> Registry:
    """A registry serving the core/v1 kinds above."""
    return Registry([PODS, NODES, NAMESPACES, CONFIGMAPS, SECRETS, SERVICEACCOUNTS, EVENTS])
