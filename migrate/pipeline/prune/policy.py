"""Which archives of one checkpoint directory go: the kubelet's names, and the rules.

Only names the kubelet gives (``checkpoint-POD_NAMESPACE-CONTAINER-TIME.tar``,
TIME in RFC 3339, pkg/kubelet/server/server.go at any release since 1.25)
are ever candidates: whatever else is in the directory (Podman's exports,
an operator's copies, names that do not parse) is reported and left alone.
The name cannot be split into namespace and container unambiguously (both
may hold dashes): ``--keep`` counts per ``POD_NAMESPACE-CONTAINER``, one
container of one pod but where a namespace and a container name split alike
(``web`` in ``team`` with container ``a-app``, and in ``team-a`` with ``app``).

The rules, applied in this order to the archives not protected:
``--older-than`` (the time in the name), then ``--keep N`` newest per
container, then ``--max-size`` (the oldest remaining go until the total,
protected ones included, fits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

_NAME = re.compile(
    r"^checkpoint-(?P<key>[^_/]+_.+)-"
    r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))\.tar$")

OLDER_THAN, KEEP, MAX_SIZE = "older-than", "keep", "max-size"


@dataclass(frozen=True)
class Rules:
    """What to prune; None: that rule is not applied."""

    older_than: int | None = None  # seconds
    keep: int | None = None  # newest archives kept per pod container
    max_size: int | None = None  # bytes, the directory's archives in total

    def given(self) -> bool:
        """Whether any rule is set (no rule would prune nothing, or everything)."""
        return any(v is not None for v in (self.older_than, self.keep, self.max_size))

    def to_dict(self) -> dict[str, int | None]:
        """JSON form."""
        return {"older_than": self.older_than, "keep": self.keep, "max_size": self.max_size}


@dataclass(frozen=True)
class Archive:
    """A kubelet checkpoint archive in the directory."""

    name: str
    key: str  # POD_NAMESPACE-CONTAINER
    taken: float  # the time in its name, seconds since the epoch
    size: int


def parse_name(name: str) -> tuple[str, float] | None:
    """(POD_NAMESPACE-CONTAINER, time taken) of a kubelet archive name; None otherwise."""
    m = _NAME.match(name)
    if not m:
        return None
    try:
        when = datetime.fromisoformat(m["time"].replace("Z", "+00:00"))
    except ValueError:
        return None
    return m["key"], when.timestamp()


@dataclass
class Selection:
    """The verdict on each archive: name -> rule that removes it, and those kept."""

    remove: dict[str, str] = field(default_factory=dict)
    kept: list[Archive] = field(default_factory=list)


def select(archives: list[Archive], rules: Rules, protected: set[str],
           now: float) -> Selection:
    """Apply ``rules`` to ``archives``; a name in ``protected`` is always kept."""
    out = Selection()
    newest_first = sorted(archives, key=lambda a: (a.taken, a.name), reverse=True)
    seen: dict[str, int] = {}
    for a in newest_first:
        seen[a.key] = seen.get(a.key, 0) + 1
        if a.name in protected:
            continue
        if rules.older_than is not None and a.taken < now - rules.older_than:
            out.remove[a.name] = OLDER_THAN
        elif rules.keep is not None and seen[a.key] > rules.keep:
            out.remove[a.name] = KEEP
    remaining = [a for a in newest_first if a.name not in out.remove]
    if rules.max_size is not None:
        total = sum(a.size for a in remaining)
        for a in reversed(remaining):  # oldest first
            if total <= rules.max_size:
                break
            if a.name not in protected:
                out.remove[a.name] = MAX_SIZE
                total -= a.size
    out.kept = [a for a in newest_first if a.name not in out.remove]
    return out
