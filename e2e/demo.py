"""The demo (the README's main job): migrate the seed article's `counters` pod, a real
container, between two real Kubernetes nodes, and prove its process went on.

Starts a loopback registry, the real Kubernetes control plane (etcd,
kube-apiserver, controller manager and scheduler on 127.0.0.1: e2e/cluster)
and two real nodes, node-a and node-b: the real kubelet and the real CRI-O
(runc, conmon and CRIU underneath) each, serving the kubelet API on a 198.18
address the API server's node proxy reaches (e2e/cluster/realnode.py).
Nothing on the nodes is simulated. It pushes the counter's image
(busybox-static, e2e/real/counter.py) to the registry after proving the
path to node-b with `migrate doctor --probe node-b` (a pod of the nodes' pause
image checkpointed on node-a, pushed, restored on node-b, all removed
after). Then it creates `counters` on node-a, whose shell holds `token=<secret>` in its
heap, writes /home/counter/test-file and prints `counter: N` every second.
It finds the secret in a checkpoint of the source (the kubelet's checkpoint
API: CRI-O and CRIU; `migrate memparse --search`), prints the plan, reads
the counter from `kubectl logs` (the kubelet's containerLogs through the
node proxy), runs `migrate pod counters --to node-b` (a checkpoint on
node-a, the checkpoint image, CRI-O's restore on node-b), then checks,
rather than shows, that the restored process counts on from after the value
seen before (its log, which CRI-O carries over from the source, counts from
1 without a gap or a restart), that a checkpoint of it holds the secret in
the same process (same pid, same command), and that its files hold the
source's test-file. Each check that fails stops the demo with `demo:
FAILED: ...` and exit 1; "Done" is printed only when all of them passed.
Everything it starts is stopped at the end, failures included. Needs root
(the nodes' network namespaces, cgroups and mounts), the control plane's
binaries and the real node's (scripts/setup builds them all as root).

    python -m e2e.demo [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
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

from e2e.cluster import binaries, realnode
from e2e.cluster.launcher import control_plane
from e2e.real import tools as real_tools
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


def _checkpoint(migrate: list[str], pod: str, env: dict[str, str]) -> Path:
    """A checkpoint of ``pod`` through the kubelet API: the kubelet's own archive (its
    checkpoint directory is on this machine, where MIGRATE_NODE_ROOT=/ finds it)."""
    out = _run([*migrate, "checkpoint", pod, "-o", "json"], env, capture=True)
    return Path(str(json.loads(out)["archive"]))


def _wait_running(env: dict[str, str], kubectl: str, pod: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = subprocess.run([kubectl, "get", "pod", pod, "-o",
                                "jsonpath={.status.phase}"], env=env, text=True,
                               capture_output=True, check=False).stdout
        if phase == "Running":
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: the {pod} pod did not start")


def _log(env: dict[str, str], kubectl: str, pod: str) -> list[tuple[dt.datetime, str]]:
    """`kubectl logs --timestamps POD` (the kubelet's containerLogs, through the API
    server's node proxy) as (time, line)."""
    out = subprocess.run([kubectl, "logs", "--timestamps", pod], env=env, text=True,
                         capture_output=True, check=False).stdout
    log = []
    for entry in out.splitlines():
        stamp, _, line = entry.partition(" ")
        with contextlib.suppress(ValueError):  # RFC 3339 in nanoseconds; Python takes micro
            log.append((dt.datetime.fromisoformat(stamp[:26] + "+00:00"), line))
    return log


def _counts(env: dict[str, str], kubectl: str, pod: str, at_least: int = 1,
            since: dt.datetime | None = None,
            timeout: float = 60.0) -> tuple[list[int], list[int]]:
    """The counter's values in `kubectl logs POD`: the whole log's, and those stamped
    after ``since`` (all without it), once there are ``at_least`` of the latter; shows
    the last lines."""
    deadline = time.monotonic() + timeout
    while True:
        log = _log(env, kubectl, pod)
        recent = counts("\n".join(line for t, line in log if since is None or t > since))
        if len(recent) >= at_least:
            print(f"$ kubectl logs {pod} | tail -3", flush=True)
            print("".join(f"{line}\n" for _, line in log[-3:]), end="", flush=True)
            return counts("\n".join(line for _, line in log)), recent
        if time.monotonic() > deadline:
            raise _fail(f"the {pod} pod printed {len(recent)} counts, not {at_least}, "
                        f"in {timeout:.0f} s")
        time.sleep(0.2)


def _missing() -> str | None:
    if shutil.which("kubectl") is None:
        return "kubectl is needed (it is on these machines)"
    return binaries.missing() or realnode.missing()


def demo(work: Path) -> None:
    """Run the whole story in ``work``."""
    if missing := _missing():
        raise SystemExit(f"demo: {missing} (scripts/setup, run as root, builds all of it; "
                         "the demo runs as root too)")
    kubectl = shutil.which("kubectl") or "kubectl"
    secret = f"DEMO-SECRET-{secrets.token_hex(8)}"
    migrate = [sys.executable, "-m", "migrate"]
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(Registry(work / "registry"))
        cp = stack.enter_context(control_plane(work / "control-plane"))
        nodes = [stack.enter_context(realnode.real_node(cp, work / name, name=name,
                                                        registry=registry.host))
                 for name in ("node-a", "node-b")]
        env = {**os.environ, "KUBECONFIG": str(cp.admin_kubeconfig),
               "MIGRATE_STATE_DIR": str(work / "state"),
               # The kubelets' checkpoint directories are on this machine, at the paths
               # they report; on a real cluster, run on the source node or share them.
               "MIGRATE_NODE_ROOT": "/"}
        _say(f"Kubernetes {cp.versions.kubernetes} (etcd {cp.versions.etcd}) at {cp.server}; "
             f"the real kubelet and CRI-O {real_tools.versions()['CRIO_VERSION']} as "
             + " and ".join(f"{n.name} ({n.address})" for n in nodes)
             + f"; a registry at {registry.url}")
        _run([kubectl, "get", "nodes", "-o", "wide"], env)
        _say("Preflight: the checks, and a probe that proves node-b restores")
        # The probe's pod runs the pause image the nodes pull from the loopback
        # registry, as doctor picks by default from a node's status.images: fresh nodes
        # list none yet, and its fallback (registry.k8s.io) is out of reach here.
        _run([*migrate, "doctor", "--registry", f"{registry.host}/demo", "--no-tls-verify",
              "--probe", "node-b", "--probe-image", nodes[0].pause_image], env)
        image = push_counter_image(registry.host, "demo/counter", "1", work / "image")
        token = f"token={secret}"
        _say(f"The counters pod on node-a: {image}, with {secret} in its memory")
        manifest = counter_pod("counters", image, secret=secret, node="node-a")
        _run([kubectl, "apply", "-f", "-"], env, input=json.dumps(manifest))
        _wait_running(env, kubectl, "counters")
        _run([kubectl, "get", "pods", "-o", "wide"], env)
        _say("Before: the secret in a checkpoint of the source, and the counter counting")
        source = _checkpoint(migrate, "counters", env)
        before_secret = _search(migrate, source, token, env, "secret in the source")
        source.unlink()  # a copy of the memory, secret included: not kept
        _say("The plan: node-b, and where the image is built (here: MIGRATE_NODE_ROOT=/ "
             "finds the kubelets' checkpoint directories on this machine). The pod's "
             "emptyDir /data (empty) starts empty there: --delete-emptydir-data agrees")
        registry_prefix = f"{registry.host}/demo"
        _run([*migrate, "pod", "counters", "--to", "node-b", "--registry", registry_prefix,
              "--no-tls-verify", "--delete-emptydir-data", "--dry-run"], env)
        _, before = _counts(env, kubectl, "counters", at_least=3)
        print(f"counter before the migration: {before[-1]}", flush=True)
        _say("Migrate it to node-b")
        _run([*migrate, "pod", "counters", "--to", "node-b", "--registry", registry_prefix,
              "--no-tls-verify", "--delete-emptydir-data"], env)
        moved = dt.datetime.now(dt.UTC)
        _run([kubectl, "get", "pods", "-o", "wide"], env)
        _say("Proof: the restored process counts on from there, and holds the secret")
        # CRI-O carries the source's log over into the restored container's: the lines
        # stamped after `migrate pod` returned are the restored process's own.
        whole, after = _counts(env, kubectl, "counters-restored", at_least=2, since=moved)
        if after[0] <= before[-1]:
            raise _fail(f"the counter on node-b printed {after[0]}, not more than "
                        f"{before[-1]}: the counter started afresh")
        if whole != list(range(1, len(whole) + 1)):
            raise _fail(f"the restored pod's log does not count 1, 2, 3... without a gap "
                        f"or a restart: {whole}")
        print(f"counter continuation: {before[-1]} on node-a before the migration, "
              f"{after[0]}..{after[-1]} on node-b since; the whole log 1..{whole[-1]} "
              "without a gap or a restart", flush=True)
        restored = _checkpoint(migrate, "counters-restored", env)
        after_secret = _search(migrate, restored, token, env, "secret in the restored pod")
        for key in ("pid", "command"):
            if before_secret[key] != after_secret[key]:
                raise _fail(f"the restored pod's process is not the source's ({key} "
                            f"{before_secret[key]} -> {after_secret[key]})")
        print(f"the secret is held by the same process (pid {after_secret['pid']}, "
              f"{after_secret['command']}) that held it on node-a", flush=True)
        # The restored container's own files, from the checkpoint of it: CRI-O's
        # etc/mtab -> /proc/mounts comes out as a link inside the directory (told).
        files = work / "restored-files"
        _run([*migrate, "rootfs-diff", restored, "--extract", files], env)
        restored.unlink()
        test_file = files / "home/counter/test-file"
        if not test_file.is_file():
            raise _fail("/home/counter/test-file is not in the restored pod's files")
        content = test_file.read_text()
        if content != "counter state file of counters\n":
            raise _fail(f"/home/counter/test-file holds {content!r}, not the source's")
        print(f"/home/counter/test-file of the restored pod: {content!r}", flush=True)
        _run([*migrate, "history"], env)
        _say("Done: the restored process holds the same secret and the same file, and "
             "its counter went on from where it was")


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
