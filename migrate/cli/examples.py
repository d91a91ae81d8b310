"""The Examples section of every `--help`, and the command classes that print it.

Examples are written for `migrate`; a help page shows them as the user runs the
tool (`kubectl migrate ...` as a kubectl plugin). tests/test_cli_conventions.py
parses every one of them with the command it documents, so they stay true.
"""

from __future__ import annotations

from typing import Any

import typer.core

from migrate.cli.output import as_invoked

#: command path ("" is the root) -> (what it does, the command line), in help order.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "": (
        ("is the cluster ready? every node, the registry, a real probe of node-b",
         "migrate doctor --registry reg.example/ckpt --probe node-b"),
        ("move a running pod to node-b with its memory",
         "migrate pod counters --to node-b --registry reg.example/ckpt"),
        ("what a checkpoint archive holds",
         "migrate inspect checkpoint.tar --all"),
    ),
    "show": (
        ("one line per archive, with CRIU's dump statistics",
         "migrate show checkpoint.tar --stats"),
        ("as JSON (schemas/show.schema.json)", "migrate show checkpoint-*.tar -o json"),
    ),
    "inspect": (
        ("the process tree with full command lines", "migrate inspect checkpoint.tar "
         "--ps-tree-cmd"),
        ("everything, open files and sockets included", "migrate inspect checkpoint.tar "
         "--all"),
    ),
    "memparse": (
        ("memory size per process", "migrate memparse checkpoint.tar"),
        ("find a string, 16 bytes of context each side (exit 11: not found)",
         "migrate memparse checkpoint.tar --search RANDOM_1432_KEY --context 16"),
        ("a regular expression, in one process", "migrate memparse checkpoint.tar "
         "--search-regex 'token=[0-9a-f]+' --pid 7"),
    ),
    "rootfs-diff": (
        ("what the container changed", "migrate rootfs-diff checkpoint.tar"),
        ("extract it into a new directory", "migrate rootfs-diff checkpoint.tar --extract "
         "./rootfs"),
    ),
    "list": (
        ("archives on this node", "migrate list"),
        ("those of one namespace, by path only", "migrate list /var/lib/kubelet/checkpoints "
         "-n default -o name"),
    ),
    "build": (
        ("push a checkpoint image", "migrate build checkpoint.tar --image "
         "reg.example/ckpt/counter:v1"),
        ("a plain-HTTP registry", "migrate build checkpoint.tar -i "
         "127.0.0.1:5000/ckpt/c:v1 --no-tls-verify"),
        ("a zstd-compressed layer", "migrate build checkpoint.tar -i reg.example/ckpt/c:v1 "
         "--compression zstd"),
        ("an OCI layout on disk instead", "migrate build checkpoint.tar --no-push "
         "--oci-layout ./image"),
        ("encrypted for the destination nodes' public keys (repeat per node)",
         "migrate build ckpt.tar -i reg.example/c:v1 --encrypt-for jwe:node-b.pub"),
    ),
    "checkpoint": (
        ("checkpoint the pod's default container", "migrate checkpoint counters -n default"),
        ("one container of a pod in another namespace, a minute at most",
         "migrate checkpoint web-0 -n shop -c app --timeout 60"),
    ),
    "doctor": (
        ("every check", "migrate doctor"),
        ("the registry too, and a real checkpoint and restore onto node-b",
         "migrate doctor --registry 127.0.0.1:5000/ckpt --no-tls-verify --probe "
         "node-b"),
        ("another cluster, JSON", "migrate --context prod doctor -o json"),
    ),
    "pod": (
        ("move a pod; its image goes to the registry",
         "migrate pod counters --to node-b --registry reg.example/ckpt"),
        ("see the plan (where the image is built, the images), change nothing",
         "migrate pod counters --to node-b --registry reg.example/ckpt --dry-run"),
        ("build in a Job on the source node (MIGRATE_TOOL_IMAGE: the tool's image)",
         "migrate pod web -n shop --to node-c --registry reg.example/c --build-on node"),
        ("a pod with emptyDir volumes: their data goes with the source",
         "migrate pod web --to node-c --registry reg.example/c --delete-emptydir-data"),
    ),
    "resume": (
        ("continue an interrupted migration (`migrate history` lists them)",
         "migrate resume pod-counters-20261122t120228-e347"),
        ("a run that pushed with --creds needs them again",
         "migrate resume pod-counters-20261122t120228-e347 --creds user:pw"),
    ),
    "rollback": (
        ("undo a migration that did not switch over",
         "migrate rollback pod-counters-20261122t120228-e347"),
        ("stop an interrupted drain: undo its migrations in flight, uncordon its node",
         "migrate rollback drain-node-a-20261122t121556-854a"),
    ),
    "history": (
        ("every migration, oldest first", "migrate history"),
        ("those of one namespace, their ids only", "migrate history -n shop -o name"),
        ("drains (what drain --resume takes)", "migrate history --drains"),
    ),
    "drain": (
        ("see the plan and change nothing", "migrate drain node-a --dry-run"),
        ("empty node-a; pods that can move keep their memory",
         "migrate drain node-a --registry reg.example/drains"),
        ("move or evict pods with emptyDir volumes too (their data is lost)",
         "migrate drain node-a --registry reg.example/d --delete-emptydir-data"),
        ("continue an interrupted drain", "migrate drain --resume "
         "drain-node-a-20261122t121556-854a"),
    ),
    "uncordon": (
        ("make node-a schedulable again after a drain", "migrate uncordon node-a"),
    ),
    "deploy": (
        ("print the objects, then apply them with kubectl", "migrate deploy -n ops"),
        ("apply them, recording the tool's image", "migrate deploy --image "
         "reg.example/migrate:0.1 --apply"),
    ),
    "manifest": (
        ("a Pod restoring a live pod's checkpoint on node-b",
         "migrate manifest --from-pod counters -i reg.example/ckpt/c:v1 --node node-b"),
        ("from an archive, the pod being gone", "migrate manifest --archive c.tar "
         "-i reg.example/ckpt/c:v1 --node node-b"),
    ),
    "schedule": (
        ("drain node-a every Saturday at 02:00", "migrate schedule drain node-a --cron "
         "'0 2 * * 6' --registry reg.io/d --apply"),
    ),
    "schedule drain": (
        ("print the CronJob and its RBAC", "migrate schedule drain node-a --cron '0 2 * * 6' "
         "--image reg.example/m:1"),
        ("apply it, with drain options passed through",
         "migrate schedule drain node-a --cron '0 2 * * 6' --apply -- --concurrency 8"),
    ),
    "schedule prune": (
        ("print the CronJob and its RBAC: nightly, 2 archives kept per container",
         "migrate schedule prune --cron '30 3 * * *' --image reg/m:1 -- --keep 2"),
        ("weekly, the registry's unused images (default name: migrate-prune)",
         "migrate schedule prune --cron @weekly -- --registry reg/c --older-than 4w"),
    ),
    "sandbox": (
        ("crictl configs for a CRI-O host", "migrate sandbox checkpoint.tar --out ./sandbox"),
        ("restore a Podman checkpoint here, fenced off", "migrate sandbox checkpoint.tar "
         "--engine podman"),
        ("remove it", "migrate sandbox stop forensic-counter"),
    ),
    "sandbox restore": (
        ("crictl configs, and run them", "migrate sandbox restore checkpoint.tar --out "
         "./sandbox --run"),
        ("with Podman, a host mount replaced by a directory of yours",
         "migrate sandbox restore c.tar --engine podman --allow-mount /data=/srv/x"),
    ),
    "prune": (
        ("what would go: archives over a week old, beyond the 2 newest per container",
         "migrate prune --older-than 7d --keep 2 --dry-run"),
        ("one node, in a Job on it", "migrate prune --node node-a --max-size 20G "
         "--where node --tool-image reg/m:1"),
        ("checkpoint images no pod uses, over 30 days old",
         "migrate prune --registry reg.example/ckpt --older-than 30d"),
    ),
    "sandbox stop": (
        ("stop and remove what --engine podman restored",
         "migrate sandbox stop forensic-counter"),
    ),
}


def examples_text(path: str) -> str:
    """The Examples section of ``path``'s help, as the user runs the tool."""
    lines = ["Examples:", ""]
    for what, command in EXAMPLES.get(path, ()):
        lines += [f"  # {what}", f"  {as_invoked('`' + command)[1:]}", ""]
    # Rich reads "[...]" as markup: escape the brackets an example may hold.
    return "\n".join(lines).rstrip().replace("[", "\\[")


def _path(ctx: Any) -> str:
    """The command's path below the root: ``schedule drain``."""
    return " ".join(ctx.command_path.split()[len(ctx.find_root().command_path.split()):])


class Command(typer.core.TyperCommand):
    """A command whose help ends with its examples."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.epilog = examples_text(_path(ctx))
        super().format_help(ctx, formatter)


class Group(typer.core.TyperGroup):
    """A group (the root, `schedule`, `sandbox`) whose help ends with its examples."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.epilog = examples_text(_path(ctx))
        super().format_help(ctx, formatter)
