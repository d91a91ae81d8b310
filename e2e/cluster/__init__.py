"""The real Kubernetes control plane of the test world (issue 16).

    go.mod             the pinned releases (k8s.io/kubernetes, etcd server), built by
                       scripts/setup-cluster into $MIGRATE_TEST_CACHE/k8s-<version>/bin
    etcd/main.go       the etcd command of that release (one call into etcdmain)
    binaries.py        where the binaries are, which versions (read from go.mod)
    launcher.py        control_plane(): etcd, kube-apiserver, kube-controller-manager,
                       kube-scheduler on 127.0.0.1; kubeconfigs for admin and other users
    nodehost.py        node_host(): a network namespace + veth pair giving a node an
                       address the API server's node proxy accepts
    kubelet_standin.py a tiny HTTPS server answering as a kubelet (/healthz, /checkpoint)
    kubeclient.py      a small JSON client of the API server (client certificates, watches)
    nodeapi.py         the API server as a node's view (e2e/nodes/api.py's NodeApi): its
                       pods from a watch, status, Events, Nodes, tokens
    agent.py           NodeAgent: a simulated node (e2e/nodes) as a client of the real
                       API server, its kubelet API inside its node host
    world.py           Cluster: node hosts and agents on a control plane (tests, drain bench)
    procs.py           children killed with their parent; orderly stop
    realnode.py        real_node(): the real kubelet and CRI-O as one node (scripts/setup-stretch;
                       the demo, the pod bench, tests/test_real_node.py,
                       test_encrypted_migration.py and tests/real.py's CRI-O archive)
    __main__.py        `python -m e2e.cluster`, to start one by hand

Facts for node agents, read in the sources of Kubernetes v1.37.2 (the pinned
release); what tests/test_control_plane.py proves is marked so:

How `/api/v1/nodes/NODE/proxy/PATH` reaches a kubelet
    pkg/registry/core/node/rest/proxy.go Connect -> node.ResourceLocation
    (pkg/registry/core/node/strategy.go) -> NodeConnectionInfoGetter.GetConnectionInfo
    (pkg/kubelet/client/kubelet_client.go):
    - address: the first entry of Node.status.addresses whose type comes first in
      --kubelet-preferred-address-types (pkg/util/node/node.go GetPreferredNodeAddress).
      The default order is Hostname, InternalDNS, InternalIP, ExternalDNS, ExternalIP
      (cmd/kube-apiserver/app/options/options.go); the launcher sets
      InternalIP,ExternalIP,Hostname.
    - port: status.daemonEndpoints.kubeletEndpoint.Port, or 10250 when it is 0.
      A request naming another port (`nodes/NODE:PORT/proxy`) goes over the generic
      proxy transport instead (pkg/controlplane/apiserver/config.go
      CreateProxyTransport: InsecureSkipVerify, no client certificate; read, not
      tested here).
    - scheme https; the API server presents --kubelet-client-certificate/-key
      (here CN kube-apiserver-kubelet-client, O kubeadm:cluster-admins) and, with
      --kubelet-certificate-authority set (here: the test CA), verifies the kubelet's
      serving certificate against the node address (an IP SAN). Without that flag
      it would not verify at all (kubelet_client.go transportConfig: Insecure).
    - refused: isProxyableHostname (strategy.go) resolves the address and answers
      400 "address not allowed" unless every result is IP.IsGlobalUnicast: loopback
      (127.0.0.0/8, ::1), link-local, multicast and unspecified addresses are refused
      on every port, the kubelet's included. Private and benchmarking ranges
      (10/8, 198.18/15) are global unicast in Go's sense and accepted. Hence node
      hosts (nodehost.py) on 198.18.0.0/16.
    - the transport follows HTTPS_PROXY/NO_PROXY from the API server's environment;
      the launcher starts it without proxy variables.
    - RBAC: nodes/proxy, verb get for GET, create for POST (kubectl get --raw is a GET).
    Proven: a node at 127.0.0.1 gets `Error from server (BadRequest): address not
    allowed`; a node host at 198.18.x.2 in its own namespace is reached for GET
    /healthz and POST /checkpoint/..., the stand-in seeing the kubelet client
    certificate; a serving certificate for another IP is refused (x509); a user
    with nodes/proxy `get` only is refused the POST.

The API server itself must advertise a non-loopback address for the
`kubernetes` Service's endpoints; on 127.0.0.1 the launcher runs it with
--endpoint-reconciler-type=none (the Service has no endpoints; nothing dials it).

Node health (pkg/controller/nodelifecycle/node_lifecycle_controller.go
tryUpdateNodeHealth)
    - a node is healthy while its Ready condition's lastHeartbeatTime changes or its
      Lease kube-node-lease/NODE has a newer spec.renewTime than last seen; the lease
      alone suffices ("If kubelet never posted the node status, but continues renewing
      the heartbeat leases, the node controller will assume the node is healthy").
    - otherwise, after --node-monitor-grace-period (default 50 s;
      --node-startup-grace-period, default 60 s, for a node that never posted Ready),
      the controller sets Ready (and the other conditions) to status Unknown, reason
      NodeStatusUnknown, "Kubelet stopped posting node status.", and taints the node
      node.kubernetes.io/unreachable. It looks every --node-monitor-period (default 5 s).
      Defaults: pkg/controller/nodelifecycle/config/v1alpha1/defaults.go. The launcher
      sets 1 s / 6 s / 6 s (launcher.Options).
"""
