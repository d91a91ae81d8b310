"""What the workload controllers share: label selectors, owner references, pod state.

    selector_matches(selector, labels)   metav1.LabelSelector semantics (nil: nothing)
    selector_string(selector)            its canonical text (`app=web,tier in (a,b)`)
    controller_ref(obj)                  the ownerReference with controller=true
    claim(...)                           adopt matching orphans, release mismatches
    claim_candidates(...)                what claim() must see, from the store's
                                         OWNER_INDEX (no copies)

Claiming follows client-go's ControllerRefManager: an object controlled by
someone else is never touched; one controlled by us whose labels stopped
matching is released (its ownerReference removed) unless we are being
deleted; a matching orphan that is not being deleted is adopted. Writes are
compare-by-uid read-modify-writes, so a replaced object is left alone.

Controllers find their candidates through OWNER_INDEX (`index_owners`): an
object is indexed under its controller's uid, or, an orphan, under its
namespace and each of its labels, so that an owner reads its own objects and
the orphans sharing a label with its selector, not its whole namespace.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from e2e.sim.errors import ApiError
from e2e.sim.meta import now, parse_time, rfc3339
from e2e.sim.resources import ResourceType
from e2e.sim.rest import Rest
from e2e.sim.store import Obj, Store

__all__ = [
    "OWNER_INDEX",
    "claim",
    "claim_candidates",
    "controller_ref",
    "index_owners",
    "int_or_percent",
    "is_pod_active",
    "is_pod_available",
    "is_pod_ready",
    "owner_reference",
    "pod_from_template",
    "selector_matches",
    "selector_string",
    "set_typed_condition",
]


# -- label selectors -----------------------------------------------------------------


def _expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op = str(expr.get("key", "")), expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False  # an unknown operator selects nothing, as an invalid selector does


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None
                     ) -> bool:
    """Does a LabelSelector select these labels? None selects nothing, `{}` everything."""
    if selector is None:
        return False
    labels = labels or {}
    wanted = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


def selector_string(selector: Mapping[str, Any] | None) -> str:
    """metav1.FormatLabelSelector: requirements sorted by key, `<none>` when empty."""
    if selector is None:
        return "<none>"
    terms: list[tuple[str, str]] = [(str(k), f"{k}={v}")
                                    for k, v in (selector.get("matchLabels") or {}).items()]
    for e in selector.get("matchExpressions") or []:
        key, values = str(e.get("key", "")), ",".join(sorted(map(str, e.get("values") or [])))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                "Exists": key, "DoesNotExist": f"!{key}"}.get(str(e.get("operator")), "")
        terms.append((key, text))
    return ",".join(text for _, text in sorted(terms)) or "<none>"


def int_or_percent(value: Any, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int, or `N%` of `total` rounded."""
    if isinstance(value, int):
        return value
    text = str(value)
    if not text.endswith("%"):
        raise ValueError(f"invalid value for IntOrString: invalid type: string is not a "
                         f"percentage: {text!r}")
    percent = int(text[:-1])
    scaled = percent * total
    return -(-scaled // 100) if round_up else scaled // 100


# -- owner references ------------------------------------------------------------------


def controller_ref(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ownerReference marked controller=true, or None."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def owner_reference(owner: Mapping[str, Any], rt: ResourceType) -> dict[str, Any]:
    """A controller reference to `owner` (controller and blockOwnerDeletion true)."""
    meta = owner["metadata"]
    return {"apiVersion": rt.api_version, "kind": rt.kind, "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def _adopt(rest: Rest, rt: ResourceType, obj: Obj, ref: dict[str, Any]) -> Obj | None:
    uid = obj["metadata"]["uid"]

    def change(current: Obj) -> Obj | None:
        meta = current["metadata"]
        if meta["uid"] != uid or controller_ref(current) or meta.get("deletionTimestamp"):
            return None
        meta["ownerReferences"] = [*(meta.get("ownerReferences") or []), ref]
        return current

    try:
        result = rest.mutate(rt, obj["metadata"]["namespace"], obj["metadata"]["name"], change)
    except ApiError as e:
        if e.code != 404:
            raise
        return None
    mine = controller_ref(result)
    return result if mine and mine.get("uid") == ref["uid"] else None


def _release(rest: Rest, rt: ResourceType, obj: Obj, owner_uid: str) -> None:
    uid = obj["metadata"]["uid"]

    def change(current: Obj) -> Obj | None:
        meta = current["metadata"]
        if meta["uid"] != uid:
            return None
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != owner_uid]
        if refs:
            meta["ownerReferences"] = refs
        else:
            meta.pop("ownerReferences", None)
        return current

    try:
        rest.mutate(rt, obj["metadata"]["namespace"], obj["metadata"]["name"], change)
    except ApiError as e:
        if e.code != 404:
            raise


def claim(rest: Rest, rt: ResourceType, owner: Obj, owner_rt: ResourceType,
          candidates: Iterable[Obj], selector: Mapping[str, Any] | None) -> list[Obj]:
    """The candidates `owner` controls after adopting matching orphans and releasing
    objects whose labels no longer match its selector."""
    meta = owner["metadata"]
    uid, deleting = meta["uid"], bool(meta.get("deletionTimestamp"))
    claimed: list[Obj] = []
    for obj in candidates:
        ref = controller_ref(obj)
        matches = selector_matches(selector, obj["metadata"].get("labels"))
        if ref is not None:
            if ref.get("uid") != uid:
                continue
            if matches:
                claimed.append(obj)
            elif not deleting:
                _release(rest, rt, obj, uid)
            continue
        if deleting or not matches or obj["metadata"].get("deletionTimestamp"):
            continue
        adopted = _adopt(rest, rt, obj, owner_reference(owner, owner_rt))
        if adopted is not None:
            claimed.append(adopted)
    return claimed


OWNER_INDEX = "owner"


def _owner_keys(obj: Obj) -> list[str]:
    meta = obj["metadata"]
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return [f"uid {ref.get('uid')}"]
    ns = meta.get("namespace") or ""
    return [f"orphan {ns}", *(f"orphan {ns} {k}={v}" for k, v in
                              (meta.get("labels") or {}).items())]


def index_owners(store: Store, rt: ResourceType) -> None:
    """Index `rt`'s objects under OWNER_INDEX (idempotent), for claim_candidates()."""
    store.add_index(rt.key, OWNER_INDEX, _owner_keys)


def claim_candidates(store: Store, rt: ResourceType, owner: Obj,
                     selector: Mapping[str, Any] | None) -> list[Obj]:
    """The stored objects (not copies: never mutate them) of `owner`'s namespace that
    claim() would not skip: those it controls and the orphans its selector might
    match, in key order. `rt` must be indexed (index_owners)."""
    meta = owner["metadata"]
    ns = str(meta["namespace"])
    found = store.peek(rt.key, ns, index=(OWNER_INDEX, f"uid {meta['uid']}"))
    if selector is None:
        return found  # selects nothing: no orphan is adopted
    # Any one matchLabels pair narrows the orphans to those having it.
    pair = next(iter((selector.get("matchLabels") or {}).items()), None)
    orphans = f"orphan {ns}" if pair is None else f"orphan {ns} {pair[0]}={pair[1]}"
    found += store.peek(rt.key, ns, index=(OWNER_INDEX, orphans))
    return sorted(found, key=lambda o: str(o["metadata"]["name"]))


def pod_from_template(owner: Obj, owner_rt: ResourceType, template: Mapping[str, Any],
                      *, finalizers: Iterable[str] = ()) -> Obj:
    """A pod for `owner` from its template (controller.GetPodFromTemplate):
    generateName `<owner>-`, the template's labels, annotations and spec."""
    tmeta = template.get("metadata") or {}
    meta: dict[str, Any] = {
        "generateName": f"{owner['metadata']['name']}-",
        "labels": dict(tmeta.get("labels") or {}),
        "ownerReferences": [owner_reference(owner, owner_rt)],
    }
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    merged = [*(tmeta.get("finalizers") or []), *finalizers]
    if merged:
        meta["finalizers"] = merged
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": dict(template.get("spec") or {})}


# -- pod state -------------------------------------------------------------------------


def _ready_condition(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return dict(c)
    return None


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    ready = _ready_condition(pod)
    return bool(ready and ready.get("status") == "True")


def is_pod_active(pod: Mapping[str, Any]) -> bool:
    """Not finished and not being deleted (controller.IsPodActive)."""
    phase = pod.get("status", {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp")


def is_pod_available(pod: Mapping[str, Any], min_ready_seconds: int,
                     at: dt.datetime | None = None) -> bool:
    """Ready for at least `min_ready_seconds` (podutil.IsPodAvailable)."""
    ready = _ready_condition(pod)
    if not ready or ready.get("status") != "True":
        return False
    if min_ready_seconds <= 0:
        return True
    since = ready.get("lastTransitionTime")
    if not since:
        return False
    return parse_time(since) + dt.timedelta(seconds=min_ready_seconds) <= (at or now())


def set_typed_condition(conditions: list[dict[str, Any]], entry: dict[str, Any],
                        *, time_fields: tuple[str, ...] = ("lastTransitionTime",),
                        same: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Put `entry` (with type and status) in `conditions`. The transition time is kept
    while the status stays; when `same(current)` holds nothing changes at all."""
    current = next((c for c in conditions if c.get("type") == entry["type"]), None)
    if current is not None and same is not None and same(current):
        return
    stamp = rfc3339(now())
    for name in time_fields:
        entry.setdefault(name, stamp)
    if current is not None and current.get("status") == entry["status"]:
        entry["lastTransitionTime"] = current.get("lastTransitionTime", stamp)
    if current is not None:
        conditions[conditions.index(current)] = entry
    else:
        conditions.append(entry)
