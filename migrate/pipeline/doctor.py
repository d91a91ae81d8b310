"""Preflight checks: can this cluster, these nodes and this registry migrate a pod?

Each check is one row, PASS, WARN, FAIL or SKIP, with what was found and a
hint. Checks never stop at the first problem: an operator fixing a cluster
wants the whole list. When the API server cannot be reached, the checks that
need it are SKIPped rather than failed a second time.

The static checks read versions; with probes (probe.py) a destination is
proved by a real checkpoint, push and restore, one row per node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from migrate.adapters import kube
from migrate.adapters.buildah import buildah_version
from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.reference import Reference, check_prefix
from migrate.errors import MigrateError, NotFoundError, UsageError
from migrate.pipeline import names, nodes
from migrate.pipeline.probe import ProbeRequest, ProbeResult, probe
from migrate.settings import RetrySettings, Settings


class Status(StrEnum):
    """How a check came out."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Check:
    """One row of the report."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    def to_dict(self) -> dict[str, str | None]:
        """JSON form (schemas/doctor.schema.json)."""
        return {"check": self.name, "status": self.status.value, "detail": self.detail,
                "hint": self.hint or None}


@dataclass(frozen=True)
class DoctorRequest:
    """What to check besides the API server and RBAC."""

    nodes: tuple[str, ...] = ()  # empty: every node
    registry: str | None = None  # HOST[:PORT][/REPOSITORY]
    buildah: str = "buildah"  # the executable to look for
    probe: ProbeRequest | None = None  # destinations to prove end to end


@dataclass
class DoctorReport:
    """Every check, in the order they ran."""

    checks: list[Check] = field(default_factory=list)
    probes: list[ProbeResult] | None = None  # None: no --probe

    def count(self, status: Status) -> int:
        """How many checks came out ``status``."""
        return sum(c.status is status for c in self.checks)

    @property
    def probes_failed(self) -> int:
        """How many probes failed."""
        return sum(r.status != "PASS" for r in self.probes or [])

    def to_dict(self) -> dict[str, Any]:
        """JSON form (schemas/doctor.schema.json)."""
        out: dict[str, Any] = {"checks": [c.to_dict() for c in self.checks],
                               "summary": {s.value.lower(): self.count(s) for s in Status}}
        if self.probes is not None:
            out["probes"] = [r.to_dict() for r in self.probes]
        return out


#: (verb, resource, subresource, group, needed for, FAIL or only WARN when denied)
PERMISSIONS: tuple[tuple[str, str, str, str, str, Status], ...] = (
    ("get", "pods", "", "", "read the pod to migrate", Status.FAIL),
    ("watch", "pods", "", "", "wait for the restored pod", Status.FAIL),
    ("create", "pods", "", "", "create the restored pod", Status.FAIL),
    ("delete", "pods", "", "", "remove the source pod after the switch-over", Status.FAIL),
    ("patch", "pods", "", "", "claim the source pod (one migration at a time) and hand it "
     "over", Status.FAIL),
    ("create", "nodes", "proxy", "", "checkpoint through the API server (--via apiserver)",
     Status.FAIL),
    ("create", "jobs", "", "batch", "build the image on the source node (--build-on node)",
     Status.WARN),
    ("create", "pods", "eviction", "", "evict what cannot move (migrate drain)", Status.WARN),
    ("patch", "nodes", "", "", "cordon a node (migrate drain)", Status.WARN),
)


def _gate(version: dict[str, Any]) -> Check:
    """The API server's version decides whether the checkpoint API is on by default."""
    text = str(version.get("gitVersion") or f"v{version.get('major')}.{version.get('minor')}")
    try:
        minor = (int(str(version.get("major"))), int(str(version.get("minor")).rstrip("+")))
    except ValueError:
        return Check("api", Status.WARN, f"reachable, version {text} not understood",
                     "the checkpoint API needs Kubernetes 1.25+ (on by default from 1.30)")
    if minor >= (1, 30):
        return Check("api", Status.PASS, f"reachable, Kubernetes {text}: checkpoint API "
                     "(ContainerCheckpoint, beta) on by default", "")
    if minor >= (1, 25):
        return Check("api", Status.WARN, f"reachable, Kubernetes {text}: ContainerCheckpoint "
                     "is alpha, off unless enabled",
                     "enable the ContainerCheckpoint feature gate on the kubelets, or upgrade "
                     "to 1.30+")
    return Check("api", Status.FAIL, f"reachable, Kubernetes {text}: no checkpoint API",
                 "checkpoints need Kubernetes 1.25 or later")


def _rbac(cluster: kube.Cluster) -> Iterator[Check]:
    for verb, resource, sub, group, why, severity in PERMISSIONS:
        full = f"{resource}/{sub}" if sub else resource
        name = f"rbac: {verb} {full}" + (f" ({group})" if group else "")
        try:
            access = kube.can_i(cluster, verb, resource, group=group, subresource=sub,
                                namespace="" if resource == "nodes" else cluster.namespace)
        except MigrateError as e:
            # One row, not one per permission: the next reviews would fail the same way.
            yield Check("rbac", Status.WARN, f"cannot review access: {e.message}",
                        "the API server does not answer SelfSubjectAccessReviews; check "
                        "the permissions listed in the README by hand (kubectl auth can-i)")
            return
        if access.allowed:
            yield Check(name, Status.PASS, f"allowed: {why}")
        else:
            where = "" if resource == "nodes" else f" in namespace {cluster.namespace}"
            yield Check(name, severity, f"denied{where}: needed to {why}",
                        f"grant {verb} on {full}" + (f" in API group {group}" if group else "")
                        + " (`migrate deploy` emits the role the tool needs)")


def _runtime_check(node: dict[str, Any]) -> Check:
    name = node["metadata"]["name"]
    rt = nodes.runtime_of(node)
    row = f"node {name}: runtime"
    if rt.can_restore and rt.restore_default == "on":
        return Check(row, Status.PASS, f"{rt.shown}: checkpoint and restore", rt.reason)
    if rt.can_restore:
        # The release's default refuses restores: only its configuration can say otherwise,
        # and the API does not show that (`--probe` tries).
        what = {"disabled": "checkpoint and restore off by default",
                "off": "checkpoint only by default"}.get(
                    rt.restore_default, "checkpoint, restore probably off by default")
        return Check(row, Status.WARN, f"{rt.shown}: {what}", rt.reason)
    if rt.can_checkpoint:
        # containerd: it checkpoints, but CRI-O restores none of its archives, and it
        # restores none of CRI-O's: pods neither leave it nor land on it.
        return Check(row, Status.WARN, f"{rt.shown}: checkpoints, but neither a source nor "
                     "a destination", rt.reason)
    return Check(row, Status.FAIL, rt.shown if rt.name else "unknown runtime", rt.reason)


def _node_checks(node: dict[str, Any]) -> Iterator[Check]:
    name = node["metadata"]["name"]
    yield _runtime_check(node)
    ok, why = nodes.ready(node)
    yield (Check(f"node {name}: ready", Status.PASS, "Ready")
           if ok else Check(f"node {name}: ready", Status.FAIL, f"not Ready: {why}",
                            "a node that is not Ready can neither checkpoint nor restore"))
    taints = nodes.blocking_taints(node)
    if nodes.cordoned(node) or taints:
        what = ", ".join((["cordoned"] if nodes.cordoned(node) else []) + taints)
        yield Check(f"node {name}: schedulable", Status.WARN, what,
                    "a source, but not a destination unless the pod tolerates this "
                    "(`migrate uncordon` / kubectl uncordon)")
    else:
        yield Check(f"node {name}: schedulable", Status.PASS, "schedulable")


def _pulls_check(cluster: kube.Cluster, node: dict[str, Any]) -> Check:
    """How many images the node's kubelet pulls at once. One at a time is the kubelet's
    default (serializeImagePulls): the restores of a drain onto that node then wait
    in line for their checkpoint images, however many migrations run at once."""
    name = node["metadata"]["name"]
    row = f"node {name}: image pulls"
    if not nodes.ready(node)[0]:
        # Its kubelet may be gone: the proxy would wait out a connection to it.
        return Check(row, Status.SKIP, "not asked: the node is not Ready")
    try:
        config = kube.kubelet_config(cluster, name)
    except MigrateError as e:
        return Check(row, Status.SKIP, f"cannot read the kubelet's configuration: {e.message}",
                     e.hint or "")
    at_once = config.get("maxParallelImagePulls")
    if config.get("serializeImagePulls", True) is not False:
        return Check(row, Status.PASS, "one at a time (the kubelet's serializeImagePulls): "
                     "restores onto this node pull their images in turn")
    if isinstance(at_once, int) and at_once > 0:
        return Check(row, Status.PASS, f"{at_once} at once (maxParallelImagePulls)")
    return Check(row, Status.PASS, "any number at once (serializeImagePulls false)")


def _read(cluster: kube.Cluster, wanted: tuple[str, ...]) -> Iterator[dict[str, Any] | Check]:
    """The named nodes (a FAIL row for each that cannot be read), or every node."""
    if not wanted:
        yield from kube.list_nodes(cluster)
        return
    for node_name in wanted:
        try:
            yield names.read_node(cluster, node_name)
        except NotFoundError as e:
            yield Check(f"node {node_name}", Status.FAIL, e.message, e.hint or "")


def _nodes(cluster: kube.Cluster, names: tuple[str, ...]) -> Iterator[Check]:
    seen = 0
    try:
        for node in _read(cluster, names):
            seen += 1
            if isinstance(node, Check):
                yield node
                continue
            yield from _node_checks(node)
            if names:  # a kubelet request each: only for the nodes asked about
                yield _pulls_check(cluster, node)
    except MigrateError as e:
        yield Check("nodes", Status.FAIL, e.message, e.hint or "")
        return
    if not seen:
        yield Check("nodes", Status.FAIL, "the cluster has no nodes", "")


def _cluster(settings: Settings, req: DoctorRequest) -> Iterator[Check]:
    try:
        cluster = kube.connect(settings.kube)
        version = kube.server_version(cluster)
    except MigrateError as e:
        yield Check("api", Status.FAIL, e.message, e.hint or "")
        yield Check("rbac", Status.SKIP, "the API server was not reached", "")
        yield Check("nodes", Status.SKIP, "the API server was not reached", "")
        return
    yield _gate(version)
    yield from _rbac(cluster)
    yield from _nodes(cluster, req.nodes)


def registry_reference(registry: str) -> Reference:
    """``HOST[:PORT][/REPOSITORY]`` as a reference (a repository is needed for token scopes)."""
    host, _, repository = check_prefix(registry).partition("/")
    return Reference(host, repository.strip("/") or "migrate/doctor", "latest", None)


def _registry(settings: Settings, registry: str) -> Check:
    ref = registry_reference(registry)
    name = f"registry {ref.registry}"
    client = RegistryClient(ref, settings.registry)
    try:
        client.login()
    except MigrateError as e:
        return Check(name, Status.FAIL, e.message, e.hint or "")
    who = (f"authenticated as {client.username}" if client.username
           else "anonymous access accepted")
    return Check(name, Status.PASS, f"reachable, {who} (push scope {ref.repository})")


def _buildah(executable: str) -> Check:
    try:
        return Check("buildah", Status.PASS, f"buildah {buildah_version(executable)}")
    except MigrateError as e:
        return Check("buildah", Status.WARN, e.message,
                     f"only --builder buildah needs it (the native builder does not); {e.hint}")


def doctor(settings: Settings, req: DoctorRequest,
           on_check: Callable[[Check], None] = lambda c: None,
           on_probe: Callable[[ProbeResult], None] = lambda r: None) -> DoctorReport:
    """Run every check, then the probes; ``on_check`` and ``on_probe`` see each row as soon
    as it is known."""
    # A report should not wait out an outage: one retry at most, quickly.
    quick = RetrySettings(attempts=2, initial_wait=0.2, max_wait=1.0)
    settings = dataclasses.replace(
        settings, kube=dataclasses.replace(settings.kube, retry=quick),
        registry=dataclasses.replace(settings.registry, retry=quick))
    if req.registry:
        registry_reference(req.registry)  # bad input is a usage error before any check runs
    if req.probe is not None and not req.probe.nodes:
        raise UsageError("--probe needs a node", hint="--probe NODE (repeatable)")
    if req.probe is not None:
        registry_reference(req.probe.registry)
    report = DoctorReport()

    def add(check: Check) -> None:
        report.checks.append(check)
        on_check(check)

    for check in _cluster(settings, req):
        add(check)
    if req.registry:
        add(_registry(settings, req.registry))
    add(_buildah(req.buildah))
    if req.probe is not None:
        report.probes = []
        try:
            cluster = kube.connect(settings.kube)
        except MigrateError as e:
            report.probes = [ProbeResult(n, message=e.message, hint=e.hint or "")
                             for n in req.probe.nodes]
            return report

        def seen(result: ProbeResult) -> None:
            assert report.probes is not None
            report.probes.append(result)
            on_probe(result)

        probe(cluster, settings, req.probe, seen)
    return report
