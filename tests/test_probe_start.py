"""The probe pod's start: a failed pull of its image fails the probe at once, with a hint.

The pod statuses are shaped as the real kubelet reports them (v1.37.2 with CRI-O
v1.36.3: evalCRIPullErr's reasons and words); the whole probe against real nodes is
tested there. Here: the fallback to DEFAULT_PAUSE_IMAGE (a node that lists no
pause image), which the real nodes, listing theirs, never take.
"""

from __future__ import annotations

from typing import Any

import pytest

from migrate.errors import ClusterError
from migrate.pipeline import probe

UNAVAILABLE = ("image pull failed for registry.k8s.io/pause:3.10 because the registry is "
               "unavailable: unable to pull image: initializing source "
               "docker://registry.k8s.io/pause:3.10: pinging container registry "
               "registry.k8s.io: Get \"https://registry.k8s.io/v2/\": dial tcp: lookup "
               "registry.k8s.io: no such host")


def _waiting(reason: str, message: str) -> dict[str, Any]:
    return {"metadata": {"name": "migrate-probe-node-b-abcd"},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": probe.CONTAINER, "state": {"waiting": {"reason": reason,
                                                                "message": message}}}]}}


@pytest.mark.parametrize("reason", ["RegistryUnavailable", "ErrImagePull", "ImagePullBackOff",
                                    "InvalidImageName", "SignatureValidationFailed"])
def test_a_failed_pull_of_the_fallback_pause_image_says_why_it_was_run(reason: str) -> None:
    check = probe._running("node-a", probe.DEFAULT_PAUSE_IMAGE, fallback=True)
    with pytest.raises(ClusterError) as e:
        check(_waiting(reason, UNAVAILABLE))
    # CRI-O's "unable to pull image: " (it did not try again as an artifact) is left out.
    assert e.value.message == f"the probe pod did not start on node-a: {reason}: " + \
        UNAVAILABLE.replace("unable to pull image: ", "")
    assert e.value.hint == (
        "node-a lists no pause image in its status.images, so the probe ran "
        "registry.k8s.io/pause:3.10, which it cannot pull: give an image node-a holds or can "
        "pull with --probe-image")


def test_the_error_is_one_line() -> None:
    check = probe._running("node-a", "127.0.0.1:1/x:1", fallback=False)
    with pytest.raises(ClusterError) as e:
        check(_waiting("ErrImagePull", "first line\n  second line\n"))
    assert e.value.message == "the probe pod did not start on node-a: ErrImagePull: first line " \
        "second line"
    assert e.value.hint == "give an image node-a holds or can pull with --probe-image"


def test_crio_s_retry_as_an_artifact_is_left_out() -> None:
    # CRI-O v1.36.3's words for a tag its registry lacks: the image pull's error, then
    # the same again from its OCI artifact retry (test_real_node.py shows them).
    cause = ("initializing source docker://127.0.0.1:5000/x:1: reading manifest 1 in "
             "127.0.0.1:5000/x: manifest unknown")
    check = probe._running("node-a", "127.0.0.1:5000/x:1", fallback=False)
    with pytest.raises(ClusterError) as e:
        check(_waiting("ErrImagePull", "unable to pull image or OCI artifact: pull image err: "
                       f"{cause}; artifact err: image reference: get manifest from ref: create "
                       "image source: reading manifest 1 in 127.0.0.1:5000/x: manifest unknown"))
    assert e.value.message == f"the probe pod did not start on node-a: ErrImagePull: {cause}"


@pytest.mark.parametrize("waiting", ["", "ContainerCreating"])
def test_a_pod_still_starting_is_waited_for(waiting: str) -> None:
    check = probe._running("node-a", probe.DEFAULT_PAUSE_IMAGE, fallback=True)
    assert check(_waiting(waiting, "")) is None
