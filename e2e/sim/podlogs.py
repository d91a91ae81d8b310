"""`kubectl logs`: the pods/log subresource, read from the node's pod log files.

Containers the simulator really runs (toolrun.py) write their output to
STATE/nodes/NODE/var/log/pods/NS_POD_UID/CONTAINER/N.log, as the kubelet
lays them out. GET .../pods/NAME/log answers the newest run's file
(`previous=true`: the one before); `container` picks the container (needed
when the pod has several); `tailLines` and `limitBytes` cut the answer.
Every other container prints nothing: its log is empty. A container that
has not started is a 400 BadRequest worded as the API server words it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from e2e.nodes.protocol import Request, Response
from e2e.sim.api import SubresourceHandler
from e2e.sim.core import PODS
from e2e.sim.errors import bad_request, method_not_allowed
from e2e.sim.resources import ResourceType
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["log_handler"]


def _container(pod: Obj, name: str, wanted: str | None) -> str:
    spec = pod["spec"]
    names = [c["name"] for c in spec.get("containers") or []]
    every = names + [c["name"] for c in spec.get("initContainers") or []]
    if not wanted:
        if len(names) != 1:
            raise bad_request(f"a container name must be specified for pod {name}, choose "
                              f"one of: [{' '.join(every)}]")
        return str(names[0])
    if wanted not in every:
        raise bad_request(f"container {wanted} is not valid for pod {name}")
    return wanted


def _started(pod: Obj, name: str, container: str) -> None:
    current = pod.get("status") or {}
    statuses = [*(current.get("containerStatuses") or []),
                *(current.get("initContainerStatuses") or [])]
    status = next((s for s in statuses if s.get("name") == container), None)
    waiting = ((status or {}).get("state") or {}).get("waiting")
    if status is None or waiting is not None or not pod["spec"].get("nodeName"):
        reason = (waiting or {}).get("reason", "ContainerCreating")
        raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                          f"{reason}")


def _cut(data: bytes, req: Request) -> bytes:
    tail = req.int_param("tailLines")
    if tail is not None:
        data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
    limit = req.int_param("limitBytes")
    return data[:limit] if limit and limit > 0 else data


def log_handler(rest: Rest, node_dir: Callable[[str], Path]) -> SubresourceHandler:
    """The SubresourceHandler serving pods/log from the nodes' directories."""

    def handle(req: Request, verb: str, rt: ResourceType, namespace: str, name: str
               ) -> Response:
        if verb != "get":
            raise method_not_allowed()
        pod = rest.get(PODS, namespace, name)
        container = _container(pod, name, req.param("container"))
        _started(pod, name, container)
        meta = pod["metadata"]
        directory = node_dir(pod["spec"]["nodeName"]) / "var/log/pods" / \
            f"{namespace}_{name}_{meta['uid']}" / container
        runs = sorted(int(p.stem) for p in directory.glob("*.log") if p.stem.isdigit())
        if req.param("previous") == "true":
            if len(runs) < 2:
                raise bad_request(f'previous terminated container "{container}" in pod '
                                  f'"{name}" not found')
            runs = runs[:-1]
        data = (directory / f"{runs[-1]}.log").read_bytes() if runs else b""
        return Response(200, _cut(data, req), "text/plain")

    return handle
