"""What the destination needs before the restored pod can run there: the Secrets to pull
the checkpoint images with, and on a CRI-O destination the images the source ran.

CRI-O creates a restored container on the image the checkpointed container ran
(config.dump's rootfsImageRef, by storage ID) and pulls nothing for it
(server/container_restore.go, v1.36.3): a destination without it fails the restore
with `image not known`. So the checkpoint stage pulls those images there first,
through a short-lived pre-pull pod (pipeline/prepull.py), before any checkpoint is
taken: a pull can take minutes, and what the source does after its checkpoint is lost.
The create stage reads what was pulled from the journal's actions.
"""

from __future__ import annotations

from migrate.adapters import kube
from migrate.adapters.registry.reference import parse_reference
from migrate.pipeline import nodebuild, nodes, prepull
from migrate.pipeline.migration.run import Obj, Run, live_source

PULLED = "base image pulled"  # the journal action; its image and seconds


def on_cri_o(run: Run) -> bool:
    """Whether the destination runs CRI-O (whose restore pulls nothing)."""
    return nodes.parse_runtime(run.plan.destination_runtime).name == "cri-o"


def images_ran(run: Run, source_pod: Obj) -> dict[str, str]:
    """On a CRI-O destination, container -> the image the source's container ran."""
    return prepull.images_ran(source_pod, run.plan.containers) if on_cri_o(run) else {}


def pulled(run: Run) -> dict[str, float]:
    """Image -> seconds its pull on the destination took, as the journal recorded them."""
    return {str(a["image"]): float(a["seconds"]) for a in run.journal.actions
            if a["action"] == PULLED}


def pull_base_images(run: Run) -> None:
    """On a CRI-O destination, pull the images the source's containers ran there, unless
    its Node lists them; each pull is journaled (`PULLED`)."""
    plan = run.plan
    _forget_prepulls(run)
    if not on_cri_o(run):
        return
    source_pod = live_source(run)
    # As read in the last seconds will do (a drain's migrations share the read): the
    # Node's image list lags its kubelet's pulls anyway, and `shared` knows the pulls
    # this process made since.
    node = kube.read_node_recent(run.cluster, plan.destination)
    shared = prepull.pulls(run.cluster)
    for container, image, present in prepull.wanted(source_pod, plan.containers, node):
        if present or not shared.begin(plan.destination, image):
            # Listed by the Node, or pulled there by another migration of this process
            # (a drain's), which the Node lists only at its next status update.
            run.journal.record("base image present", node=plan.destination, image=image)
            continue
        pulled = False
        try:
            # The source's own imagePullSecrets pulled this image on its node (the
            # pre-pull pod keeps them); besides them only Secrets that exist already:
            # one made here now would be a second one beside the build Job's.
            _pull(run, source_pod, container, image, _existing_secrets(run))
            pulled = True
        finally:
            shared.end(plan.destination, image, pulled)


def _forget_prepulls(run: Run) -> None:
    """A resumed run's pre-pull pods (an interruption left them): deleted, not left to
    rollback, which a run that succeeds never does."""
    for obj in [o for o in run.journal.objects if o["kind"] == "Pod"
                and prepull.is_prepull(run.plan.pod, o["name"])]:
        kube.delete_pod(run.cluster, obj["namespace"], obj["name"], uid=obj["uid"] or None,
                        grace_seconds=0)
        run.journal.objects.remove(obj)
        run.journal.record("deleted Pod", namespace=obj["namespace"], name=obj["name"])


def _pull(run: Run, source_pod: Obj, container: str, image: str, secrets: list[str]) -> None:
    plan = run.plan
    run.progress("checkpoint", f"first pulling {image} on {plan.destination} (the restore "
                 "runs on it)")
    manifest = prepull.pod_manifest(source_pod, container, image, plan.destination,
                                    run.journal.id, secrets)

    def made(pod: Obj) -> None:
        meta = pod["metadata"]
        run.journal.created_object("Pod", plan.namespace, meta["name"], meta.get("uid", ""))

    def gone(pod: Obj) -> None:
        meta = pod["metadata"]
        run.journal.objects.remove({"kind": "Pod", "namespace": plan.namespace,
                                    "name": meta["name"], "uid": meta.get("uid", "")})

    # Journaled while it exists: an interrupted pull leaves the pod to rollback.
    pod, seconds = prepull.pull(run.cluster, manifest, image, run.req.timeout, made, gone)
    run.journal.record(PULLED, node=plan.destination, image=image, seconds=seconds,
                       pod=pod["metadata"]["name"])
    run.progress("checkpoint", f"{image} is on {plan.destination} ({seconds:.3f} s)")


def _existing_secrets(run: Run) -> list[str]:
    """--registry-secret, or the Secrets this run made so far (none: an empty list); not
    one only announced (`Journal.creating`), which a stopped try may never have made."""
    if run.req.registry_secret:
        return [run.req.registry_secret]
    return [o["name"] for o in run.journal.objects if o["kind"] == "Secret" and o["uid"]]


def pull_secrets(run: Run) -> list[str]:
    """Secrets that let the destination pull the checkpoint images, besides the source's
    own imagePullSecrets (which the restored pod keeps, for its other images).

    The credentials this run pushed with: the Secret named by --registry-secret, the
    one made for a build Job, or else a temporary dockerconfigjson Secret made from
    them now (recorded, and removed at cleanup or rollback). None when the run
    pushed anonymously.
    """
    plan = run.plan
    made = _existing_secrets(run)
    if made:
        return made
    names, seen = [], set()
    for image in plan.images.values():
        registry = parse_reference(image).registry
        body = nodebuild.registry_secret(run.settings, plan.namespace, image, run.journal.id)
        if body is None or registry in seen:
            continue
        seen.add(registry)
        names.append(nodebuild.create_named(run.cluster, run.journal, "Secret",
                                            plan.namespace, body))
    return names
