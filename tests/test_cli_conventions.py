"""Issue 15, items 6-8: kubectl habits, help with examples, shell completion, the kubectl
plugin's name, and kubeconfig errors in the tool's words. Everything here goes through
the CLI's real boundary (`migrate.cli.app.run`) or the installed console scripts; the
completion from a cluster is in test_first_hour.py, which has one.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer.main

from migrate.cli.argv import globals_first
from migrate.cli.examples import EXAMPLES
from migrate.cli.root import app, register_for
from tests.conftest import Result, run_binary

Cli = Callable[..., Result]
BIN = Path(sys.executable).parent


def root() -> Any:
    register_for([])  # every command (a run registers only its own)
    return typer.main.get_command(app)


def parse(argv: list[str]) -> Any:
    """Parse a command line as click would run it, down to its command, without running
    anything: options, choices and required values are checked."""
    command = root()
    args = globals_first(command, argv)
    ctx = command.make_context("migrate", list(args))
    while hasattr(command, "commands"):
        rest = [*ctx._protected_args, *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def command_paths() -> list[str]:
    paths = [""]
    for name, command in sorted(root().commands.items()):
        paths.append(name)
        paths += [f"{name} {sub}" for sub in sorted(getattr(command, "commands", {}))]
    return paths


# -- item 7: every --help has examples, and they are true ------------------------------------


def test_every_command_has_examples() -> None:
    assert sorted(EXAMPLES) == sorted(command_paths())


@pytest.mark.parametrize("path", command_paths())
def test_every_help_ends_with_examples_that_parse(cli: Cli, path: str) -> None:
    r = cli(*path.split(), "--help")
    assert r.code == 0, r.err
    shown = r.out[r.out.index("Examples:"):]
    for what, line in EXAMPLES[path]:
        # Whole on one line of an 80-column help page: copied as it is.
        assert f"# {what}" in shown and f" {line} " in shown, (line, shown)
        assert len(line) <= 76, line
        argv = shlex.split(line)
        assert argv[0] == "migrate"
        parse(argv[1:])  # raises if an option, a choice or a required value is wrong


@pytest.mark.parametrize("group", [[], ["sandbox"], ["schedule"]])
def test_a_group_without_a_command_says_so(group: list[str]) -> None:
    """Its help, then `error: ` and nothing: an empty error line."""
    done = run_binary(group)
    name = " ".join(["migrate", *group])
    assert done.returncode == 2
    assert "Usage: " in done.stdout + done.stderr
    assert (done.stdout + done.stderr).splitlines()[-2:] == [
        f"error: {name} needs a command", f"hint: see '{name} --help'"]


def test_pod_help_says_what_is_required(cli: Cli) -> None:
    text = " ".join(cli("pod", "--help").out.replace("│", " ").split())
    assert "HOST[:PORT]/REPO (no http://). This or --image is required." in text
    assert "(one container). This or --registry is required." in text


def test_a_registry_given_as_a_url_is_refused_before_anything(cli: Cli, tmp_path: Path) -> None:
    """`--registry http://host/...` used to fail on an image reference never typed."""
    r = cli("pod", "x", "--to", "node-b", "--registry", "http://127.0.0.1:5000/ckpt",
            "--kubeconfig", tmp_path / "none")
    assert (r.code, r.out) == (2, "")
    assert r.err == ("error: --registry http://127.0.0.1:5000/ckpt: give HOST[:PORT]/REPOSITORY, "
                     "without http://\n"
                     "hint: --registry 127.0.0.1:5000/ckpt (plain HTTP: add --no-tls-verify)\n")
    r = cli("doctor", "--registry", "https://reg.example/ckpt", "--kubeconfig", tmp_path / "none")
    assert r.err.splitlines() == ["error: --registry https://reg.example/ckpt: give "
                                  "HOST[:PORT]/REPOSITORY, without https://",
                                  "hint: --registry reg.example/ckpt"]


@pytest.mark.parametrize("args", [
    ["pod", "x", "--to", "node-b", "--registry", "bob:S3cret@reg.example:5000/ckpt"],
    ["pod", "x", "--to", "node-b", "--registry", "https://bob:S3cret@reg.example/ckpt"],
    ["pod", "x", "--to", "node-b", "--registry", "bob:S3cret@reg.example:5000"],
    ["build", "x.tar", "--image", "bob:S3cret@reg.example:5000/ckpt/app:v1"],
])
def test_credentials_in_a_registry_address_are_refused_unshown(
        cli: Cli, tmp_path: Path, args: list[str]) -> None:
    """A URL's USER:PASSWORD@ was taken for part of the host (then echoed by every error
    about the image reference), or for a digest."""
    r = cli(*args, "--kubeconfig", tmp_path / "none")
    what = "the image reference" if "--image" in args else "--registry"
    assert (r.code, r.out) == (2, "")
    assert r.err == (f"error: {what} holds credentials before its host (USER:PASSWORD@...): "
                     "not accepted, and not shown here\n"
                     "hint: give the host alone, and the credentials with --creds "
                     "USER:PASSWORD or --authfile FILE\n")
    assert "S3cret" not in r.err


@pytest.mark.parametrize("args", [["build", "x.tar", "--image", "reg.example:5000/a/b:v1"],
                                  ["doctor", "--registry", "reg.example:5000/ckpt"]])
def test_a_cert_dir_that_is_not_a_directory_is_refused(cli: Cli, tmp_path: Path,
                                                       args: list[str]) -> None:
    """It was skipped, and the TLS failure that followed asked for --cert-dir."""
    r = cli(*args, "--cert-dir", tmp_path / "typo", "--kubeconfig", tmp_path / "none")
    assert (r.code, r.out) == (4, "")
    assert r.err == (f"error: --cert-dir {tmp_path / 'typo'}: no such directory\n"
                     "hint: give the directory holding the registry's CA (*.crt) and client "
                     "pair (*.cert, *.key)\n")


# -- item 6: global options before or after the command ---------------------------------------


@pytest.mark.parametrize(("given", "parsed"), [
    ("show x.tar -v", "-v show x.tar"),
    ("show x.tar -vv --debug -o json", "-vv --debug show x.tar -o json"),
    ("show x.tar --context prod -n x", "--context prod -n x show x.tar"),
    ("list --kubeconfig=k.yaml", "--kubeconfig=k.yaml list"),
    ("uncordon node-a --context prod -v", "-v uncordon node-a --context prod"),
    # the command's own option of that name stays with it
    ("doctor --context prod -v", "-v doctor --context prod"),
    ("pod web -n shop --to node-b -v", "-v pod web -n shop --to node-b"),
    ("memparse x.tar --context 8", "memparse x.tar --context 8"),
    # an option's value is never taken for an option
    ("memparse x.tar --search -v", "memparse x.tar --search -v"),
    # nothing after -- moves
    ("schedule drain node-a --cron 1 -- -v", "schedule drain node-a --cron 1 -- -v"),
    ("sandbox x.tar --debug", "--debug sandbox x.tar"),
    ("--context prod doctor", "--context prod doctor"),
])
def test_global_options_move_in_front_of_the_command(given: str, parsed: str) -> None:
    assert globals_first(root(), given.split()) == parsed.split()


def test_global_options_after_the_command(cli: Cli, counters_archive: Path) -> None:
    """`migrate show -v ...` was "No such option"; so was `--context` before `doctor`."""
    r = cli("show", counters_archive, "-v", "-o", "json")
    assert r.code == 0, r.err
    assert r.json()[0]["container_name"] == "counter"
    r = cli("show", counters_archive, "--debug", "--context", "ignored")
    assert r.code == 0, r.err


def test_deploy_takes_n(cli: Cli) -> None:
    """`deploy -n x` had no -n."""
    for args in (("deploy", "-n", "ops"), ("-n", "ops", "deploy"), ("deploy", "--namespace",
                                                                    "ops")):
        r = cli(*args, "-o", "json")
        assert r.code == 0, r.err
        kinds = {o["kind"]: o["metadata"] for o in r.json()["items"]}
        assert kinds["Namespace"]["name"] == "ops" and kinds["ServiceAccount"]["namespace"] == "ops"
    r = cli("deploy", "-o", "json")
    assert r.json()["items"][0]["metadata"]["name"] == "migrate-system"


def test_list_takes_n_a_and_o_name(cli: Cli, make_archive: Callable[..., Path],
                                   tmp_path: Path) -> None:
    make_archive("checkpoint-a_default-c.tar")
    make_archive("checkpoint-b_shop-c.tar", namespace="shop", pod="b")
    names = cli("list", tmp_path, "-o", "name")
    assert names.code == 0, names.err
    assert sorted(names.out.splitlines()) == sorted(str(p) for p in tmp_path.glob("*.tar"))
    r = cli("list", tmp_path, "-n", "shop", "-o", "json")
    assert [e["namespace"] for e in r.json()] == ["shop"]
    assert cli("list", tmp_path, "-A", "-o", "json").json() == cli("list", tmp_path, "-o",
                                                                   "json").json()
    r = cli("-n", "nowhere", "list", tmp_path)
    assert (r.code, r.out, r.err) == (0, "", f"no checkpoints found in {tmp_path} for "
                                      "namespace nowhere\n")
    r = cli("list", tmp_path, "-n", "shop", "-A")
    assert (r.code, r.err.splitlines()[0]) == (2, "error: -n and -A exclude each other")


# -- item 6: kubeconfig errors in the tool's words -----------------------------------------


def test_kubeconfig_errors_in_our_words(tmp_path: Path) -> None:
    """A missing kubeconfig or an unknown context showed the client library's text, exit 3."""
    missing = tmp_path / "none.yaml"
    r = run_binary(["doctor", "--kubeconfig", str(missing), "--probe", "node-b",
                    "--registry", "127.0.0.1:5000/x"])
    assert r.returncode == 9  # doctor reports it as its api row, and goes on
    r = run_binary(["checkpoint", "web", "--kubeconfig", str(missing)])
    assert (r.returncode, r.stderr) == (4, f"error: kubeconfig {missing} does not exist\n"
                                        "hint: give the path of a kubeconfig file with "
                                        "--kubeconfig FILE (or set KUBECONFIG)\n")
    config = tmp_path / "config.yaml"
    config.write_text("apiVersion: v1\nkind: Config\ncurrent-context: sim\n"
                      "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                      "users: [{name: u, user: {token: t}}]\n"
                      "contexts: [{name: sim, context: {cluster: c, user: u}},\n"
                      "           {name: prod, context: {cluster: c, user: u}}]\n")
    r = run_binary(["--context", "sin", "--kubeconfig", str(config), "checkpoint", "web"])
    assert (r.returncode, r.stderr) == (4, f"error: context sin is not in kubeconfig {config}\n"
                                        "hint: did you mean sim? its contexts: prod, sim "
                                        "(kubectl config get-contexts)\n")
    env = {**os.environ, "KUBECONFIG": str(missing), "HOME": str(tmp_path)}
    r = run_binary(["uncordon", "node-a"], env=env)
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        4, f"error: no kubeconfig: {missing} does not exist, and this is not a pod with a "
        "service account")
    config.write_text("apiVersion: v1\nkind: Config\nclusters: [\n")
    r = run_binary(["uncordon", "node-a", "--kubeconfig", str(config)])
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        3, f"error: kubeconfig {config} is not usable: while parsing a flow node")
    assert "Traceback" not in r.stderr


# -- item 8: completion scripts for the shell asked for ------------------------------------


@pytest.mark.parametrize(("shell", "marker"), [
    ("zsh", "#compdef migrate"), ("fish", "complete --command migrate"),
    ("bash", "complete -o default -F _migrate_completion migrate")])
def test_show_completion_prints_the_shell_asked_for(shell: str, marker: str) -> None:
    """`--show-completion zsh` printed bash (typer detects the shell and drops the name)."""
    for args in (["--show-completion", shell], [f"--show-completion={shell}"]):
        r = run_binary(args)
        assert r.returncode == 0, r.stderr
        assert marker in r.stdout and "_MIGRATE_COMPLETE=complete_" + shell in r.stdout


def test_install_completion_writes_the_shell_asked_for(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    r = run_binary(["--install-completion", "zsh"], env=env)
    assert r.returncode == 0, r.stderr
    script = tmp_path / ".zfunc/_migrate"
    assert script.read_text().startswith("#compdef migrate")
    assert script.stat().st_mode & 0o777 == 0o600
    assert "fpath+=~/.zfunc" in (tmp_path / ".zshrc").read_text()
    r = run_binary(["--install-completion", "fish"], env=env)
    assert r.returncode == 0, r.stderr
    assert "complete --command migrate" in (
        tmp_path / ".config/fish/completions/migrate.fish").read_text()
    r = run_binary(["--show-completion", "tcsh"])
    assert (r.returncode, r.stderr) == (2, "error: --show-completion: no completion for tcsh\n"
                                        "hint: name one of bash, zsh, fish: --show-completion "
                                        "zsh\n")


def complete(shell: str, line: str, env: dict[str, str] | None = None,
             executable: str = "migrate") -> str:
    """What the completion script of ``shell`` gets back for ``line`` (the cursor at its end)."""
    var = "_" + re.sub(r"\W", "_", executable).upper() + "_COMPLETE"
    extra = ({"COMP_WORDS": line, "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(
        " ") else 1))} if shell == "bash" else {"_TYPER_COMPLETE_ARGS": line,
                                                "_TYPER_COMPLETE_FISH_ACTION": "get-args"})
    r = subprocess.run([str(BIN / executable)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **(env or {}), var: f"complete_{shell}", **extra})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_commands_and_options_complete_in_each_shell(shell: str) -> None:
    assert "uncordon" in complete(shell, "migrate unc")
    assert "--registry" in complete(shell, "migrate pod web --reg")


def test_completion_is_silent_without_a_cluster(tmp_path: Path) -> None:
    """No kubeconfig, no cluster: no names and no error in the middle of the line."""
    out = complete("bash", "migrate pod ", {"HOME": str(tmp_path), "KUBECONFIG": ""})
    assert out.strip() == ""
    out = complete("zsh", "migrate uncordon --kubeconfig /nonexistent n")
    assert out == "_files\n"  # zsh's own fallback


# -- item 8: as a kubectl plugin --------------------------------------------------------------


def test_the_plugin_speaks_as_kubectl_migrate(tmp_path: Path) -> None:
    plugin = str(BIN / "kubectl-migrate")
    r = subprocess.run([plugin, "pod", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Usage: kubectl migrate pod [OPTIONS] {POD}" in r.stdout
    assert " kubectl migrate pod counters --to node-b --registry " in r.stdout
    assert " migrate pod " not in r.stdout.replace("kubectl migrate pod ", "")
    env = {**os.environ, "MIGRATE_STATE_DIR": str(tmp_path)}
    r = subprocess.run([plugin, "resume", "pod-x-20260101t000000-abcd"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 4
    assert r.stderr.splitlines()[1] == "hint: `kubectl migrate history` lists them"
    r = subprocess.run([plugin, "pod"], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (2, "error: Missing argument 'POD'.\n"
                                        "hint: see 'kubectl migrate pod --help'\n")
    r = subprocess.run([plugin, "--show-completion", "bash"], capture_output=True, text=True)
    assert "_KUBECTL_MIGRATE_COMPLETE=complete_bash" in r.stdout
    assert "complete -o default -F _kubectl_migrate_completion kubectl-migrate" in r.stdout


def test_kubectls_plugin_completion_protocol() -> None:
    """kubectl 1.26+ runs kubectl_complete-migrate with the words after `kubectl migrate`."""
    helper = str(BIN / "kubectl_complete-migrate")
    r = subprocess.run([helper, "unc"], capture_output=True, text=True)
    assert (r.returncode, r.stdout.splitlines()[-1]) == (0, ":4")
    assert r.stdout.splitlines()[0].startswith("uncordon\t")
    r = subprocess.run([helper, "uncordon", "--kubeconfig", "/nonexistent", ""],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, ":0\n", "")
