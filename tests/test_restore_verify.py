"""The restore stage's verdict on a destination pod's container status.

A CRI-O restore (v1.36.3, server/container_restore.go) creates the container
with the image the checkpoint's config.dump names, so the kubelet reports that
image and its imageID, not the checkpoint image's: seen on the real kubelet and
CRI-O (tests/test_real_node.py), where `doctor --probe` failed with "runs
<the workload's image>, not the checkpoint sha256:..." before the verdict knew.
"""

from __future__ import annotations

from typing import Any

import pytest

from migrate.pipeline.restore import KubeletReport, Restored, RestoreRefused, _Verifier

CHECKPOINT = "sha256:" + "c" * 64
WORKLOAD = "127.0.0.1:5000/stretch/counter:1"
WORKLOAD_ID = "127.0.0.1:5000/stretch/counter@sha256:" + "a" * 64


def _pod(image: str, image_id: str) -> dict[str, Any]:
    return {"metadata": {"name": "counters-restored", "uid": "u1"},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "counter", "image": image, "imageID": image_id, "ready": True,
                "state": {"running": {"startedAt": "2026-12-02T14:08:04Z"}}}]}}


def _verify(pod: dict[str, Any], rootfs: dict[str, str]) -> Restored | None:
    return _Verifier({"counter": CHECKPOINT}, "node-real", None, rootfs)(pod)


def test_the_checkpoint_digest_as_image_id_is_restored() -> None:
    restored = _verify(_pod("127.0.0.1:5000/ckpt/counter:v1",
                            f"127.0.0.1:5000/ckpt/counter@{CHECKPOINT}"), {})
    assert restored is not None and restored.image_ids["counter"].endswith(CHECKPOINT)


def test_crio_reporting_the_checkpointed_containers_image_is_restored() -> None:
    restored = _verify(_pod(WORKLOAD, WORKLOAD_ID), {"counter": WORKLOAD})
    assert restored is not None and restored.image_ids == {"counter": WORKLOAD_ID}


def test_a_short_name_matches_its_canonical_form() -> None:
    restored = _verify(_pod("docker.io/library/busybox:1.36", "docker.io/library/busybox@"
                            "sha256:" + "b" * 64), {"counter": "busybox:1.36"})
    assert restored is not None


@pytest.mark.parametrize("rootfs", [{}, {"counter": "127.0.0.1:5000/other:1"}])
def test_any_other_image_is_refused(rootfs: dict[str, str]) -> None:
    with pytest.raises(RestoreRefused, match="not the checkpoint"):
        _verify(_pod(WORKLOAD, WORKLOAD_ID), rootfs)


def test_the_workload_image_as_pulled_by_digest_is_restored() -> None:
    """migrate pulled it by the digest the source ran: CRI-O names it REPO@DIGEST (seen on
    the real kubelet and CRI-O), not the rootfsImageName's tag."""
    pod = _pod(WORKLOAD_ID, WORKLOAD_ID)
    with pytest.raises(RestoreRefused, match="not the checkpoint"):
        _verify(pod, {"counter": WORKLOAD})
    verify = _Verifier({"counter": CHECKPOINT}, "node-real", None, {"counter": WORKLOAD},
                       {"counter": WORKLOAD_ID})
    restored = verify(pod)
    assert restored is not None and restored.image_ids == {"counter": WORKLOAD_ID}


def test_a_node_showing_the_base_image_by_its_own_tag_is_restored() -> None:
    """A restored pod's checkpoint names its base image by digest (the pre-pull's); a node
    that pulled it by tag shows the tag, and the imageID is the digest (seen on the real
    nodes: a counter migrated node-a -> node-b -> node-a)."""
    restored = _verify(_pod(WORKLOAD, WORKLOAD_ID), {"counter": WORKLOAD_ID})
    assert restored is not None and restored.image_ids == {"counter": WORKLOAD_ID}
    other = "127.0.0.1:5000/stretch/counter@sha256:" + "e" * 64
    with pytest.raises(RestoreRefused, match="not the checkpoint"):
        _verify(_pod(WORKLOAD, other), {"counter": WORKLOAD_ID})


@pytest.mark.parametrize(("reason", "hint"), [
    ("OutOfcpu", "the kubelet of node-real had no room for it; make room there or pick "
                 "another node with --to"),
    ("Evicted", "its Events say why: kubectl get events -n default --field-selector "
                "involvedObject.name=counters-restored")])
def test_a_pod_the_kubelet_ended_says_why_after_the_rollback(reason: str, hint: str) -> None:
    pod = _pod(WORKLOAD, WORKLOAD_ID)
    pod["metadata"]["namespace"] = "default"
    pod["status"] = {"phase": "Failed", "reason": reason, "message": "Pod was rejected"}
    with pytest.raises(RestoreRefused) as e:
        _verify(pod, {})
    assert e.value.message == f"destination pod counters-restored ended: Failed {reason} " \
        "Pod was rejected"
    assert e.value.hint == hint


def test_a_pull_failing_for_now_is_the_last_state_without_crio_s_artifact_retry() -> None:
    """A failure no retry is known to fix (a 503) is waited out; the timeout's error ends
    with the last state, which on CRI-O 1.36 would say the cause twice (test_real_node.py
    shows its OCI artifact retry)."""
    cause = ("initializing source docker://127.0.0.1:5000/ckpt/counter:v1: received "
             "unexpected HTTP status: 503 Service Unavailable")
    message = ('Back-off pulling image "127.0.0.1:5000/ckpt/counter:v1": ErrImagePull: unable '
               f"to pull image or OCI artifact: pull image err: {cause}; artifact err: image "
               "reference: get manifest from ref: create image source: received unexpected "
               "HTTP status: 503 Service Unavailable")
    pod = {"metadata": {"name": "counters-restored", "uid": "u1"},
           "spec": {"containers": [{"name": "counter",
                                    "image": "127.0.0.1:5000/ckpt/counter:v1"}]},
           "status": {"phase": "Pending", "containerStatuses": [{
               "name": "counter", "image": "127.0.0.1:5000/ckpt/counter:v1", "ready": False,
               "state": {"waiting": {"reason": "ImagePullBackOff", "message": message}}}]}}
    verify = _Verifier({"counter": CHECKPOINT}, "node-real", None, {})
    assert verify(pod) is None
    assert verify.last_reason == ("counter: ImagePullBackOff: Back-off pulling image "
                                  f'"127.0.0.1:5000/ckpt/counter:v1": ErrImagePull: {cause}')


def test_the_kubelets_events_are_said_once_and_a_repeat_with_its_count() -> None:
    """The real kubelet repeats MissingClusterDNS at each sync of a pod (one Event, its count
    raised): each count is said once, the repeats marked as kubectl describe marks them."""
    said: list[str] = []
    report = KubeletReport(said.append, {"counter": 295914})

    def event(name: str, count: int | None, reason: str, message: str,
              path: str | None = None) -> dict[str, Any]:
        return {"metadata": {"name": name}, "count": count, "reason": reason,
                "message": message, "involvedObject": {"fieldPath": path}}

    dns = "kubelet does not have ClusterDNS IP configured"
    report.event(event("e1", 1, "MissingClusterDNS", dns))
    report.event(event("e2", None, "Pulling", 'Pulling image "r/c@sha256:1"',
                       "spec.containers{counter}"))
    report.event(event("e1", 2, "MissingClusterDNS", dns))
    report.event(event("e1", 2, "MissingClusterDNS", dns))  # the watch and the catch-up
    report.event(event("e3", 1, "Created", "Container created", "spec.containers{counter}"))
    assert said == [f"pod: MissingClusterDNS: {dns}",
                    'counter: Pulling: Pulling image "r/c@sha256:1" (289.0 KiB)',
                    f"pod: MissingClusterDNS (x2): {dns}",
                    "counter: Created: Container created (from the checkpoint: CRIU restores "
                    "its processes as it starts)"]
