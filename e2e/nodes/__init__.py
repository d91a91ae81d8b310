"""Simulated nodes: what a kubelet and its container runtime do, for either backend.

This code runs each node agent on the real control plane (e2e/cluster/agent.py:
a real API server over HTTPS). It never talks to the API server directly: it
reads and writes through a `NodeApi` (api.py), the pod source and sink
e2e/cluster/nodeapi.py implements. Containers are simulated processes.

Layout, bottom up:

    api.py          NodeApi (pods of the node, their status, Events, Secrets...),
                    the errors it raises, condition and time helpers
    nodeconfig.py   per-node settings (runtime, restore level, faults);
                    runtime_releases.py what each CRI-O and containerd release does
    images.py       image references, registry configuration, credentials;
                    registry_pull.py real pulls from registries on 127.0.0.1
                    (no keys: an encrypted layer fails as on CRI-O without any);
                    image_manager.py the kubelet's pull policies, backoff, Events
    restore.py      CRI-O's and containerd's create/restore rules and messages;
                    restored.py what a restore brings back (criu_read.py)
    checkpoints.py  what a checkpoint archive holds (e2e.archives.archivegen's layout)
    podstart.py     a pod's containers started on worker threads (kubelet_events.py:
                    the kubelet's Events, aggregated as client-go's recorder does)
    runs.py         run-to-completion containers; toolrun.py and podfiles.py:
                    the tool's own image, run for real with a pod's files
    kubelet.py      the node's agent: registers the Node, starts and removes pods
    kubelet_api.py  the kubelet's HTTP API (checkpoint, containerLogs, pods, healthz)
    protocol.py     requests, responses, users, authorizers; https.py the HTTPS
                    server of the kubelet API
"""

from e2e.nodes.images import RegistryConfig
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.runs import ContainerExit, ContainerProcess

__all__ = ["ContainerExit", "ContainerProcess", "NodeConfig", "RegistryConfig"]
