"""Forensic commands over checkpoint archives: show, inspect, memparse, rootfs-diff, list."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from migrate.cli.output import (
    Format,
    ListFormat,
    Node,
    TreeFormat,
    echo_json,
    echo_tree,
    emit,
    printable,
    say,
    table,
)
from migrate.settings import Settings
from migrate.units import human_micros, human_size

if TYPE_CHECKING:
    from migrate.forensics.inspect import Inspection, InspectOptions, ProcessNode
    from migrate.forensics.openfiles import OpenFile, ProcessFiles, Socket
    from migrate.forensics.summary import Summary

# Each command imports the stages it runs when it runs: start-up time is part of
# every command's time (memparse --search is measured against grep, start-up included).

ARCHIVE = typer.Argument(..., help="Checkpoint archive (checkpoint-*.tar).", metavar="ARCHIVE",
                         show_default=False)
OUTPUT = typer.Option(Format.table, "-o", "--output", help="Output format.")

SHOW_HEADERS = ("container", "image", "id", "runtime", "created", "engine", "ip",
                "chkpt size", "root fs diff size")
STATS_HEADERS = ("freezing time", "frozen time", "memdump time", "memwrite time",
                 "pages scanned", "pages written")


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _short_time(value: str) -> str:
    """RFC 3339 to the second, as tables show it; JSON keeps the full value."""
    if len(value) <= 19 or value[10] != "T":
        return value
    zone = "Z" if value.endswith("Z") else value[-6:] if value[-6] in "+-" else ""
    return value[:19] + zone


def _show_row(s: Summary) -> list[str]:
    return [s.container_name, s.image, s.id[:12], s.runtime, _short_time(s.created), s.engine,
            s.ip, human_size(s.checkpoint_size.total_size),
            human_size(s.checkpoint_size.root_fs_diff_size)]


def _stats_row(stats: dict[str, int]) -> list[str]:
    times = [human_micros(stats[k]) for k in
             ("freezing_time", "frozen_time", "memdump_time", "memwrite_time")]
    return [*times, str(stats["pages_scanned"]), str(stats["pages_written"])]


def show(
    ctx: typer.Context,
    archives: list[Path] = typer.Argument(..., help="One or more checkpoint archives.",
                                          metavar="ARCHIVE...", show_default=False),
    stats: bool = typer.Option(False, "--stats", "--print-stats",
                               help="Add CRIU's dump statistics."),
    output: Format = OUTPUT,
) -> None:
    """Summarize checkpoint archives: container, image, engine, sizes."""
    from migrate.adapters.checkpoint import Checkpoint, unread
    from migrate.forensics.summary import summarize

    settings = _settings(ctx).archive
    summaries = []
    for path in archives:
        with Checkpoint(path, settings, unread()) as ckpt:
            summaries.append(summarize(ckpt, with_stats=stats))

    def human() -> str:
        text = table(SHOW_HEADERS, [_show_row(s) for s in summaries])
        if stats:
            text += "\nCRIU dump statistics\n" + table(
                STATS_HEADERS, [_stats_row(s.statistics) for s in summaries if s.statistics])
        return text

    emit([s.to_dict() for s in summaries], output.value, human)


def _file_label(f: OpenFile) -> str:
    notes = [n for n in (f.mode, None if f.pos is None else f"pos {f.pos}",
                         "deleted" if f.deleted else None) if n]
    label = f"[{f.fd}]  {f.type}" + (f"  {f.path}" if f.path is not None else "")
    return label + (f"  ({', '.join(notes)})" if notes else "")


def _endpoint(address: str | None, port: int | None) -> str:
    host = f"[{address}]" if address and ":" in address else address
    return f"{host}:{port}"


def _socket_label(s: Socket) -> str:
    if s.family in ("INET", "INET6"):
        label = f"[{s.fd}]  {s.protocol} {s.state}  {_endpoint(s.src, s.src_port)}"
        if s.dst_port or s.dst not in ("0.0.0.0", "::"):
            label += f" -> {_endpoint(s.dst, s.dst_port)}"
        return label
    if s.family == "UNIX":
        label = f"[{s.fd}]  UNIX {s.type} {s.state}  {s.address or '(unnamed)'}"
        return label + (f"  (peer socket:[{s.peer}])" if s.peer else "")
    if s.family == "NETLINK":
        return f"[{s.fd}]  NETLINK {s.protocol}"
    return f"[{s.fd}]  {s.family} {s.type} protocol {s.protocol}"


def _descriptors(p: ProcessFiles | None) -> list[Node]:
    """The "Open files" and "Open sockets" branches of one process (checkpointctl's)."""
    if p is None:
        return []
    out: list[Node] = []
    if p.files is not None:
        out.append(("Open files", [(_file_label(f), []) for f in p.files]
                    + [(f"[cwd]  {p.cwd}", []), (f"[root]  {p.root}", [])]))
    if p.sockets:
        out.append(("Open sockets", [(_socket_label(s), []) for s in p.sockets]))
    return out


def _process_node(root: ProcessNode, cmd: bool,
                  descriptors: dict[int, ProcessFiles] | None = None) -> Node:
    """The tree view of a process tree, built with a stack (chains can be thousands deep)."""
    by_pid = descriptors or {}

    def node(p: ProcessNode) -> Node:
        label = f"[{p.pid}]  {p.cmdline if cmd and p.cmdline else p.command}"
        env: list[Any] = [("Environment variables", [(e, []) for e in p.environment])
                          ] if p.environment else []
        return label, env + _descriptors(by_pid.get(p.pid))

    top = node(root)
    stack = [(root, top)]
    while stack:
        p, drawn = stack.pop()
        for child in p.children:
            kid = node(child)
            drawn[1].append(kid)
            stack.append((child, kid))
    return top


def _inspect_tree(r: Inspection, opts: InspectOptions) -> Node:
    s = r.summary
    size = s.checkpoint_size
    items: list[Any] = [
        (f"Image: {s.image}", []), (f"ID: {s.id}", []), (f"Runtime: {s.runtime}", []),
        (f"Created: {s.created}", []), (f"Engine: {s.engine}", []),
    ]
    items += [(f"IP: {s.ip}", [])] if s.ip else []
    items += [(f"Hostname: {r.hostname}", [])] if r.hostname else []
    items += [(f"Pod: {s.namespace}/{s.pod_name}", [])] if s.pod_name else []
    items.append((f"Checkpoint size: {human_size(size.total_size)}",
                  [(f"Memory pages size: {human_size(size.memory_pages_size)}", [])]))
    items.append((f"Root FS diff size: {human_size(size.root_fs_diff_size)}", []))
    if s.statistics:
        items.append(("CRIU dump statistics", [
            (f"{h.capitalize()}: {v}", []) for h, v in zip(STATS_HEADERS,
                                                            _stats_row(s.statistics), strict=True)
        ]))
    if r.process_tree:
        descriptors = {p.pid: p for p in r.open_files or []}
        items.append(("Process tree", [_process_node(r.process_tree, opts.ps_tree_cmd,
                                                     descriptors)]))
    if r.mounts is not None:
        items.append(("Overview of mounts", [
            (f"Destination: {m['destination']}",
             [(f"Type: {m['type']}", []), (f"Source: {m['source']}", [])]) for m in r.mounts
        ]))
    if r.rootfs_diff is not None:
        items.append(("File system changes", [
            (f"{d['path']} ({d['type']}, {human_size(d['size'])})", []) for d in r.rootfs_diff
        ] + [(f"{p} (deleted)", []) for p in r.deleted_files or []]))
    return s.container_name or "(unnamed container)", items


def inspect_cmd(
    ctx: typer.Context,
    archive: Path = ARCHIVE,
    ps_tree: bool = typer.Option(False, "--ps-tree", help="Show the process tree."),
    ps_tree_cmd: bool = typer.Option(False, "--ps-tree-cmd",
                                     help="Process tree with full command lines (from memory)."),
    ps_tree_env: bool = typer.Option(False, "--ps-tree-env",
                                     help="Process tree with environments (from memory)."),
    stats: bool = typer.Option(False, "--stats", help="Add CRIU's dump statistics."),
    mounts: bool = typer.Option(False, "--mounts", help="Show the container's mounts."),
    rootfs_diff: bool = typer.Option(False, "--rootfs-diff",
                                     help="Show changed and deleted files."),
    files: bool = typer.Option(False, "--files",
                               help="Process tree with each process's open files."),
    sockets: bool = typer.Option(False, "--sockets",
                                 help="Process tree with each process's sockets."),
    all_: bool = typer.Option(False, "--all", help="Everything above."),
    output: TreeFormat = typer.Option(TreeFormat.tree, "-o", "--output", help="Output format."),
) -> None:
    """Show everything a checkpoint records: processes, open files, mounts, file changes,
    statistics."""
    from migrate.adapters.checkpoint import Checkpoint, unread
    from migrate.forensics import inspect
    from migrate.forensics.inspect import InspectOptions

    settings = _settings(ctx).archive
    opts = InspectOptions.everything() if all_ else InspectOptions(
        ps_tree, ps_tree_cmd, ps_tree_env, stats, mounts, rootfs_diff, files=files,
        sockets=sockets)
    skip = unread(pages=opts.ps_tree_cmd or opts.ps_tree_env, rootfs_diff=opts.rootfs_diff)
    with Checkpoint(archive, settings, skip) as ckpt:
        result = inspect.inspect(ckpt, opts, settings)
    if output is TreeFormat.json:
        echo_json(result.to_dict())
    else:
        echo_tree(_inspect_tree(result, opts))


def memparse(
    ctx: typer.Context,
    archive: Path = ARCHIVE,
    pid: int | None = typer.Option(None, "--pid", "-p", help="Only this process."),
    search: str | None = typer.Option(None, "--search", "-s", help="Find this string."),
    search_regex: str | None = typer.Option(None, "--search-regex", "-r",
                                            help="Find this regular expression (bytes)."),
    context: int = typer.Option(0, "--context", "-c", min=0, max=4096,
                                help="Bytes of context around each match."),
    output: Format = OUTPUT,
) -> None:
    """Per-process memory sizes, or search the checkpointed memory.

    A search that finds nothing exits 11 (as grep exits 1).
    """
    from migrate.adapters.checkpoint import Checkpoint, unread
    from migrate.forensics import memsearch

    settings = _settings(ctx).archive
    searching = search is not None or search_regex is not None
    with Checkpoint(archive, settings, unread(pages=searching)) as ckpt:
        if not searching:
            rows = memsearch.memory_sizes(ckpt, pid)
            emit([r.to_dict() for r in rows], output.value, lambda: table(
                ("pid", "process name", "memory size"),
                [(r.pid, r.command, human_size(r.memory_size)) for r in rows]))
            return
        pattern = memsearch.compile_pattern(search, search_regex)
        matches = list(memsearch.search(ckpt, pattern, settings, pid=pid, context=context))
    emit([m.to_dict() for m in matches], output.value, lambda: table(
        ("pid", "command", "address", "file", "offset", "match"),
        [(m.pid, m.command, m.to_dict()["address"] or "-", m.file, m.offset, m.text)
         for m in matches]))
    if not matches:
        from migrate.errors import ExitCode

        # As grep: a search that found nothing is told by the exit code, so a script
        # (the demo) cannot take "no matches" for a proof.
        if output is Format.table:
            say("no matches")
        raise typer.Exit(ExitCode.NO_MATCH)


def rootfs_diff_cmd(
    ctx: typer.Context,
    archive: Path = ARCHIVE,
    extract: Path | None = typer.Option(None, "--extract", "-x", metavar="DIR",
                                        help="Write the files into DIR (new or empty)."),
    output: Format = OUTPUT,
) -> None:
    """List the files the container changed or deleted; optionally extract them."""
    from migrate.adapters.checkpoint import Checkpoint, unread
    from migrate.forensics import rootfs

    settings = _settings(ctx).archive
    target = rootfs.check_target(extract) if extract else None
    with Checkpoint(archive, settings, unread(rootfs_diff=True)) as ckpt:
        changed, deleted = rootfs.rootfs_changes(ckpt)
        written, rewrites = rootfs.extract_changes(ckpt, target) if target else (None, [])
    rows = [(d["path"], d["type"], human_size(d["size"])) for d in changed]
    rows += [(p, "deleted", "-") for p in deleted]
    data: dict[str, Any] = {"rootfs_diff": changed, "deleted_files": deleted}
    if extract:
        data["extracted_to"] = str(extract)
        data["rewritten_links"] = [r.to_dict() for r in rewrites]
    emit(data, output.value, lambda: table(("path", "change", "size"), rows))
    if written is not None and output is Format.table:
        # An absolute target is the container's path: written relative so that it
        # stays inside DIR; the user is told, since the link's text changed.
        for r in rewrites:
            say(f"{r.path}: symlink to {r.target} written as {r.written}")
        say(f"extracted {written} {'entry' if written == 1 else 'entries'} to {extract}")


def list_cmd(
    ctx: typer.Context,
    dirs: list[Path] | None = typer.Argument(
        None, help="Directories to search (default: /var/lib/kubelet/checkpoints)."),
    namespace: str | None = typer.Option(None, "-n", "--namespace", show_default=False,
                                         help="Only archives of pods in this namespace."),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces", help="Every "
                                        "namespace (the default; as kubectl takes it)."),
    output: ListFormat = typer.Option(ListFormat.table, "-o", "--output", help="Output "
                                      "format; name: the archives' paths, one a line."),
) -> None:
    """List checkpoint archives found in directories."""
    from migrate.errors import UsageError
    from migrate.forensics import catalog

    settings = _settings(ctx)
    namespace = namespace or settings.kube.namespace  # -n before the command, too
    if namespace and all_namespaces:
        raise UsageError("-n and -A exclude each other")
    result = catalog.catalog(dirs or settings.checkpoint_dirs, settings.archive)
    for path, reason in result.unreadable:
        say(f"warning: skipped {path}: {reason}")
    entries = [e for e in result.entries if not namespace or e.namespace == namespace]
    if output is ListFormat.name:
        # One line a path, escaped as the table's cells are: a file name may hold a newline
        # (which would split it in two) or an escape sequence.
        typer.echo("".join(f"{printable(str(e.archive))}\n" for e in entries), nl=False)
    else:
        emit([e.to_dict() for e in entries], output.value, lambda: table(
            ("namespace", "pod", "container", "engine", "time checkpointed", "archive"),
            [(e.namespace, e.pod_name, e.container_name, e.engine,
              _short_time(e.checkpointed), Path(e.archive).name) for e in entries]))
    if not entries and output is ListFormat.table:
        where = ", ".join(map(str, dirs or settings.checkpoint_dirs))
        say(f"no checkpoints found in {where}" + (f" for namespace {namespace}"
                                                   if namespace else ""))


def register(app: typer.Typer) -> None:
    """Attach the archive commands to the root app."""
    app.command("show")(show)
    app.command("inspect")(inspect_cmd)
    app.command("memparse")(memparse)
    app.command("rootfs-diff")(rootfs_diff_cmd)
    app.command("list")(list_cmd)
