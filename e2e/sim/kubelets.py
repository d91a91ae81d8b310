"""The simulator's driver of a node's kubelet (e2e/nodes/kubelet.py): a controller loop.

The kubelet runs a pass whenever a pod changes in the store, when it asks to
be woken, and when a timer of its own is due; stopping the loop stops it.
"""

from __future__ import annotations

from collections.abc import Callable

from e2e.nodes.kubelet import Kubelet
from e2e.sim.controllers import Controller
from e2e.sim.core import PODS
from e2e.sim.rest import Rest

__all__ = ["KubeletLoop"]


class KubeletLoop(Controller):
    """`kubelet` reconciled as a controller of the simulator's store."""

    def __init__(self, rest: Rest, kubelet: Kubelet, *,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(rest, log=log)
        self.kubelet = kubelet
        self.name = kubelet.name
        # Its passes read only pods, and what its start-up workers know (which wake it).
        self.resources = (PODS.key,)
        kubelet.wake = self.wake

    def reconcile(self) -> None:
        self.kubelet.reconcile()

    def next_wakeup(self) -> float | None:
        return self.kubelet.next_wakeup()

    def stop(self) -> None:
        """Stop the loop, then the kubelet's workers and containers."""
        super().stop()
        self.kubelet.stop()
