"""The demo (the README's main job): migrate the seed article's `counters` pod.

Starts a loopback registry and the real Kubernetes control plane (etcd,
kube-apiserver, controller manager and scheduler on 127.0.0.1: e2e/cluster)
with two node agents, node-a and node-b, each in a node host of its own (a
network namespace and a 198.18 address the API server's node proxy reaches);
the agents run the pods' containers as simulated processes (e2e/nodes). Then
it proves the path to node-b with `migrate doctor --probe node-b` (a
checkpoint, push and restore of a probe pod, all removed after), creates
`counters` on node-a with a secret in its process's memory and a file in its
root fs, runs `migrate pod counters --to node-b`, and proves the restored pod
holds the same secret and file by checkpointing it on node-b and searching
that archive. Everything it starts is stopped at the end, failures included.
Needs root (network namespaces) and the control plane's binaries
(scripts/setup builds them).

    python -m e2e.demo [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from e2e.cluster import binaries, nodehost
from e2e.cluster.launcher import control_plane
from e2e.cluster.world import Cluster
from e2e.nodes import RegistryConfig
from e2e.registry import Registry

POD_MANIFEST = """\
apiVersion: v1
kind: Pod
metadata:
  name: counters
  namespace: default
  labels: {{app: counters}}
  annotations:
    # What the simulated runtime puts in the checkpoint: the process and its memory...
    sim.migrate.dev/processes: '{processes}'
    # ...and a file the container wrote.
    sim.migrate.dev/rootfs-diff: '{files}'
spec:
  nodeName: node-a
  containers:
    - name: counter
      image: quay.io/adrianreber/counter:latest
      ports: [{{containerPort: 8088}}]
      volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, emptyDir: {{}}}}]
"""


def _say(text: str) -> None:
    print(f"\n### {text}", flush=True)


def _run(argv: Sequence[str | Path], env: dict[str, str], *, capture: bool = False,
         input: str | None = None) -> str:
    shown = " ".join(shlex.quote(str(a)) for a in argv)
    print(f"$ {shown}", flush=True)
    done = subprocess.run([str(a) for a in argv], env=env, text=True, input=input,
                          stdout=subprocess.PIPE if capture else None, check=False)
    if done.returncode != 0:
        raise SystemExit(f"demo: `{shown}` exited {done.returncode}")
    if capture:
        print(done.stdout, end="", flush=True)
    return done.stdout or ""


def _wait_running(env: dict[str, str], kubectl: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = subprocess.run([kubectl, "get", "pod", "counters", "-o",
                                "jsonpath={.status.phase}"], env=env, text=True,
                               capture_output=True, check=False).stdout
        if phase == "Running":
            return
        time.sleep(0.1)
    raise SystemExit("demo: the counters pod did not start")


def demo(work: Path) -> None:
    """Run the whole story in ``work``."""
    secret = f"DEMO-SECRET-{secrets.token_hex(8)}"
    migrate = [sys.executable, "-m", "migrate"]
    kubectl = shutil.which("kubectl")
    missing = binaries.missing() or nodehost.missing()
    if missing:
        raise SystemExit(f"demo: {missing}; run scripts/setup (as root: it builds the control "
                         "plane) and the demo as root")
    registry = Registry(work / "registry").start()
    try:
        with control_plane(work / "control-plane") as cp, \
                Cluster(cp, work / "cluster", nodes=("node-a", "node-b"),
                        registries=RegistryConfig(insecure=(registry.host,))) as sim:
            env = {**os.environ, "KUBECONFIG": str(sim.kubeconfig),
                   "MIGRATE_STATE_DIR": str(work / "state"),
                   # The demo's nodes keep their files here; on a real cluster, run on
                   # the source node or share the checkpoint directories.
                   "MIGRATE_NODE_ROOT": sim.node_root}
            _say(f"Kubernetes {cp.versions.kubernetes} (etcd {cp.versions.etcd}) at "
                 f"{cp.server}, node agents node-a ({sim.node_address('node-a')}) and "
                 f"node-b ({sim.node_address('node-b')}), a registry at {registry.url}")
            _run([kubectl or "kubectl", "get", "nodes", "-o", "wide"], env)
            _say("Preflight: the checks, and a probe that proves node-b restores")
            _run([*migrate, "doctor", "--registry", f"{registry.host}/demo",
                  "--no-tls-verify", "--probe", "node-b"], env)
            processes = json.dumps([{"argv": ["/usr/bin/counter", "--port", "8088"],
                                     "heap": f"counter=42 token={secret}"}])
            files = json.dumps({"/home/counter/test-file": "counter state: 42\n"})
            manifest = POD_MANIFEST.format(processes=processes, files=files)
            _say(f"The counters pod on node-a, with {secret} in its memory")
            if kubectl:
                _run([kubectl, "apply", "-f", "-"], env, input=manifest)
                _wait_running(env, kubectl)
                _run([kubectl, "get", "pods", "-o", "wide"], env)
            else:
                raise SystemExit("demo: kubectl is needed (it is on these machines)")
            _say("Migrate it to node-b")
            _run([*migrate, "pod", "counters", "--to", "node-b", "--registry",
                  f"{registry.host}/demo", "--no-tls-verify"], env)
            _run([kubectl, "get", "pods", "-o", "wide"], env)
            _say("Proof: checkpoint the restored pod on node-b and look inside")
            out = _run([*migrate, "checkpoint", "counters-restored", "-o", "json"], env,
                       capture=True)
            archive = sim.node_path("node-b", json.loads(out)["archive"])
            _run([*migrate, "memparse", archive, "--search", secret], env)
            _run([*migrate, "rootfs-diff", archive, "--extract", work / "rootfs"], env)
            print((work / "rootfs/home/counter/test-file").read_text(), end="")
            _run([*migrate, "history"], env)
            _say("Done: the restored pod holds the same secret and files")
    finally:
        registry.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--keep DIR`` keeps the state (logs, journal) in DIR."""
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__)
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in DIR and keep it (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        demo(args.keep)
        return 0
    with tempfile.TemporaryDirectory(prefix="migrate-demo-") as work:
        demo(Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
