"""`migrate prune` for node archives: which nodes, where each is pruned, the report.

Each node is pruned here when its checkpoint directory is readable here
(`--where local`, or `auto` when it is: MIGRATE_NODE_ROOT, or this machine
is the node, as `--build-on` decides), else by a Job on it (`--where node`,
or `auto` otherwise; onnode.py). What is protected is decided here, once,
before any Job starts (protect.py), and passed to the Jobs.

`--dir DIR` is what a node Job runs: DIR is the node's directory, the cluster
is not asked (the caller protected what it had to with ``--protect``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.adapters import kube
from migrate.errors import MigrateError, UsageError
from migrate.pipeline import names, nodebuild
from migrate.pipeline.preflight import locate
from migrate.pipeline.prune import archives, onnode, protect
from migrate.pipeline.prune.policy import Rules
from migrate.settings import DEFAULT_CHECKPOINT_DIR, Settings

Obj = dict[str, Any]


#: How far before the prune reads what runs need it keeps every archive taken: the nodes'
#: clocks may lag this machine's (names carry the node's time).
SINCE_MARGIN = 300.0


@dataclass(frozen=True)
class PruneRequest:
    """One `migrate prune` of node archives."""

    rules: Rules
    nodes: tuple[str, ...] = ()  # empty: every node
    where: str = "auto"  # auto | local | node
    tool_image: str | None = None
    dry_run: bool = False
    directory: Path | None = None  # --dir: this is nodes[0]'s directory; no cluster
    protect: tuple[str, ...] = ()  # archive names kept whatever the rules say
    protect_prefixes: tuple[str, ...] = ()
    timeout: float = 600.0  # seconds each node Job may take
    namespace: str | None = None  # where node Jobs run (default: the context's)
    protect_since: float | None = None  # archives taken since (epoch seconds) are kept


def _unreadable(settings: Settings, node: str) -> tuple[Path, str]:
    """The node's checkpoint directory as seen here, and why it cannot be pruned here
    ("" when it can)."""
    here = locate(node, str(DEFAULT_CHECKPOINT_DIR), settings)
    if not settings.node_root and os.uname().nodename.split(".")[0] != node.split(".")[0]:
        return here, f"this machine is not {node} and MIGRATE_NODE_ROOT is not set"
    if settings.node_root and not locate(node, "/", settings).is_dir():
        return here, f"{locate(node, '/', settings)} (MIGRATE_NODE_ROOT for {node}) does not " \
            "exist"
    if not (here if here.exists() else here.parent).is_dir():
        return here, f"{here} is not a directory here"
    if here.exists() and not os.access(here, os.R_OK | os.W_OK | os.X_OK):
        return here, f"{here} is not writable here"
    return here, ""


def _plan(settings: Settings, req: PruneRequest, node: str) -> tuple[str, Path]:
    here, why = _unreadable(settings, node)
    if req.where == "local" and why:
        raise UsageError(f"--where local: the archives of {node} cannot be pruned here: "
                         f"{why}", hint="set MIGRATE_NODE_ROOT to where this machine sees "
                         "each node's files (e.g. /mnt/nodes/{node}), or prune in a Job on "
                         "the node: --where node --tool-image IMAGE")
    if req.where == "node" or why:
        if not req.tool_image:
            first = ("--where node needs the tool's container image" if req.where == "node"
                     else f"the archives of {node} cannot be pruned here ({why}), and a "
                     "Job on the node needs the tool's container image")
            raise UsageError(first, hint="give --tool-image REF (or MIGRATE_TOOL_IMAGE): "
                             "the migrate image, built from the Containerfile and pushed")
        nodebuild.check_tool_image(req.tool_image)
        return "node", here
    return "local", here


def _failed(node: str, e: MigrateError, where: str) -> Obj:
    return {"node": node, "where": where, "error": e.message, "hint": e.hint}


def _summary(req: PruneRequest, reports: list[Obj]) -> Obj:
    done = [r for r in reports if "error" not in r]
    return {"dry_run": req.dry_run, "rules": req.rules.to_dict(), "nodes": reports,
            "pruned": sum(len(r["pruned"]) + r["omitted"] for r in done),
            "pruned_bytes": sum(r["pruned_bytes"] for r in done),
            "failed_nodes": [r["node"] for r in reports if "error" in r]}


def check_rules(rules: Rules) -> None:
    """A prune needs a rule: without one it would keep everything (or, read as "all",
    delete every archive)."""
    if not rules.given():
        raise UsageError("say what to prune: --older-than DURATION, --keep N or "
                         "--max-size SIZE", hint="e.g. `migrate prune --older-than 7d "
                         "--keep 2`; --dry-run lists what would go")


def prune_here(req: PruneRequest) -> Obj:
    """`--dir`: prune one directory as ``req.nodes[0]``'s, without the cluster."""
    check_rules(req.rules)
    if req.directory is None or len(req.nodes) != 1:
        raise UsageError("--dir needs exactly one --node: the node the directory is from")
    report = archives.prune_directory(req.nodes[0], req.directory, req.rules,
                                      set(req.protect), req.protect_prefixes,
                                      dry_run=req.dry_run, now=time.time(), tighten=True,
                                      since=req.protect_since)
    return _summary(req, [report])


def prune_nodes(settings: Settings, req: PruneRequest) -> Obj:
    """Prune the archives of ``req.nodes`` (all nodes when none), each where it can be."""
    check_rules(req.rules)
    cluster = kube.connect(settings.kube)
    for node in req.nodes:
        names.check_node(cluster, node, "--node")
    targets = list(req.nodes) or sorted(n["metadata"]["name"] for n in kube.list_nodes(cluster))
    plans = {node: _plan(settings, req, node) for node in targets}
    # What runs need is read once, here; a node's Job lists its directory later (after
    # its scheduling and image pull). An archive taken since, by a migration that
    # claimed its pod meanwhile, is not among what was read: archives taken from a
    # margin before now on are kept, whatever the rules say.
    since = time.time() - SINCE_MARGIN
    kept = protect.Protected()
    protect.from_journals(settings.state_dir, kept)
    protect.from_claims(cluster, settings.state_dir, kept)
    namespace = req.namespace or cluster.namespace
    jobs: dict[str, str] = {}
    reports: dict[str, Obj] = {}
    try:
        for node, (where, _) in plans.items():
            if where == "node":
                try:
                    jobs[node] = onnode.start(cluster, _node_prune(req, namespace, node, kept,
                                                                   since))
                except MigrateError as e:
                    reports[node] = _failed(node, e, "node")
        for node, (where, here) in plans.items():
            if where == "local":
                reports[node] = _local(req, kept, node, here, since)
        for node, job in jobs.items():
            try:
                reports[node] = onnode.collect(cluster, namespace, job, req.timeout)
            except MigrateError as e:
                reports[node] = _failed(node, e, f"job {job}")
    finally:
        for job in jobs.values():
            kube.delete_job(cluster, namespace, job)
    return _summary(req, [reports[n] for n in targets])


def _node_prune(req: PruneRequest, namespace: str, node: str,
                kept: protect.Protected, since: float) -> onnode.NodePrune:
    assert req.tool_image is not None  # _plan refused a node Job without it
    return onnode.NodePrune(
        namespace=namespace, node=node, tool_image=req.tool_image, rules=req.rules,
        protected=tuple(sorted(kept.on(node) | set(req.protect))),
        protected_prefixes=tuple(kept.prefixes()) + req.protect_prefixes,
        protected_since=since, dry_run=req.dry_run, deadline=int(req.timeout))


def _local(req: PruneRequest, kept: protect.Protected, node: str, here: Path,
           since: float) -> Obj:
    if not here.exists() and not here.is_symlink():
        return archives.nothing_yet(node, here)
    try:
        return archives.prune_directory(
            node, here, req.rules, kept.on(node) | set(req.protect),
            tuple(kept.prefixes()) + req.protect_prefixes, dry_run=req.dry_run,
            now=time.time(), since=since)
    except MigrateError as e:
        return _failed(node, e, "local")
