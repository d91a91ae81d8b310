"""Would this node take this pod? nodeSelector, required node affinity, taints.

A restored pod is created with ``spec.nodeName`` set, which bypasses the
scheduler: nothing in the cluster would stop a migration from putting a pod
where its own spec says it must not run. So the tool checks what the
scheduler would have checked, and refuses with the reason.
"""

from __future__ import annotations

from typing import Any

from migrate.pipeline.selectors import requirement_holds

Obj = dict[str, Any]


def _labels(node: Obj) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def _term_holds(term: Obj, node: Obj) -> bool:
    fields = {"metadata.name": str(node["metadata"]["name"])}
    exprs = term.get("matchExpressions") or []
    field_exprs = term.get("matchFields") or []
    if not exprs and not field_exprs:
        return False  # an empty term matches nothing (as the scheduler has it)
    return (all(requirement_holds(e, _labels(node)) for e in exprs)
            and all(requirement_holds(e, fields) for e in field_exprs))


def _tolerated(taint: Obj, tolerations: list[Obj]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (
                taint.get("value") or ""):
            return True
    return False


def refusals(pod: Obj, node: Obj) -> list[str]:
    """Why the scheduler would keep ``pod`` off ``node`` (empty: it would not)."""
    spec = pod.get("spec") or {}
    name = node["metadata"]["name"]
    out = []
    labels = _labels(node)
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            out.append(f"node {name} does not have the label {key}={value} "
                       "(the pod's nodeSelector)")
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(_term_holds(t, node) for t in terms):
        out.append(f"node {name} matches none of the pod's required node affinity terms")
    tolerations = spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(
                taint, tolerations):
            value = f"={taint['value']}" if taint.get("value") else ""
            out.append(f"node {name} has the taint {taint.get('key')}{value}:"
                       f"{taint['effect']}, which the pod does not tolerate")
    return out
