"""`migrate doctor --probe NODE`: prove the whole path to a destination, not the versions.

For each destination: a tiny probe pod starts on a source node (the pause
image the node already holds for every pod sandbox, or --probe-image), the
kubelet checkpoints it, its image is built and pushed to --registry, a pod
restores it on the destination and is verified as `migrate pod` verifies
(running, ready, from the checkpoint image's digest). Then everything goes:
both pods, the pull Secret, the build Job, the archive (when readable here)
and the image (when the registry allows deletes) — on failure and Ctrl-C too.

Only this catches what the API cannot show: a runtime whose restore is off, a
node that cannot pull from the registry (plain HTTP, a CA it lacks,
credentials), a CRIU that cannot dump. Each stage is timed; a failure names
its stage and the runtime's own message, with the hint `migrate pod` would
give. The probe's objects carry the label `migrate.dev/probe=<id>`: a probe
killed outright leaves them findable (`kubectl delete pod,secret,job -l
migrate.dev/probe`).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrate.adapters import kube
from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import ClusterError, MigrateError, NotFoundError, UsageError
from migrate.pipeline import nodebuild, nodes, prepull, restore
from migrate.pipeline.build import BuildRequest, build_image, pod_image
from migrate.pipeline.choices import BuildOn
from migrate.pipeline.manifest import PodSource, RestoreOptions, render_restore_pod
from migrate.pipeline.names import suggestion
from migrate.pipeline.preflight import (
    PROBE_REACH_HINT,
    build_location,
    check_pods_reach,
    locate,
)
from migrate.pipeline.refusals import (
    FATAL_WAITING,
    PROBE_SUGGESTION,
    PULL_FAILED,
    image_pull_error,
)
from migrate.settings import Settings

PROBE_LABEL = "migrate.dev/probe"
CONTAINER = "probe"
STAGES = ("start", "checkpoint", "build", "restore", "cleanup")
#: What a node runs as its sandbox's pause container when it reports none in its images.
DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10"

Obj = dict[str, Any]


@dataclass(frozen=True)
class ProbeRequest:
    """Which destinations to prove, and with what."""

    nodes: tuple[str, ...]
    registry: str  # HOST[:PORT][/REPOSITORY]
    image: str | None = None  # the probe pod's image (default: the source's pause image)
    source: str | None = None  # default: the first Ready node that can checkpoint
    timeout: float = 120.0  # seconds for each wait (probe pod, restored pod, build Job)
    tool_image: str | None = None  # for a build Job when archives are not readable here
    # --encrypt-for recipients: the probe image is encrypted as the migrations' will be,
    # so the restore proves the destination holds a matching private key.
    encrypt_for: tuple[str, ...] = ()


@dataclass
class ProbeResult:
    """One destination's row (schemas/doctor.schema.json, `probes`)."""

    node: str
    source: str | None = None
    status: str = "FAIL"  # PASS | FAIL
    stage: str | None = None  # the stage that failed
    message: str = ""  # the runtime's own words (or migrate's, before the runtime)
    hint: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    image: str | None = None
    leftovers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"node": self.node, "source": self.source, "status": self.status,
                "stage": self.stage, "message": self.message or None,
                "hint": self.hint or None,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "image": self.image, "leftovers": self.leftovers}


@dataclass
class _Probe:
    """One probe in flight: what it made, to be removed whatever happens."""

    cluster: kube.Cluster
    settings: Settings
    req: ProbeRequest
    node: str
    run_id: str
    namespace: str
    result: ProbeResult
    made: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), oldest first
    archive: Path | None = None
    pushed: str | None = None  # IMAGE@DIGEST

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; a MigrateError in it fails the probe there."""
        t0 = time.perf_counter()
        try:
            yield
        except MigrateError as e:
            self.result.stage = name
            self.result.message = _runtime_words(e)
            self.result.hint = (e.hint or "").removesuffix(
                PROBE_SUGGESTION.format(node=self.node))
            raise
        finally:
            self.result.seconds[name] = time.perf_counter() - t0


def _runtime_words(e: MigrateError) -> str:
    """The runtime's own message when the kubelet relayed one, else the error's."""
    return getattr(e, "runtime_message", "") or e.message


def pause_image(node: Obj) -> str:
    """The pause image a node holds (it runs one per pod sandbox), from its reported images."""
    for image in (node.get("status") or {}).get("images") or []:
        for name in image.get("names") or []:
            if "/pause:" in str(name):
                return str(name)
    return DEFAULT_PAUSE_IMAGE


def pick_source(all_nodes: list[Obj], destination: str, wanted: str | None) -> Obj:
    """The node the probe pod runs on: `wanted`, or the first Ready, schedulable node other
    than the destination whose runtime can checkpoint (CRI-O first)."""
    if wanted is not None:
        found = [n for n in all_nodes if n["metadata"]["name"] == wanted]
        if not found:
            raise NotFoundError(f"--probe-source {wanted}: no such node", hint=suggestion(
                wanted, sorted(n["metadata"]["name"] for n in all_nodes),
                "kubectl get nodes", "the cluster's nodes"))
        runtime = nodes.runtime_of(found[0])
        if not runtime.can_source:
            raise UsageError(f"--probe-source {wanted}: {runtime.source_reason}",
                             hint="a probe proves what a migration does: name a CRI-O node")
        return found[0]
    # A containerd node checkpoints, but CRI-O would refuse its archive: no proof of
    # anything a migration does.
    fit = [n for n in all_nodes if n["metadata"]["name"] != destination
           and nodes.ready(n)[0] and not nodes.cordoned(n)
           and nodes.runtime_of(n).can_source]
    fit.sort(key=lambda n: n["metadata"]["name"])
    if not fit:
        raise ClusterError(f"no node besides {destination} can run the probe pod and "
                           "checkpoint it (Ready, schedulable, CRI-O)",
                           hint="name one with --probe-source")
    return fit[0]


def _probe_pod(name: str, namespace: str, node: str, image: str, run_id: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {PROBE_LABEL: run_id}},
            "spec": {"nodeName": node, "automountServiceAccountToken": False,
                     "enableServiceLinks": False, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": CONTAINER, "image": image,
                                     "resources": {"requests": {"cpu": "10m",
                                                                "memory": "16Mi"}}}]}}


def _running(node: str, image: str, fallback: bool) -> Callable[[Obj | None], Obj | None]:
    """The watch predicate for the probe pod: it runs, or it will not start.

    Unlike a restored pod's checkpoint image, the probe pod's image is no part of
    the path a probe proves: any failed pull of it (the kubelet's RegistryUnavailable
    or ErrImagePull, then ImagePullBackOff, for ever) fails the probe at once, as the
    pre-pull does, whatever the cause: an unreachable registry would only be waited
    on until --timeout. ``fallback``: the image is DEFAULT_PAUSE_IMAGE, the node
    listing none.
    """
    def check(pod: Obj | None) -> Obj | None:
        if pod is None:
            raise ClusterError("the probe pod was deleted while it was starting")
        status = pod.get("status") or {}
        for s in status.get("containerStatuses") or []:
            waiting = (s.get("state") or {}).get("waiting") or {}
            reason, message = waiting.get("reason", ""), str(waiting.get("message", ""))
            if reason in FATAL_WAITING or reason in PULL_FAILED:
                raise _not_started(node, image, fallback, reason, message)
        running = status.get("phase") == "Running" and all(
            (s.get("state") or {}).get("running") for s in status.get("containerStatuses") or [])
        return pod if running else None
    return check


def _not_started(node: str, image: str, fallback: bool, reason: str,
                 message: str) -> ClusterError:
    # One line, whatever it says, without CRI-O's repeat of a failed pull as an artifact.
    words = " ".join(f"{reason}: {image_pull_error(message)}".split()).rstrip(": ")
    hint = f"give an image {node} holds or can pull with --probe-image"
    if reason in PULL_FAILED and fallback:
        hint = (f"{node} lists no pause image in its status.images, so the probe ran "
                f"{image}, which it cannot pull: {hint}")
    return ClusterError(f"the probe pod did not start on {node}: {words}", hint=hint)


def _start(p: _Probe, source: Obj, image: str) -> Obj:
    name = f"migrate-probe-{p.node}"[:50].rstrip("-") + f"-{p.run_id[-4:]}"
    body = _probe_pod(name, p.namespace, source["metadata"]["name"], image, p.run_id)
    _making(p, "Pod", body)
    created = kube.create_pod(p.cluster, p.namespace, body)
    fallback = p.req.image is None and image == DEFAULT_PAUSE_IMAGE
    return kube.watch_pod(p.cluster, p.namespace, created["metadata"]["name"],
                          _running(source["metadata"]["name"], image, fallback), p.req.timeout,
                          since=created["metadata"].get("resourceVersion"))


def _image_ref(p: _Probe) -> str:
    host, _, repository = p.req.registry.partition("/")
    prefix = f"{host}/{repository.strip('/')}" if repository.strip("/") else host
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    ref = f"{prefix}/migrate-probe:{p.node}-{stamp}".lower()
    parse_reference(ref)
    return ref


def _build(p: _Probe, source: str, pod: str, archive: str) -> str:
    """Build and push the probe's image: here when the archive is readable, else in a Job
    on the source node. Returns IMAGE@DIGEST."""
    image = _image_ref(p)
    local = locate(source, archive, p.settings)
    if local.is_file():
        p.archive = local
        return build_image(BuildRequest(archive=local, image=parse_reference(image),
                                        encrypt_for=p.req.encrypt_for), p.settings).reference
    if p.req.encrypt_for:
        raise UsageError(f"the archive {archive} of node {source} is not readable here "
                         f"({local}): an encrypted probe image is built here only",
                         hint="share the nodes' checkpoint directories and set "
                         "MIGRATE_NODE_ROOT, or run migrate on the source node")
    if not p.req.tool_image:
        raise UsageError(f"the archive {archive} of node {source} is not readable here "
                         f"({local})", hint="give --tool-image (a build Job on the source "
                         "node), or share the nodes' checkpoint directories and set "
                         "MIGRATE_NODE_ROOT")
    secret = _secret(p, image)
    manifest = nodebuild.job_manifest(nodebuild.NodeBuild(
        namespace=p.namespace, node=source, pod=pod, archive=archive, image=image,
        run_id=p.run_id, tool_image=nodebuild.check_tool_image(p.req.tool_image),
        tls_verify=p.settings.registry.tls_verify, secret=secret,
        deadline=int(p.req.timeout)))
    _making(p, "Job", manifest)
    job = kube.create_job(p.cluster, p.namespace, manifest)
    p.result.leftovers.append(f"archive {archive} on node {source}")
    return str(nodebuild.collect(p.cluster, p.namespace, job["metadata"]["name"],
                                 p.req.timeout)["reference"])


def _secret(p: _Probe, image: str) -> str | None:
    """A pull (and push) Secret from the credentials migrate uses for the registry."""
    made = [name for kind, name in p.made if kind == "Secret"]
    if made:
        return made[0]
    body = nodebuild.registry_secret(p.settings, p.namespace, image, p.run_id)
    if body is None:
        return None
    body["metadata"]["labels"][PROBE_LABEL] = p.run_id
    _making(p, "Secret", body)
    return str(kube.create_secret(p.cluster, p.namespace, body)["metadata"]["name"])


def _pull_base_image(p: _Probe, probe_pod: Obj, destination: Obj) -> dict[str, str]:
    """On a CRI-O destination, pull the probe pod's image there first, as `migrate pod`
    does (migration/base.py): CRI-O restores onto it and pulls nothing. Returns
    container -> that image as the destination holds it (REPO@DIGEST when pulled so)."""
    if nodes.runtime_of(destination).name != "cri-o":
        return {}

    def gone(pod: Obj) -> None:
        p.made.remove(("Pod", pod["metadata"]["name"]))

    wanted = prepull.wanted(probe_pod, (CONTAINER,), destination)
    for container, image, present in wanted:
        if not present:
            manifest = prepull.pod_manifest(probe_pod, container, image, p.node, p.run_id, [])
            manifest["metadata"]["labels"] = {PROBE_LABEL: p.run_id}  # a probe's, not a run's
            prepull.pull(p.cluster, manifest, image, p.req.timeout,
                         lambda pod: p.made.append(("Pod", pod["metadata"]["name"])), gone)
    return {container: image for container, image, _ in wanted}


def _restore(p: _Probe, probe_pod: Obj, destination: Obj, pulled: dict[str, str]) -> None:
    assert p.pushed is not None
    digest = p.pushed.rpartition("@")[2]
    image = pod_image(p.pushed, bool(p.req.encrypt_for))
    pod = render_restore_pod(PodSource(probe_pod), {CONTAINER: image},
                             RestoreOptions(node=p.node, k8s_version=kube.server_minor_version(
                                 p.cluster)))
    pod["metadata"].setdefault("labels", {})[PROBE_LABEL] = p.run_id
    secret = _secret(p, p.pushed)
    if secret:
        pod["spec"]["imagePullSecrets"] = [{"name": secret}]
    _making(p, "Pod", pod)
    created = kube.create_pod(p.cluster, p.namespace, pod)
    # What the source's runtime reported running: a CRI-O restore reports that image.
    ran = next((str(s.get("image", "")) for s in
                (probe_pod.get("status") or {}).get("containerStatuses") or []
                if s.get("name") == CONTAINER), "")
    restore.wait_restored(p.cluster, p.namespace, created["metadata"]["name"], p.node,
                          {CONTAINER: digest}, p.req.timeout,
                          since=created["metadata"].get("resourceVersion"),
                          runtime=nodes.runtime_of(destination), rootfs={CONTAINER: ran},
                          ran=pulled)


def _making(p: _Probe, kind: str, body: Obj) -> None:
    """Record an object before asking for it, by the name it will have: a create whose
    answer is lost (or a Ctrl-C just after it) still leaves it for `_cleanup`, the
    registry Secret with its credentials included. Deleting one never made is no harm."""
    name = body["metadata"].get("name")
    assert name, f"a probe's {kind} is named before it is created"
    p.made.append((kind, str(name)))


def _cleanup(p: _Probe) -> None:
    """Remove what the probe made, newest first; what could not go is a leftover."""
    deleters: dict[str, Callable[[kube.Cluster, str, str], bool]] = {
        "Job": kube.delete_job, "Secret": kube.delete_secret,
        "Pod": lambda c, ns, name: kube.delete_pod(c, ns, name, grace_seconds=0)}
    for kind, name in reversed(p.made):
        try:
            deleters[kind](p.cluster, p.namespace, name)
        except MigrateError as e:
            p.result.leftovers.append(f"{kind} {p.namespace}/{name} ({e.message})")
    p.made.clear()
    if p.archive is not None:
        with contextlib.suppress(OSError):
            p.archive.unlink()
    if p.pushed is not None:
        ref = parse_reference(p.pushed)
        try:
            # A token registry grants a DELETE only to a token asked for it (as prune asks).
            client = RegistryClient(ref, p.settings.registry, actions="pull,delete")
            deleted = client.delete_manifest(p.pushed.rpartition("@")[2])
        except MigrateError as e:
            deleted, why = False, e.message
        else:
            why = "the registry does not allow deletes"
        if not deleted:
            p.result.leftovers.append(f"image {p.pushed} ({why})")


def probe_node(cluster: kube.Cluster, settings: Settings, req: ProbeRequest,
               all_nodes: list[Obj], node: str) -> ProbeResult:
    """Prove one destination; the row says how it went. Ctrl-C cleans up, then stops."""
    run_id = f"{datetime.now(UTC):%Y%m%dt%H%M%S}-{secrets.token_hex(2)}"
    result = ProbeResult(node)
    p = _Probe(cluster, settings, req, node, run_id, cluster.namespace, result)
    try:
        destination = next((n for n in all_nodes if n["metadata"]["name"] == node), None)
        if destination is None:
            raise NotFoundError(f"node {node} does not exist", hint=suggestion(
                node, sorted(n["metadata"]["name"] for n in all_nodes), "kubectl get nodes",
                "the cluster's nodes"))
        source = pick_source(all_nodes, node, req.source)
        result.source = source["metadata"]["name"]
        # Where the image will be built, proved before the probe pod exists.
        where, _ = build_location(settings, result.source, BuildOn.auto, req.tool_image)
        check_pods_reach(where, {"probe": _image_ref(p)}, explicit=False,
                         hint=PROBE_REACH_HINT)
        with p.stage("start"):
            pod = _start(p, source, req.image or pause_image(source))
        with p.stage("checkpoint"):
            # Before the checkpoint, as `migrate pod` does (and timed with it).
            pulled = _pull_base_image(p, pod, destination)
            archive = kube.checkpoint_via_apiserver(cluster, result.source, p.namespace,
                                                    pod["metadata"]["name"], CONTAINER, None)
        with p.stage("build"):
            p.pushed = _build(p, result.source, pod["metadata"]["name"], archive)
            result.image = p.pushed
        with p.stage("restore"):
            _restore(p, pod, destination, pulled)
        result.status = "PASS"
    except MigrateError as e:
        if result.stage is None:  # before any stage: no destination, no source
            result.message, result.hint = e.message, e.hint or ""
    finally:
        with contextlib.suppress(MigrateError), p.stage("cleanup"):
            _cleanup(p)
    return result


def probe(cluster: kube.Cluster, settings: Settings, req: ProbeRequest,
          on_result: Callable[[ProbeResult], None] = lambda r: None) -> list[ProbeResult]:
    """Probe each destination in turn (one at a time: a probe is a real migration)."""
    all_nodes = kube.list_nodes(cluster)
    results = []
    for node in req.nodes:
        results.append(probe_node(cluster, settings, req, all_nodes, node))
        on_result(results[-1])
    return results
