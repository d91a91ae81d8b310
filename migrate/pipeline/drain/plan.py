"""The drain's plan: every pod on the node, what happens to it and why.

Read-only: it lists the node's pods (all namespaces), the candidate
destinations, every pod (for what each destination already holds) and the
disruption budgets; `classify` decides each pod's action, `place` the
destination of each pod to migrate. A pod another migration has claimed
(claims.py) is blocked, whatever it would be otherwise. Pods no destination fits are evicted
(--evict-rest, the default) or left blocked (--skip-rest), which also
leaves the pods that would be evicted where they are. A bare pod is evicted only with
--force: nothing would start it again, so kubectl drain refuses it too. A pod with
emptyDir volumes is migrated or evicted only with --delete-emptydir-data, as kubectl
drain asks: either way its data there is gone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from migrate.adapters import kube
from migrate.errors import ClusterError, InvalidError, UsageError
from migrate.pipeline import claims, names, nodes, placement
from migrate.pipeline.choices import BuildOn
from migrate.pipeline.drain import place
from migrate.pipeline.drain.budgets import covering
from migrate.pipeline.drain.classify import BLOCKED, EVICT, MIGRATE, SKIP, classify
from migrate.pipeline.preflight import controller_of, local_data

Obj = dict[str, Any]
#: Why a drain leaves a bare pod it would evict (kubectl drain refuses such pods the same way).
BARE_POD = ("a bare pod: evicting it deletes it for good, no controller starts it again "
            "(--force evicts it)")
#: Why a drain leaves a pod with emptyDir volumes (kubectl drain: "Pods with local storage
#: (use --delete-emptydir-data to override)"): migrated or evicted, the source pod goes
#: and its emptyDirs with it; a checkpoint holds none of their files.
LOCAL_DATA = ("emptyDir volume(s) {}: their data on the node is deleted with the pod, "
              "migrated or evicted (--delete-emptydir-data allows it)")


@dataclass(frozen=True)
class DrainRequest:
    """One `migrate drain` (kept in its journal, so a resume runs the same)."""

    node: str
    to: str | None = None
    to_selector: str | None = None
    pod_selector: str | None = None
    concurrency: int = 4
    timeout: float = 300.0  # seconds each pod may take: budget waits, restore, eviction
    evict_rest: bool = True
    dry_run: bool = False
    registry: str | None = None
    build_on: BuildOn = BuildOn.auto
    tool_image: str | None = None
    registry_secret: str | None = None
    attempts: int = 3  # tries per pod when a migration fails for a transient reason
    encrypt_for: tuple[str, ...] = ()  # --encrypt-for recipients (file names) of every image
    force: bool = False  # evict bare pods too (gone for good: no controller starts them again)
    delete_emptydir_data: bool = False  # move or evict pods with emptyDir volumes too

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**asdict(self), "build_on": self.build_on.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrainRequest:
        """Inverse of `to_dict`."""
        return cls(**{**data, "encrypt_for": tuple(data.get("encrypt_for") or ()),
                      "build_on": BuildOn(data.get("build_on", BuildOn.auto)),
                      # Drains journaled before the flag existed moved such pods.
                      "delete_emptydir_data": data.get("delete_emptydir_data", True)})


@dataclass
class PodPlan:
    """One pod of the drained node and what the drain does with it."""

    namespace: str
    name: str
    uid: str
    action: str  # migrate | evict | skip | blocked
    reason: str
    owner: dict[str, str] | None = None
    destination: str | None = None
    budgets: list[str] = field(default_factory=list)  # PDB names covering the pod

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PodPlan:
        """Inverse of `to_dict`."""
        return cls(**data)


@dataclass
class Snapshot:
    """What the plan is made from (read once)."""

    on_node: list[Obj]
    selected: set[str]  # uids --pod-selector matched (all, without one)
    destinations: list[Obj]
    running: list[Obj]  # every pod holding a node's resources
    budgets: list[Obj]
    source: Obj | None = None  # the drained node (None: taken to be a CRI-O node)


def _listed(what: str, fn: Any, *args: Any, **kw: Any) -> Any:
    """A listing with a user-given selector: the API server's 400 is a usage error."""
    try:
        return fn(*args, **kw)
    except InvalidError as e:  # 400: the API server could not parse the selector
        raise UsageError(f"{what}: {e.message}", hint="label selectors look like "
                         "app=web,tier!=db or 'env in (prod,staging)'") from e


def gather(cluster: kube.Cluster, req: DrainRequest) -> Snapshot:
    """Read everything the plan needs; refuse a --to node no pod could go to."""
    source = names.read_node(cluster, req.node)  # a node that does not exist is an error
    on_node = f"spec.nodeName={req.node}"
    pods = kube.list_pods(cluster, None, field_selector=on_node)
    selected = {p["metadata"]["uid"] for p in pods}
    if req.pod_selector:
        selected = {p["metadata"]["uid"] for p in _listed(
            "--pod-selector", kube.list_pods, cluster, None, field_selector=on_node,
            label_selector=req.pod_selector)}
    if req.to:
        destinations = [names.read_node(cluster, req.to, "--to")]
        why = place.node_unfit(destinations[0], req.node)
        if why:
            runtime = nodes.runtime_of(destinations[0])
            raise ClusterError(f"--to {req.to}: {why}", hint="pick another node, or let the "
                               "drain choose (omit --to)" + (
                                   f"; {runtime.restore_fix}" if runtime.name == "containerd"
                                   and not runtime.can_restore else ""))
    elif req.to_selector:
        destinations = _listed("--to-selector", kube.list_nodes_matching, cluster,
                               req.to_selector)
    else:
        destinations = kube.list_nodes(cluster)
    running = [p for p in kube.list_pods(cluster, None) if placement.occupying(p)]
    return Snapshot(pods, selected, destinations, running, kube.list_pdbs(cluster, None),
                    source)


def _entry(pod: Obj, action: str, reason: str, budgets: list[Obj]) -> PodPlan:
    meta = pod["metadata"]
    owner = controller_of(pod)
    return PodPlan(meta.get("namespace", ""), meta["name"], meta.get("uid", ""), action, reason,
                   {"kind": owner[0], "name": owner[1]} if owner else None,
                   budgets=covering(pod, budgets))


def _unmovable(source: Obj | None) -> str:
    """Why no pod can migrate off ``source`` ("" when they can): its runtime's archives
    are not CRI-O's."""
    if source is None:
        return ""
    runtime = nodes.runtime_of(source)
    return "" if runtime.can_source else \
        f"{source['metadata']['name']} cannot be a source: {runtime.source_reason}"


def _evict(e: PodPlan, why: str, req: DrainRequest, *, instead: bool = False) -> None:
    """Evict ``e`` for ``why`` as the options allow. ``instead``: it was to migrate and
    cannot. --skip-rest leaves it on the node (blocked if it was to migrate: that is not
    done); a bare pod stays blocked without --force (nothing would start it again)."""
    if not req.evict_rest:
        e.action, e.reason = (BLOCKED, why) if instead else \
            (SKIP, f"left on the node (--skip-rest): {why}")
    elif e.owner is None and not req.force:
        e.action, e.reason = BLOCKED, f"{why}; {BARE_POD}"
    else:
        e.action, e.reason = EVICT, f"{why}; evicted instead (--evict-rest)" if instead else why


def make_plan(snap: Snapshot, req: DrainRequest,
              claimed: dict[str, str] | None = None) -> list[PodPlan]:
    """Classify and place every pod of the snapshot (pure: no API calls).

    ``claimed``: uid -> why, for pods another migration holds (claims.py). They
    are blocked, whatever else they would be: neither migrated a second time
    nor evicted from under the run moving them.
    """
    entries = [_entry(p, *classify(p, selected=p["metadata"]["uid"] in snap.selected),
                      snap.budgets) for p in snap.on_node]
    for e in entries:
        if e.uid in (claimed or {}) and e.action != SKIP:
            e.action, e.reason = BLOCKED, (claimed or {})[e.uid]
    if not req.delete_emptydir_data:
        for pod, e in zip(snap.on_node, entries, strict=True):
            volumes = local_data(pod)
            if volumes and (e.action == MIGRATE or (e.action == EVICT and req.evict_rest)):
                e.action, e.reason = BLOCKED, LOCAL_DATA.format(", ".join(volumes))
    for e in entries:
        if e.action == EVICT:
            _evict(e, e.reason, req)
    by_node: dict[str, list[Obj]] = defaultdict(list)
    for pod in snap.running:
        by_node[(pod.get("spec") or {}).get("nodeName") or ""].append(pod)
    loads = [placement.load_of(n, by_node[n["metadata"]["name"]]) for n in snap.destinations
             if place.node_unfit(n, req.node) is None]
    unmovable = _unmovable(snap.source)
    if unmovable:  # nothing leaves this node with its memory: the rest as if nowhere fit
        for e in entries:
            if e.action == MIGRATE:
                _evict(e, unmovable, req, instead=True)
    movers = [p for p, e in zip(snap.on_node, entries, strict=True) if e.action == MIGRATE]
    nowhere = place.NOWHERE + (f" among the nodes --to-selector {req.to_selector} "
                               "selects" if req.to_selector else "")
    placed = place.place(movers, loads, nowhere)
    for e in entries:
        if e.action == MIGRATE:
            e.destination, why = placed[e.uid]
            if e.destination is None:
                _evict(e, why, req, instead=True)
    order = {MIGRATE: 0, EVICT: 1, BLOCKED: 2, SKIP: 3}
    return sorted(entries, key=lambda e: (order[e.action], e.namespace, e.name))


def plan(cluster: kube.Cluster, req: DrainRequest, state_dir: Path | None) -> list[PodPlan]:
    """Read the cluster and make the plan; ``state_dir``: where the journals of the runs
    that may claim its pods are (their claims are judged by them)."""
    snap = gather(cluster, req)
    claimed = {p["metadata"].get("uid", ""): why for p in snap.on_node
               if (why := claims.blocked_reason(state_dir, p)) is not None}
    return make_plan(snap, req, claimed)
