"""Restore targets: `manifest` (a Pod pinned to a node) and `sandbox` (crictl configs, or a
restore with Podman on this machine, and `sandbox stop`)."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import typer.core

from migrate.cli.completion import complete_namespaces, complete_nodes, complete_pods
from migrate.cli.examples import Group
from migrate.cli.options import (
    AUTHFILE,
    CERT_DIR,
    CONTEXT,
    CREDS,
    KUBECONFIG,
    TLS_VERIFY,
    ManifestFormat,
    with_kube,
    with_registry,
)
from migrate.cli.output import Format, emit, printable, table
from migrate.errors import UsageError
from migrate.settings import Settings

if TYPE_CHECKING:
    from typer._click import Context as ClickContext  # what TyperGroup.parse_args takes

    from migrate.pipeline.sandbox import SandboxReport
    from migrate.pipeline.sandbox_podman import PodmanSandboxReport, StopReport

# The pipelines (jsonschema, kubernetes-validate, the kubernetes client) load
# when a command runs, not when the CLI starts.


class Engine(StrEnum):
    """Who restores a sandbox: see README, `migrate sandbox`."""

    crictl = "crictl"
    podman = "podman"


def manifest(
    ctx: typer.Context,
    from_pod: str | None = typer.Option(None, "--from-pod", metavar="POD", show_default=False,
                                        help="Render from this live pod.",
                                        autocompletion=complete_pods),
    archive: Path | None = typer.Option(None, "--archive", metavar="ARCHIVE", show_default=False,
                                        help="Render from a checkpoint archive (pod gone)."),
    image: list[str] = typer.Option([], "--image", "-i", metavar="[CONTAINER=]REF",
                                    show_default=False, help="Checkpoint image; CONTAINER=REF "
                                    "once per container in a multi-container pod."),
    node: str = typer.Option(..., "--node", metavar="NODE", show_default=False,
                             help="Node to restore on (with --from-pod: checked to exist).",
                             autocompletion=complete_nodes),
    container: str | None = typer.Option(None, "-c", "--container", show_default=False,
                                         help="Container a plain REF restores (default: the "
                                         "pod's default or only one)."),
    name: str | None = typer.Option(None, "--name", show_default=False,
                                    help="Pod name (default: <source>-restored)."),
    generate_name: bool = typer.Option(False, "--generate-name",
                                       help="Use generateName (create with kubectl create)."),
    k8s_version: str | None = typer.Option(None, "--k8s-version", metavar="X.Y",
                                           show_default=False, help="Validate for this "
                                           "Kubernetes (default: the cluster's, else 1.30)."),
    drop_label: list[str] = typer.Option([], "--drop-label", metavar="KEY", show_default=False,
                                         help="A label not to copy (repeatable)."),
    keep_init_containers: bool = typer.Option(False, "--keep-init-containers",
                                              help="Keep init containers (they already ran)."),
    digest: str | None = typer.Option(None, "--digest", metavar="sha256:...", show_default=False,
                                      help="Pin the image to this digest (`migrate build` "
                                      "prints it); not for an encrypted image, which CRI-O "
                                      "pulls by its tag only."),
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    namespace: str | None = typer.Option(None, "-n", "--namespace", show_default=False,
                                         help="The pod's namespace (default: the context's); "
                                         "with --archive, the target (default: the archive's).",
                                         autocompletion=complete_namespaces),
    output: ManifestFormat = typer.Option(ManifestFormat.yaml, "-o", "--output",
                                          help="Output format."),
) -> None:
    """Print a Pod that restores checkpointed containers on NODE."""
    from migrate.pipeline.manifest import parse_images
    from migrate.pipeline.manifest_request import ManifestRequest, build_manifest

    settings = with_kube(ctx, kubeconfig, context, namespace)
    pod = build_manifest(ManifestRequest(
        images=parse_images(image, digest), node=node, from_pod=from_pod, archive=archive,
        container=container, namespace=namespace or settings.kube.namespace, name=name,
        generate_name=generate_name,
        k8s_version=k8s_version, drop_labels=tuple(drop_label),
        keep_init_containers=keep_init_containers), settings)
    emit(pod, output.value, lambda: "")


def _base_line(r: SandboxReport) -> list[str]:
    """Which image the restore is created on, and whether --run pulled it."""
    base = r.base_image
    if base is None:
        return []
    if r.pulled is not None:
        how = f", pulled as {_one(base.reference)}" if r.pulled else ", the runtime had it"
    elif base.reference:
        how = f" (pulled as {_one(base.reference)} where the runtime lacks it)"
    else:
        how = " (the runtime must hold it: the archive names none to pull)"
    return [f"restored onto image {_one(base.id[:12])}, the one the container ran{how}"]


def _one(value: object) -> str:
    """A field of one line (names from the archive, paths, IDs): its newlines and other
    control characters escaped, so that it cannot add a line to the report (`emit` keeps
    the report's own line breaks)."""
    return printable(str(value))


def _sandbox_human(r: SandboxReport) -> str:
    lines = [f"wrote {_one(r.pod_config)}", f"wrote {_one(r.container_config)}",
             f"sandbox {_one(r.name)} (namespace migrate-sandbox, uid {_one(r.uid)}): "
             f"container {_one(r.container)}, network {_one(r.network)}", *_base_line(r), "",
             ""]
    rows = [(m.container_path, m.host_path, m.kind, "ro" if m.readonly else "rw")
            for m in r.mounts]
    text = "\n".join(lines) + table(("container path", "host path", "type", "mode"), rows)
    if r.pod_id:
        text += (f"\npod ID        {_one(r.pod_id)}\ncontainer ID  {_one(r.container_id)}\n"
                 f"log           {_one(r.log)}\n")
    verb = "the same, by hand" if r.pod_id else "restore it with"
    return text + f"\n{verb}:\n" + "".join(f"  {_one(c)}\n" for c in r.commands)


def _podman_human(r: PodmanSandboxReport) -> str:
    gone = ", removed when it exits (--rm)" if r.autoremove else ""
    lines = [f"restored {_one(r.name)} ({_one(r.id[:12])}) with podman from "
             f"{_one(r.checkpoint)}",
             f"checkpoint {_one(r.digest)} (label migrate.dev/forensic-restore)",
             f"container {_one(r.container)}, network {_one(r.network)}{gone}", ""]
    text = "\n".join(lines)
    if r.mounts:
        text += "\n" + table(("container path", "host path", "mode", "recorded source"),
                             [(m.recorded.destination, m.host_path,
                               "ro" if m.recorded.readonly else "rw",
                               f"volume {m.recorded.volume}" if m.recorded.volume
                               else m.recorded.source) for m in r.mounts])
    return (text + "\nlook at it:  " + _one(r.commands[0]) + "\nremove it:   "
            + _one(r.commands[1]) + "\n")


_CRICTL_ONLY = ("--out", "--run", "--runtime-endpoint", "--cgroup-parent", "--crictl")
_PODMAN_ONLY = ("--allow-mount", "--rm", "--podman", "--cert-dir", "--tls-verify",
                "--no-tls-verify")
#: crictl: credentials serve only --run's pull of the base image (the printed commands
#: leave them to the operator: CRICTL_CREDS).
_RUN_ONLY = ("--authfile", "--creds")


def _given(ctx: typer.Context, names: tuple[str, ...]) -> list[str]:
    """Which of these options the command line set, as it spelled them."""
    from typer.core import TyperOption

    given = []
    for param in ctx.command.params:
        if not isinstance(param, TyperOption) or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        # A --flag/--no-flag pair: the spelling its value came from.
        negative = param.secondary_opts and ctx.params.get(param.name) is False
        spelled = param.secondary_opts[0] if negative else param.opts[0]
        if spelled in names:
            given.append(spelled)
    return given


def sandbox(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(..., help="Checkpoint archive, or (--engine podman) a "
                                     "checkpoint image REGISTRY/REPOSITORY[:TAG].",
                                     metavar="ARCHIVE|IMAGE", show_default=False),
    engine: Engine = typer.Option(Engine.crictl, "--engine",
                                  help="crictl: write configs for a CRI host (--run runs them); "
                                  "podman: restore here, now."),
    name: str | None = typer.Option(None, "--name", show_default=False,
                                    help="Sandbox name (default: forensic-<pod> for crictl, "
                                    "forensic-<container> for podman)."),
    network: str = typer.Option("none", "--network", metavar="NETWORK",
                                help="none: no network; crictl: pod (the runtime's pod "
                                "network and DNS); podman: a Podman network's name."),
    allow_mount: list[str] = typer.Option([], "--allow-mount", metavar="DEST=HOSTPATH",
                                          show_default=False, help="podman: bind HOSTPATH "
                                          "where the checkpoint records a host mount at DEST "
                                          "(each one must be given)."),
    autoremove: bool = typer.Option(False, "--rm", help="podman: remove the container when "
                                    "its processes exit."),
    podman: str = typer.Option("podman", "--podman", metavar="PATH",
                               help="podman: the podman executable."),
    authfile: Path | None = AUTHFILE,
    creds: str | None = CREDS,
    tls_verify: bool = TLS_VERIFY,
    cert_dir: Path | None = CERT_DIR,
    out: Path | None = typer.Option(None, "--out", metavar="DIR", show_default=False,
                                    help="crictl: where to write, new or empty "
                                    "(default: ./NAME)."),
    run: bool = typer.Option(False, "--run", help="crictl: run crictl runp, create, start."),
    runtime_endpoint: str | None = typer.Option(None, "--runtime-endpoint", metavar="URI",
                                                show_default=False, help="crictl: CRI "
                                                "endpoint (default: its configuration)."),
    timeout: int | None = typer.Option(None, "--timeout", metavar="S", show_default=False,
                                       help="Seconds crictl may wait for the runtime (at "
                                       "least 60; default 60), or one podman call may take "
                                       "(default 600)."),
    cgroup_parent: str | None = typer.Option(None, "--cgroup-parent", metavar="CGROUP",
                                             show_default=False, help="crictl: the sandbox's "
                                             "parent cgroup (the systemd driver needs one)."),
    crictl: str = typer.Option("crictl", "--crictl", metavar="PATH",
                               help="crictl: the crictl executable."),
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Restore a checkpoint in a forensic sandbox: crictl configs for a CRI host (default),
    or with Podman on this machine (--engine podman)."""
    wrong = _given(ctx, _PODMAN_ONLY if engine == Engine.crictl else _CRICTL_ONLY)
    if wrong:
        other = "podman" if engine == Engine.crictl else "crictl"
        raise UsageError(f"{wrong[0]} is an option of --engine {other}",
                         hint=f"see 'migrate sandbox restore --help'; this is --engine "
                         f"{engine.value}")
    base: Settings = ctx.obj
    if engine == Engine.podman:
        from migrate.pipeline.sandbox_podman import PodmanSandboxRequest, restore_sandbox

        settings = with_registry(base, authfile=authfile, creds=creds, tls_verify=tls_verify,
                                 cert_dir=cert_dir)
        podman_settings = dataclasses.replace(settings.podman, executable=podman)
        if timeout is not None:
            podman_settings = dataclasses.replace(podman_settings, timeout=float(timeout))
        settings = dataclasses.replace(settings, podman=podman_settings)
        report = restore_sandbox(PodmanSandboxRequest(
            checkpoint=checkpoint, name=name, network=network,
            allow_mounts=tuple(allow_mount), autoremove=autoremove), settings)
        emit(report.to_dict(), output.value, lambda: _podman_human(report))
        return
    from migrate.pipeline.sandbox import SandboxRequest, prepare_sandbox
    from migrate.pipeline.sandbox_podman import is_image_reference

    if is_image_reference(checkpoint) and not Path(checkpoint).exists():
        raise UsageError(f"{checkpoint}: --engine crictl restores from an archive file",
                         hint="restore an image with --engine podman, or on a cluster with "
                         "`migrate manifest --image`")
    needs_run = [] if run else _given(ctx, _RUN_ONLY)
    if needs_run:
        raise UsageError(f"{needs_run[0]} is for --run: the pull of the image the container "
                         "ran", hint="add --run, or run the printed commands with "
                         "CRICTL_CREDS=USER:PASSWORD set for their `crictl pull`")
    base = with_registry(base, authfile=authfile, creds=creds, tls_verify=True, cert_dir=None)
    crictl_settings = dataclasses.replace(base.crictl, executable=crictl,
                                          runtime_endpoint=runtime_endpoint)
    if timeout is not None:
        crictl_settings = dataclasses.replace(crictl_settings, timeout=timeout)
    crictl_report = prepare_sandbox(SandboxRequest(
        archive=Path(checkpoint), out=out, name=name, network=network,
        cgroup_parent=cgroup_parent, run=run),
        dataclasses.replace(base, crictl=crictl_settings))
    emit(crictl_report.to_dict(), output.value, lambda: _sandbox_human(crictl_report))


def _stop_human(r: StopReport) -> str:
    return (f"removed {_one(r.name)} ({_one(r.id[:12])}), the forensic restore of "
            f"{_one(r.digest)}\n")


def stop(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", show_default=False,
                               help="The sandbox's name (or ID)."),
    podman: str = typer.Option("podman", "--podman", metavar="PATH",
                               help="The podman executable."),
    time: int = typer.Option(10, "--time", metavar="S", help="Seconds between SIGTERM and "
                             "SIGKILL."),
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Stop and remove a sandbox `migrate sandbox --engine podman` restored (and only that)."""
    from migrate.pipeline.sandbox_podman import stop_sandbox

    base: Settings = ctx.obj
    settings = dataclasses.replace(base, podman=dataclasses.replace(
        base.podman, executable=podman, stop_timeout=time))
    report = stop_sandbox(name, settings)
    emit(report.to_dict(), output.value, lambda: _stop_human(report))


class _SandboxGroup(Group):
    """`migrate sandbox ARCHIVE ...` means `migrate sandbox restore ARCHIVE ...`: the
    command kept working as it did before `stop` joined it."""

    default_command = "restore"  # what argv.py descends into, too

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


sandbox_app = typer.Typer(name="sandbox", cls=_SandboxGroup, no_args_is_help=True,
                          help="Restore a checkpoint in a forensic sandbox (`migrate sandbox "
                          "ARCHIVE|IMAGE` is `migrate sandbox restore ...`), or remove one.")


def register(app: typer.Typer) -> None:
    """Attach the restore commands to the root app."""
    app.command("manifest")(manifest)
    sandbox_app.command("restore")(sandbox)
    sandbox_app.command("stop")(stop)
    app.add_typer(sandbox_app)
