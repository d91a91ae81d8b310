"""Prune one node's checkpoint directory where this process can read it.

What `migrate prune` does for a node whose directory is visible here, and
what the node Job runs (onnode.py). The report is one JSON object per node
(schemas/prune.schema.json, ``nodes[]``); `compact` cuts it to what a
termination message can carry.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrate.adapters import checkpoint_dir
from migrate.pipeline.prune.policy import Archive, Rules, parse_name, select

Obj = dict[str, Any]

#: Kubernetes keeps 4096 bytes of a termination message; leave room for the JSON's end.
MESSAGE_BYTES = 4000
_LISTS = ("pruned", "failed", "skipped", "protected")


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _candidates(found: list[checkpoint_dir.Entry]) -> tuple[list[Archive], list[Obj]]:
    """The kubelet's archives, and the other ``checkpoint-*`` names with why they stay."""
    archives, skipped = [], []
    for e in sorted(found, key=lambda e: e.name):
        if not e.name.startswith("checkpoint-"):
            continue  # not the kubelet's: not ours to judge (as `migrate list` ignores them)
        parsed = parse_name(e.name)
        if not e.regular:
            skipped.append({"name": e.name, "why": f"is a {e.kind}, not a regular file"})
        elif parsed is None:
            skipped.append({"name": e.name, "why": "not named as the kubelet names archives"})
        else:
            archives.append(Archive(e.name, parsed[0], parsed[1], e.size))
    return archives, skipped


def prune_directory(node: str, directory: Path, rules: Rules, protected: set[str],
                    prefixes: tuple[str, ...] = (), *, dry_run: bool, now: float,
                    tighten: bool = False, since: float | None = None) -> Obj:
    """Select and (unless ``dry_run``) remove archives in ``directory``; the node's report.

    Names in ``protected``, and names starting with one of ``prefixes`` (the
    archives of a claimed pod), are kept whatever the rules say. ``tighten``:
    an empty directory is made 0700 (a node Job's mount may have just made it).
    ``since``: archives taken then or later are kept too (a migration may have begun
    after the caller read what runs need).
    """
    with checkpoint_dir.opened(directory) as fd:
        if tighten and not dry_run:
            checkpoint_dir.tighten_if_empty(fd)
        found = checkpoint_dir.entries(fd)
        archives, skipped = _candidates(found)
        protected = protected | {a.name for a in archives
                                 if (prefixes and a.name.startswith(prefixes))
                                 or (since is not None and a.taken >= since)}
        chosen = select(archives, rules, protected, now)
        by_name = {e.name: e for e in found}
        pruned: list[Obj] = []
        failed: list[Obj] = []
        for a in archives:
            rule = chosen.remove.get(a.name)
            if rule is None:
                continue
            item = {"name": a.name, "size": a.size, "taken": _rfc3339(a.taken), "rule": rule}
            why = "" if dry_run else checkpoint_dir.remove(fd, by_name[a.name])
            if why in ("", "gone"):  # gone: removed by someone else meanwhile, as wanted
                pruned.append(item)
            else:
                failed.append({**item, "why": why})
    names = {a.name for a in archives}
    return {"node": node, "directory": str(directory), "where": "local",
            "pruned": pruned, "pruned_bytes": sum(p["size"] for p in pruned),
            "kept": len(chosen.kept), "kept_bytes": sum(a.size for a in chosen.kept),
            "protected": sorted(protected & names), "skipped": skipped, "failed": failed,
            "omitted": 0}


def nothing_yet(node: str, directory: Path) -> Obj:
    """The report of a node with no checkpoint directory: it never took a checkpoint."""
    return {"node": node, "directory": str(directory), "where": "local", "pruned": [],
            "pruned_bytes": 0, "kept": 0, "kept_bytes": 0, "protected": [], "skipped": [],
            "failed": [], "omitted": 0}


def compact(report: Obj, limit: int = MESSAGE_BYTES) -> str:
    """``report`` as JSON of at most ``limit`` bytes: list items are dropped from the end
    (counted in ``omitted``); the totals stay exact."""
    out = json.loads(json.dumps(report))
    text = json.dumps(out, separators=(",", ":"))
    while len(text.encode()) > limit:
        longest = max(_LISTS, key=lambda k: len(out[k]))
        if not out[longest]:
            break
        out[longest].pop()
        out["omitted"] += 1
        text = json.dumps(out, separators=(",", ":"))
    return text
