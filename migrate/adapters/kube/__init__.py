"""The Kubernetes adapter: the official client's connection and auth, the API's JSON.

Only this package imports ``kubernetes``. Requests are built with the client's
``ApiClient`` (its configuration, auth and connection pool) but never through
the generated API classes: importing ``CoreV1Api`` alone costs ~0.75 s
(hundreds of pydantic-validated methods built at import), each method's first
call builds its validator, and watches through ``watch.Watch`` deserialize
every event into models. The pipeline works with the API's JSON (manifest
field names) anyway, so every request is one `client.request_json` (or, for
streams, `client.send` with the same error translation).

By concern:
    client.py      connecting, sending, retries, errors translated into ours
    pods.py        pods: read, list, create, patch, delete, watch
    workloads.py   a pod's controller; Jobs and Secrets of builds on a node
    nodes.py       nodes, server version, access reviews, the checkpoint via the node proxy
    events.py      Events: recording ours, following the kubelet's
    watches.py     watching one object until a condition holds
    disruption.py  disruption budgets and evictions
    apply.py       the tool's own objects (deploy, schedule)

Callers use the names re-exported here (``kube.read_pod``); `migrate.pipeline.incluster`
derives the RBAC role from these functions.
"""

from migrate.adapters.kube.apply import apply_object, read_object
from migrate.adapters.kube.client import (
    EVENTS_FLUSH_SECONDS,
    Cluster,
    call,
    close,
    connect,
    request_json,
    send,
    translate,
)
from migrate.adapters.kube.disruption import (
    EVICTED,
    GONE,
    REFUSED,
    Eviction,
    evict_pod,
    list_pdbs,
)
from migrate.adapters.kube.events import EventWatch, create_event, watch_events
from migrate.adapters.kube.nodes import (
    Access,
    can_i,
    checkpoint_via_apiserver,
    kubelet_config,
    list_namespaces,
    list_nodes,
    list_nodes_matching,
    patch_node,
    read_node,
    read_node_recent,
    server_minor_version,
    server_version,
    version_of,
)
from migrate.adapters.kube.pods import (
    begin_pod_deletion,
    create_pod,
    delete_pod,
    find_pod,
    list_pods,
    patch_pod,
    read_pod,
    watch_pod,
)
from migrate.adapters.kube.workloads import (
    create_job,
    create_secret,
    delete_job,
    delete_secret,
    read_owner,
    watch_job,
)

__all__ = [
    "EVENTS_FLUSH_SECONDS", "EVICTED", "GONE", "REFUSED", "Access", "Cluster", "EventWatch",
    "Eviction", "apply_object", "begin_pod_deletion", "call", "can_i", "checkpoint_via_apiserver",
    "close", "connect", "create_event", "create_job", "create_pod", "create_secret", "delete_job",
    "delete_pod", "delete_secret", "evict_pod", "find_pod", "kubelet_config", "list_namespaces",
    "list_nodes", "list_nodes_matching", "list_pdbs", "list_pods", "patch_node", "patch_pod",
    "read_node", "read_node_recent", "read_object", "read_owner", "read_pod", "request_json",
    "send", "server_minor_version", "server_version", "translate", "version_of", "watch_events",
    "watch_job", "watch_pod",
]
