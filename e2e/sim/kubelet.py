"""Simulated kubelets: each registers its Node, "runs" the pods bound to it and
serves the kubelet API (checkpoints).

Nothing is executed. A pod bound to the node turns Running (containers ready,
a pod IP from the node's 10.88.N.0/24 range) `start_latency` seconds after the
kubelet first sees it; a pod being deleted is removed `stop_latency` seconds
after its deletionTimestamp appears (the grace period is not waited out:
nothing runs that could use it). Init containers count as completed (sidecars,
`restartPolicy: Always`, as running). Addresses are data only: the node's
InternalIP is in 192.0.2.0/24 (TEST-NET-1, RFC 5737) and nothing ever
connects to it; the kubelet API listens on 127.0.0.1 at the port the Node
reports in `status.daemonEndpoints.kubeletEndpoint.Port`.

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
each container is handed to a `ContainerProcess` (runs.py; by default it
ends as the `sim.migrate.dev/run-seconds`, `exit-code` and
`termination-message` annotations say), and the pod turns Succeeded or Failed.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e.sim.controllers import Controller, set_condition
from e2e.sim.core import NODES, PODS
from e2e.sim.discovery import KUBE_VERSION
from e2e.sim.errors import ApiError
from e2e.sim.images import RegistryConfig
from e2e.sim.meta import now, rfc3339
from e2e.sim.nodeconfig import DEFAULT_RUNTIME, NodeConfig
from e2e.sim.podstart import PodOutcome, PodStarter, Started, Waiting
from e2e.sim.registry_pull import Puller
from e2e.sim.rest import Rest
from e2e.sim.runs import ContainerProcess, ContainerRuns, annotated_process
from e2e.sim.runtime_releases import PAUSE_IMAGE, PAUSE_IMAGE_SIZE
from e2e.sim.store import Obj

__all__ = ["CONTAINER_RUNTIME", "KUBELET_PORT", "Kubelet", "apply_node_config", "node_object"]

#: What nodes report as their runtime unless configured (`nodeInfo.containerRuntimeVersion`).
CONTAINER_RUNTIME = DEFAULT_RUNTIME
#: The kubelet's usual port, reported when a node's kubelet API is not served.
KUBELET_PORT = 10250
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
_CAPACITY = {"cpu": "4", "memory": "8148752Ki", "pods": "110",
             "ephemeral-storage": "61202244Ki", "hugepages-2Mi": "0"}
_POD_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                   "PodScheduled")
_NOT_READY_MESSAGE = ("container runtime network not ready: NetworkReady=false "
                      "reason:NetworkPluginNotReady message:Network plugin returns error: "
                      "cni plugin not initialized")


#: The store's index of pods by the node they are bound to (spec.nodeName).
NODE_INDEX = "spec.nodeName"


def _pod_node(pod: Obj) -> list[str]:
    node = (pod.get("spec") or {}).get("nodeName")
    return [str(node)] if node else []


def _same_taint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a.get("key") == b.get("key") and a.get("effect") == b.get("effect"))


def apply_node_config(node: Obj, config: NodeConfig, previous: NodeConfig | None = None) -> Obj:
    """Make `node` report `config` (runtime, readiness, labels, taints, capacity);
    `previous`: the config it reported so far (its taints are taken back)."""
    status, spec = node.setdefault("status", {}), node.setdefault("spec", {})
    status.setdefault("nodeInfo", {})["containerRuntimeVersion"] = config.runtime
    capacity = {**_CAPACITY, **config.capacity}
    status["capacity"], status["allocatable"] = capacity, dict(capacity)
    node["metadata"].setdefault("labels", {}).update(config.labels)
    owned = (previous.taints if previous else []) + [{"key": NOT_READY_TAINT,
                                                      "effect": "NoSchedule"}]
    taints = [t for t in spec.get("taints") or [] if not any(_same_taint(t, o) for o in owned)]
    wanted = [copy.deepcopy(t) for t in config.taints]
    if not config.ready:
        wanted.append({"key": NOT_READY_TAINT, "effect": "NoSchedule",
                       "timeAdded": rfc3339(now())})
    taints += [t for t in wanted if not any(_same_taint(t, have) for have in taints)]
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


def node_object(name: str, index: int, config: NodeConfig | None = None,
                kubelet_port: int = KUBELET_PORT) -> Obj:
    """The Node a kubelet registers: by default Ready, schedulable, CRI-O, 4 CPUs / 8 GiB."""
    config = config or NodeConfig()
    digest = hashlib.sha256(name.encode()).hexdigest()
    status: dict[str, Any] = {
        "addresses": [
            {"type": "InternalIP", "address": f"192.0.2.{10 + index}"},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": digest[:32],
            "systemUUID": f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-"
                          f"{digest[20:32]}",
            "bootID": digest[32:64],
            "kernelVersion": "6.1.0-sim-amd64",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "containerRuntimeVersion": config.runtime,
            "kubeletVersion": KUBE_VERSION,
            "kubeProxyVersion": KUBE_VERSION,
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
                      *, completed: bool = False, image_id: str | None = None
                      ) -> dict[str, Any]:
    image = str(container.get("image", ""))
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


class Kubelet(Controller):
    """One node's agent.

    index: the node's number (1-based): pod IPs 10.88.INDEX.x, InternalIP 192.0.2.(10+INDEX).
    config: how the node behaves (NodeConfig); change it with update_config().
    start_latency, stop_latency: seconds from seeing a pod (or its deletion) to acting.
    registries: how to reach registries on 127.0.0.1 (images.py).
    storage: where pulled images go (the node's var/lib/containers/storage;
        default: a temporary directory removed by stop()).
    process: what a run-to-completion container does (runs.py; default: as annotated).
    """

    def __init__(
        self, rest: Rest, node: str, index: int, *, start_latency: float,
        stop_latency: float, config: NodeConfig | None = None,
        log: Callable[[str], None] | None = None,
        registries: RegistryConfig | None = None, storage: Path | None = None,
        process: ContainerProcess | None = None,
    ) -> None:
        super().__init__(rest, log=log)
        self.runs = ContainerRuns(rest, node, process or annotated_process, self._log)
        self.node = node
        self.index = index
        self.name = f"kubelet-{node}"
        self.start_latency = start_latency
        self.stop_latency = stop_latency
        self._config = config or NodeConfig()
        self._config_lock = threading.Lock()
        self._due: dict[str, float] = {}  # pod uid -> when to start or remove it
        self._ips: dict[str, str] = {}  # pod uid -> pod IP
        # Pods stopped here but held by finalizers: nothing more to do for them.
        self._stopped: set[str] = set()
        self._ips_lock = threading.Lock()
        self._halt = threading.Event()  # ends pulls in progress when the node stops
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        if storage is None:
            self._scratch = tempfile.TemporaryDirectory(prefix=f"sim-{node}-")
            storage = Path(self._scratch.name)
        puller = Puller(storage, registries or RegistryConfig(), self._halt)
        # Its loop reads only pods, and what the starter knows (which wakes it).
        self.resources = (PODS.key,)
        self._starter = PodStarter(rest, node, puller, lambda: self.config, self._report,
                                   self._log, done=self.wake)
        rest.store.add_index(PODS.key, NODE_INDEX, _pod_node)

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

        def report(node: Obj) -> Obj:
            return apply_node_config(node, config, previous)

        try:
            self.rest.mutate(NODES, "", self.node, report)
        except ApiError as e:
            if e.code != 404:  # not registered yet: it will register with this config
                raise
        return config

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
        """A pod this kubelet knows (bound to its node), or None."""
        pod = self.rest.store.find(PODS.key, namespace, name)
        if pod is None or pod.get("spec", {}).get("nodeName") != self.node:
            return None
        return pod

    def pods(self) -> list[Obj]:
        """Every pod bound to this node."""
        pods, _ = self.rest.list(PODS, None, lambda p: p["spec"].get("nodeName") == self.node)
        return pods

    # -- the node and its pods -------------------------------------------------------

    def register(self, kubelet_port: int = KUBELET_PORT) -> None:
        """Create this node's Node object (if it is not there yet)."""
        try:
            self.rest.create(NODES, "", node_object(self.node, self.index, self.config,
                                                    kubelet_port))
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise

    def stop(self) -> None:
        """Stop the loop, then the pod start-up workers (pulls in progress end early)
        and the run-to-completion containers still running (joining their threads)."""
        self._halt.set()
        super().stop()
        self._starter.close()
        self.runs.stop()
        if self._scratch is not None:
            self._scratch.cleanup()

    def next_wakeup(self) -> float | None:
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - time.monotonic())

    def reconcile(self) -> None:
        # The stored pods themselves: read here, copied before being handed on.
        pods = self.rest.store.peek(PODS.key, index=(NODE_INDEX, self.node))
        present = {p["metadata"]["uid"] for p in pods}
        for uid in set(self._due) - present:
            del self._due[uid]
        with self._ips_lock:
            for uid in set(self._ips) - present:
                del self._ips[uid]
        self._starter.forget(present)
        self._stopped &= present
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
            elif pod.get("status", {}).get("phase") == "Pending":
                if not self._starter.wants(uid):  # starting now, or started
                    self._due.pop(uid, None)
                    continue
                retry = self._starter.retry_at(uid)
                latency = self.start_latency if retry is None else retry - clock
            else:
                self._due.pop(uid, None)
                self.runs.track(pod)  # Never/OnFailure pods: their containers run to the end
                continue
            due = self._due.setdefault(uid, clock + latency)
            if clock < due:
                continue
            del self._due[uid]
            if meta.get("deletionTimestamp"):
                self._remove(pod)
                self._stopped.add(uid)
            else:
                self._start_pod(pod)

    def _remove(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            self.rest.delete(PODS, meta["namespace"], meta["name"], grace=0,
                             preconditions={"uid": meta["uid"]})
        except ApiError as e:
            if e.code not in (404, 409):
                raise

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
        host_ip = f"192.0.2.{10 + self.index}"
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
                return current
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
            return current

        if outcome.all_started:
            self._log(f"{self.name}: {pod['metadata']['namespace']}/{pod['metadata']['name']} "
                      f"running at {ip}")
        try:
            self.rest.mutate(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"],
                             running)
        except ApiError as e:
            if e.code != 404:  # deleted meanwhile: nothing to report
                raise


def _status_of(container: dict[str, Any], outcome: PodOutcome, uid: str,
               runtime: str) -> dict[str, Any]:
    state = outcome.containers.get(str(container.get("name", "")), Waiting("ContainerCreating"))
    if isinstance(state, Started):
        return _container_status(container, uid, state.started_at, runtime,
                                 image_id=state.image_id)
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
