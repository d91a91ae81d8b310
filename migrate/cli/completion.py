"""Shell completion: the scripts for bash, zsh and fish, and names from the cluster.

typer's own `--install-completion` and `--show-completion` take no shell name
(`--show-completion zsh` printed bash: it asks the process tree which shell
runs it). Ours take one, and detect the shell only when none is given.

Pod, node and namespace names come from the cluster the command line names
(its --kubeconfig, --context and -n, before or after the command), with a
2-second timeout and no retry; migration and drain ids come from the
journals. A completion never prints an error: a shell would show it in the
middle of the line being typed. As a kubectl plugin, kubectl (1.26+) runs
`kubectl_complete-migrate` with the words typed after `kubectl migrate` and
reads cobra's answer: one candidate per line, then `:4` (no file names).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import typer

from migrate.errors import UsageError

SHELLS = ("bash", "zsh", "fish")
_OPTIONS = ("--show-completion", "--install-completion")
#: cobra's ShellCompDirectiveNoFileComp: the shell offers no file names besides ours.
NO_FILES = 4


def _wanted(args: list[str], commands: set[str]) -> tuple[str, str | None] | None:
    """(option, shell or None) when the root options ask for completion."""
    for i, token in enumerate(args):
        if token in commands:
            return None  # the command's own arguments begin
        option, _, value = token.partition("=")
        if option in _OPTIONS:
            if value:
                return option, value
            following = args[i + 1] if i + 1 < len(args) else None
            return option, following if following in SHELLS or (
                following and following not in commands and not following.startswith("-")
            ) else None
    return None


def handle_completion_options(root: Any, args: list[str], *, executable: str,
                              complete_var: str) -> int | None:
    """Print or install the completion script asked for; None when none was asked for."""
    from typer._completion_shared import _get_shell_name, get_completion_script, install

    wanted = _wanted(args, set(getattr(root, "commands", {})))
    if wanted is None:
        return None
    option, shell = wanted
    shell = shell or _get_shell_name()
    if shell not in SHELLS:
        raise UsageError(f"{option}: no completion for {shell or 'this shell'}",
                         hint=f"name one of {', '.join(SHELLS)}: {option} zsh")
    if option == "--show-completion":
        typer.echo(get_completion_script(prog_name=executable, complete_var=complete_var,
                                         shell=shell))
        return 0
    shell, path = install(shell=shell, prog_name=executable, complete_var=complete_var)
    path.chmod(0o600)  # a file the tool writes
    typer.echo(f"{shell} completion installed in {path}; it works in shells started from now")
    return 0


# -- names from the cluster and the journals -------------------------------------------------


def _cluster(ctx: typer.Context) -> Any:
    """A client for the cluster the command line names, impatient and without retries."""
    from migrate.adapters import kube
    from migrate.settings import RetrySettings, load_settings

    given = {**ctx.find_root().params, **{k: v for k, v in ctx.params.items()
                                          if v is not None}}
    base = load_settings().kube
    settings = dataclasses.replace(
        base, kubeconfig=Path(str(given["kubeconfig"])) if given.get("kubeconfig") else None,
        context=given.get("context") or None, namespace=given.get("namespace") or None,
        request_timeout=2.0, retry=RetrySettings(attempts=1))
    return kube.connect(settings)


def _matching(items: list[tuple[str, str]], incomplete: str) -> list[tuple[str, str]]:
    return sorted((name, about) for name, about in items if name.startswith(incomplete))


def complete_pods(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Pods of the namespace given (or the context's), with their phase and node."""
    from migrate.adapters import kube

    try:
        cluster = _cluster(ctx)
        pods = kube.list_pods(cluster, cluster.namespace)
    except Exception:  # silent: see the module docstring
        return []
    return _matching([(p["metadata"]["name"], f"{(p.get('status') or {}).get('phase', '')} "
                       f"on {(p.get('spec') or {}).get('nodeName') or '-'}") for p in pods],
                     incomplete)


def complete_nodes(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Nodes, with their runtime."""
    from migrate.adapters import kube
    from migrate.pipeline.nodes import reported_runtime

    try:
        found = kube.list_nodes(_cluster(ctx))
    except Exception:
        return []
    return _matching([(n["metadata"]["name"], reported_runtime(n)) for n in found], incomplete)


def complete_namespaces(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Namespaces."""
    from migrate.adapters import kube

    try:
        found = kube.list_namespaces(_cluster(ctx))
    except Exception:
        return []
    return _matching([(n["metadata"]["name"], "namespace") for n in found], incomplete)


def _journals(kind: str) -> list[Any]:
    from migrate.pipeline.journal import Journal
    from migrate.settings import load_settings

    state = load_settings().state_dir
    if state is None:
        return []
    return Journal.history(state / "drain" if kind == "drain" else state)


def complete_migrations(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Migration ids from the journals, with how each ended and its pod."""
    try:
        found = [(j.id, f"{j.current_outcome()} {j.request.get('pod', '')}")
                 for j in _journals("pod")]
    except Exception:
        return []
    return _matching(found, incomplete)


def complete_drains(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Drain ids from the journals, with how each ended and its node."""
    try:
        found = [(j.id, f"{j.current_outcome()} {j.request.get('node', '')}")
                 for j in _journals("drain")]
    except Exception:
        return []
    return _matching(found, incomplete)


def complete_runs(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Migration and drain ids (`migrate rollback` takes either)."""
    return complete_migrations(ctx, incomplete) + complete_drains(ctx, incomplete)


def kubectl_complete(root: Any, words: list[str]) -> int:
    """Answer kubectl's plugin completion: ``words`` are those after `kubectl migrate`,
    the last one being completed."""
    from typer._completion_classes import BashComplete

    *args, incomplete = words or [""]
    try:
        # Any shell's class will do: only its candidates are used, not its format.
        items = BashComplete(root, {}, "kubectl migrate", "_KUBECTL_MIGRATE_COMPLETE"
                             ).get_completions(args, incomplete)
    except Exception:
        items = []
    for item in items:
        about = f"\t{item.help}" if getattr(item, "help", None) else ""
        sys.stdout.write(f"{item.value}{about}\n")
    sys.stdout.write(f":{NO_FILES if items else 0}\n")
    sys.stdout.flush()
    return 0


__all__ = ["SHELLS", "complete_drains", "complete_migrations", "complete_namespaces",
           "complete_nodes", "complete_pods", "complete_runs", "handle_completion_options",
           "kubectl_complete"]
