"""The demo (the README's main job): migrate the seed article's `counters` pod.

Starts a loopback registry and the real Kubernetes control plane (etcd,
kube-apiserver, controller manager and scheduler on 127.0.0.1: e2e/cluster)
with two node agents, node-a and node-b, each in a node host of its own (a
network namespace and a 198.18 address the API server's node proxy reaches);
the agents run the pods' containers as simulated processes (e2e/nodes). Then
it proves the path to node-b with `migrate doctor --probe node-b` (a
checkpoint, push and restore of a probe pod, all removed after), creates
`counters` on node-a with a secret and its counter's state in its process's
memory and a file in its root fs, shows the secret in a checkpoint of the
source first, prints the plan, runs `migrate pod counters --to node-b`, then
checkpoints the restored pod on node-b and checks, rather than shows, that it
holds the same secret, the same file and the counter's state where the source
had it (the same process, going on from 42): each check that fails stops the
demo with `demo: FAILED: ...` and exit 1; "Done" is printed only when all of
them passed. Everything it starts is stopped at the end, failures included.
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
from e2e.services.registry import Registry

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


def _fail(what: str) -> SystemExit:
    return SystemExit(f"demo: FAILED: {what}")


def _search(migrate: list[str], archive: Path, text: str, env: dict[str, str],
            what: str) -> dict[str, object]:
    """The one match of ``text`` in ``archive``'s memory, shown; fails the demo when
    memparse finds none (its exit 11) or more than one."""
    argv = [*migrate, "memparse", archive, "--search", text, "-o", "json"]
    print("$ " + " ".join(shlex.quote(str(a)) for a in argv), flush=True)
    done = subprocess.run([str(a) for a in argv], env=env, text=True, check=False,
                          stdout=subprocess.PIPE)
    if done.returncode == 11:
        raise _fail(f"{what}: `{text}` is not in the memory of {archive.name}")
    if done.returncode != 0:
        raise SystemExit(f"demo: memparse exited {done.returncode}")
    matches = json.loads(done.stdout)
    if len(matches) != 1:
        raise _fail(f"{what}: `{text}` is in {len(matches)} places, not one")
    match: dict[str, object] = matches[0]
    print(f"{what}: {match['match']} (pid {match['pid']}, {match['command']}, address "
          f"{match['address']})", flush=True)
    return match


def _checkpoint(migrate: list[str], pod: str, env: dict[str, str], sim: Cluster) -> Path:
    out = _run([*migrate, "checkpoint", pod, "-o", "json"], env, capture=True)
    taken = json.loads(out)
    return sim.node_path(str(taken["node"]), str(taken["archive"]))


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
            state = "counter=42"
            processes = json.dumps([{"argv": ["/usr/bin/counter", "--port", "8088"],
                                     "heap": f"{state} token={secret}"}])
            files = json.dumps({"/home/counter/test-file": "counter state: 42\n"})
            manifest = POD_MANIFEST.format(processes=processes, files=files)
            _say(f"The counters pod on node-a, with {secret} in its memory")
            if not kubectl:
                raise SystemExit("demo: kubectl is needed (it is on these machines)")
            _run([kubectl, "apply", "-f", "-"], env, input=manifest)
            _wait_running(env, kubectl)
            _run([kubectl, "get", "pods", "-o", "wide"], env)
            _say("Before: the secret and the counter's state, in a checkpoint of the source")
            source = _checkpoint(migrate, "counters", env, sim)
            before_secret = _search(migrate, source, secret, env, "secret in the source")
            before_state = _search(migrate, source, state, env, "counter state in the source")
            source.unlink()  # a copy of the memory, secret included: not kept
            _say("The plan: node-b, and where the image is built (here: MIGRATE_NODE_ROOT "
                 "makes the nodes' checkpoint directories readable on this machine)")
            registry_prefix = f"{registry.host}/demo"
            _run([*migrate, "pod", "counters", "--to", "node-b", "--registry", registry_prefix,
                  "--no-tls-verify", "--dry-run"], env)
            _say("Migrate it to node-b")
            _run([*migrate, "pod", "counters", "--to", "node-b", "--registry", registry_prefix,
                  "--no-tls-verify"], env)
            _run([kubectl, "get", "pods", "-o", "wide"], env)
            _say("Proof: checkpoint the restored pod on node-b and look inside")
            restored = _checkpoint(migrate, "counters-restored", env, sim)
            after_secret = _search(migrate, restored, secret, env, "secret in the restored pod")
            after_state = _search(migrate, restored, state, env,
                                  "counter state in the restored pod")
            for key in ("pid", "command"):
                if before_state[key] != after_state[key] or before_secret[key] != \
                        after_secret[key]:
                    raise _fail(f"the restored pod's process is not the source's ({key} "
                                f"{before_state[key]} -> {after_state[key]}): the counter "
                                "started afresh")
            print(f"counter continuation: {state} is held by the same process (pid "
                  f"{after_state['pid']}, {after_state['command']}) that held it on node-a",
                  flush=True)
            _run([*migrate, "rootfs-diff", restored, "--extract", work / "rootfs"], env)
            written = work / "rootfs/home/counter/test-file"
            if not written.is_file():
                raise _fail("/home/counter/test-file is not in the restored pod's files")
            content = written.read_text()
            if content != "counter state: 42\n":
                raise _fail(f"/home/counter/test-file holds {content!r}, not 'counter state: "
                            "42'")
            print(f"file /home/counter/test-file in the restored pod: {content}", end="",
                  flush=True)
            _run([*migrate, "history"], env)
            _say("Done: the restored pod holds the same secret, the same file, and its "
                 "counter's state in the same process")
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
