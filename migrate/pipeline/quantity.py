"""Resource quantities and what a pod requests, as the scheduler counts them.

Quantities are Kubernetes' (``500m``, ``1.5``, ``128Mi``, ``1G``, ``1e3``),
read as exact decimals. A pod's request for a resource is what its
containers request (a container that sets only a limit requests its limit,
as the API server defaults it) plus its sidecars (init containers with
``restartPolicy: Always``) plus the pod overhead: that is what the restored
copy will hold on its node, since ordinary init containers do not run again.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from migrate.errors import InputError

Obj = dict[str, Any]
Resources = dict[str, Decimal]

_SUFFIX: dict[str, int | Decimal] = {
    "": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(.*)$")
_EXPONENT = re.compile(r"^[eE]([+-]?\d+)$")

#: What kube-scheduler's scoring assumes a container requests when it says nothing
#: (NonZeroRequested): without it every empty pod would look free to place anywhere.
SCORE_DEFAULTS: Resources = {"cpu": Decimal("0.1"), "memory": Decimal(200 * 2**20)}


def parse_quantity(text: Any) -> Decimal:
    """A Kubernetes quantity as a decimal in base units (cores, bytes, counts)."""
    m = _QUANTITY.match(str(text).strip())
    if m is None:
        raise InputError(f"{text!r} is not a Kubernetes quantity")
    number, suffix = m.groups()
    try:
        if suffix in _SUFFIX:
            return Decimal(number) * _SUFFIX[suffix]
        exp = _EXPONENT.match(suffix)
        if exp is not None:
            return Decimal(number).scaleb(int(exp[1]))
    except InvalidOperation:
        pass
    raise InputError(f"{text!r} is not a Kubernetes quantity")


def _container(c: Obj) -> Resources:
    res = c.get("resources") or {}
    merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
    return {k: parse_quantity(v) for k, v in merged.items()}


def add(into: Resources, more: Resources) -> Resources:
    """``into`` + ``more``, key by key (a new dict)."""
    out = dict(into)
    for k, v in more.items():
        out[k] = out.get(k, Decimal(0)) + v
    return out


def pod_requests(pod: Obj, *, scoring: bool = False) -> Resources:
    """What the pod's restored copy requests on its node (``pods``: 1).

    ``scoring``: count kube-scheduler's non-zero defaults (100m CPU, 200 MiB) for
    a container that requests no CPU or memory, for ranking nodes, never for fit.
    """
    spec = pod.get("spec") or {}
    sidecars = [c for c in spec.get("initContainers") or []
                if c.get("restartPolicy") == "Always"]
    total: Resources = {"pods": Decimal(1)}
    for c in [*(spec.get("containers") or []), *sidecars]:
        own = _container(c)
        if scoring:
            own = {**SCORE_DEFAULTS, **{k: v for k, v in own.items() if v}}
        total = add(total, own)
    return add(total, {k: parse_quantity(v) for k, v in (spec.get("overhead") or {}).items()})


def show(resource: str, value: Decimal) -> str:
    """A quantity for people: CPU in millicores, memory in binary units."""
    if resource == "cpu":
        return f"{int(value * 1000)}m"
    if resource in ("memory", "ephemeral-storage") or resource.startswith("hugepages-"):
        from migrate.units import human_size

        return human_size(int(value))
    return f"{value.normalize():f}"
