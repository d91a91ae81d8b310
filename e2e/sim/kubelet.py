"""Simulated kubelets: each registers its Node and "runs" the pods bound to it.

Nothing is executed. A pod bound to the node turns Running (containers ready,
a pod IP from the node's 10.88.N.0/24 range) `start_latency` seconds after the
kubelet first sees it; a pod being deleted is removed `stop_latency` seconds
after its deletionTimestamp appears (the grace period is not waited out:
nothing runs that could use it). Addresses are data only: the node's
InternalIP is in 192.0.2.0/24 (TEST-NET-1, RFC 5737) and nothing ever
connects to it.

Later slices add the kubelet API (checkpoints) here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from e2e.sim.controllers import Controller, set_condition
from e2e.sim.core import NODES, PODS
from e2e.sim.discovery import KUBE_VERSION
from e2e.sim.errors import ApiError
from e2e.sim.meta import now, rfc3339
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["CONTAINER_RUNTIME", "Kubelet", "node_object"]

#: What nodes report as their runtime (`nodeInfo.containerRuntimeVersion`).
CONTAINER_RUNTIME = "cri-o://1.30.4"
_POD_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                   "PodScheduled")


def node_object(name: str, index: int) -> Obj:
    """The Node a kubelet registers: Ready, schedulable, CRI-O, 4 CPUs / 8 GiB."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    capacity = {"cpu": "4", "memory": "8148752Ki", "pods": "110",
                "ephemeral-storage": "61202244Ki", "hugepages-2Mi": "0"}
    status: dict[str, Any] = {
        "capacity": capacity,
        "allocatable": dict(capacity),
        "addresses": [
            {"type": "InternalIP", "address": f"192.0.2.{10 + index}"},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": digest[:32],
            "systemUUID": f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-"
                          f"{digest[20:32]}",
            "bootID": digest[32:64],
            "kernelVersion": "6.1.0-sim-amd64",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "containerRuntimeVersion": CONTAINER_RUNTIME,
            "kubeletVersion": KUBE_VERSION,
            "kubeProxyVersion": KUBE_VERSION,
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "images": [],
    }
    for type_, reason, message in (
        ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ):
        set_condition(status, type_, "False", reason, message)
    set_condition(status, "Ready", "True", "KubeletReady", "kubelet is posting ready status")
    for c in status["conditions"]:
        c["lastHeartbeatTime"] = c.pop("lastProbeTime") or c["lastTransitionTime"]
    return {
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


def _container_status(container: dict[str, Any], uid: str, started: str) -> dict[str, Any]:
    image = str(container.get("image", ""))
    name = str(container.get("name", ""))
    repo = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] \
        else image.split("@")[0]
    return {
        "name": name,
        "image": image,
        "imageID": f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}",
        "containerID": "cri-o://" + hashlib.sha256(f"{uid}/{name}".encode()).hexdigest(),
        "ready": True,
        "started": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": started}},
        "lastState": {},
    }


class Kubelet(Controller):
    """One node's agent.

    index: the node's number (1-based): pod IPs 10.88.INDEX.x, InternalIP 192.0.2.(10+INDEX).
    start_latency, stop_latency: seconds from seeing a pod (or its deletion) to acting.
    """

    def __init__(
        self, rest: Rest, node: str, index: int, *, start_latency: float,
        stop_latency: float, log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(rest, log=log)
        self.node = node
        self.index = index
        self.name = f"kubelet-{node}"
        self.start_latency = start_latency
        self.stop_latency = stop_latency
        self._due: dict[str, float] = {}  # pod uid -> when to start or remove it
        self._ips: dict[str, str] = {}  # pod uid -> pod IP
        # Pods stopped here but held by finalizers: nothing more to do for them.
        self._stopped: set[str] = set()

    def register(self) -> None:
        """Create this node's Node object (if it is not there yet)."""
        try:
            self.rest.create(NODES, "", node_object(self.node, self.index))
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise

    def next_wakeup(self) -> float | None:
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - time.monotonic())

    def reconcile(self) -> None:
        pods, _ = self.rest.list(PODS, None, lambda p: p["spec"].get("nodeName") == self.node)
        present = {p["metadata"]["uid"] for p in pods}
        for uid in set(self._due) - present:
            del self._due[uid]
        for uid in set(self._ips) - present:
            del self._ips[uid]
        self._stopped &= present
        clock = time.monotonic()
        for pod in pods:
            meta = pod["metadata"]
            uid = meta["uid"]
            if uid in self._stopped:
                continue
            if meta.get("deletionTimestamp"):
                latency = self.stop_latency
            elif pod.get("status", {}).get("phase") == "Pending":
                latency = self.start_latency
            else:
                self._due.pop(uid, None)
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
        if uid not in self._ips:
            used = set(self._ips.values())
            host = next(n for n in range(2, 255) if f"10.88.{self.index}.{n}" not in used)
            self._ips[uid] = f"10.88.{self.index}.{host}"
        return self._ips[uid]

    def _start_pod(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        ip = self._pod_ip(uid)
        host_ip = f"192.0.2.{10 + self.index}"

        def running(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid or current["metadata"].get("deletionTimestamp"):
                return None
            started = rfc3339(now())
            status = current.setdefault("status", {})
            status.update({
                "phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                "podIP": ip, "podIPs": [{"ip": ip}], "startTime": started,
            })
            for type_ in _POD_CONDITIONS:
                set_condition(status, type_, "True")
            status["containerStatuses"] = [
                _container_status(c, uid, started) for c in current["spec"]["containers"]
            ]
            return current

        self._log(f"{self.name}: {pod['metadata']['namespace']}/{pod['metadata']['name']} "
                  f"running at {ip}")
        self.rest.mutate(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], running)
