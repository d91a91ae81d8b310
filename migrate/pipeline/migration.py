"""`migrate pod`: the stages in order, each recorded in the journal.

    preflight -> checkpoint -> build -> create -> verify -> switchover -> cleanup

Safety rules this module keeps:
- one run at a time per source: a run claims its source right after
  preflight (claims.py) and a rollback releases it;
- the source is touched only in `switchover`, after `verify` saw the
  destination running from the checkpoint image, and after a last look
  that the destination node is still Ready and the restored pod still runs;
- any failure before the switch-over rolls back what this run created (the
  journal lists it) and leaves the source as it was; the error names the
  stage, and the journal keeps the actions taken;
- an interruption (Ctrl-C, SIGTERM: KeyboardInterrupt here) leaves everything
  as it is and the journal `interrupted`, resumable, wherever it lands.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.adapters import kube
from migrate.adapters.checkpoint import Checkpoint
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import ClusterError, MigrateError, UsageError
from migrate.pipeline import claims, nodebuild, nodes, restore, switchover, trust
from migrate.pipeline.annotations import ROOTFS_IMAGE_NAME
from migrate.pipeline.build import BuildRequest, build_image
from migrate.pipeline.journal import DONE, Journal
from migrate.pipeline.manifest import PodSource, RestoreOptions, render_restore_pod
from migrate.pipeline.preflight import Plan, PodRequest, locate
from migrate.settings import Settings
from migrate.units import human_size

RUN_LABEL = claims.RUN_LABEL
STAGES = ["preflight", "checkpoint", "build", "create", "verify", "switchover", "cleanup"]
Obj = dict[str, Any]
Progress = Callable[[str, str], None]  # (stage, message)


class StageFailed(MigrateError):
    """A stage failed; the run was rolled back. Carries the cause's exit code."""

    def __init__(self, stage: str, cause: MigrateError, journal: Journal,
                 hint: str | None = None) -> None:
        super().__init__(f"{stage}: {cause.message}", hint=hint or cause.hint)
        self.exit_code = cause.exit_code
        self.stage = stage
        self.journal = journal


@dataclass
class Run:
    """What the stages share: the cluster, settings, journal and progress sink."""

    cluster: kube.Cluster
    settings: Settings
    journal: Journal
    progress: Progress

    @property
    def req(self) -> PodRequest:
        return PodRequest.from_dict(self.journal.request)

    @property
    def plan(self) -> Plan:
        return Plan.from_dict(self.journal.stage("preflight").data["plan"])

    def data(self, stage: str) -> dict[str, Any]:
        return self.journal.stage(stage).data


# -- stages ------------------------------------------------------------------------------


def _checkpoint(run: Run) -> dict[str, Any]:
    plan = run.plan
    archives: dict[str, Any] = {}
    started = time.time()
    for container in plan.containers:
        run.progress("checkpoint", f"{plan.namespace}/{plan.pod}/{container} on {plan.source}")
        t0 = time.perf_counter()
        path = kube.checkpoint_via_apiserver(run.cluster, plan.source, plan.namespace,
                                             plan.pod, container, None)
        archives[container] = {"path": path, "seconds": round(time.perf_counter() - t0, 6)}
        run.journal.record("checkpointed", container=container, node=plan.source, archive=path)
    _event(run, _known(plan.namespace, plan.pod, plan.uid), "Checkpointed",
           f"checkpointed {', '.join(plan.containers)} for migration {run.journal.id}")
    return {"archives": archives, "taken_at": started}


def _build(run: Run) -> dict[str, Any]:
    plan, req = run.plan, run.req
    images: dict[str, Any] = {}
    for container, info in run.data("checkpoint")["archives"].items():
        local = locate(plan.source, info["path"], run.settings)
        # Preflight chose (journals older than that choice decide here, as they did).
        on_node = plan.build_on == "node" if plan.build_on else (
            req.build_on == "node" or (req.build_on == "auto" and not local.is_file()))
        if on_node:
            images[container] = _build_on_node(run, container, info["path"])
        elif not local.is_file():
            raise UsageError(f"the archive {info['path']} of node {plan.source} is not "
                             f"readable here ({local})",
                             hint="use --build-on node (a Job on the source node), run "
                             "migrate on the source node, or share the nodes' checkpoint "
                             "directories and set MIGRATE_NODE_ROOT (e.g. /mnt/nodes/{node})")
        else:
            images[container] = _build_here(run, container, local)
        run.journal.record("pushed", container=container,
                           image=images[container]["reference"])
    return {"images": images}


def _build_here(run: Run, container: str, local: Path) -> dict[str, Any]:
    plan, req = run.plan, run.req
    with Checkpoint(local, run.settings.archive) as ckpt:
        stats = ckpt.stats() or {}
    size = local.stat().st_size
    run.progress("build", f"{container}: {human_size(size)} -> {plan.images[container]}")
    report = build_image(BuildRequest(archive=local, image=parse_reference(
        plan.images[container]), builder=req.builder, compression=req.compression,
        encrypt_for=req.encrypt_for),
        run.settings, on_progress=_upload_progress(run, container, size))
    return {"reference": report.reference, "digest": report.digest,
            "archive_size": report.archive_size, "image_size": report.image_size,
            "rootfs_image": report.annotations.get(ROOTFS_IMAGE_NAME, ""),
            "freezing_time_us": stats.get("freezing_time"),
            "frozen_time_us": stats.get("frozen_time"), "local_archive": str(local),
            "built_on": "local"}


def _upload_progress(run: Run, container: str, size: int) -> Callable[[int], None]:
    """Report the bytes streamed, every tenth of the archive (not every block)."""
    step = max(size // 10, 1)
    next_report = [step]

    def report(done: int) -> None:
        if done >= next_report[0] and size:
            next_report[0] = (done // step + 1) * step
            run.progress("build", f"{container}: {human_size(done)} of {human_size(size)} "
                         f"streamed ({min(100, done * 100 // size)}%)")

    return report


def _build_on_node(run: Run, container: str, archive: str) -> dict[str, Any]:
    plan, req = run.plan, run.req
    name = nodebuild.start(run.cluster, run.settings, nodebuild.NodeBuild(
        namespace=plan.namespace, node=plan.source, pod=plan.pod, archive=archive,
        image=plan.images[container], run_id=run.journal.id,
        tool_image=nodebuild.check_tool_image(req.tool_image), builder=req.builder,
        compression=req.compression, tls_verify=run.settings.registry.tls_verify,
        secret=req.registry_secret, deadline=int(req.timeout)), run.journal.created_object)
    run.progress("build", f"{container}: Job {plan.namespace}/{name} on {plan.source}")
    result = nodebuild.collect(run.cluster, plan.namespace, name, req.timeout)
    return {"reference": result["reference"], "digest": result["digest"],
            "archive_size": result.get("archive_size", 0),
            "image_size": result.get("image_size", 0),
            "rootfs_image": str(result.get("rootfs_image") or ""),
            "freezing_time_us": None,
            "frozen_time_us": None, "built_on": f"job {name}"}


def _render(run: Run, source_pod: Obj) -> tuple[Obj, tuple[str, str] | None]:
    plan = run.plan
    images = {c: i["reference"] for c, i in run.data("build")["images"].items()}
    pod = render_restore_pod(
        PodSource(source_pod, node=plan.source,
                  checkpoint_time=_rfc3339(run.data("checkpoint")["taken_at"])),
        images, RestoreOptions(node=plan.destination, generate_name=plan.owner is not None,
                               k8s_version=kube.server_minor_version(run.cluster)))
    # A label, not only the journal's list: if the create's answer is lost, rollback
    # still finds the pod by it.
    pod["metadata"].setdefault("labels", {})[RUN_LABEL] = run.journal.id
    held = None
    if plan.switch == "handover" or (plan.owner and plan.switch == "keep"):
        assert plan.owner is not None
        owner = kube.read_owner(run.cluster, plan.namespace, *plan.owner)
        held = switchover.held_back_label(source_pod, owner)
        pod["metadata"]["labels"].pop(held[0], None)
        pod["metadata"]["annotations"][switchover.HELD_LABEL] = f"{held[0]}={held[1]}"
    return pod, held


def _create(run: Run) -> dict[str, Any]:
    plan = run.plan
    source_pod = _source(run)
    if source_pod is None or source_pod["metadata"].get("uid") != plan.uid:
        raise ClusterError(f"the source pod {plan.namespace}/{plan.pod} is gone",
                           hint="nothing left to migrate")
    manifest, held = _render(run, source_pod)
    pulls = manifest["spec"].setdefault("imagePullSecrets", [])
    for secret in _pull_secrets(run):
        if {"name": secret} not in pulls:
            pulls.append({"name": secret})
    if not pulls:
        del manifest["spec"]["imagePullSecrets"]
    created = restore.create(run.cluster, plan.namespace, manifest)
    meta = created["metadata"]
    run.journal.created_object("Pod", plan.namespace, meta["name"], meta.get("uid", ""))
    run.progress("create", f"pod {plan.namespace}/{meta['name']} on {plan.destination}")
    return {"pod": meta["name"], "uid": meta.get("uid", ""),
            "resource_version": meta.get("resourceVersion"),
            "held_label": list(held) if held else None}


def _pull_secrets(run: Run) -> list[str]:
    """Secrets that let the destination pull the checkpoint images, besides the source's
    own imagePullSecrets (which the restored pod keeps, for its other images).

    The credentials this run pushed with: the Secret named by --registry-secret, the
    one made for a build Job, or else a temporary dockerconfigjson Secret made from
    them now (recorded, and removed at cleanup or rollback). None when the run
    pushed anonymously.
    """
    req, plan = run.req, run.plan
    if req.registry_secret:
        return [req.registry_secret]
    made = [o["name"] for o in run.journal.objects if o["kind"] == "Secret"]
    if made:
        return made
    names, seen = [], set()
    for image in plan.images.values():
        registry = parse_reference(image).registry
        body = nodebuild.registry_secret(run.settings, plan.namespace, image, run.journal.id)
        if body is None or registry in seen:
            continue
        seen.add(registry)
        secret = kube.create_secret(run.cluster, plan.namespace, body)["metadata"]
        run.journal.created_object("Secret", plan.namespace, secret["name"],
                                   secret.get("uid", ""))
        names.append(secret["name"])
    return names


def _verify(run: Run) -> dict[str, Any]:
    plan, created = run.plan, run.data("create")
    digests = {c: i["digest"] for c, i in run.data("build")["images"].items()}
    run.progress("verify", f"waiting for {created['pod']} to run restored")
    # From the create's answer: no list first (a resumed run's may be too old: the
    # watch then answers 410 and lists).
    runtime = nodes.parse_runtime(plan.destination_runtime) if plan.destination_runtime \
        else None
    sizes = {c: int(i.get("image_size") or 0) for c, i in run.data("build")["images"].items()}
    report = restore.KubeletReport(lambda message: run.progress("verify", message), sizes)
    rootfs = {c: str(i.get("rootfs_image") or "")
              for c, i in run.data("build")["images"].items()}
    restored = restore.wait_restored(run.cluster, plan.namespace, created["pod"],
                                     plan.destination, digests, run.req.timeout,
                                     since=created.get("resource_version"), runtime=runtime,
                                     uid=created.get("uid"), report=report, rootfs=rootfs)
    _event(run, _known(plan.namespace, created["pod"], restored.uid), "Restored",
           f"restored from {', '.join(sorted(set(digests.values())))} "
           f"(migration {run.journal.id} from {plan.source})")
    return {"ready_at": restored.ready_at, "image_ids": restored.image_ids}


def _switchover(run: Run) -> dict[str, Any]:
    plan, created = run.plan, run.data("create")
    timeout = run.req.timeout
    if plan.switch == "keep":
        return {"source_stopped_at": None}
    # Verify may have ended a while ago (a resume, a slow watch): look again, last
    # thing before the source is touched.
    switchover.check_destination(run.cluster, plan.namespace, created["pod"], created["uid"],
                                 plan.destination, plan.containers)
    run.journal.record("switch-over", mode=plan.switch, source=plan.pod)
    if plan.switch == "handover":
        assert plan.owner is not None
        owner = kube.read_owner(run.cluster, plan.namespace, *plan.owner)
        held = created["held_label"]
        run.journal.record("deletion-cost set", pod=plan.pod)
        stopped = switchover.hand_over(run.cluster, plan.namespace, plan.pod, plan.uid,
                                       created["pod"], (held[0], held[1]),
                                       owner["metadata"]["uid"], timeout)
    else:
        stopped = switchover.delete_source(run.cluster, plan.namespace, plan.pod, plan.uid,
                                           timeout)
    run.journal.record("source deleted", pod=plan.pod)
    _event(run, _known(plan.namespace, created["pod"], created["uid"]), "Migrated",
           f"took over from {plan.namespace}/{plan.pod} on {plan.source}")
    return {"source_stopped_at": stopped}


def _cleanup(run: Run) -> dict[str, Any]:
    removed = _delete_temporaries(run, kinds=("Job", "Secret"))
    if run.plan.switch == "keep" and _release(run):  # the source runs on: free again
        run.journal.record("released", pod=run.plan.pod)
    if run.req.cleanup_archive:
        for info in run.data("build")["images"].values():
            if info.get("local_archive"):
                Path(info["local_archive"]).unlink(missing_ok=True)
                removed.append(info["local_archive"])
                run.journal.record("archive removed", path=info["local_archive"])
    return {"removed": removed}


def _delete_temporaries(run: Run, kinds: tuple[str, ...]) -> list[str]:
    """Delete the run's objects of these kinds (newest first); forget them."""
    deleters = {"Job": kube.delete_job, "Secret": kube.delete_secret}
    removed = []
    for obj in reversed(list(run.journal.objects)):
        if obj["kind"] in kinds:
            deleters[obj["kind"]](run.cluster, obj["namespace"], obj["name"])
            removed.append(f"{obj['kind']} {obj['namespace']}/{obj['name']}")
            run.journal.objects.remove(obj)
            run.journal.record(f"deleted {obj['kind']}", namespace=obj["namespace"],
                               name=obj["name"])
    return removed


# Preflight runs before the journal exists (`open_journal` records it done): a
# refusal leaves nothing behind, so it is never a stage run from here.
STAGE_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "checkpoint": _checkpoint, "build": _build, "create": _create,
    "verify": _verify, "switchover": _switchover, "cleanup": _cleanup,
}


# -- helpers -----------------------------------------------------------------------------


def _rfc3339(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod(run: Run, name: str) -> Obj | None:
    found = kube.list_pods(run.cluster, run.plan.namespace, field_selector=f"metadata.name={name}")
    return found[0] if found else None


def _source(run: Run) -> Obj | None:
    return _pod(run, run.plan.pod)


def _known(namespace: str, name: str, uid: str) -> Obj:
    """A pod this run knows exists: enough of it for an Event, without reading it again."""
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid}}


def _event(run: Run, pod: Obj | None, reason: str, message: str, warning: bool = False) -> None:
    if pod is not None:
        kube.create_event(run.cluster, pod, reason, message, warning=warning)


# -- running, resuming, rolling back -----------------------------------------------------


def open_journal(settings: Settings, req: PodRequest, plan: Plan, seconds: float) -> Journal:
    """Open the journal of a run whose preflight passed (then `claim` the source).

    Preflight changes nothing, so a refusal there leaves no journal behind: the
    history lists runs that touched the cluster. The journal exists before the
    claim is written, so that a claim always has a journal to resume or roll
    back with.
    """
    journal = Journal.create(settings.state_dir, "pod", req.pod, req.to_dict(), STAGES,
                             registry=trust.record(settings.registry))
    stage = journal.stage("preflight")
    stage.status, stage.started, stage.ended = DONE, journal.created, journal.created
    stage.seconds = round(seconds, 6)
    stage.data["plan"] = plan.to_dict()
    journal.save()
    return journal


def claim(cluster: kube.Cluster, settings: Settings, journal: Journal, plan: Plan) -> None:
    """Claim the source for a new run (claims.py), conditional on what preflight read.

    A refused claim changed nothing: its journal goes again, and the refusal
    (`claims.Claimed`) is raised.
    """
    try:
        claims.take(cluster, settings.state_dir, plan.namespace, plan.pod, plan.uid,
                    journal.id, plan.resource_version)
        journal.record("claimed", pod=plan.pod)
    except KeyboardInterrupt:
        journal.interrupted()  # the claim may be written: resume or rollback deals with it
        raise
    except MigrateError:
        # Refused or failed: this run's claim was not written (a write whose answer was
        # lost is retried, and the retry finds it); nothing to keep.
        journal.discard()
        raise


def start(cluster: kube.Cluster, settings: Settings, req: PodRequest, plan: Plan,
          seconds: float) -> Journal:
    """`open_journal` and `claim`: a new run, ready to `execute`."""
    journal = open_journal(settings, req, plan, seconds)
    claim(cluster, settings, journal, plan)
    return journal


def resume(cluster: kube.Cluster, settings: Settings, journal: Journal,
           progress: Progress) -> Journal:
    """Continue a run from its journal: make sure it still holds its source, then
    `execute` what is left."""
    if journal.done("preflight") and not journal.done("switchover"):
        plan = Plan.from_dict(journal.stage("preflight").data["plan"])
        try:
            claims.take(cluster, settings.state_dir, plan.namespace, plan.pod, plan.uid,
                        journal.id)
        except KeyboardInterrupt:
            journal.interrupted()
            raise
    return execute(cluster, settings, journal, progress)


def execute(cluster: kube.Cluster, settings: Settings, journal: Journal,
            progress: Progress) -> Journal:
    """Run the stages not yet done; roll back on failure (before the switch-over).

    An interruption anywhere in here, between stages and in a rollback too,
    leaves the journal `interrupted`, never `running`.
    """
    run = Run(cluster, settings, journal, progress)
    try:
        journal.set_outcome("running")
        for name in STAGES:
            if not journal.done(name):
                _stage(run, name)
        journal.set_outcome("succeeded")
    except KeyboardInterrupt:
        journal.interrupted()
        raise
    return journal


def _stage(run: Run, name: str) -> None:
    journal = run.journal
    run.progress(name, "started")
    journal.begin(name)
    try:
        data = STAGE_FUNCTIONS[name](run)
    except MigrateError as e:
        journal.fail(name, e.message)
        try:
            _failed(run, name, e)
        except MigrateError as undo:
            # Half undone: not over (nor "failed", whose claim another run may take), but
            # stopped, like an interruption: `migrate rollback` finishes the undoing.
            journal.record("rollback failed", error=undo.message)
            journal.set_outcome("interrupted")
            raise StageFailed(name, e, journal, hint=f"the rollback failed too "
                              f"({undo.message}): `migrate rollback {journal.id}` tries "
                              "again") from e
        raise StageFailed(name, e, journal) from e
    journal.finish(name, **data)
    run.progress(name, f"done in {journal.stage(name).seconds:.3f} s")


def _failed(run: Run, stage: str, error: MigrateError) -> None:
    switched = run.journal.stage("switchover").status == DONE or (
        stage == "switchover" and any(a["action"] == "source deleted"
                                      for a in run.journal.actions))
    if stage == "preflight":
        run.journal.set_outcome("failed")
        return
    # The cluster may be what failed; the rollback below says more.
    with contextlib.suppress(MigrateError):
        _event(run, _source(run), "MigrationFailed", f"{stage}: {error.message}", warning=True)
    if switched:
        run.journal.set_outcome("failed")
        return
    rollback(run)
    run.journal.set_outcome("rolled-back")


def rollback(run: Run) -> list[str]:
    """Undo what the journal says this run did; the source is left as it was."""
    journal = run.journal
    if journal.stage("switchover").status == DONE:
        raise UsageError(f"migration {journal.id} already switched over: the restored pod "
                         "replaced the source", hint="to move it back, migrate it again")
    undone = []
    pods = {(o["namespace"], o["name"]): o["uid"] for o in journal.objects
            if o["kind"] == "Pod"}
    plan = run.plan
    labelled = kube.list_pods(run.cluster, plan.namespace,
                              label_selector=f"{RUN_LABEL}={journal.id}")
    for p in labelled:
        if p["metadata"].get("uid") != plan.uid:
            pods.setdefault((plan.namespace, p["metadata"]["name"]),
                            p["metadata"].get("uid", ""))
    for (namespace, name), uid in pods.items():
        if kube.delete_pod(run.cluster, namespace, name, uid=uid or None):
            undone.append(f"deleted pod {namespace}/{name}")
    undone += [f"deleted {what}" for what in _delete_temporaries(run, ("Job", "Secret"))]
    if any(a["action"] == "deletion-cost set" for a in journal.actions):
        source = _source(run)
        if source is not None:
            kube.patch_pod(run.cluster, run.plan.namespace, run.plan.pod, {"metadata": {
                "annotations": {switchover.DELETION_COST: None}}})
            undone.append(f"removed the deletion cost from {run.plan.pod}")
    undone += _remove_archives(run)
    for line in undone:
        journal.record("rollback: " + line)
    journal.objects = []
    journal.save()
    # Last: the source is free for another run only once nothing of this one is left.
    if _release(run):
        undone.append(f"released the claim on {run.plan.pod}")
        journal.record("rollback: " + undone[-1])
    return undone


def _remove_archives(run: Run) -> list[str]:
    """Remove the checkpoint archives this run made (each one a copy of the container's
    memory, secrets included), unless --keep-archive; an archive this machine cannot
    read is named instead: it stays on its node."""
    plan, actions = run.plan, run.journal.actions
    made = [a["archive"] for a in actions if a["action"] == "checkpointed"]
    gone = {a.get("path") for a in actions if a["action"] == "archive removed"}
    out = []
    for path in (p for p in made if p not in gone):
        local = locate(plan.source, path, run.settings)
        if run.req.keep_archive:
            out.append(f"kept the archive {path} on {plan.source} (--keep-archive)")
        elif local.is_file():
            local.unlink(missing_ok=True)
            run.journal.record("archive removed", path=path)
            out.append(f"removed the archive {path} from {plan.source}")
        else:
            out.append(f"left the archive {path} on {plan.source}: it is not readable here")
    return out


def _release(run: Run) -> bool:
    """Remove this run's claim from the source, if it still carries it."""
    plan = run.plan
    return claims.release(run.cluster, plan.namespace, plan.pod, plan.uid, run.journal.id)


def rollback_journal(cluster: kube.Cluster, settings: Settings, journal: Journal) -> list[str]:
    """`migrate rollback ID`."""
    if journal.stage("preflight").status != DONE:
        journal.set_outcome("rolled-back")
        return []
    undone = rollback(Run(cluster, settings, journal, lambda s, m: None))
    journal.set_outcome("rolled-back")
    return undone


def report(journal: Journal, api_requests: int | None = None) -> dict[str, Any]:
    """What happened, and the two numbers an operator cares about.

    state_window: checkpoint taken -> source stopped; what the source did in it
    is lost. unavailability: source stopped -> destination ready; zero when the
    destination was ready first (the usual case: the source stops only after
    the destination is verified).
    """
    stages = {s.name: s for s in journal.stages}
    taken = stages["checkpoint"].data.get("taken_at")
    ready = stages["verify"].data.get("ready_at")
    stopped = stages["switchover"].data.get("source_stopped_at")
    plan = stages["preflight"].data.get("plan")
    out: dict[str, Any] = {
        "id": journal.id, "outcome": journal.outcome, "dry_run": False, "plan": plan,
        "stages": [{"name": s.name, "status": s.status, "seconds": s.seconds,
                    **({"error": s.error} if s.error else {})} for s in journal.stages],
        "checkpoints": stages["checkpoint"].data.get("archives", {}),
        "images": {c: {k: v for k, v in i.items() if k != "local_archive"}
                   for c, i in stages["build"].data.get("images", {}).items()},
        "destination_pod": stages["create"].data.get("pod"),
        "state_window_seconds": round(stopped - taken, 3) if stopped and taken else None,
        "unavailability_seconds": (round(max(0.0, ready - stopped), 3)
                                   if stopped and ready else None),
        "actions": journal.actions,
    }
    if api_requests is not None:
        out["api_requests"] = api_requests
    return out
