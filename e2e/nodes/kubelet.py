"""Simulated kubelets: each registers its Node, "runs" the pods bound to it and
serves the kubelet API (checkpoints).

Nothing is executed (real containers run on the real kubelet and CRI-O,
e2e/cluster/realnode.py). A pod bound to the node turns Running (containers
ready, a pod IP from the node's 10.88.N.0/24 range, data only) `start_latency`
seconds after the kubelet first sees it. A pod being deleted gets a Killing
Event per running container when its deletionTimestamp appears; `stop_latency`
seconds later its containers are reported killed (runs.kill_containers: the
pod Failed) and the pod is removed (the grace period is not waited out: nothing
runs that could use it). Init containers count as
completed (sidecars, `restartPolicy: Always`, as running).

Each node is configured by a `NodeConfig` (nodeconfig.py): runtime, restore
level, the ContainerCheckpoint gate, readiness, labels, taints, capacity and
fault injection.

The kubelet API (kubelet_api.py) answers `POST /checkpoint/{namespace}/{pod}/{container}`
by writing an archive (checkpoints.py) into the node's checkpoint directory,
`STATE/nodes/<node>/var/lib/kubelet/checkpoints/` on the machine, and answering
the NODE path `/var/lib/kubelet/checkpoints/checkpoint-<pod>_<ns>-<ctr>-<time>.tar`.
What the archive holds can be steered with pod annotations (left out of the
archive's own annotation copy):

    sim.migrate.dev/processes
        JSON list of processes, each {"pid", "ppid", "comm", "argv", "env", "heap"}:
        pid defaults to its position (1-based), ppid to 0 for the first and the
        first's pid for the others, comm to argv[0]'s basename, env to the
        container's environment, heap (a string) is put in the process's
        dumped memory (so `migrate memparse --search` finds it).
        Default: one process named after the image's last path component.
    sim.migrate.dev/processes.<container>
        The same, for one container of the pod (wins over the pod-wide key).
    sim.migrate.dev/memory-mib
        Extra dumped memory in MiB (a number, at most 4096): real pages in the
        archive (the second process's memory; a lone process's heap, zeroed,
        held in RAM while the archive is written), and what
        `checkpoint_delay_per_mib` multiplies (with the heaps' sizes).
    sim.migrate.dev/rootfs-diff
        JSON object path -> text: the files in rootfs-diff.tar (default: none).

    sim.migrate.dev/memory-mib.<container>, sim.migrate.dev/rootfs-diff.<container>
        The same, for one container of the pod (a restored container gets these).

A malformed annotation fails the checkpoint with 500, as a runtime error would.

Pods start through podstart.py on a small worker pool: images are pulled
(really, from registries on 127.0.0.1; others count as present on every node,
see images.py), checkpoint images are restored as CRI-O does (restore.py),
with the kubelet's Events, waiting reasons (ErrImagePull, ImagePullBackOff,
CreateContainerError...) and backoff. A pod stays Pending until all its
containers run; init and ephemeral containers are taken as done and running.

Pods with restartPolicy Never or OnFailure run to completion: once Running,
each container is handed to a `ContainerProcess` (runs.py: by default it ends
after `sim.migrate.dev/run-seconds`; toolrun.py runs the tool's image for
real), and the pod turns Succeeded or Failed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e.nodes.api import Gone, NodeApi, Obj, now, observed, rfc3339, set_condition
from e2e.nodes.images import RegistryConfig
from e2e.nodes.kubelet_events import EventRecorder
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.podstart import PodOutcome, PodStarter, Started, Waiting
from e2e.nodes.registry_pull import Puller
from e2e.nodes.runs import ContainerProcess, ContainerRuns, kill_containers, running_containers
from e2e.nodes.runtime_releases import PAUSE_IMAGE, PAUSE_IMAGE_SIZE

__all__ = ["KUBELET_PORT", "Kubelet", "apply_node_config", "node_object"]

#: The kubelet's port (the node proxy's default; every node host listens on it).
KUBELET_PORT = 10250
_CAPACITY = {"cpu": "4", "memory": "8148752Ki", "pods": "110",
             "ephemeral-storage": "61202244Ki", "hugepages-2Mi": "0"}
_POD_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                   "PodScheduled")
_NOT_READY_MESSAGE = ("container runtime network not ready: NetworkReady=false "
                      "reason:NetworkPluginNotReady message:Network plugin returns error: "
                      "cni plugin not initialized")


def _same_taint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a.get("key") == b.get("key") and a.get("effect") == b.get("effect"))


def apply_node_config(node: Obj, config: NodeConfig, previous: NodeConfig | None = None) -> Obj:
    """Make `node` report `config` (runtime, readiness, labels, taints, capacity);
    `previous`: the config it reported so far (its taints are taken back). A NotReady
    node's `not-ready` taint is the node lifecycle controller's, not the kubelet's."""
    status, spec = node.setdefault("status", {}), node.setdefault("spec", {})
    status.setdefault("nodeInfo", {})["containerRuntimeVersion"] = config.runtime
    capacity = {**_CAPACITY, **config.capacity}
    status["capacity"], status["allocatable"] = capacity, dict(capacity)
    node["metadata"].setdefault("labels", {}).update(config.labels)
    owned = list(previous.taints if previous else [])
    taints = [t for t in spec.get("taints") or [] if not any(_same_taint(t, o) for o in owned)]
    taints += [copy.deepcopy(t) for t in config.taints
               if not any(_same_taint(t, have) for have in taints)]
    if taints:
        spec["taints"] = taints
    else:
        spec.pop("taints", None)
    if config.ready:
        set_condition(status, "Ready", "True", "KubeletReady", "kubelet is posting ready status")
    else:
        set_condition(status, "Ready", "False", "KubeletNotReady", _NOT_READY_MESSAGE)
    for c in status["conditions"]:
        if "lastProbeTime" in c:
            c["lastHeartbeatTime"] = c.pop("lastProbeTime") or c["lastTransitionTime"]
    return node


def node_object(name: str, index: int, config: NodeConfig, *, address: str,
                kubelet_version: str) -> Obj:
    """The Node a kubelet registers: by default Ready, schedulable, CRI-O, 4 CPUs / 8 GiB;
    `address` its InternalIP, where the API server's node proxy reaches its kubelet."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    status: dict[str, Any] = {
        "addresses": [
            {"type": "InternalIP", "address": address},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        "nodeInfo": {
            "machineID": digest[:32],
            "systemUUID": f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-"
                          f"{digest[20:32]}",
            "bootID": digest[32:64],
            "kernelVersion": "6.1.0-sim-amd64",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "containerRuntimeVersion": config.runtime,
            "kubeletVersion": kubelet_version,
            "kubeProxyVersion": kubelet_version,
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        # Every node holds its runtime's pause image (one per pod sandbox).
        "images": [{"names": [PAUSE_IMAGE], "sizeBytes": PAUSE_IMAGE_SIZE}],
    }
    for type_, reason, message in (
        ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ):
        set_condition(status, type_, "False", reason, message)
    node: Obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            },
            "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": f"10.88.{index}.0/24", "podCIDRs": [f"10.88.{index}.0/24"]},
        "status": status,
    }
    return apply_node_config(node, config)


def _image_id(image: str) -> str:
    repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] \
        else image.split("@")[0]
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _waiting_status(container: dict[str, Any], waiting: Waiting) -> dict[str, Any]:
    state = {"reason": waiting.reason, **({"message": waiting.message} if waiting.message
                                          else {})}
    return {"name": str(container.get("name", "")), "image": str(container.get("image", "")),
            "imageID": "", "ready": False, "started": False, "restartCount": 0,
            "state": {"waiting": state}, "lastState": {}}


def _container_status(container: dict[str, Any], uid: str, started: str, runtime: str,
                      *, completed: bool = False, image_id: str | None = None,
                      image: str | None = None) -> dict[str, Any]:
    image = image or str(container.get("image", ""))
    name = str(container.get("name", ""))
    state: dict[str, Any] = {"running": {"startedAt": started}}
    if completed:
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                "finishedAt": started,
                                "containerID": f"{runtime}://" + hashlib.sha256(
                                    f"{uid}/{name}".encode()).hexdigest()}}
    return {
        "name": name,
        "image": image,
        "imageID": image_id or _image_id(image),
        "containerID": f"{runtime}://" + hashlib.sha256(f"{uid}/{name}".encode()).hexdigest(),
        "ready": not completed,
        "started": not completed,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }


class Kubelet:
    """One node's agent: registers its Node, starts the pods bound to it, removes
    the deleted ones, and reports what it did.

    It has no thread of its own: a driver (e2e/cluster/agent.py) calls reconcile()
    whenever the node's pods change, when wake() was called, and next_wakeup()
    seconds after a pass.

    api: the node's view of the cluster (api.py).
    index: the node's number (1-based): pod IPs 10.88.INDEX.x.
    config: how the node behaves (NodeConfig); change it with update_config().
    start_latency, stop_latency: seconds from seeing a pod (or its deletion) to acting.
    registries: how to reach registries on 127.0.0.1 (images.py).
    storage: where pulled images go (the node's var/lib/containers/storage).
    process: what a run-to-completion container does (runs.py).
    address: the node's InternalIP, the pods' hostIP.
    kubelet_version: what the Node reports as its kubelet's version.

    The real kube-controller-manager's node lifecycle controller taints a NotReady
    node and marks the node's pods not Ready; as the kubelet's status manager does,
    this one reports its running pods Ready again once the node is.
    """

    def __init__(
        self, api: NodeApi, node: str, index: int, *, start_latency: float,
        stop_latency: float, config: NodeConfig | None, log: Callable[[str], None],
        registries: RegistryConfig, storage: Path, process: ContainerProcess,
        address: str, kubelet_version: str,
    ) -> None:
        self.api = api
        self._log = log
        self.runs = ContainerRuns(api, node, process, self._log)
        self.node = node
        self.index = index
        self.name = f"kubelet-{node}"
        self.address = address
        self.kubelet_version = kubelet_version
        self.start_latency = start_latency
        self.stop_latency = stop_latency
        #: Called when a pass is wanted though no pod changed (set by the driver).
        self.wake: Callable[[], None] = lambda: None
        self._config = config or NodeConfig()
        self._config_lock = threading.Lock()
        self._due: dict[str, float] = {}  # pod uid -> when to start or remove it
        self._ips: dict[str, str] = {}  # pod uid -> pod IP
        # Pods stopped here but held by finalizers: nothing more to do for them.
        self._stopped: set[str] = set()
        self._stopping: set[str] = set()  # deleted pods whose containers are being stopped
        self._ips_lock = threading.Lock()
        self._halt = threading.Event()  # ends pulls in progress when the node stops
        puller = Puller(storage, registries, self._halt)
        self._events = EventRecorder(api, node, log)
        self._starter = PodStarter(api, node, puller, lambda: self.config, self._report,
                                   self._log, self._events, done=lambda: self.wake())

    # -- configuration ---------------------------------------------------------------

    @property
    def config(self) -> NodeConfig:
        """The node's current configuration (a snapshot: replace it with update_config())."""
        with self._config_lock:
            return self._config

    def update_config(self, **changes: Any) -> NodeConfig:
        """Change settings (NodeConfig field names); the Node object follows at once."""
        with self._config_lock:
            previous = self._config
            self._config = previous.replace(**changes)
            config = self._config

        with contextlib.suppress(Gone):  # not registered yet: it registers with this config
            self.api.update_node(lambda node: apply_node_config(node, config, previous))
        if config.ready and not previous.ready:
            self.wake()  # pods the node lifecycle controller marked NotReady: report again
        return config

    def image_storage_id(self, image_id: str) -> str | None:
        """The runtime's ID of the image a container reports as ``image_id``
        (REPO@DIGEST), if this node pulled it."""
        return self._starter.image_manager.images.storage_id(image_id)

    def take_injected_failure(self) -> bool:
        """Consume one of `fail_next_checkpoints`: True if this checkpoint must fail."""
        with self._config_lock:
            if self._config.fail_next_checkpoints <= 0:
                return False
            self._config = self._config.replace(
                fail_next_checkpoints=self._config.fail_next_checkpoints - 1)
            return True

    # -- what the kubelet API sees ---------------------------------------------------

    def pod(self, namespace: str, name: str) -> Obj | None:
        """A pod this kubelet knows (bound to its node), or None (read-only)."""
        pod = self.api.pod(namespace, name)
        if pod is None or pod.get("spec", {}).get("nodeName") != self.node:
            return None
        return pod

    def pods(self) -> list[Obj]:
        """Every pod bound to this node (copies)."""
        return [copy.deepcopy(p) for p in self.api.pods()]

    # -- the node and its pods -------------------------------------------------------

    def register(self) -> None:
        """Create this node's Node object (or take over one an earlier agent left)."""
        self.api.register_node(node_object(self.node, self.index, self.config,
                                           address=self.address,
                                           kubelet_version=self.kubelet_version))

    def update_node_status(self) -> None:
        """The periodic node status: the images it holds, if they changed."""
        self._starter.image_manager.report_images()

    def stop(self) -> None:
        """Stop the pod start-up workers (pulls in progress end early) and the
        run-to-completion containers still running (joining their threads). Stop
        the driver first."""
        self._halt.set()
        self._starter.close()
        self.runs.stop()
        self._events.close()

    def next_wakeup(self) -> float | None:
        """Seconds until a pass is due though nothing changed (None: none is)."""
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - time.monotonic())

    def reconcile(self) -> None:
        """One pass over the node's pods: start the new, remove the deleted."""
        pods = self.api.pods()  # read-only: copied before being handed on
        present = {p["metadata"]["uid"] for p in pods}
        for uid in set(self._due) - present:
            del self._due[uid]
        with self._ips_lock:
            for uid in set(self._ips) - present:
                del self._ips[uid]
        self._starter.forget(present)
        self._stopped &= present
        self._stopping &= present
        self.runs.retain(p["metadata"]["uid"] for p in pods
                         if not p["metadata"].get("deletionTimestamp"))
        clock = time.monotonic()
        for pod in pods:
            meta = pod["metadata"]
            uid = meta["uid"]
            if uid in self._stopped:
                continue
            if meta.get("deletionTimestamp"):
                latency = self.stop_latency
                if uid not in self._stopping:
                    self._stopping.add(uid)
                    self._kill(pod)
            elif pod.get("status", {}).get("phase") == "Pending":
                if not self._starter.wants(uid):  # starting now, or started
                    self._due.pop(uid, None)
                    continue
                retry = self._starter.retry_at(uid)
                latency = self.start_latency if retry is None else retry - clock
            else:
                self._due.pop(uid, None)
                self.runs.track(pod)  # Never/OnFailure pods: their containers run to the end
                self._ready_again(pod)
                continue
            due = self._due.setdefault(uid, clock + latency)
            if meta.get("deletionTimestamp") and clock + latency < due:
                # A start waiting out its backoff does not hold up the pod's deletion:
                # the kubelet stops a pod at once, whatever its containers were waiting for.
                due = self._due[uid] = clock + latency
            if clock < due:
                continue
            del self._due[uid]
            if meta.get("deletionTimestamp"):
                self._remove(pod)
                self._stopped.add(uid)
            else:
                self._start_pod(pod)

    def _ready_again(self, pod: Obj) -> None:
        """Report a running pod Ready again once the node is: the node lifecycle
        controller marks every pod of a NotReady node not Ready, and the kubelet's
        status manager puts back what its containers say."""
        status = pod.get("status") or {}
        statuses = status.get("containerStatuses") or []
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"),
                     None)
        if not (self.config.ready
                and status.get("phase") == "Running" and statuses
                and all(s.get("ready") for s in statuses)
                and ready is not None and ready.get("status") == "False"):
            return
        uid = pod["metadata"]["uid"]

        def again(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid or current["metadata"].get("deletionTimestamp"):
                return None
            set_condition(current.setdefault("status", {}), "Ready", "True")
            return observed(current)

        with contextlib.suppress(Gone):
            self.api.update_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], again)

    def _kill(self, pod: Obj) -> None:
        """A deletion seen: the kubelet acknowledges the generation it bumped and
        begins stopping the running containers, an Event each (kuberuntime_container.go
        v1.37.2, killContainer)."""
        for c in running_containers(pod):
            name = str(c.get("name", ""))
            self._events.container(pod, name, "Normal", "Killing", f"Stopping container {name}")
        self._write(pod, lambda current: observed(current) if (current.get("status") or {}).get(
            "observedGeneration") != current["metadata"].get("generation", 1) else None)

    def _remove(self, pod: Obj) -> None:
        """The containers stopped: reported so (the pod is terminal), then the pod goes
        (the kubelet's delete with grace period 0). A pod none of whose containers ran
        keeps its status (the real kubelet's stays Pending too, its containers waiting;
        what it says of the torn-down sandbox then is not modelled)."""
        meta = pod["metadata"]
        self._write(pod, lambda current: observed(current) if kill_containers(current) else None)
        self.api.delete_pod(meta["namespace"], meta["name"], meta["uid"])

    def _write(self, pod: Obj, change: Callable[[Obj], Obj | None]) -> None:
        """Apply ``change`` to the status of pod ``pod`` (still that pod, still deleted)."""
        uid = pod["metadata"]["uid"]

        def same(current: Obj) -> Obj | None:
            return change(current) if current["metadata"]["uid"] == uid else None

        with contextlib.suppress(Gone):
            self.api.update_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], same)

    def _pod_ip(self, uid: str) -> str:
        with self._ips_lock:
            if uid not in self._ips:
                used = set(self._ips.values())
                host = next(n for n in range(2, 255) if f"10.88.{self.index}.{n}" not in used)
                self._ips[uid] = f"10.88.{self.index}.{host}"
            return self._ips[uid]

    def _start_pod(self, pod: Obj) -> None:
        self._starter.submit(copy.deepcopy(pod))

    def _report(self, pod: Obj, outcome: PodOutcome) -> None:
        """Write what an attempt to start `pod` came to (on a start-up worker)."""
        uid = pod["metadata"]["uid"]
        ip = self._pod_ip(uid)
        host_ip = self.address
        runtime = self.config.runtime_name

        def running(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid or current["metadata"].get("deletionTimestamp") \
                    or current.get("status", {}).get("phase") != "Pending":
                return None
            started = rfc3339(now())
            status = current.setdefault("status", {})
            status.update({"hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": ip,
                           "podIPs": [{"ip": ip}]})
            status.setdefault("startTime", started)
            spec = current["spec"]
            status["containerStatuses"] = [_status_of(c, outcome, uid, runtime)
                                           for c in spec["containers"]]
            if outcome.annotations:
                current["metadata"].setdefault("annotations", {}).update(outcome.annotations)
            if not outcome.all_started:
                _not_ready(status, outcome)
                return observed(current)
            status["phase"] = "Running"
            for type_ in _POD_CONDITIONS:
                set_condition(status, type_, "True")
            if spec.get("initContainers"):
                # Init containers have run to completion; sidecars keep running.
                status["initContainerStatuses"] = [
                    _container_status(c, uid, started, runtime,
                                      completed=c.get("restartPolicy") != "Always")
                    for c in spec["initContainers"]
                ]
            if spec.get("ephemeralContainers"):
                status["ephemeralContainerStatuses"] = [
                    _container_status(c, uid, started, runtime)
                    for c in spec["ephemeralContainers"]
                ]
            return observed(current)

        if outcome.all_started:
            self._log(f"{self.name}: {pod['metadata']['namespace']}/{pod['metadata']['name']} "
                      f"running at {ip}")
        with contextlib.suppress(Gone):  # deleted meanwhile: nothing to report
            self.api.update_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], running)



def _status_of(container: dict[str, Any], outcome: PodOutcome, uid: str,
               runtime: str) -> dict[str, Any]:
    state = outcome.containers.get(str(container.get("name", "")), Waiting("ContainerCreating"))
    if isinstance(state, Started):
        return _container_status(container, uid, state.started_at, runtime,
                                 image_id=state.image_id, image=state.image)
    return _waiting_status(container, state)


def _not_ready(status: dict[str, Any], outcome: PodOutcome) -> None:
    # The kubelet's conditions while some containers wait (image pulls, failures).
    waiting = " ".join(sorted(n for n, o in outcome.containers.items()
                              if isinstance(o, Waiting)))
    message = f"containers with unready status: [{waiting}]"
    for type_ in ("PodReadyToStartContainers", "Initialized", "PodScheduled"):
        set_condition(status, type_, "True")
    for type_ in ("Ready", "ContainersReady"):
        set_condition(status, type_, "False", "ContainersNotReady", message)
