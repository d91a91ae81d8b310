"""The test world of migrate, in layers (each imports only those below it; pyproject's
import contracts keep it so):

    demo.py     scripts/demo: the counters pod moved node-a -> node-b, checked
    cluster/    the real control plane (Kubernetes' API server, controller manager,
                scheduler, etcd; launcher.py) and node agents on it (agent.py,
                world.py's Cluster: what tests, benchmarks and the demo use)
    nodes/      the node side: a kubelet and its container runtime (checkpoint,
                pulls, CRI-O's restore rules, the tool's image run for real),
                behind NodeApi; containers are simulated processes, or runc's
    real/       real checkpoints: CRIU, runc and Podman on a real workload, its image
                and pod for the real nodes (cluster/realnode.py, where CRI-O's come from)
    archives/   generated checkpoint archives (archivegen, criu_encode, filesgen)
    services/   the loopback registry, its token server, the PKI

The tool itself is never imported here: the world is what it is tested against.
"""
