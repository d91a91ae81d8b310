"""Create stage: the restored pod, rendered from the source's and the images, on the
destination node; the temporary pull Secret it may need; before it, on a CRI-O
destination, the images the source ran (pipeline/prepull.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from migrate.adapters import kube
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import ClusterError
from migrate.pipeline import claims, nodebuild, nodes, prepull, restore, switchover
from migrate.pipeline.manifest import PodSource, RestoreOptions, render_restore_pod
from migrate.pipeline.migration.results import CreateResult
from migrate.pipeline.migration.run import Obj, Run, source


def create(run: Run) -> CreateResult:
    """Create the restored pod; the journal records it before anything else can fail."""
    plan = run.plan
    source_pod = source(run)
    if source_pod is None or source_pod["metadata"].get("uid") != plan.uid:
        raise ClusterError(f"the source pod {plan.namespace}/{plan.pod} is gone",
                           hint="nothing left to migrate")
    manifest, held = _render(run, source_pod)
    secrets = _pull_secrets(run)
    ran, pulled = _base_images(run, source_pod, secrets)
    pulls = manifest["spec"].setdefault("imagePullSecrets", [])
    for secret in secrets:
        if {"name": secret} not in pulls:
            pulls.append({"name": secret})
    if not pulls:
        del manifest["spec"]["imagePullSecrets"]
    created = restore.create(run.cluster, plan.namespace, manifest)
    meta = created["metadata"]
    run.journal.created_object("Pod", plan.namespace, meta["name"], meta.get("uid", ""))
    run.progress("create", f"pod {plan.namespace}/{meta['name']} on {plan.destination}")
    return CreateResult(meta["name"], meta.get("uid", ""), meta.get("resourceVersion"), held,
                        pulled, ran)


def _base_images(run: Run, source_pod: Obj, secrets: list[str]
                 ) -> tuple[dict[str, str], dict[str, float]]:
    """On a CRI-O destination, the images the source's containers ran, pulled there
    first unless its Node lists them (CRI-O restores onto them and pulls nothing: see
    prepull.py). Container -> the image it ran; image -> seconds its pull took."""
    plan = run.plan
    _forget_prepulls(run)
    if nodes.parse_runtime(plan.destination_runtime).name != "cri-o":
        return {}, {}
    node = kube.read_node(run.cluster, plan.destination)
    wanted = prepull.images_ran(source_pod, plan.containers)
    pulled: dict[str, float] = {}
    for container, image in wanted.items():
        if image in pulled:
            continue
        if prepull.listed(node, image):
            run.journal.record("base image present", node=plan.destination, image=image)
            continue
        pulled[image] = _pull(run, source_pod, container, image, secrets)
    return wanted, pulled


def _forget_prepulls(run: Run) -> None:
    """A resumed run's pre-pull pods (an interruption left them): deleted, not left to
    rollback, which a run that succeeds never does."""
    for obj in [o for o in run.journal.objects if o["kind"] == "Pod"
                and prepull.is_prepull(run.plan.pod, o["name"])]:
        kube.delete_pod(run.cluster, obj["namespace"], obj["name"], uid=obj["uid"] or None,
                        grace_seconds=0)
        run.journal.objects.remove(obj)
        run.journal.record("deleted Pod", namespace=obj["namespace"], name=obj["name"])


def _pull(run: Run, source_pod: Obj, container: str, image: str, secrets: list[str]) -> float:
    plan = run.plan
    run.progress("create", f"pulling {image} on {plan.destination} (the restore runs on it)")
    began = time.monotonic()
    manifest = prepull.pod_manifest(source_pod, container, image, plan.destination,
                                    run.journal.id, secrets)
    created = prepull.start(run.cluster, manifest)
    meta = created["metadata"]
    record = {"kind": "Pod", "namespace": plan.namespace, "name": meta["name"],
              "uid": meta.get("uid", "")}
    run.journal.created_object("Pod", plan.namespace, meta["name"], meta.get("uid", ""))
    prepull.wait(run.cluster, created, plan.destination, image, run.req.timeout)
    seconds = round(time.monotonic() - began, 3)
    kube.delete_pod(run.cluster, plan.namespace, meta["name"], uid=meta.get("uid") or None,
                    grace_seconds=0)
    run.journal.objects.remove(record)
    run.journal.record("base image pulled", node=plan.destination, image=image,
                       seconds=seconds, pod=meta["name"])
    run.progress("create", f"{image} is on {plan.destination} ({seconds:.3f} s)")
    return seconds


def _render(run: Run, source_pod: Obj) -> tuple[Obj, tuple[str, str] | None]:
    plan = run.plan
    images = {c: i.reference for c, i in run.built.images.items()}
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
