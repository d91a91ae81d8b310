"""`migrate prune`: checkpoint archives on the nodes, or checkpoint images in a registry."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from migrate.cli.completion import complete_namespaces, complete_nodes
from migrate.cli.images import check_termination_path, write_termination_message
from migrate.cli.options import (
    AUTHFILE,
    CERT_DIR,
    CONTEXT,
    CREDS,
    KUBECONFIG,
    TLS_VERIFY,
    with_kube,
    with_registry,
)
from migrate.cli.output import Format, emit, table
from migrate.errors import MigrateError, PartialFailure, UsageError
from migrate.units import human_size, parse_duration, parse_size


class Where(StrEnum):
    """Where a node's archives are pruned."""

    auto = "auto"
    local = "local"
    node = "node"


def _duration(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise UsageError(f"--older-than {text!r} is not a duration",
                         hint="a number and a unit: 90m, 12h, 7d, 2w (1h30m combines)") from None


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError:
        raise UsageError(f"--max-size {text!r} is not a size",
                         hint="bytes, or with a binary unit: 512M, 20G, 1TiB") from None


def _human_nodes(rep: dict[str, Any]) -> str:
    verb = "would prune" if rep["dry_run"] else "pruned"
    rows = []
    for n in rep["nodes"]:
        if "error" in n:
            rows.append((n["node"], n["where"], "-", "-", "failed: " + n["error"]))
            continue
        note = ", ".join(f"{len(n[key])} {word}" for key, word in (
            ("protected", "protected"), ("skipped", "skipped (not kubelet archives)"),
            ("failed", "not removed")) if n[key])
        rows.append((n["node"], n["where"], f"{len(n['pruned']) + n['omitted']} "
                     f"({human_size(n['pruned_bytes'])})",
                     f"{n['kept']} ({human_size(n['kept_bytes'])})", note))
    lines = [f"{n['node']}: {verb} {p['name']} ({p['rule']})"
             for n in rep["nodes"] if "pruned" in n for p in n["pruned"]]
    body = table(("node", "where", verb, "kept", "note"), rows)
    return body + ("\n" + "\n".join(lines) + "\n" if lines else "")


def _human_registry(rep: dict[str, Any]) -> str:
    verb = "would delete" if rep["dry_run"] else "deleted"
    rows = [(verb, i["repository"], i["digest"][:19], ",".join(i["tags"]), i["created"] or "-")
            for i in rep["pruned"]]
    rows += [("kept: " + i["why"], i["repository"], i["digest"][:19], ",".join(i["tags"]),
              i["created"] or "-") for i in rep["kept"]]
    rows += [("not read: " + f["error"], f["repository"], "-", "-", "-")
             for f in rep.get("failed", [])]
    return table(("", "repository", "digest", "tags", "created"), rows)


def prune(
    ctx: typer.Context,
    older_than: str | None = typer.Option(None, "--older-than", metavar="DURATION",
                                          help="Archives (by the time in their name) or "
                                          "images (by their creation time) older than this: "
                                          "90m, 12h, 7d, 2w.", show_default=False),
    keep: int | None = typer.Option(None, "--keep", min=0, metavar="N", help="Keep the N "
                                    "newest archives of each pod's container.",
                                    show_default=False),
    max_size: str | None = typer.Option(None, "--max-size", metavar="SIZE", help="Remove the "
                                        "oldest archives until each node's total fits: 20G.",
                                        show_default=False),
    node: list[str] = typer.Option([], "--node", metavar="NODE", help="A node to prune "
                                   "(repeatable; default: every node).", show_default=False,
                                   autocompletion=complete_nodes),
    where: Where = typer.Option(Where.auto, "--where", help="local: the directory as seen "
                                "here (MIGRATE_NODE_ROOT, or on the node); node: a Job on "
                                "each node (--tool-image); auto: local when readable, else "
                                "node."),
    tool_image: str | None = typer.Option(None, "--tool-image", envvar="MIGRATE_TOOL_IMAGE",
                                          help="The migrate container image, for --where "
                                          "node Jobs.", show_default=False),
    registry: str | None = typer.Option(None, "--registry", metavar="HOST[:PORT]/REPO",
                                        help="Prune checkpoint images there (and in the "
                                        "repositories under it) instead of node archives.",
                                        show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would go; remove "
                                 "nothing."),
    protect: list[str] = typer.Option([], "--protect", metavar="ARCHIVE", help="Keep this "
                                      "archive (a file name) whatever the rules say "
                                      "(repeatable).", show_default=False),
    protect_prefix: list[str] = typer.Option([], "--protect-prefix", hidden=True),
    protect_since: float | None = typer.Option(None, "--protect-since", hidden=True),
    directory: Path | None = typer.Option(None, "--dir", metavar="DIR", help="Prune DIR as "
                                          "the one --node's checkpoint directory, without "
                                          "asking the cluster (what a node Job runs).",
                                          show_default=False),
    timeout: float = typer.Option(600.0, "--timeout", min=1, help="Seconds each node Job "
                                  "may take."),
    termination_message_path: Path | None = typer.Option(
        None, "--termination-message-path", metavar="FILE",
        help="Also write the node's report there as JSON (a Job's /dev/termination-log)."),
    authfile: Path | None = AUTHFILE,
    creds: str | None = CREDS,
    tls_verify: bool = TLS_VERIFY,
    cert_dir: Path | None = CERT_DIR,
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    namespace: str | None = typer.Option(None, "-n", "--namespace", help="Where node Jobs "
                                         "run (default: the context's).", show_default=False,
                                         autocompletion=complete_namespaces),
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Delete checkpoint archives on the nodes, or checkpoint images in a registry.

    Archives a running or interrupted migration needs (its journal names them,
    or its claim is on the pod) are always kept.
    """
    seconds = _duration(older_than)
    if registry is not None and (node or where is not Where.auto or directory or protect):
        raise UsageError("--node, --where, --dir and --protect apply to node archives, not "
                         "to --registry", hint="prune node archives and registry images in "
                         "two runs")
    if registry is not None:
        _prune_registry(ctx, registry, seconds, keep, max_size, dry_run, output, kubeconfig,
                        context, with_registry(ctx.obj, authfile=authfile, creds=creds,
                                               tls_verify=tls_verify, cert_dir=cert_dir))
        return
    from migrate.pipeline.prune.nodes import PruneRequest, prune_here, prune_nodes
    from migrate.pipeline.prune.policy import Rules

    if termination_message_path is not None:
        check_termination_path(termination_message_path)
    req = PruneRequest(Rules(seconds, keep, _size(max_size)), tuple(node), where.value,
                       tool_image, dry_run, directory, tuple(protect), tuple(protect_prefix),
                       timeout, namespace, protect_since)
    if directory is not None:
        rep = prune_here(req)
    else:
        rep = prune_nodes(with_kube(ctx, kubeconfig, context, namespace), req)
    emit(rep, output.value, lambda: _human_nodes(rep))  # first: the prune has happened
    unwritten = None
    if termination_message_path is not None and len(rep["nodes"]) == 1:
        from migrate.pipeline.prune.archives import compact

        try:
            write_termination_message(termination_message_path, compact(rep["nodes"][0]))
        except MigrateError as e:
            unwritten = e
    _fail_partly(rep, unwritten)


def _fail_partly(rep: dict[str, Any], unwritten: MigrateError | None = None) -> None:
    """Exit 10 when a node was not fully pruned or (``unwritten``) the termination
    message could not be written; a node's failure leads, the message's is added."""
    bad = [n for n in rep["nodes"] if "error" in n or n.get("failed")]
    if not bad:
        if unwritten is not None:
            raise unwritten
        return
    first = bad[0]
    why = first.get("error") or f"{first['failed'][0]['name']}: {first['failed'][0]['why']}"
    also = f"; and {unwritten.message}" if unwritten is not None else ""
    raise PartialFailure(f"prune: {len(bad)} of {len(rep['nodes'])} node(s) not fully pruned; "
                         f"{first['node']}: {why}{also}", hint=first.get("hint") or
                         "the report says which archives stayed and why")


def _prune_registry(ctx: typer.Context, registry: str, seconds: int | None, keep: int | None,
                    max_size: str | None, dry_run: bool, output: Format,
                    kubeconfig: Path | None, context: str | None, settings: Any) -> None:
    if keep is not None or max_size is not None:
        raise UsageError("--keep and --max-size apply to node archives, not to --registry",
                         hint="prune images by age: --registry REG/REPO --older-than 30d")
    if seconds is None:
        raise UsageError("--registry needs --older-than DURATION",
                         hint="images no pod uses and older than that go: --older-than 30d "
                         "(--older-than 0s: every unused one)")
    from migrate.adapters import kube
    from migrate.pipeline.prune.images import RegistryPrune, prune_registry

    base = with_kube(ctx, kubeconfig, context, None)
    cluster = kube.connect(base.kube)
    settings = dataclasses.replace(settings, kube=base.kube)
    rep = prune_registry(cluster, settings, RegistryPrune(registry, seconds, dry_run))
    emit(rep, output.value, lambda: _human_registry(rep))
    if rep["failed"]:
        first = rep["failed"][0]
        raise PartialFailure(f"prune: {len(rep['failed'])} repositor"
                             f"{'y' if len(rep['failed']) == 1 else 'ies'} not read; "
                             f"{first['repository']}: {first['error']}",
                             hint="the others were pruned; the report says what went")


def register(app: typer.Typer) -> None:
    """Attach `prune` to the root app."""
    app.command("prune")(prune)
