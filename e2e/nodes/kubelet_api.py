"""The kubelet API of a simulated node (what listens on the kubelet's port 10250).

Served over HTTPS by https.py's `HttpsServer` with client-certificate
authentication; this module routes and answers, transport-free, as
the kubelet's own server does:

    POST /checkpoint/{namespace}/{pod}/{container}[?timeout=SECONDS]
        200 {"items":["/var/lib/kubelet/checkpoints/checkpoint-<pod>_<ns>-<ctr>-<time>.tar"]}
    GET  /containerLogs/{namespace}/{pod}/{container}[?tailLines=N&limitBytes=N&previous=true]
                      what the container printed (containers that really run: toolrun.py)
    GET  /pods        the PodList of the pods bound to this node
    GET  /configz     {"kubeletconfig": {...}}: of the v1beta1 fields, those of image
                      pulls (serializeImagePulls, maxParallelImagePulls)
    GET  /healthz     ok

Every request is authorized first, with the attributes the kubelet asks the
API server about (SubjectAccessReview; v1.37.2's pkg/kubelet/server/auth.go,
KubeletFineGrainedAuthz GA): resource `nodes`, the node's name, verb from the
method (POST: create), subresource `checkpoint` for /checkpoint, `log` for
/logs, `stats`, `metrics`; /pods, /healthz and /configz try `pods`, `healthz`,
`configz` first and then `proxy`; anything else `proxy`. Allowed if any is.
Denied: 403 text `Forbidden (user=U, verb=V, resource=nodes,
subresource(s)=[configz proxy])` (server.go).

Checkpoint answers, in the kubelet's order and words (bodies are text):
- feature gate off: no such route, 404 `404 page not found`;
- pod unknown on this node (or bound elsewhere): 404 `pod does not exist`;
- no container, init container or ephemeral container of that name: 404
  `container C does not exist`;
- `timeout` not an integer: 404 `cannot parse value of timeout parameter`;
- everything else fails with 500 `checkpointing of NS/POD/C failed (REASON)`:
  REASON is `container C not found` when the container is not running (a
  Pending pod, an init container that has completed: the kubelet only asks
  the runtime about running containers), a negative timeout, the runtime's CRI
  error when it cannot checkpoint (nodeconfig.checkpoint_support), an injected
  failure (`rpc error: code = Unknown desc = checkpoint failed: (injected)`),
  or a deadline: `rpc error: code = DeadlineExceeded desc = context deadline
  exceeded`, answered once the deadline has passed.

The deadline is the kubelet's: `?timeout=` when it is larger than the node's
`runtime_request_timeout` (default 120 s), else that. A checkpoint takes
`checkpoint_delay_per_mib` seconds per MiB of the container's simulated memory
(the processes' heaps plus `sim.migrate.dev/memory-mib`), writing its archive
included. Tests can also hold checkpoints before the dump until they release them
(`hold`, `release`; `Cluster.holding_checkpoints`), to know a client is inside its
checkpoint.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e.nodes import checkpoints
from e2e.nodes.api import Obj
from e2e.nodes.checkpoints import CHECKPOINT_DIR, PlanError
from e2e.nodes.kubelet import Kubelet
from e2e.nodes.nodeconfig import checkpoint_support
from e2e.nodes.protocol import Attributes, Authorizer, Request, Response

__all__ = ["KubeletApi"]

_TEXT = "text/plain; charset=utf-8"
_VERBS = {"POST": "create", "GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_FINE_GRAINED = (("/pods", "pods"), ("/healthz", "healthz"), ("/configz", "configz"))
_SUBRESOURCES = (("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log"),
                 ("/checkpoint", "checkpoint"))
_DEADLINE = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
_CANCELED = "rpc error: code = Canceled desc = context canceled"
_INJECTED = "rpc error: code = Unknown desc = checkpoint failed: (injected)"


def _text(code: int, message: str) -> Response:
    return Response(code, message.encode(), _TEXT,
                    headers={"X-Content-Type-Options": "nosniff"})


def _subresources(path: str) -> list[str]:
    def under(prefix: str) -> bool:
        return path == prefix or path.startswith(prefix + "/")
    fine = [sub for prefix, sub in _FINE_GRAINED if under(prefix)][:1]
    return fine + ([sub for prefix, sub in _SUBRESOURCES if under(prefix)][:1] or ["proxy"])


class _Failed(Exception):
    """The runtime (or the kubelet before it) failed the checkpoint: a 500."""


class KubeletApi:
    """The HTTP handler of one node's kubelet.

    kubelet: the node's agent (its pods and its live NodeConfig).
    checkpoint_dir: where the node's /var/lib/kubelet/checkpoints is on this machine.
    pod_logs: where its /var/log/pods is.
    authorizer: the cluster's (the kubelet delegates to the API server).
    """

    def __init__(self, kubelet: Kubelet, checkpoint_dir: Path, *, pod_logs: Path,
                 authorizer: Authorizer, log: Callable[[str], None]) -> None:
        self.kubelet = kubelet
        self.node = kubelet.node
        self.checkpoint_dir = Path(checkpoint_dir)
        self.pod_logs = pod_logs
        self.authorizer = authorizer
        self.log = log
        self._aborted = threading.Event()
        self._go = threading.Event()  # cleared: checkpoints wait (hold/release)
        self._go.set()
        self._held = 0
        self._held_lock = threading.Lock()

    def abort(self) -> None:
        """Fail every checkpoint in progress now (the node is going away)."""
        self._aborted.set()

    def hold(self) -> None:
        """Make checkpoints wait before they dump, until `release` (a test's pause: a
        run is then known to be inside its checkpoint, for as long as the test needs)."""
        self._go.clear()

    def release(self) -> None:
        """Let held (and later) checkpoints go on."""
        self._go.set()

    @property
    def held(self) -> int:
        """How many checkpoints are waiting for `release`."""
        with self._held_lock:
            return self._held

    def _wait_released(self) -> None:
        if self._go.is_set():
            return
        with self._held_lock:
            self._held += 1
        try:
            while not self._go.wait(0.05):
                if self._aborted.is_set():
                    raise _Failed(_CANCELED)
        finally:
            with self._held_lock:
                self._held -= 1

    def handle(self, req: Request) -> Response:
        """Answer one authenticated request."""
        try:
            return self._route(req)
        except Exception:  # a simulator bug: answer as a Go server would
            self.log(f"kubelet-{self.node}: {req.method} {req.path}: {traceback.format_exc()}")
            return _text(500, "Internal Server Error\n")

    def _route(self, req: Request) -> Response:
        verb = _VERBS.get(req.method, "get")
        subresources = _subresources(req.path)
        if not any(self.authorizer(Attributes(req.user, verb, "nodes", sub, self.node))
                   for sub in subresources):
            return _text(403, f"Forbidden (user={req.user.name}, verb={verb}, resource=nodes, "
                              f"subresource(s)=[{' '.join(subresources)}])\n")
        parts = [p for p in req.path.split("/") if p]
        if parts == ["healthz"] and req.method == "GET":
            return _text(200, "ok")
        if parts[:1] == ["containerLogs"] and len(parts) == 4 and req.method == "GET":
            return self._logs(req, parts[1], parts[2], parts[3])
        if parts == ["configz"] and req.method == "GET":
            return Response(200, {"kubeletconfig": self._configz()})
        if parts == ["pods"] and req.method == "GET":
            return Response(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                  "items": self.kubelet.pods()})
        if parts[:1] == ["checkpoint"] and self.kubelet.config.checkpoint_gate \
                and len(parts) == 4:
            if req.method != "POST":
                return _text(405, "405: Method Not Allowed")
            return self._checkpoint(req, parts[1], parts[2], parts[3])
        return _text(404, "404 page not found\n")

    def _configz(self) -> dict[str, Any]:
        at_once = self.kubelet.config.max_parallel_image_pulls
        # The kubelet's defaulting: serialized unless maxParallelImagePulls is 2 or more
        # (pkg/kubelet/apis/config/v1beta1/defaults.go); a nil limit is left out.
        fields: dict[str, Any] = {"serializeImagePulls": at_once == 1}
        if at_once is not None and at_once > 1:
            fields["maxParallelImagePulls"] = at_once
        return fields

    # -- GET /containerLogs/{namespace}/{pod}/{container} -------------------------------

    def _logs(self, req: Request, namespace: str, pod_name: str, container: str) -> Response:
        """The kubelet's answers (server.go getContainerLogs, kuberuntime's
        validateContainerLogStatus), reading the files toolrun.py writes."""
        pod = self.kubelet.pod(namespace, pod_name)
        if pod is None:
            return _text(404, f'pod "{pod_name}" does not exist')
        if checkpoints.find_container(pod, container) is None:
            return _text(404, f'container "{container}" not found in pod "{pod_name}"')
        statuses = [*(pod.get("status", {}).get("containerStatuses") or []),
                    *(pod.get("status", {}).get("initContainerStatuses") or [])]
        status: dict[str, Any] = next((s for s in statuses if s.get("name") == container), {})
        waiting = (status.get("state") or {}).get("waiting")
        if not status or waiting is not None:
            reason = (waiting or {}).get("reason", "ContainerCreating")
            return _text(400, f'container "{container}" in pod "{pod_name}" is waiting to '
                              f"start: {reason}")
        if req.param("previous") == "true":  # containers are never restarted here
            return _text(400, f'previous terminated container "{container}" in pod '
                              f'"{pod_name}" not found')
        log = self.pod_logs / f"{namespace}_{pod_name}_{pod['metadata']['uid']}" / container / \
            "0.log"
        data = log.read_bytes() if log.is_file() else b""
        tail, limit = req.param("tailLines"), req.param("limitBytes")
        if tail and tail.isdigit():
            data = b"".join(data.splitlines(keepends=True)[-int(tail):]) if int(tail) else b""
        if limit and limit.isdigit() and int(limit) > 0:
            data = data[:int(limit)]
        return Response(200, data, "text/plain")

    # -- POST /checkpoint/{namespace}/{pod}/{container} --------------------------------

    def _checkpoint(self, req: Request, namespace: str, pod_name: str,
                    container: str) -> Response:
        pod = self.kubelet.pod(namespace, pod_name)
        if pod is None:
            return _text(404, "pod does not exist")
        found = checkpoints.find_container(pod, container)
        if found is None:
            return _text(404, f"container {container} does not exist")
        timeouts = req.query.get("timeout") or []
        timeout = 0
        if timeouts:
            try:
                timeout = int(timeouts[-1])
            except ValueError:
                return _text(404, "cannot parse value of timeout parameter")
        try:
            path = self._run_checkpoint(pod, found[0], container, timeout)
        except _Failed as e:
            self.log(f"kubelet-{self.node}: checkpoint {namespace}/{pod_name}/{container} "
                     f"failed: {e}")
            return _text(500, f"checkpointing of {namespace}/{pod_name}/{container} "
                              f"failed ({e})")
        self.log(f"kubelet-{self.node}: checkpoint {namespace}/{pod_name}/{container} -> {path}")
        return Response(200, {"items": [path]})

    def _run_checkpoint(self, pod: Obj, kind: str, container: str,
                        timeout: int) -> str:
        """The node path of the new archive; _Failed with the kubelet's reason."""
        if not checkpoints.is_running(pod, kind, container):
            raise _Failed(f"container {container} not found")
        if timeout < 0:
            raise _Failed("CheckpointContainer requires the timeout value to be > 0")
        config = self.kubelet.config
        default = config.runtime_request_timeout
        deadline = float(timeout) if timeout > default else default
        unsupported = checkpoint_support(config)
        if unsupported:
            raise _Failed(unsupported)
        if self.kubelet.take_injected_failure():
            raise _Failed(_INJECTED)
        self._wait_released()
        started = time.monotonic()
        when = dt.datetime.now(dt.UTC)
        try:
            plan = checkpoints.plan(pod, container, config, when,
                                    storage_id=self.kubelet.image_storage_id)
        except PlanError as e:
            raise _Failed(f"rpc error: code = Unknown desc = {e}") from None
        duration = plan.memory_mib * config.checkpoint_delay_per_mib
        if duration > deadline:
            self._sleep(started + deadline)
            raise _Failed(_DEADLINE)
        name = checkpoints.archive_name(pod["metadata"]["name"], pod["metadata"]["namespace"],
                                        container, when)
        # Writing the archive is part of the checkpoint the simulated time stands for
        # (CRI-O exports it at the end of the dump), not added to it.
        written = checkpoints.write(plan, self.checkpoint_dir / name)
        try:
            self._sleep(started + duration)
        except _Failed:
            written.unlink(missing_ok=True)  # the node stopped before the checkpoint ended
            raise
        return f"{CHECKPOINT_DIR}/{name}"

    def _sleep(self, until: float) -> None:
        left = until - time.monotonic()
        if left > 0 and self._aborted.wait(left):
            raise _Failed(_CANCELED)
