"""Which container of a pod a command acts on, as kubectl decides it.

Order: the name given with ``-c``; the pod's
``kubectl.kubernetes.io/default-container`` annotation; the only container.
Otherwise the choice is the operator's, and the error lists the names.
Init and ephemeral containers are accepted by name (the kubelet checkpoints
them too) but never chosen by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from migrate.errors import NotFoundError, UsageError

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"


def _names(spec: Mapping[str, Any], key: str) -> list[str]:
    return [c["name"] for c in spec.get(key) or [] if isinstance(c, Mapping) and "name" in c]


def resolve_container(pod: Mapping[str, Any], requested: str | None) -> str:
    """The container name to use in ``pod`` (a Pod as a dict, API field names)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    where = f"pod {meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    main = _names(spec, "containers")
    every = main + _names(spec, "initContainers") + _names(spec, "ephemeralContainers")
    if requested is not None:
        if requested not in every:
            raise NotFoundError(f"{where} has no container {requested!r}",
                                hint=f"its containers: {', '.join(every) or 'none'}")
        return requested
    default = (meta.get("annotations") or {}).get(DEFAULT_CONTAINER)
    if default:
        if default not in main:
            raise NotFoundError(
                f"{where}: its {DEFAULT_CONTAINER} annotation names {default!r}, "
                "which is not one of its containers",
                hint=f"choose one with -c: {', '.join(main)}")
        return str(default)
    if len(main) == 1:
        return main[0]
    if not main:
        raise NotFoundError(f"{where} has no containers", hint="check the pod's spec")
    raise UsageError(f"{where} has {len(main)} containers; say which with -c",
                     hint=f"its containers: {', '.join(main)}")
