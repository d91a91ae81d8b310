"""Run-to-completion containers: what a pod with restartPolicy Never or OnFailure does.

The simulated kubelet executes nothing. Each container of such a pod, once the
pod is Running, is handed to a `ContainerProcess` in a thread of its own: a
function of (pod, container, stop event) that returns how the container
exited, a `ContainerExit`, or None if `stop` was set first (the pod is being
deleted, the node stops). It may block as long as the container "runs", but
must return soon once `stop` is set: stopping the node joins its thread. The
default, `annotated_process`, runs `sim.migrate.dev/run-seconds` (default 0.2;
`.<container>` for one container wins) and exits 0; toolrun.py's runs the tool
for real.

When a container exits, its state becomes `terminated` (reason Completed for
exit code 0, else Error, with the message); it is not restarted (the tool's
Jobs and the tests' pods are restartPolicy Never). When every container has
terminated, the pod is Succeeded (all exit codes 0) or Failed, and its Ready
and ContainersReady conditions turn False (PodCompleted / PodFailed).

A deleted pod's running containers are killed (`kill_containers`), whatever
their restart policy: as the real kubelet reports a pod whose processes ignored
SIGTERM until the grace period ran out, each terminated with exit code 137
(reason Error), the pod Failed, its sandbox not ready.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from e2e.nodes.api import Gone, NodeApi, Obj, now, observed, rfc3339, set_condition

__all__ = ["KILLED", "RUN_SECONDS", "ContainerExit", "ContainerProcess", "ContainerRuns",
           "annotated_process", "kill_containers", "running_containers"]

RUN_SECONDS = "sim.migrate.dev/run-seconds"
_DEFAULT_SECONDS = 0.2
_BROKEN_EXIT = 128


class ContainerExit(NamedTuple):
    """How a container ended: its exit code and termination message."""

    exit_code: int
    message: str = ""


#: Runs one container to its end: (pod, container, stop) -> its exit, None if stopped.
ContainerProcess = Callable[[Obj, Obj, threading.Event], ContainerExit | None]


def annotated_process(pod: Obj, container: Obj, stop: threading.Event) -> ContainerExit | None:
    """The default ContainerProcess: sleeps run-seconds, exits 0."""
    annotations = pod["metadata"].get("annotations") or {}
    value = annotations.get(f"{RUN_SECONDS}.{container.get('name')}",
                            annotations.get(RUN_SECONDS))
    try:
        seconds = float(value or _DEFAULT_SECONDS)
    except ValueError as e:
        return ContainerExit(_BROKEN_EXIT, f"sim: malformed annotation: {e}")
    return None if stop.wait(max(seconds, 0.0)) else ContainerExit(0)


def _terminated(status: dict[str, Any], result: ContainerExit) -> dict[str, Any]:
    running = (status.get("state") or {}).get("running") or {}
    state: dict[str, Any] = {
        "exitCode": result.exit_code,
        "reason": "Completed" if result.exit_code == 0 else "Error",
        "startedAt": running.get("startedAt") or rfc3339(now()),
        "finishedAt": rfc3339(now()),
        "containerID": status.get("containerID", ""),
    }
    if result.message:
        state["message"] = result.message
    return state


def _settle_phase(pod: Obj) -> None:
    """Pod phase and readiness once containers may have ended."""
    status = pod["status"]
    statuses = status.get("containerStatuses") or []
    done = [s["state"]["terminated"] for s in statuses if "terminated" in s.get("state", {})]
    if len(done) < len(statuses):
        waiting = sorted(s["name"] for s in statuses if not s.get("ready"))
        if waiting:
            message = f"containers with unready status: [{' '.join(waiting)}]"
            for type_ in ("Ready", "ContainersReady"):
                set_condition(status, type_, "False", "ContainersNotReady", message)
        return
    failed = any(int(t.get("exitCode", 0)) != 0 for t in done)
    status["phase"] = "Failed" if failed else "Succeeded"
    for type_ in ("Ready", "ContainersReady"):
        set_condition(status, type_, "False", "PodFailed" if failed else "PodCompleted")


#: A container killed when its grace period ran out: SIGKILL's 128 + 9.
KILLED = ContainerExit(137)


def running_containers(pod: Obj) -> list[dict[str, Any]]:
    """The statuses of ``pod``'s running containers, sidecars included."""
    status = pod.get("status") or {}
    return [s for key in ("initContainerStatuses", "containerStatuses")
            for s in status.get(key) or [] if "running" in (s.get("state") or {})]


def kill_containers(pod: Obj) -> bool:
    """Report ``pod``'s running containers KILLED, as the kubelet does when it has
    stopped a deleted pod (v1.37.2's getPhase: a terminal pod whose containers all
    stopped is Failed unless each exited 0); False if none was running."""
    running = running_containers(pod)
    for entry in running:
        entry.update(state={"terminated": _terminated(entry, KILLED)}, ready=False,
                     started=False)
    if not running:
        return False
    _settle_phase(pod)
    set_condition(pod["status"], "PodReadyToStartContainers", "False", "PodSandboxNotReady",
                  "pod sandbox is not ready")
    return True


class ContainerRuns:
    """The running run-to-completion containers of one node, each in a thread."""

    def __init__(self, api: NodeApi, node: str, process: ContainerProcess,
                 log: Callable[[str], None]) -> None:
        self.api = api
        self.node = node
        self.process = process
        self._log = log
        self._stops: dict[str, threading.Event] = {}  # pod uid -> set when it must stop
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def track(self, pod: Obj) -> None:
        """Start the containers of a Running pod that runs to completion, once."""
        uid = pod["metadata"]["uid"]
        if pod["spec"].get("restartPolicy", "Always") == "Always" or \
                pod.get("status", {}).get("phase") != "Running":
            return
        with self._lock:
            if uid in self._stops:
                return
            pod = copy.deepcopy(pod)  # the caller's may be the stored object itself
            stop = self._stops[uid] = threading.Event()
            running = {s["name"] for s in pod["status"].get("containerStatuses") or []
                       if "running" in s.get("state", {})}
            for container in pod["spec"]["containers"]:
                if container["name"] in running:
                    thread = threading.Thread(
                        target=self._run, args=(pod, container, stop), daemon=True,
                        name=f"sim-run-{self.node}-{pod['metadata']['name']}-"
                             f"{container['name']}")
                    self._threads.append(thread)
                    thread.start()

    def retain(self, uids: Iterable[str]) -> None:
        """Stop the containers of every pod not in `uids` (deleted, or gone)."""
        keep = set(uids)
        with self._lock:
            for uid in set(self._stops) - keep:
                self._stops.pop(uid).set()
            self._threads = [t for t in self._threads if t.is_alive()]

    def stop(self) -> None:
        """Stop every container and join their threads."""
        self.retain(())
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()

    def _run(self, pod: Obj, container: Obj, stop: threading.Event) -> None:
        try:
            result = self.process(pod, container, stop)
        except Exception as e:  # a broken process function: the container errs
            result = ContainerExit(_BROKEN_EXIT, f"sim: {type(e).__name__}: {e}")
        if result is not None and not stop.is_set():
            self._record(pod, container, result)

    def _record(self, pod: Obj, container: Obj, result: ContainerExit) -> None:
        """Write the exit into the pod."""
        uid, name = pod["metadata"]["uid"], container["name"]

        def exited(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid or current["metadata"].get("deletionTimestamp"):
                return None
            status = current.setdefault("status", {})
            entry = next((s for s in status.get("containerStatuses") or []
                          if s.get("name") == name), None)
            if entry is None or "running" not in entry.get("state", {}):
                return None
            entry.update(state={"terminated": _terminated(entry, result)}, ready=False,
                         started=False)
            _settle_phase(current)
            return observed(current)

        self._log(f"kubelet-{self.node}: {pod['metadata']['namespace']}/"
                  f"{pod['metadata']['name']} container {name} exited {result.exit_code}")
        with contextlib.suppress(Gone):
            self.api.update_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], exited)
