"""The archives a prune must keep: those a running or pending migration still needs.

Two sources, because a migration may have been started here or elsewhere:

- the journals on this machine: a run that is running or interrupted (a
  drain's in-flight pods are runs of their own, each with its journal)
  names every archive it made in its ``checkpointed`` actions, and an
  interrupted run resumes from them; an archive it removed already is not
  named again;
- the cluster: a pod a migration claims (``migrate.dev/claimed-by``) whose
  run has not ended, as far as this machine can judge (claims.judge: a
  claim whose journal is elsewhere counts as live). Every archive of that
  pod is kept, since its run's journal, which would say which, is not here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from migrate.adapters import kube
from migrate.pipeline import claims
from migrate.pipeline.journal import Journal

Obj = dict[str, Any]
_LIVE = frozenset({"running", "interrupted"})


@dataclass
class Protected:
    """Per node, the archive names to keep; and the pods whose every archive is kept."""

    names: dict[str, set[str]] = field(default_factory=dict)
    pods: set[tuple[str, str]] = field(default_factory=set)  # (namespace, pod)

    def on(self, node: str) -> set[str]:
        """The archive names its journals keep on ``node``."""
        return set(self.names.get(node, set()))

    def prefixes(self) -> list[str]:
        """The claimed pods as archive name prefixes (for a Job that does the matching)."""
        return sorted(f"checkpoint-{pod}_{ns}-" for ns, pod in self.pods)


def _live_runs(state_dir: Path | None) -> Iterator[Journal]:
    """The migrations journaled here that are running or interrupted."""
    if state_dir is None:
        return
    for journal in Journal.history(state_dir):
        if journal.kind == "pod" and journal.current_outcome() in _LIVE:
            yield journal


def from_journals(state_dir: Path | None, into: Protected) -> None:
    """Add the archives of every live run journaled here."""
    for journal in _live_runs(state_dir):
        removed = {a.get("path") for a in journal.actions if a["action"] == "archive removed"}
        for a in journal.actions:
            if a["action"] == "checkpointed" and a.get("archive") not in removed:
                node = str(a.get("node", ""))
                into.names.setdefault(node, set()).add(PurePosixPath(a["archive"]).name)


def images_of_live_runs(state_dir: Path | None) -> tuple[set[str], set[str]]:
    """The checkpoint images a live run journaled here needs: (the references its plan
    names, REGISTRY/REPOSITORY:TAG; the digests its build pushed). An interrupted run
    between its push and its restored pod is named by no pod yet."""
    refs: set[str] = set()
    digests: set[str] = set()
    for journal in _live_runs(state_dir):
        plan = journal.stage("preflight").data.get("plan") or {}
        refs.update(str(r) for r in (plan.get("images") or {}).values())
        built = journal.stage("build").data.get("images") or {}
        digests.update(str(i.get("digest", "")) for i in built.values() if isinstance(i, dict))
    return refs, digests - {""}


def from_claims(cluster: kube.Cluster, state_dir: Path | None, into: Protected) -> None:
    """Add every pod a live migration claims."""
    for pod in kube.list_pods(cluster, None):
        run = claims.holder_of(pod)
        if run and not claims.judge(state_dir, pod, run).stale:
            meta = pod["metadata"]
            into.pods.add((str(meta.get("namespace", "")), str(meta.get("name", ""))))
