"""`python -m e2e.sim --state DIR [--nodes A,B] [--port 0] [--config FILE]`: run a cluster.

Runs in the foreground on 127.0.0.1. When the cluster answers, DIR/kubeconfig
exists and exactly one line, `ready <api-url>`, is printed on stdout; SIGTERM
or SIGINT stops it cleanly (exit status 0). Logs go to DIR/cluster.log and
DIR/apiserver.log, never to stdout. Bad arguments or a bad config: a message
on stderr, exit status 2.

DIR also gets ca.crt and kubelet-client.crt/.key (0600) for talking to the
kubelets directly (each on its own 127.0.0.1 port: the Node's
status.daemonEndpoints.kubeletEndpoint.Port), and each node's files under
DIR/nodes/NODE/ (checkpoints in var/lib/kubelet/checkpoints/).

--config FILE is YAML; its nodes are merged by name over --nodes (settings
for a listed node, new names appended in the file's order):

    nodes:
      - name: node-c                      # required
        runtime: containerd://2.4.0       # default cri-o://1.30.4 (nodeInfo)
        restore_level: checkpoint_only    # none | checkpoint_only | checkpoint_restore;
                                          # default: the CRI-O release's (runtime_releases.py:
                                          # none up to 1.29, checkpoint_only from 1.34.12...);
                                          # none: checkpoints answer 500
        enable_experimental_restore_via_create: false   # containerd 2.2.7+/2.3.4+
        checkpoint_gate: true             # false: /checkpoint is 404 (gate off)
        ready: true                       # false: NotReady (and the not-ready taint)
        labels: {topology.kubernetes.io/zone: b}
        taints: [{key: dedicated, value: db, effect: NoSchedule}]
        capacity: {cpu: "8", memory: 16Gi}        # overrides; allocatable follows
        runtime_request_timeout: 120      # seconds; the floor of a checkpoint's deadline
        backoff: 10                       # seconds: first wait after a failed image pull
                                          # (doubling), and between container-creation retries
        backoff_max: 300                  # seconds: the longest image pull backoff
        decryption_keys_path: /keys/node-c  # CRI-O's: private keys for encrypted images;
                                          # default none (a node without keys)
    faults:
      node-c:
        fail_next_checkpoints: 1          # the next N checkpoints answer 500
        checkpoint_delay_per_mib: 0.5     # seconds per MiB of simulated memory
        image_pull_seconds: 2             # every image pull takes this long...
        image_pull_seconds_per_mib: 0.1   # ...plus this per MiB of layers
    registries:                           # how kubelets pull from registries on 127.0.0.1
      insecure: ["127.0.0.1:5000"]        # plain HTTP; others are HTTPS, verified
      ca_files: [/path/to/ca.crt]         # CAs trusted for HTTPS, besides the system's
      timeout: 10                         # seconds to connect and per read

Kubelets contact no registry but those on 127.0.0.1: images elsewhere
(docker.io/library/busybox...) count as present on every node.
    users:                                # granted through RBAC objects (users.py)
      - name: bob                         # required; DIR/kubeconfig-bob is written
        token: s3cret                     # default: a random one
        groups: [developers]              # system:authenticated is implied
        rules:                            # RBAC PolicyRules, plus `namespaces`
          - apiGroups: [""]
            resources: [pods, pods/eviction]   # RESOURCE/SUBRESOURCE, "*" wildcards
            verbs: [get, list, create]
            namespaces: [shop]            # absent: cluster-wide (created if missing)
          - nonResourceURLs: [/metrics]
            verbs: [get]
    tool_images: [localhost/migrate:test] # the tool's own images: Job and CronJob
                                          # containers with one run `python -m migrate`
                                          # in-cluster (e2e/nodes/toolrun.py)

The admin user (DIR/kubeconfig) is in system:masters; RBAC objects applied
later (kubectl apply -f role.yaml) count at once.

Unknown keys are errors (typos must not pass silently).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from e2e.nodes.images import parse_registries
from e2e.nodes.nodeconfig import merge_nodes, parse_config, read_config
from e2e.nodes.toolrun import parse_tool_images
from e2e.sim.simulator import DEFAULT_NODES, Simulator
from e2e.sim.users import parse_users

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m e2e.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--state", type=Path, required=True,
                        help="directory for the kubeconfig, PKI and logs")
    parser.add_argument("--nodes", default=",".join(DEFAULT_NODES),
                        help="comma-separated node names (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0,
                        help="port on 127.0.0.1; 0 picks a free one (default)")
    parser.add_argument("--start-latency", type=float, default=0.2,
                        help="seconds from a pod being bound to it Running (default: 0.2)")
    parser.add_argument("--stop-latency", type=float, default=0.2,
                        help="seconds from a pod's deletion to it being gone (default: 0.2)")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML node settings (runtime, restore_level, checkpoint_gate, "
                             "ready, labels, taints, capacity, backoff; faults), merged over "
                             "--nodes; registries (insecure, ca_files); users and their RBAC "
                             "rules; tool_images")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    try:
        document = read_config(args.config) if args.config is not None else None
        try:
            configs = parse_config(document)
            users = parse_users(document.get("users") if isinstance(document, dict) else None)
            registries = parse_registries((document or {}).get("registries"))
            tool_images = parse_tool_images((document or {}).get("tool_images"))
        except ValueError as e:
            raise ValueError(f"{args.config}: {e}") from None
        sim = Simulator(args.state, nodes=merge_nodes(nodes, configs), port=args.port,
                        start_latency=args.start_latency, stop_latency=args.stop_latency,
                        node_config=configs, users=users, registries=registries,
                        tool_images=tool_images)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Blocked before any thread exists, so every thread inherits the mask and
    # the signal waits for sigwait() below (even one sent during start-up)
    # instead of landing in a server thread while the main thread sleeps.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    sim.start()
    try:
        print(f"ready {sim.url}", flush=True)
        signal.sigwait(_STOP_SIGNALS)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
