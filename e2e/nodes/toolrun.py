"""Containers whose image is the tool's own run the real CLI: `python -m migrate ARGS`.

`Cluster(tool_images=("localhost/migrate:test",))` names the images built from
the repository's Containerfile.
A run-to-completion container (a Job's, a CronJob's) with one of those images,
exactly as written, runs in a subprocess here; every other container ends as
before (runs.py). What the subprocess gets, as a pod would:

- the command: the image's entrypoint is `migrate` (its CMD `--help`), so a
  container without `command`, or whose command is `migrate` /
  `kubectl-migrate` (any directory), runs
  `[sys.executable, "-m", "migrate", *rest, *args]`, args defaulting to the
  CMD when neither is given; any other command ends the container with exit
  code 127 (nothing else is in the image the node can stand in for);
- in-cluster credentials: a token for the pod's ServiceAccount (user
  `system:serviceaccount:NS:NAME`, RBAC applies), the cluster CA and the
  namespace in the pod's service-account directory (podfiles.py), and
  KUBERNETES_SERVICE_HOST=127.0.0.1, KUBERNETES_SERVICE_PORT=<API port>.
  The process cannot see /var/run/secrets/kubernetes.io/serviceaccount, so
  MIGRATE_SERVICEACCOUNT_DIR says where that directory is (the tool reads it
  at its CLI edge; real pods never set it);
- the container's env (`value`s: the tool's pods set no other kind), `$(VAR)`
  references in args expanded, plus PATH,
  PYTHONPATH and LANG of the node agent's own process (so the code under test
  is what runs), HOSTNAME, HOME and TMPDIR of the container's own;
- its volumes (podfiles.py). Paths: the process runs on this machine's file
  system, so every argument and env value that starts with a mount path
  (also `--opt=/path`) is rewritten to where that mount is here. Paths built
  inside the process from other values are not: an approximation that holds
  for the tool, whose paths all come in through arguments and env;
- terminationMessagePath (default /dev/termination-log) is a file of the
  container's own, read back when the process exits (at most 4096 bytes);
  with FallbackToLogsOnError an empty one after a failure is replaced by the
  output's tail (80 lines or 2048 bytes, whichever is less).

Output (stdout and stderr together) goes to the node's log directory,
STATE/nodes/NODE/var/log/pods/NS_POD_UID/CONTAINER/0.log (containers are not restarted).
The process never outlives its container: it is killed (SIGTERM, then
SIGKILL after the pod's terminationGracePeriodSeconds, 30 by default, as the
kubelet does) when the pod is deleted, the node stops,
or the pod's activeDeadlineSeconds (else its Job's, else the runner's
`timeout`) run out, which ends it with exit code 137.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from e2e.nodes.api import NodeApi, Obj
from e2e.nodes.podfiles import SERVICE_ACCOUNT_PATH, MountFailed, Mounts, PodFiles
from e2e.nodes.runs import ContainerExit, ContainerProcess

__all__ = ["DEFAULT_ARGS", "DEFAULT_TIMEOUT", "ENTRYPOINTS", "SERVICE_ACCOUNT_DIR_ENV",
           "ToolRunner"]

DEFAULT_TIMEOUT = 600.0
SERVICE_ACCOUNT_DIR_ENV = "MIGRATE_SERVICEACCOUNT_DIR"
#: The Containerfile's ENTRYPOINT (and the console scripts that are the same program)
#: and CMD.
ENTRYPOINTS = ("migrate", "kubectl-migrate")
DEFAULT_ARGS = ("--help",)
_INHERITED = ("PATH", "PYTHONPATH", "LANG")
_MESSAGE_BYTES = 4096
_TAIL_LINES, _TAIL_BYTES = 80, 2048
_GRACE = 30  # the API's default terminationGracePeriodSeconds
_REAPED = 5.0  # after SIGKILL: the kernel's part
_POLL = 0.1
_KILLED = 137
_NOT_RUN = 127
_MOUNT_FAILED = 128
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion (`$$` escapes; unknown references stay)."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR_REF.sub(one, value)


class ToolRunner:
    """A ContainerProcess: the CLI for tool images, `fallback` for every other image.

    api: the node's NodeApi, by node name (Secrets, ConfigMaps, Jobs).
    files: the per-pod directories and tokens (podfiles.py).
    api_port: the API server's port on 127.0.0.1 (known once it has started).
    """

    def __init__(self, images: Sequence[str], api: Callable[[str], NodeApi], files: PodFiles,
                 api_port: Callable[[], int], *, fallback: ContainerProcess,
                 timeout: float = DEFAULT_TIMEOUT, log: Callable[[str], None] | None = None
                 ) -> None:
        self.images = frozenset(images)
        self.api = api
        self.files = files
        self.api_port = api_port
        self.fallback = fallback
        self.timeout = timeout
        self._log = log or (lambda line: None)

    def __call__(self, pod: Obj, container: Obj, stop: threading.Event) -> ContainerExit | None:
        if container.get("image") not in self.images:
            return self.fallback(pod, container, stop)
        command = [str(c) for c in container.get("command") or ["migrate"]]
        if Path(command[0]).name not in ENTRYPOINTS:
            return ContainerExit(_NOT_RUN, f"sim: the tool image runs its entrypoint "
                                 f"(migrate), not {command[0]!r}")
        try:
            mounts = self.files.prepare(pod, container)
        except MountFailed as e:
            return ContainerExit(_MOUNT_FAILED, f"sim: {e}")
        try:
            return self._run(pod, container, mounts, command[1:], stop)
        finally:
            self.files.release(pod)

    # -- the process ----------------------------------------------------------------------

    def _run(self, pod: Obj, container: Obj, mounts: Mounts, head: list[str],
             stop: threading.Event) -> ContainerExit | None:
        env = self._environment(pod, container, mounts)
        given = container.get("args")
        if given is None and not head and container.get("command") is None:
            given = list(DEFAULT_ARGS)
        args = [mounts.translate(_expand(str(a), env)) for a in [*head, *(given or [])]]
        workdir = mounts.host(str(container.get("workingDir") or "")) or \
            self._own(pod, container, "home")
        log_path = self._log_path(pod, container)
        name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}/{container['name']}"
        self._log(f"toolrun: {name}: migrate {' '.join(args)}")
        with open(log_path, "ab") as output:
            proc = subprocess.Popen(
                [sys.executable, "-m", "migrate", *args], stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                start_new_session=True)
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", _GRACE))
            code = self._wait(proc, stop, time.monotonic() + self._deadline(pod), output,
                              grace)
        if code is None:
            return None
        message = self._message(container, mounts, code, log_path)
        self._log(f"toolrun: {name} exited {code}")
        return ContainerExit(code, message)

    def _wait(self, proc: subprocess.Popen[bytes], stop: threading.Event, deadline: float,
              output: IO[bytes], grace: float) -> int | None:
        """The exit code; None if `stop` came first; 137 at the deadline."""
        while True:
            try:
                code = proc.wait(timeout=_POLL)
                return code if code >= 0 else 128 - code
            except subprocess.TimeoutExpired:
                pass
            if stop.is_set():
                _kill(proc, grace)
                return None
            if time.monotonic() > deadline:
                _kill(proc, grace)
                output.write(b"sim: killed: the container ran past its deadline\n")
                return _KILLED

    def _deadline(self, pod: Obj) -> float:
        seconds = pod["spec"].get("activeDeadlineSeconds")
        ref = next((r for r in pod["metadata"].get("ownerReferences") or []
                    if r.get("controller")), None)
        if seconds is None and ref is not None and ref.get("kind") == "Job":
            job = self.api(pod["spec"]["nodeName"]).get("Job", pod["metadata"]["namespace"],
                                                         ref["name"])
            seconds = ((job or {}).get("spec") or {}).get("activeDeadlineSeconds")
        return float(seconds) if seconds is not None else self.timeout

    def _message(self, container: Obj, mounts: Mounts, code: int, log_path: Path) -> str:
        path = mounts.host(str(container.get("terminationMessagePath")
                               or "/dev/termination-log"))
        message = ""
        if path is not None and path.is_file():
            with open(path, "rb") as f:
                message = f.read(_MESSAGE_BYTES).decode(errors="replace")
        policy = container.get("terminationMessagePolicy") or "File"
        if not message.strip() and code != 0 and policy == "FallbackToLogsOnError":
            data = log_path.read_bytes()[-_TAIL_BYTES:]
            message = "\n".join(data.decode(errors="replace").splitlines()[-_TAIL_LINES:])
        return message

    # -- what the process sees ----------------------------------------------------------------

    def _environment(self, pod: Obj, container: Obj, mounts: Mounts) -> dict[str, str]:
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env.update({
            "HOSTNAME": pod["metadata"]["name"],
            "HOME": str(self._own(pod, container, "home")),
            "TMPDIR": str(mounts.host("/tmp") or self._own(pod, container, "tmp")),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.api_port()),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port()),
        })
        account = mounts.host(SERVICE_ACCOUNT_PATH)
        if account is not None:  # automountServiceAccountToken false: none
            env[SERVICE_ACCOUNT_DIR_ENV] = str(account)
        for var in container.get("env") or []:
            if "value" in var:
                env[str(var["name"])] = mounts.translate(_expand(str(var["value"]), env))
        return env

    def _own(self, pod: Obj, container: Obj, what: str) -> Path:
        path = self.files.pod_dir(pod) / "containers" / str(container["name"]) / what
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _log_path(self, pod: Obj, container: Obj) -> Path:
        meta = pod["metadata"]
        directory = self.files.node_dir(pod["spec"]["nodeName"]) / "var/log/pods" / \
            f"{meta['namespace']}_{meta['name']}_{meta['uid']}" / container["name"]
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(directory / "0.log")


def _kill(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it if it has not gone within ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, _REAPED)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
