"""Create stage: the restored pod, rendered from the source's and the images, on the
destination node, with the pull Secrets it needs (base.py). On a CRI-O destination the
images the source ran are there already: the checkpoint stage pulled them (base.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from migrate.adapters import kube
from migrate.pipeline import claims, restore, switchover
from migrate.pipeline.build import pod_image
from migrate.pipeline.manifest import PodSource, RestoreOptions, render_restore_pod
from migrate.pipeline.migration import base
from migrate.pipeline.migration.results import CreateResult
from migrate.pipeline.migration.run import Obj, Run, live_source


def create(run: Run) -> CreateResult:
    """Create the restored pod; the journal records it before anything else can fail."""
    plan = run.plan
    source_pod = live_source(run)
    manifest, held = _render(run, source_pod)
    secrets = base.pull_secrets(run)
    ran = base.images_ran(run, source_pod)
    pulled = base.pulled(run)
    pulls = manifest["spec"].setdefault("imagePullSecrets", [])
    for secret in secrets:
        if {"name": secret} not in pulls:
            pulls.append({"name": secret})
    if not pulls:
        del manifest["spec"]["imagePullSecrets"]
    created = _made_before(run) if "create" in run.retaken else None
    if created is None:
        created = restore.create(run.cluster, plan.namespace, manifest)
    meta = created["metadata"]
    if not any(o["kind"] == "Pod" and o["uid"] == meta.get("uid") for o in run.journal.objects):
        run.journal.created_object("Pod", plan.namespace, meta["name"], meta.get("uid", ""))
    run.progress("create", f"pod {plan.namespace}/{meta['name']} on {plan.destination}")
    return CreateResult(meta["name"], meta.get("uid", ""), meta.get("resourceVersion"), held,
                        pulled, ran)


def _made_before(run: Run) -> Obj | None:
    """The restored pod an earlier, interrupted try of this stage made, found by the run's
    label: the process may have stopped after the create and before its record (a second
    create would make a second copy of a ReplicaSet's pod, one no ReplicaSet adopts)."""
    for pod in kube.list_pods(run.cluster, run.plan.namespace,
                              label_selector=f"{claims.RUN_LABEL}={run.journal.id}"):
        meta = pod["metadata"]
        if meta.get("uid") != run.plan.uid and not meta.get("deletionTimestamp"):
            return pod
    return None


def _render(run: Run, source_pod: Obj) -> tuple[Obj, tuple[str, str] | None]:
    plan = run.plan
    images = {c: pod_image(i.reference, bool(run.req.encrypt_for))
              for c, i in run.built.images.items()}
    pod = render_restore_pod(
        PodSource(source_pod, node=plan.source,
                  checkpoint_time=_rfc3339(run.checkpointed.taken_at)),
        images, RestoreOptions(node=plan.destination, generate_name=plan.owner is not None,
                               k8s_version=kube.server_minor_version(run.cluster)))
    # A label, not only the journal's list: if the create's answer is lost, rollback
    # still finds the pod by it.
    pod["metadata"].setdefault("labels", {})[claims.RUN_LABEL] = run.journal.id
    held = None
    if plan.switch == "handover" or (plan.owner and plan.switch == "keep"):
        assert plan.owner is not None
        owner = kube.read_owner(run.cluster, plan.namespace, *plan.owner)
        held = switchover.held_back_label(source_pod, owner)
        pod["metadata"]["labels"].pop(held[0], None)
        pod["metadata"]["annotations"][switchover.HELD_LABEL] = f"{held[0]}={held[1]}"
    return pod, held


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
