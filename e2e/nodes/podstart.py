"""How a simulated kubelet gets a pod's containers running: the image (image_manager.py),
container creation (a restore for checkpoint images) and start, with the kubelet's
Events and backoff, on a small pool of worker threads per node so that the
kubelet's loop never waits for a registry.

Per container, as kuberuntime_manager's startContainer does: the image
(Pulling/Pulled, or ErrImagePull/ImagePullBackOff...), then create and start
(restore.py): Normal Created `Container created`, Normal Started `Container
started`; a refusal is Warning Failed `Error: <message>` with the
container Waiting (CreateContainerError, or RunContainerError when it failed
at start) and retried every `backoff` (the pod worker's requeue).

Neither the kubelet nor CRI-O records an Event of its own for a restore: a
restored container shows the same Created/Started events.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from e2e.nodes.api import NodeApi, Obj, now, rfc3339
from e2e.nodes.image_manager import Backoff, ImageManager, Waiting
from e2e.nodes.images import PulledImage, parse_image
from e2e.nodes.kubelet_events import EventRecorder
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.registry_pull import Puller, PullError
from e2e.nodes.restore import (
    Checkpoint,
    CreateError,
    LayerRoot,
    check_containerd,
    check_ordinary,
    prepare_restore,
    restore_path,
)
from e2e.nodes.restored import bring_back

__all__ = ["PodOutcome", "PodStarter", "Started", "Waiting"]

_NORMAL, _WARNING = "Normal", "Warning"
# kuberuntime_container.go at v1.37.2: the container's name is in the Event's fieldPath
# only (older kubelets said "Created container NAME").
_CREATED, _STARTED = "Container created", "Container started"
#: An image ID as CRI-O parses one (reference.IsFullIdentifier).
_STORAGE_ID = re.compile(r"[a-f0-9]{64}")


@dataclass
class Started:
    """A running container: its imageID (None: the kubelet's own for pre-loaded
    images), when it started, pod annotations it brings (a restore's), and the image
    it reports when not its spec's (a CRI-O restore reports the checkpointed
    container's image)."""

    image_id: str | None
    started_at: str
    annotations: dict[str, str] = field(default_factory=dict)
    image: str | None = None


@dataclass
class PodOutcome:
    """Each container's state after an attempt."""

    containers: dict[str, Started | Waiting]

    @property
    def all_started(self) -> bool:
        return all(isinstance(o, Started) for o in self.containers.values())

    @property
    def annotations(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for o in self.containers.values():
            if isinstance(o, Started):
                out.update(o.annotations)
        return out


@dataclass
class _PodState:
    started: dict[str, Started] = field(default_factory=dict)
    backoff: dict[str, Backoff] = field(default_factory=dict)  # image -> pull backoff
    retry_at: float | None = None
    done: bool = False


Report = Callable[[Obj, PodOutcome], None]


class PodStarter:
    """Starts pods on one node; the kubelet's loop asks wants()/retry_at() and submit()s.

    config: returns the node's current NodeConfig.
    report: writes a pod's status from an outcome (called on a worker thread).
    done: called after each attempt (and its report): what wants() and retry_at()
        answer may have changed, though the pod's status did not.
    workers: pods started at once. The kubelet has a worker per pod (pod_workers.go);
        what it does one at a time is pulling images (image_manager.py), not starting
        pods. The bound only keeps a node's threads finite.
    """

    def __init__(self, api: NodeApi, node: str, puller: Puller, config: Callable[[], NodeConfig],
                 report: Report, log: Callable[[str], None], events: EventRecorder,
                 workers: int = 64, done: Callable[[], None] = lambda: None) -> None:
        self._done = done
        self.api = api
        self.node = node
        self.puller = puller
        self._config = config
        self._report = report
        self._log = log
        self._events = events
        self.image_manager = ImageManager(api, puller, self._events, config)
        self._pool = ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix=f"sim-kubelet-{node}-start")
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._pods: dict[str, _PodState] = {}

    # -- what the kubelet's loop asks ----------------------------------------------------

    def wants(self, uid: str) -> bool:
        """Whether the pod needs an attempt (not in progress, not all started)."""
        with self._lock:
            state = self._pods.get(uid)
            return uid not in self._busy and not (state is not None and state.done)

    def retry_at(self, uid: str) -> float | None:
        """When (time.monotonic) a failed pod may be tried again; None if never tried."""
        with self._lock:
            state = self._pods.get(uid)
            return state.retry_at if state is not None else None

    def forget(self, present: set[str]) -> None:
        """Drop what is kept about pods that are gone."""
        with self._lock:
            for uid in set(self._pods) - present - self._busy:
                del self._pods[uid]

    def submit(self, pod: Obj) -> None:
        """Start (or retry) `pod` on a worker thread."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid in self._busy:
                return
            self._busy.add(uid)
            state = self._pods.setdefault(uid, _PodState())
        self._pool.submit(self._run, pod, state)

    def close(self) -> None:
        """Wait for the workers (the puller's stop event ends pulls early)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.puller.close()

    # -- one attempt ---------------------------------------------------------------------

    def _run(self, pod: Obj, state: _PodState) -> None:
        uid = pod["metadata"]["uid"]
        outcome: PodOutcome | None = None
        try:
            outcome = self._attempt(pod, state)
        except Exception as e:  # a bug must not leave the pod busy forever
            self._log(f"kubelet-{self.node}: starting {pod['metadata']['name']}: "
                      f"unexpected {type(e).__name__}: {e}")
            state.retry_at = time.monotonic() + self._config().backoff
        finally:
            # Not busy before the status write: the write wakes the kubelet's loop.
            with self._lock:
                self._busy.discard(uid)
        try:
            if outcome is not None and not self.puller.stopped.is_set():
                self._report(pod, outcome)
        finally:
            self._done()

    def _attempt(self, pod: Obj, state: _PodState) -> PodOutcome:
        containers: dict[str, Started | Waiting] = {}
        retries: list[float] = []
        specs = [c for c in pod["spec"].get("containers") or [] if isinstance(c, dict)]
        for c in specs:
            name = str(c.get("name", ""))
            if name in state.started:
                containers[name] = state.started[name]
                continue
            outcome, retry = self._container(pod, c, state, containers)
            containers[name] = outcome
            if isinstance(outcome, Started):
                state.started[name] = outcome
            else:
                retries.append(retry)
        state.retry_at = min(retries) if retries else None
        state.done = not retries
        return PodOutcome(containers)

    def _container(self, pod: Obj, c: dict[str, Any], state: _PodState,
                   so_far: dict[str, Started | Waiting]) -> tuple[Started | Waiting, float]:
        def pulling() -> None:
            # A pull that takes time: the pod shows ContainerCreating meanwhile.
            self._report(pod, PodOutcome({**{str(x.get("name")): Waiting("ContainerCreating")
                                             for x in pod["spec"]["containers"]}, **so_far}))

        image = self.image_manager.ensure(pod, c, state.backoff, pulling)
        if not isinstance(image, PulledImage):
            return image
        try:
            started = self._create(pod, c, image)
        except CreateError as e:
            self._event(pod, c, _WARNING, "Failed", f"Error: {e}")
            return Waiting(e.reason, str(e)), time.monotonic() + self._config().backoff
        return started, 0.0

    def _event(self, pod: Obj, c: dict[str, Any], type_: str, reason: str,
               message: str) -> None:
        self._events.container(pod, str(c.get("name", "")), type_, reason, message)

    # -- containers ----------------------------------------------------------------------

    def _create(self, pod: Obj, c: dict[str, Any], image: PulledImage) -> Started:
        name, config = str(c.get("name", "")), self._config()
        annotations: dict[str, str] = {}
        path = restore_path(config, image) if image.ref.reachable else "plain"
        if path == "crio":
            with LayerRoot(image) as root:
                checkpoint = prepare_restore(image, root, pod, c)
                base_name, base = self._restore_base(checkpoint)
                self._event(pod, c, _NORMAL, "Created", _CREATED)
                annotations = bring_back(image, root, checkpoint, pod, c).annotations
            self._event(pod, c, _NORMAL, "Started", _STARTED)
            # CRI-O reports the image the container was created on: the base image.
            ref = str(checkpoint.config.get("rootfsImageRef") or "")
            return Started(base.repo_digest if base is not None else (ref or None),
                           rfc3339(now()), annotations, image=base_name)
        elif path != "plain":  # containerd's restore in CreateContainer
            with LayerRoot(image) as root:
                checkpoint = check_containerd(image, root, config)
                self._base_image(str(checkpoint.config.get("rootfsImageRef")
                                     or checkpoint.config.get("rootfsImageName") or ""))
                self._event(pod, c, _NORMAL, "Created", _CREATED)
                annotations = bring_back(image, root, checkpoint, pod, c).annotations
        else:
            if image.ref.reachable:
                # The ID kubelet.py gives the container.
                container_id = hashlib.sha256(
                    f"{pod['metadata']['uid']}/{name}".encode()).hexdigest()
                try:
                    check_ordinary(image, c, config, container_id)
                except CreateError as e:
                    if e.reason == "RunContainerError":  # created, then failed to start
                        self._event(pod, c, _NORMAL, "Created", _CREATED)
                    raise
            self._event(pod, c, _NORMAL, "Created", _CREATED)
        self._event(pod, c, _NORMAL, "Started", _STARTED)
        return Started(image.repo_digest if image.ref.reachable else None, rfc3339(now()),
                       annotations)

    def _restore_base(self, checkpoint: Checkpoint) -> tuple[str, PulledImage | None]:
        """The image a CRI-O restore creates the container on: config.dump's
        rootfsImageRef, an image ID (else, in older archives, rootfsImageName), never
        pulled (server/container_restore.go, v1.36.3). Not in the node's store: CreateError
        with the words of containers/image's storage reference (storage_reference.go),
        which CRI-O passes on. None: an image of a registry the nodes never contact,
        present on every node."""
        name = str(checkpoint.config.get("rootfsImageName") or "")
        ref = str(checkpoint.config.get("rootfsImageRef") or "")
        if ref and not _STORAGE_ID.fullmatch(ref):
            # storage.ParseStorageImageIDFromOutOfProcessData (internal/storage/image_id.go)
            raise CreateError("CreateContainerError", f'invalid RootfsImageRef "{ref}": '
                              f'"{ref}" is not a valid image ID')
        try:
            reachable = parse_image(name).reachable
        except ValueError:
            reachable = True
        if not reachable:
            return name, None
        found = self.image_manager.images.holding(name, ref)
        if found is None:
            raise CreateError("CreateContainerError",
                              f'reading image "{ref or name}": image not known')
        # Found by ID: shown by the node's name for it, which may not be config.dump's.
        return self.image_manager.images.name_of(found.image_id) or name, found

    def _base_image(self, image: str) -> PulledImage | None:
        """A checkpoint's base image, pulled as containerd pulls it for a restore: with no
        credentials at all, not even the pod's imagePullSecrets (containerd #12585,
        #11901). None: an image of a registry the nodes never contact."""
        try:
            ref = parse_image(image)
        except ValueError:
            raise CreateError("CreateContainerError", f"failed to pull checkpoint base image "
                              f"{image}: invalid reference format") from None
        pulled = self.image_manager.images.get(image)
        if not ref.reachable or pulled is not None:
            return pulled
        try:
            pulled = self.puller.pull(image, ref, None)
        except PullError as e:
            cause = str(e).split(": ", 1)[-1] if str(e).startswith("initializing") else str(e)
            raise CreateError("CreateContainerError",
                              f"failed to pull checkpoint base image {image}: {cause}") from None
        self.image_manager.hold(pulled)
        return pulled
