"""The kubelet's image manager for one node (pkg/kubelet/images): pull policies, pulls
with the pod's imagePullSecrets, backoff, and the Events they make.

- present and policy not Always: Normal Pulled `Container image "X" already
  present on machine`; policy Never and absent: ErrImageNeverPull;
- else Normal Pulling, a turn among the node's pulls (`max_parallel_image_pulls`
  at once, in order: the kubelet serializes them by default), the pull
  (registry_pull.py; it lasts at least the node's `image_pull_seconds`, the
  transfer from the loopback registry included), then Normal Pulled `Successfully
  pulled image "X" in 1.2s (3.5s including waiting). Image size: N bytes.`;
- a failed pull: Warning Failed `Failed to pull image "X": <error>` and
  `Error: ErrImagePull` (on CRI-O a refused connection is `RegistryUnavailable:
  ...`, `Error: RegistryUnavailable` and that waiting reason, with the message
  `image pull failed for X because the registry is unavailable: ...`), then a
  backoff (`backoff`, doubling to `backoff_max`) during which the container
  shows ImagePullBackOff (Normal BackOff `Back-off pulling image "X"`, its waiting
  message that and `: ErrImagePull: <error>`, the last failure; Warning
  Failed `Error: ImagePullBackOff`).

Each of the pod's pull secrets holding credentials for the registry is tried
in turn (none: anonymous); a secret that is missing or of another type gets a
Warning FailedToRetrieveImagePullSecret on the pod.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from e2e.nodes.api import Gone, NodeApi, Obj
from e2e.nodes.images import (
    NODE_STATUS_MAX_IMAGES,
    Credential,
    ImageIndex,
    ImageRef,
    PulledImage,
    credentials_for,
    dockerconfig_of,
    parse_image,
    preloaded,
)
from e2e.nodes.kubelet_events import EventRecorder
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.registry_pull import Puller, PullError
from e2e.nodes.runtime_releases import CRIO_ARTIFACT_FALLBACK_FROM, PAUSE_IMAGE, PAUSE_IMAGE_SIZE

__all__ = ["Backoff", "ImageManager", "Waiting"]

_NORMAL, _WARNING = "Normal", "Warning"


@dataclass
class Waiting:
    """A container not running: the kubelet's waiting reason and message."""

    reason: str
    message: str = ""


@dataclass
class Backoff:
    """A pull backoff: its current period, when it ends (time.monotonic), and the
    failure that began it as the waiting message repeats it (`REASON: MESSAGE`)."""

    period: float
    until: float
    failure: str


def _duration(seconds: float) -> str:
    # Go's time.Duration text, truncated to milliseconds as the kubelet prints it.
    ms = int(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"


class _PullTurns:
    """At most `limit()` pulls at a time, the others served in the order they came
    (the kubelet's serial puller is one goroutine reading a queue; its parallel one
    a counting semaphore)."""

    def __init__(self, limit: Callable[[], int | None], stopped: threading.Event) -> None:
        self._limit = limit
        self._stopped = stopped
        self._lock = threading.Lock()
        self._running = 0
        self._queue: deque[threading.Event] = deque()

    def _admit(self) -> None:
        limit = self._limit()
        while self._queue and (limit is None or self._running < limit):
            self._queue.popleft().set()
            self._running += 1

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        mine = threading.Event()
        with self._lock:
            self._queue.append(mine)
            self._admit()
        while not mine.wait(0.1):
            if self._stopped.is_set():
                with self._lock:
                    if not mine.is_set():
                        self._queue.remove(mine)
                        raise PullError("pull cancelled: the node is shutting down")
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._admit()


class ImageManager:
    """Gets containers' images onto one node.

    config: returns the node's current NodeConfig.
    """

    def __init__(self, api: NodeApi, puller: Puller, events: EventRecorder,
                 config: Callable[[], NodeConfig]) -> None:
        self.api = api
        self.puller = puller
        self.images = ImageIndex()
        self._events = events
        self._config = config
        self._lock = threading.Lock()
        self._unreported = False  # images held that the Node does not list yet
        self._turns = _PullTurns(lambda: self._config().max_parallel_image_pulls,
                                 puller.stopped)

    def _event(self, pod: Obj, c: dict[str, Any], type_: str, reason: str,
               message: str) -> None:
        self._events.container(pod, str(c.get("name", "")), type_, reason, message)

    def ensure(self, pod: Obj, c: dict[str, Any], backoffs: dict[str, Backoff],
               pulling: Callable[[], None]) -> PulledImage | tuple[Waiting, float]:
        """The image of container `c`, or why it is not there and when to try again
        (time.monotonic). backoffs: the pod's pull backoffs, by image (updated here);
        pulling: called when a pull that takes time begins."""
        image, config = str(c.get("image", "")), self._config()
        try:
            ref = parse_image(image)
        except ValueError:
            message = (f'Failed to apply default image tag "{image}": couldn\'t parse image '
                       f'reference "{image}": invalid reference format')
            self._event(pod, c, _WARNING, "InspectFailed", message)
            self._event(pod, c, _WARNING, "Failed", "Error: InvalidImageName")
            return Waiting("InvalidImageName", message), time.monotonic() + config.backoff
        present = self.images.get(image) or (None if ref.reachable else preloaded(image, ref))
        policy = c.get("imagePullPolicy") or "IfNotPresent"
        if present is not None and policy != "Always":
            # KubeletEnsureSecretPulledImages, beta and on since v1.35, words it so. What
            # the gate also does is not modelled: re-pulling, with the pod's own
            # credentials, an image another pod's credentials pulled.
            self._event(pod, c, _NORMAL, "Pulled", f'Container image "{image}" already '
                        "present on machine and can be accessed by the pod")
            self.hold(present)  # a preloaded image, now used here: the Node lists it
            return present
        if policy == "Never":
            message = f'Container image "{image}" is not present with pull policy of Never'
            self._event(pod, c, _WARNING, "ErrImageNeverPull", message)
            self._event(pod, c, _WARNING, "Failed", "Error: ErrImageNeverPull")
            return Waiting("ErrImageNeverPull", message), time.monotonic() + config.backoff
        backoff = backoffs.get(image)
        if backoff is not None and time.monotonic() < backoff.until:
            message = f'Back-off pulling image "{image}"'
            self._event(pod, c, _NORMAL, "BackOff", message)
            self._event(pod, c, _WARNING, "Failed", "Error: ImagePullBackOff")
            # The container's waiting message, not the Event, repeats the last failure.
            return (Waiting("ImagePullBackOff", f"{message}: {backoff.failure}"),
                    backoff.until)
        return self._pull(pod, c, image, ref, backoffs, pulling)

    def _pull(self, pod: Obj, c: dict[str, Any], image: str, ref: ImageRef,
              backoffs: dict[str, Backoff], pulling: Callable[[], None]
              ) -> PulledImage | tuple[Waiting, float]:
        config = self._config()
        self._event(pod, c, _NORMAL, "Pulling", f'Pulling image "{image}"')
        if ref.reachable or config.image_pull_seconds:
            pulling()
        queued = time.monotonic()
        try:
            with self._turns.turn():
                began = time.monotonic()
                pulled = self._fetch(pod, image, ref, config)
                pulled_in = time.monotonic() - began
        except PullError as e:
            message, reason = str(e), "ErrImagePull"
            if e.refused and config.runtime.startswith("cri-o://"):
                # CRI-O's `RegistryUnavailable: ...`, which the kubelet's evalCRIPullErr
                # makes a reason of its own (pkg/kubelet/images/image_manager.go, v1.37.2).
                message, reason = f"RegistryUnavailable: {message}", "RegistryUnavailable"
            self._event(pod, c, _WARNING, "Failed", f'Failed to pull image "{image}": {message}')
            self._event(pod, c, _WARNING, "Failed", f"Error: {reason}")
            if reason == "RegistryUnavailable":
                message = (f"image pull failed for {image} because the registry is unavailable"
                           f"{message.removeprefix('RegistryUnavailable')}")
            previous = backoffs.get(image)
            period = min(previous.period * 2, config.backoff_max) if previous else config.backoff
            failed = time.monotonic()
            backoffs[image] = Backoff(period, failed + period, f"{reason}: {message}")
            # Half way through the backoff the pod is synced again: ImagePullBackOff.
            return Waiting(reason, message), failed + period / 2
        backoffs.pop(image, None)
        self.hold(pulled)
        took, waited = _duration(pulled_in), _duration(time.monotonic() - queued)
        self._event(pod, c, _NORMAL, "Pulled", f'Successfully pulled image "{image}" in {took} '
                    f"({waited} including waiting). Image size: {pulled.size} bytes.")
        return pulled

    def hold(self, image: PulledImage) -> None:
        """Keep ``image`` on the node; a new one goes into the Node's status.images at
        the next `report_images`, as a kubelet lists what it holds in its periodic
        node status (nodeStatusUpdateFrequency), not at each pull."""
        if self.images.put(image):
            with self._lock:
                self._unreported = True

    def report_images(self) -> None:
        """Write the Node's status.images if an image came since the last report: the
        pause image and the largest others, at most NODE_STATUS_MAX_IMAGES."""
        with self._lock:
            if not self._unreported:
                return
            self._unreported = False
        listed = [{"names": [PAUSE_IMAGE], "sizeBytes": PAUSE_IMAGE_SIZE},
                  *self.images.listed(NODE_STATUS_MAX_IMAGES - 1)]

        def change(node: Obj) -> Obj:
            node.setdefault("status", {})["images"] = listed
            return node
        try:
            self.api.update_node(change)
        except Gone:
            pass  # the node went: nothing to report on
        except Exception:
            with self._lock:
                self._unreported = True  # the next report tries again
            raise

    def _wait(self, until: float) -> None:
        left = until - time.monotonic()
        if left > 0 and self.puller.stopped.wait(left):
            raise PullError("pull cancelled: the node is shutting down")

    def _fetch(self, pod: Obj, image: str, ref: ImageRef, config: NodeConfig) -> PulledImage:
        # The simulated time stands for the whole pull, as a registry far away would
        # take it: the real transfer from the loopback registry is part of it, not added.
        began = time.monotonic()
        try:
            return self._transfer(pod, image, ref, config)
        finally:
            self._wait(began + config.image_pull_seconds)

    def _transfer(self, pod: Obj, image: str, ref: ImageRef, config: NodeConfig) -> PulledImage:
        if not ref.reachable:
            return preloaded(image, ref)
        errors: list[PullError] = []
        artifacts = config.runtime_name == "cri-o" and \
            config.runtime_version[:2] >= CRIO_ARTIFACT_FALLBACK_FROM
        for creds in self._credentials(pod, ref) or [None]:
            try:
                return self.puller.pull(image, ref, creds)
            except PullError as e:
                errors.append(e.in_crio_store() if artifacts else e)
        # The kubelet aggregates the errors of each credential it tried: one is
        # itself, more are bracketed (and no longer start with a reason).
        if len(errors) == 1:
            raise errors[0]
        raise PullError(f"[{', '.join(map(str, errors))}]")

    def _credentials(self, pod: Obj, ref: ImageRef) -> list[Credential | None]:
        namespace, docs, missing = pod["metadata"]["namespace"], [], []
        for entry in pod["spec"].get("imagePullSecrets") or []:
            name = str((entry or {}).get("name", ""))
            secret = self.api.get("Secret", namespace, name)
            document = dockerconfig_of(secret) if secret is not None else None
            if document is None:
                missing.append(name)
            else:
                docs.append(document)
        if missing:
            self._events.pod(pod, _WARNING, "FailedToRetrieveImagePullSecret",
                             f"Unable to retrieve some image pull secrets ({', '.join(missing)}); "
                             "attempting to pull the image may not succeed.")
        return list(credentials_for(ref, docs))
