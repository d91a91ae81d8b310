"""Restore targets: `manifest` (a Pod pinned to a node) and `sandbox` (crictl configs)."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from migrate.cli.options import CONTEXT, KUBECONFIG, with_kube
from migrate.cli.output import Format, emit, table
from migrate.settings import Settings

if TYPE_CHECKING:
    from migrate.pipeline.sandbox import SandboxReport

# The pipelines (jsonschema, kubernetes-validate, the kubernetes client) load
# when a command runs, not when the CLI starts.


class ManifestFormat(StrEnum):
    """A manifest prints as YAML (kubectl apply -f -) or JSON."""

    yaml = "yaml"
    json = "json"


class Network(StrEnum):
    """The sandbox's network: see README, `migrate sandbox`."""

    none = "none"
    pod = "pod"


def manifest(
    ctx: typer.Context,
    from_pod: str | None = typer.Option(None, "--from-pod", metavar="POD", show_default=False,
                                        help="Render from this live pod."),
    archive: Path | None = typer.Option(None, "--archive", metavar="ARCHIVE", show_default=False,
                                        help="Render from a checkpoint archive (pod gone)."),
    image: list[str] = typer.Option([], "--image", "-i", metavar="[CONTAINER=]REF",
                                    show_default=False, help="Checkpoint image; CONTAINER=REF "
                                    "once per container in a multi-container pod."),
    node: str = typer.Option(..., "--node", metavar="NODE", show_default=False,
                             help="Node to restore on."),
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
                                      "prints it)."),
    kubeconfig: Path | None = KUBECONFIG,
    context: str | None = CONTEXT,
    namespace: str | None = typer.Option(None, "-n", "--namespace", show_default=False,
                                         help="The pod's namespace (default: the context's); "
                                         "with --archive, the target (default: the archive's)."),
    output: ManifestFormat = typer.Option(ManifestFormat.yaml, "-o", "--output",
                                          help="Output format."),
) -> None:
    """Print a Pod that restores checkpointed containers on NODE."""
    from migrate.pipeline.manifest import parse_images
    from migrate.pipeline.manifest_request import ManifestRequest, build_manifest

    settings = with_kube(ctx, kubeconfig, context, namespace)
    pod = build_manifest(ManifestRequest(
        images=parse_images(image, digest), node=node, from_pod=from_pod, archive=archive,
        container=container, namespace=namespace, name=name, generate_name=generate_name,
        k8s_version=k8s_version, drop_labels=tuple(drop_label),
        keep_init_containers=keep_init_containers), settings)
    emit(pod, output.value, lambda: "")


def _sandbox_human(r: SandboxReport) -> str:
    lines = [f"wrote {r.pod_config}", f"wrote {r.container_config}",
             f"sandbox {r.name} (namespace migrate-sandbox, uid {r.uid}): container "
             f"{r.container}, network {r.network}", "", ""]
    rows = [(m.container_path, m.host_path, m.kind, "ro" if m.readonly else "rw")
            for m in r.mounts]
    text = "\n".join(lines) + table(("container path", "host path", "type", "mode"), rows)
    if r.pod_id:
        text += f"\npod ID        {r.pod_id}\ncontainer ID  {r.container_id}\n"
    verb = "the same, by hand" if r.pod_id else "restore it with"
    return text + f"\n{verb}:\n" + "".join(f"  {c}\n" for c in r.commands)


def sandbox(
    ctx: typer.Context,
    archive: Path = typer.Argument(..., help="Checkpoint archive (checkpoint-*.tar).",
                                   metavar="ARCHIVE", show_default=False),
    out: Path | None = typer.Option(None, "--out", metavar="DIR", show_default=False,
                                    help="Where to write, new or empty (default: ./NAME)."),
    name: str | None = typer.Option(None, "--name", show_default=False,
                                    help="Sandbox pod name (default: forensic-<pod>)."),
    network: Network = typer.Option(Network.none, "--network",
                                    help="none: no name resolution, nothing published; pod: "
                                    "the runtime's pod network and DNS."),
    run: bool = typer.Option(False, "--run", help="Run crictl runp, create, start."),
    runtime_endpoint: str | None = typer.Option(None, "--runtime-endpoint", metavar="URI",
                                                show_default=False, help="CRI endpoint for "
                                                "crictl (default: its configuration)."),
    timeout: int = typer.Option(60, "--timeout", metavar="S", help="Seconds crictl may wait "
                                "for the runtime (at least 60)."),
    cgroup_parent: str | None = typer.Option(None, "--cgroup-parent", metavar="CGROUP",
                                             show_default=False, help="The sandbox's parent "
                                             "cgroup (the systemd driver needs one)."),
    crictl: str = typer.Option("crictl", "--crictl", metavar="PATH",
                               help="The crictl executable."),
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Write crictl configs that restore ARCHIVE in a forensic sandbox; --run runs them."""
    from migrate.pipeline.sandbox import SandboxRequest, prepare_sandbox

    base: Settings = ctx.obj
    settings = dataclasses.replace(base, crictl=dataclasses.replace(
        base.crictl, executable=crictl, runtime_endpoint=runtime_endpoint, timeout=timeout))
    report = prepare_sandbox(SandboxRequest(
        archive=archive, out=out, name=name, network=network.value,
        cgroup_parent=cgroup_parent, run=run), settings)
    emit(report.to_dict(), output.value, lambda: _sandbox_human(report))


def register(app: typer.Typer) -> None:
    """Attach the restore commands to the root app."""
    app.command("manifest")(manifest)
    app.command("sandbox")(sandbox)
