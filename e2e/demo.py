"""The demo (the README's main job): migrate the seed article's `counters` pod, a real
container, and prove its process went on.

Starts a loopback registry and the real Kubernetes control plane (etcd,
kube-apiserver, controller manager and scheduler on 127.0.0.1: e2e/cluster)
with two node agents, node-a and node-b, each in a node host of its own (a
network namespace and a 198.18 address the API server's node proxy reaches).
Then it proves the path to node-b with `migrate doctor --probe node-b` (a
checkpoint, push and restore of a simulated probe pod, all removed after),
pushes the counter's image (busybox-static, e2e/real/counter.py) to the
registry and creates `counters` on node-a: a real runc container
(e2e/nodes/realpods.py) whose shell holds `token=<secret>` in its heap,
writes /home/counter/test-file and prints `counter: N` every second. It
finds the secret in a CRIU checkpoint of the source (`migrate memparse
--search`), prints the plan, reads the counter from `kubectl logs` (the
kubelet's containerLogs through the node proxy), runs `migrate pod counters
--to node-b` (CRIU dump on node-a, checkpoint image, CRIU restore on node-b),
then checks, rather than shows, that the restored process counts on from
after the value seen before (not from 1, without gaps), that a checkpoint of
it holds the secret in the same process (same pid, same command), and that
its files hold the source's test-file. Each check that fails stops the demo
with `demo: FAILED: ...` and exit 1; "Done" is printed only when all of them
passed. Everything it starts is stopped at the end, failures included. Needs
root (network namespaces, runc, CRIU) and the control plane's binaries
(scripts/setup builds them, and CRIU with scripts/setup-real).

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
from e2e.nodes.realpods import missing as missing_runtime
from e2e.real.counter import counter_pod, counts, push_counter_image
from e2e.services.registry import Registry


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
    """Where ``text`` is in ``archive``'s memory, shown; fails the demo when memparse
    finds it nowhere (its exit 11) or in more than one process."""
    argv = [*migrate, "memparse", archive, "--search", text, "-o", "json"]
    print("$ " + " ".join(shlex.quote(str(a)) for a in argv), flush=True)
    done = subprocess.run([str(a) for a in argv], env=env, text=True, check=False,
                          stdout=subprocess.PIPE)
    if done.returncode == 11:
        raise _fail(f"{what}: `{text}` is not in the memory of {archive.name}")
    if done.returncode != 0:
        raise SystemExit(f"demo: memparse exited {done.returncode}")
    matches = json.loads(done.stdout)
    holders = sorted({(m["pid"], m["command"]) for m in matches})
    if len(holders) != 1:
        raise _fail(f"{what}: `{text}` is held by {len(holders)} processes, not one")
    match: dict[str, object] = matches[0]
    print(f"{what}: {match['match']} (pid {match['pid']}, {match['command']}, address "
          f"{match['address']}{f', and {len(matches) - 1} more' if len(matches) > 1 else ''})",
          flush=True)
    return match


def _checkpoint(migrate: list[str], pod: str, env: dict[str, str], sim: Cluster) -> Path:
    out = _run([*migrate, "checkpoint", pod, "-o", "json"], env, capture=True)
    taken = json.loads(out)
    return sim.node_path(str(taken["node"]), str(taken["archive"]))


def _wait_running(env: dict[str, str], kubectl: str, pod: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = subprocess.run([kubectl, "get", "pod", pod, "-o",
                                "jsonpath={.status.phase}"], env=env, text=True,
                               capture_output=True, check=False).stdout
        if phase == "Running":
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: the {pod} pod did not start")


def _counts(env: dict[str, str], kubectl: str, pod: str, at_least: int = 1,
            timeout: float = 30.0) -> list[int]:
    """The counter's values in `kubectl logs POD` (the kubelet's containerLogs, through
    the API server's node proxy), once it has printed ``at_least``; shows the last lines."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([kubectl, "logs", pod], env=env, text=True,
                             capture_output=True, check=False).stdout
        values = counts(out)
        if len(values) >= at_least:
            print(f"$ kubectl logs {pod} | tail -3", flush=True)
            print("".join(out.splitlines(keepends=True)[-3:]), end="", flush=True)
            return values
        if time.monotonic() > deadline:
            raise _fail(f"the {pod} pod printed {len(values)} counts, not {at_least}, "
                        f"in {timeout:.0f} s")
        time.sleep(0.2)


def demo(work: Path) -> None:
    """Run the whole story in ``work``."""
    secret = f"DEMO-SECRET-{secrets.token_hex(8)}"
    migrate = [sys.executable, "-m", "migrate"]
    kubectl = shutil.which("kubectl")
    missing = binaries.missing() or nodehost.missing() or missing_runtime()
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
            if not kubectl:
                raise SystemExit("demo: kubectl is needed (it is on these machines)")
            image = push_counter_image(registry.host, "demo/counter", "1", work / "image")
            token = f"token={secret}"
            manifest = counter_pod("counters", image, secret=secret, node="node-a")
            _say(f"The counters pod on node-a: a real container (runc), {image}, with "
                 f"{secret} in its memory")
            _run([kubectl, "apply", "-f", "-"], env, input=json.dumps(manifest))
            _wait_running(env, kubectl, "counters")
            _run([kubectl, "get", "pods", "-o", "wide"], env)
            _say("Before: the secret in a checkpoint of the source, and the counter counting")
            source = _checkpoint(migrate, "counters", env, sim)
            before_secret = _search(migrate, source, token, env, "secret in the source")
            source.unlink()  # a copy of the memory, secret included: not kept
            _say("The plan: node-b, and where the image is built (here: MIGRATE_NODE_ROOT "
                 "makes the nodes' checkpoint directories readable on this machine)")
            registry_prefix = f"{registry.host}/demo"
            _run([*migrate, "pod", "counters", "--to", "node-b", "--registry", registry_prefix,
                  "--no-tls-verify", "--dry-run"], env)
            before = _counts(env, kubectl, "counters", at_least=3)
            print(f"counter before the migration: {before[-1]}", flush=True)
            _say("Migrate it to node-b")
            _run([*migrate, "pod", "counters", "--to", "node-b", "--registry", registry_prefix,
                  "--no-tls-verify"], env)
            _run([kubectl, "get", "pods", "-o", "wide"], env)
            _say("Proof: the restored process counts on from there, and holds the secret")
            after = _counts(env, kubectl, "counters-restored", at_least=2)
            if after[0] <= before[-1]:
                raise _fail(f"the counter on node-b began at {after[0]}, not after "
                            f"{before[-1]}: the counter started afresh")
            if after != list(range(after[0], after[0] + len(after))):
                raise _fail(f"the counter on node-b skips or repeats: {after}")
            print(f"counter continuation: {before[-1]} on node-a before the migration, "
                  f"{after[0]}..{after[-1]} on node-b", flush=True)
            restored = _checkpoint(migrate, "counters-restored", env, sim)
            after_secret = _search(migrate, restored, token, env, "secret in the restored pod")
            for key in ("pid", "command"):
                if before_secret[key] != after_secret[key]:
                    raise _fail(f"the restored pod's process is not the source's ({key} "
                                f"{before_secret[key]} -> {after_secret[key]})")
            print(f"the secret is held by the same process (pid {after_secret['pid']}, "
                  f"{after_secret['command']}) that held it on node-a", flush=True)
            _run([*migrate, "rootfs-diff", restored, "--extract", work / "rootfs"], env)
            restored.unlink()
            written = work / "rootfs/home/counter/test-file"
            if not written.is_file():
                raise _fail("/home/counter/test-file is not in the restored pod's files")
            content = written.read_text()
            if content != "counter state file of counters\n":
                raise _fail(f"/home/counter/test-file holds {content!r}, not the source's")
            print(f"file /home/counter/test-file in the restored pod: {content}", end="",
                  flush=True)
            _run([*migrate, "history"], env)
            _say("Done: the restored process holds the same secret and the same file, and "
                 "its counter went on from where it was")
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
