"""Which failed pulls of the workload's image (the pre-pull on a CRI-O destination) stop
a drain's pod for good, and which it tries again: refusals.base_pull_refused; and what a
restore CRIU failed says (refusals.refused)."""

from __future__ import annotations

import pytest

from migrate.errors import Transient
from migrate.pipeline.refusals import PullRefused, base_pull_refused

IMAGE = "reg.example:5000/shop/web:1"


@pytest.mark.parametrize("message", [
    'pinging container registry reg.example:5000: Get "https://reg.example:5000/v2/": '
    "http: server gave HTTP response to HTTPS client",
    "tls: failed to verify certificate: x509: certificate signed by unknown authority",
    "reading manifest 1 in reg.example:5000/shop/web: manifest unknown",
    "unauthorized: authentication required",
])
def test_a_lasting_cause_is_not_tried_again(message: str) -> None:
    error = base_pull_refused("node-b", IMAGE, message)
    assert isinstance(error, PullRefused) and not isinstance(error, Transient)


@pytest.mark.parametrize("message", [
    f"image pull failed for {IMAGE} because the registry is unavailable: dial tcp "
    "127.0.0.1:5000: connect: connection refused",
    "received unexpected HTTP status: 503 Service Unavailable",
])
def test_no_known_cause_may_pass(message: str) -> None:
    error = base_pull_refused("node-b", IMAGE, message)
    assert isinstance(error, PullRefused) and isinstance(error, Transient)
    assert error.message == (f"node-b cannot pull {IMAGE}, the image the restore runs on: "
                             f"{message}")


#: A real CRI-O v1.36.3's pull of a tag its registry does not have (test_real_node.py
#: shows the node agents say the same): the image pull's error, then its OCI artifact
#: retry's.
ARTIFACT_RETRY = (
    "unable to pull image or OCI artifact: pull image err: initializing source "
    "docker://reg.example:5000/ckpt/web:c1: reading manifest c1 in reg.example:5000/ckpt/web: "
    "manifest unknown; artifact err: image reference: get manifest from ref: create image "
    "source: reading manifest c1 in reg.example:5000/ckpt/web: manifest unknown")


def test_crio_s_artifact_retry_is_left_out_of_the_error_and_kept_in_the_journal() -> None:
    from migrate.pipeline.refusals import pull_refused

    e = pull_refused("web", "node-b", "reg.example:5000/ckpt/web:c1", ARTIFACT_RETRY)
    assert e is not None and e.message == (
        "node-b cannot pull the checkpoint image of web: the registry does not have the image "
        "the node asked for: initializing source docker://reg.example:5000/ckpt/web:c1: "
        "reading manifest c1 in reg.example:5000/ckpt/web: manifest unknown")
    assert e.runtime_message == f"ErrImagePull: {ARTIFACT_RETRY}"
    # The kubelet's waiting message in the backoff repeats the failure after its own words.
    base = base_pull_refused("node-b", IMAGE, f'Back-off pulling image "{IMAGE}": '
                             f"ErrImagePull: {ARTIFACT_RETRY}")
    assert base.message.endswith(": initializing source docker://reg.example:5000/ckpt/web:c1"
                                 ": reading manifest c1 in reg.example:5000/ckpt/web: "
                                 "manifest unknown")
    assert "artifact err" not in base.message


#: A real CRI-O v1.36.3's pull from a registry whose CA the node does not trust
#: (test_real_node.py shows the node agents say the same): a network error, which it
#: does not try again as an artifact and says so.
NOT_RETRIED = ("unable to pull image: initializing source docker://reg.example:5000/ckpt/web:c1: "
               "pinging container registry reg.example:5000: Get \"https://reg.example:5000/v2/\": "
               "tls: failed to verify certificate: x509: certificate signed by unknown authority")


def test_crio_s_words_for_a_pull_it_did_not_retry_are_left_out_too() -> None:
    # The same cause as where CRI-O retried, without the words that say it did not.
    from migrate.pipeline.refusals import pull_refused

    e = pull_refused("web", "node-b", "reg.example:5000/ckpt/web:c1", NOT_RETRIED)
    assert e is not None and e.message == (
        "node-b cannot pull the checkpoint image of web: the node does not trust the "
        "registry's certificate: " + NOT_RETRIED.removeprefix("unable to pull image: "))
    assert e.runtime_message == f"ErrImagePull: {NOT_RETRIED}"


#: The restored container's RunContainerError when CRIU could not restore it (CRI-O
#: v1.36.3 with runc on a real node: the forensic workload, whose open /etc/data.txt
#: CRI-O had left out of the root-fs diff; paths shortened).
CRIU_RESTORE_FAILED = (
    "failed to restore container 08e5: container restore failed: "
    'time="2026-12-02T20:49:33Z" level=error msg="criu failed: type NOTIFY errno 0\\nlog file: '
    '/var/lib/containers/storage/overlay-containers/08e5/userdata/restore.log"\n')


def test_criu_failing_a_restore_names_its_log_and_the_usual_causes() -> None:
    from migrate.pipeline.refusals import refused

    e = refused("workload", "node-b", "RunContainerError", CRIU_RESTORE_FAILED, None)
    assert e.message == (
        "the restore of workload on node-b failed: CRIU could not restore it (type NOTIFY "
        "errno 0); its log on node-b: /var/lib/containers/storage/overlay-containers/08e5/"
        "userdata/restore.log")
    assert e.hint is not None and "bad size" in e.hint and "tcp-close" in e.hint
    assert e.runtime_message.startswith("RunContainerError: failed to restore container")


def test_a_criu_failure_after_emptydirs_started_empty_names_them_first() -> None:
    from migrate.pipeline.refusals import CRIU_RESTORE_HINT, refused

    e = refused("counter", "node-b", "RunContainerError", CRIU_RESTORE_FAILED, None,
                emptied=("cache", "data"))
    assert e.hint == (
        "the emptyDir volume(s) cache, data started empty on node-b: a file the process held "
        "open there cannot be opened again (`Can't open file ... on restore`); such a pod can "
        "move only once it holds none open there. " + CRIU_RESTORE_HINT)
    # Another failure is not blamed on them.
    other = refused("counter", "node-b", "CreateContainerError", "image not known", None,
                    emptied=("data",))
    assert other.hint is not None and "emptyDir" not in other.hint
