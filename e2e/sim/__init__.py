"""A local Kubernetes cluster simulator: a real HTTPS API server, simulated nodes.

The API server speaks the real REST protocol (discovery, CRUD, selectors,
patches, watches, Status errors, Table printing), so the official `kubernetes`
Python client and kubectl work against it unchanged; scheduling and kubelets
are simulated (nothing runs). See simulator.py for the in-process API and
__main__.py for the command line:

    python -m e2e.sim --state DIR [--nodes node-a,node-b] [--port 0] [--config FILE]

Each node also serves the kubelet API on its own 127.0.0.1 port (client
certificates): `POST /checkpoint/NS/POD/CONTAINER` writes a checkpoint archive
(e2e.archivegen's layout, filled from the pod) into the node's directory,
STATE/nodes/NODE/var/lib/kubelet/checkpoints/; the API server reaches it at
`/api/v1/nodes/NODE/proxy/checkpoint/...`. Nodes are configured by
`NodeConfig` (runtime, restore level, feature gate, readiness, faults);
`Simulator.holding_checkpoints(NODE)` holds a node's checkpoints before the
dump for as long as a test needs (to act while a client is inside one).

Every object written is checked against the real Kubernetes schemas (from
the kubernetes-validate package, for the release /version reports), as the
API server decodes and validates: 400 for type errors and, under
`fieldValidation=Strict` (kubectl's default), unknown fields; a Warning
header under Warn; 422 Invalid with field causes for missing required fields.

Requests are authorized by RBAC over the cluster's own Roles, ClusterRoles
and bindings (rbac.authorization.k8s.io/v1, served like every kind, so
`kubectl apply` of RBAC manifests takes effect at once). The admin token is
in system:masters; `Simulator.add_user(name, groups, rules)` (or `users:` in
the --config file) makes a restricted user, its rules RBAC PolicyRules plus
`namespaces`. `kubectl auth can-i` works: SelfSubjectAccessReviews are
answered by the same authorizer.

Kubelets pull images for real from registries on 127.0.0.1 (Basic or Bearer
auth from the pods' imagePullSecrets, TLS verified against the CAs of
`RegistryConfig`); any other registry is never contacted and its images
count as present on every node. A checkpoint image is restored, or refused,
as the node's runtime release does it (CRI-O's restore level, defaulting by
release; containerd 2.0-2.4 and enable_experimental_restore_via_create),
checks and error messages included; what it brings back (processes,
memory, files) is kept on the Pod, so that a restored pod can be
checkpointed and migrated again.

Workloads (workloads.py) run as kube-controller-manager runs them: apps/v1
Deployments and ReplicaSets (with `scale`), policy/v1 PodDisruptionBudgets
and the pods/eviction subresource (what `kubectl drain` uses), batch/v1 Jobs,
and garbage collection by ownerReference (propagationPolicy Background,
Foreground or Orphan). Nothing runs in a container; pods with restartPolicy
Never or OnFailure (Jobs') end as their annotations say, each key also as
`KEY.<container>` for one container:

    sim.migrate.dev/run-seconds          seconds the container runs (default 0.2)
    sim.migrate.dev/exit-code            its exit code (default 0): 0 -> Succeeded,
                                         else Failed (OnFailure: restarted)
    sim.migrate.dev/termination-message  its terminated state's `message`, as if
                                         written to terminationMessagePath

`Simulator(container_process=...)` replaces that decision with any function
returning a `ContainerExit` (exit code, message), e.g. one running a command.
Containers whose image is one of `Simulator(tool_images=...)` (the tool's
own image, built from the Containerfile) really run: `python -m migrate` in a
subprocess with a pod's in-cluster credentials (a ServiceAccount token, the
CA, KUBERNETES_SERVICE_HOST/PORT), its volumes on the node's disk and its
termination message read back (toolrun.py, podfiles.py); what it prints is
the pod's log (`kubectl logs`, podlogs.py).

batch/v1 CronJobs start Jobs on schedule (cron.py: five fields, names,
steps, timeZone). Their controller's clock is the wall clock until
`Simulator.advance_cron(to=... | by=...)` sets it, so tests never wait for
a minute to pass; `kubectl create job --from=cronjob/NAME` works.

Layout, bottom up:

    store.py       objects, the global resourceVersion, watch history, indexes
    rest.py        generic object semantics (create/update/patch/delete rules);
                   schema.py, validation.py decode and check every write
                   against the Kubernetes OpenAPI schemas (400/422, fieldValidation)
    api.py         routing and handlers; watch.py streams watches;
                   discovery.py, openapi.py, tables.py what clients read
    server.py      the API server's HTTPS front: bearer tokens (e2e/nodes/https.py,
                   protocol.py: the server and what it hands api.py)
    resources.py   what a kind is; core.py the core/v1 kinds
    rbac.py        the RBAC kinds and bootstrap policy; rbac_authorizer.py
                   evaluates them; users.py users and their grants;
                   authz.py SelfSubjectAccessReview
    controllers.py scheduler, namespace controller; serviceaccounts.py the
                   `default` ServiceAccounts
    workloads.py   apps, policy and batch kinds and their controllers: apps.py,
                   replicaset.py, deployment.py, scale.py, policy.py,
                   disruption.py, eviction.py, batch.py, job.py, gc.py,
                   cronjob.py, cronjob_controller.py (cron.py: schedules);
                   owners.py what they share (claiming, the owner index)
    nodeapi.py     the store as the nodes' view of the cluster; kubelets.py runs
                   each node's kubelet as a controller. The nodes themselves
                   (kubelet, kubelet API, runtime, pulls, restores, the tool's
                   image run for real) are e2e/nodes, shared with the node agents
                   on the real control plane (e2e/cluster)
    simulator.py   wires them together
"""

from e2e.nodes.images import RegistryConfig
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.runs import ContainerExit, ContainerProcess
from e2e.sim.simulator import DEFAULT_NODES, Simulator
from e2e.sim.users import UserSpec

__all__ = [
    "DEFAULT_NODES",
    "ContainerExit",
    "ContainerProcess",
    "NodeConfig",
    "RegistryConfig",
    "Simulator",
    "UserSpec",
]
