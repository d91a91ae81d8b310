"""Label selectors and node selector requirements, matched as the API server matches them.

One matcher for both: a disruption budget's LabelSelector (which pods it
covers) and a pod's required node affinity (which nodes it may run on). The
operators are the same but for Gt and Lt, which only node selector
requirements take (the API server refuses them in a LabelSelector).
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def requirement_holds(expr: Obj, labels: dict[str, str]) -> bool:
    """Whether one requirement ({key, operator, values}) holds for ``labels``."""
    key, op, wanted = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    have = labels.get(key)
    if op == "In":
        return have is not None and have in wanted
    if op == "NotIn":
        return have is None or have not in wanted
    if op == "Exists":
        return have is not None
    if op == "DoesNotExist":
        return have is None
    if op in ("Gt", "Lt") and have is not None and len(wanted) == 1:
        try:
            a, b = int(have), int(wanted[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches ``labels`` (policy/v1: empty selects every pod,
    absent selects none)."""
    if selector is None:
        return False
    wanted = selector.get("matchLabels") or {}
    return (all(labels.get(k) == v for k, v in wanted.items())
            and all(requirement_holds(e, labels) for e in selector.get("matchExpressions")
                    or []))
