"""`migrate sandbox`: the crictl configs (golden files, CRI schemas), the directory it
writes (types, modes), and `--run` against a crictl stand-in.

Real crictl against a real CRI-O runs in tests/test_real_node.py (setup-stretch
builds it); this module needs neither root nor the real parts, and makes the faults
reality will not make on demand. The stand-in is a small Python program written by
the test: it records each call, checks the files it is given the way CRI-O would
(the image is the archive; the base image is held, else the create is refused with
CRI-O's `image not known`; every spec.dump mount outside CRI-O's own list is in the
container's mounts, bound from a source of the same type), answers `inspecti` and
`pull` from the images it holds and a registry it is given, prints IDs like
crictl, and fails at a chosen step with a crictl-style message.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.archives.archivegen import ArchiveSpec, build
from migrate.adapters.crictl import restore_in_sandbox
from migrate.errors import DependencyError
from migrate.settings import CrictlSettings
from migrate.validation import validate
from tests.conftest import Result

Cli = Callable[..., Result]
GOLDEN = Path(__file__).parent / "golden" / "sandbox"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
IMAGE_ID, REPO_DIGEST = ArchiveSpec.image_id, ArchiveSpec.image_ref
POD_DIR = "/var/lib/kubelet/pods/6a2d1a4e-53a1-4f8b-9c1e-0d5e0f1b7a21"
VOLUMES = [
    {"destination": "/var/cache/counter", "file_type": "directory", "permissions": 0o777,
     "source": f"{POD_DIR}/volumes/kubernetes.io~empty-dir/cache"},
    {"destination": "/etc/counter.conf", "file_type": "file", "permissions": 0o644,
     "source": f"{POD_DIR}/volume-subpaths/settings/counter/3"},
]

STANDIN = r'''
import json, os, sys, tarfile
CFG = json.loads(CONFIG)
SKIPPED = {"/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm",
           "/etc/resolv.conf", "/etc/hostname", "/etc/passwd", "/etc/group", "/run/secrets",
           "/run/.containerenv"}
args = sys.argv[1:]
flags = {}
while args and args[0].startswith("--"):
    flags[args[0]] = args[1]
    args = args[2:]
sub, rest = args[0], args[1:]
with open(CFG["log"], "a") as f:
    call = {"flags": flags, "sub": sub, "args": rest}
    if "CRICTL_CREDS" in os.environ:
        call["creds"] = os.environ["CRICTL_CREDS"]
    f.write(json.dumps(call) + "\n")
state = json.load(open(CFG["state"])) if os.path.exists(CFG["state"]) else {}

def fatal(msg):
    sys.stderr.write('time="2026-11-22T10:00:00Z" level=fatal msg="%s"\n' % msg)
    sys.exit(1)

def private(path):
    if os.stat(path).st_mode & 0o077:
        fatal("%s is readable by others" % path)
    return json.load(open(path))

if sub in CFG["fail"]:
    fatal("%s: rpc error: code = Unknown desc = injected failure" % sub)
images = state.setdefault("images", CFG["images"])
if sub == "inspecti":
    image = rest[-1]
    if image not in images:
        fatal('no such image "%s" present' % image)
    print(image)
elif sub == "pull":
    if rest[-1] not in CFG["registry"]:
        fatal('pulling image: rpc error: code = NotFound desc = %s: manifest unknown' % rest[-1])
    images.append(CFG["registry"][rest[-1]])
    print("Image is up to date for " + rest[-1])
elif sub == "runp":
    pod = private(rest[0])
    if not all(pod["metadata"].get(k) for k in ("name", "uid", "namespace")):
        fatal("sandbox metadata incomplete")
    state["pod"] = "f00d" * 16
    print(state["pod"])
elif sub == "create":
    pod_id, ctr_path, pod_path = rest
    if pod_id != state.get("pod"):
        fatal("pod sandbox %s not found" % pod_id)
    ctr, _ = private(ctr_path), private(pod_path)
    image = ctr["image"]["image"]
    with tarfile.open(image) as tf:
        spec = json.load(tf.extractfile("spec.dump"))
        binds = {b["destination"]: b for b in json.load(tf.extractfile("bind.mounts"))}
        ran = json.load(tf.extractfile("config.dump"))["rootfsImageRef"]
    if ran not in images:  # CRI-O restores onto it, by its ID, and pulls nothing
        fatal('creating container: rpc error: code = Unknown desc = reading image "%s": '
              'locating image with ID "%s": image not known' % (ran, ran))
        binds = {b["destination"]: b for b in json.load(tf.extractfile("bind.mounts"))}
    given = {m["container_path"]: m["host_path"] for m in ctr.get("mounts", [])}
    missing = [m["destination"] for m in spec["mounts"]
               if m["destination"] not in SKIPPED and m["destination"] not in given]
    if missing:
        fatal('creating container: restoring "%s" expects following bind mounts defined (%s)'
              % (image, ",".join(missing)))
    for dest, host in given.items():
        want = binds.get(dest, {}).get("file_type", "directory")
        if os.path.isdir(host) != (want == "directory"):
            fatal("mount %s: %s is not a %s" % (dest, host, want))
    state["ctr"] = "c0de" * 16
    print(state["ctr"])
elif sub == "start":
    if rest != [state.get("ctr")]:
        fatal("container not found")
    print(rest[0])
elif sub in ("stopp", "rmp"):
    if rest != [state.get("pod")]:
        fatal("pod sandbox not found")
    print(("Stopped" if sub == "stopp" else "Removed") + " sandbox " + rest[0])
else:
    fatal("unknown command " + sub)
json.dump(state, open(CFG["state"], "w"))
'''


def make_standin(where: Path, *fail: str, name: str = "crictl",
                 images: tuple[str, ...] = (IMAGE_ID,),
                 registry: dict[str, str] | None = None) -> Path:
    """Write the stand-in as ``where/name``, failing the ``fail`` steps; its call log is
    ``where/crictl.log``. Its runtime holds ``images`` (IDs; by default the archive's base
    image); a pull of a reference in ``registry`` adds the ID it maps to."""
    where.mkdir(parents=True, exist_ok=True)
    cfg = {"log": str(where / "crictl.log"), "state": str(where / "state.json"),
           "fail": list(fail), "images": list(images), "registry": registry or {}}
    path = where / name
    path.write_text(f"#!{sys.executable}\nCONFIG = {json.dumps(json.dumps(cfg))}\n{STANDIN}")
    path.chmod(0o755)
    return path


def calls(standin: Path) -> list[dict[str, Any]]:
    log = standin.parent / "crictl.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("archives") / "checkpoint-counters_default-counter.tar"
    return build(ArchiveSpec(volumes=VOLUMES, use_crit=True), out)


def normalized(text: str, report: dict[str, Any]) -> str:
    return (text.replace(report["out"], "$OUT").replace(report["archive"], "$ARCHIVE")
            .replace(report["uid"], "$UID"))


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (UPDATE_GOLDEN=1 rewrites it)"


def test_configs_match_the_golden_files(cli: Cli, archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "sandbox"
    r = cli("sandbox", archive, "--out", out, "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "sandbox.schema.json", "sandbox -o json")
    assert (report["container"], report["name"], report["network"]) == (
        "counter", "forensic-counters", "none")
    assert (report["pod_id"], report["container_id"]) == (None, None)
    for name in ("pod-config.json", "container-config.json"):
        assert_golden(name, normalized((out / name).read_text(), report))
    pod = json.loads((out / "pod-config.json").read_text())
    container = json.loads((out / "container-config.json").read_text())
    validate(pod, "crictl-pod-config.schema.json", "pod-config.json")
    validate(container, "crictl-container-config.schema.json", "container-config.json")
    assert container["image"]["image"] == str(archive)
    assert pod["metadata"]["uid"] != "6a2d1a4e-53a1-4f8b-9c1e-0d5e0f1b7a21"
    # A fresh uid every time: never mistaken for the original, nor for another sandbox.
    again = cli("sandbox", archive, "--out", tmp_path / "again", "-o", "json").json()
    assert again["uid"] != report["uid"]


def test_mounts_are_created_with_their_type_and_private_modes(cli: Cli, archive: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "box"
    report = cli("sandbox", archive, "--out", out, "-o", "json").json()
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("pod-config.json", "container-config.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    kinds = {m["container_path"]: m["type"] for m in report["mounts"]}
    assert kinds == {"/etc/hosts": "file", "/dev/termination-log": "file",
                     "/var/run/secrets/kubernetes.io/serviceaccount": "directory",
                     "/var/cache/counter": "directory", "/etc/counter.conf": "file"}
    for m in report["mounts"]:
        host = Path(m["host_path"])
        assert host.parent == out / "mounts"
        mode = host.stat().st_mode
        if m["type"] == "file":
            assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600 and host.stat().st_size == 0
        else:
            assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o700
    assert {m["container_path"]: m["original_permissions"] for m in report["mounts"]}[
        "/var/cache/counter"] == 0o777
    config = json.loads((out / "container-config.json").read_text())
    assert [(m["container_path"], m["host_path"]) for m in config["mounts"]] == [
        (m["container_path"], m["host_path"]) for m in report["mounts"]]


def test_table_output_lists_mounts_and_the_commands(cli: Cli, archive: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "t"
    r = cli("sandbox", archive, "--out", out, "--runtime-endpoint", "unix:///run/crio/crio.sock")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == f"wrote {out}/pod-config.json"
    assert "CONTAINER PATH" in r.out and f"{out}/mounts/01-etc-hosts" in r.out
    crictl = "crictl --runtime-endpoint unix:///run/crio/crio.sock --timeout 60s"
    assert lines[-3:] == [
        f"  POD_ID=$({crictl} runp {out}/pod-config.json)",
        f'  CTR_ID=$({crictl} create "$POD_ID" {out}/container-config.json '
        f"{out}/pod-config.json)",
        f'  {crictl} start "$CTR_ID"']


def test_network_pod_uses_the_runtime_dns(cli: Cli, archive: Path, tmp_path: Path) -> None:
    r = cli("sandbox", archive, "--out", tmp_path / "p", "--network", "pod", "--name", "probe",
            "-o", "json")
    assert r.code == 0, r.err
    pod = json.loads((tmp_path / "p" / "pod-config.json").read_text())
    assert "dns_config" not in pod and pod["port_mappings"] == []
    assert pod["metadata"]["name"] == pod["hostname"] == "probe"


def test_run_drives_crictl(cli: Cli, archive: Path, tmp_path: Path) -> None:
    standin = make_standin(tmp_path / "bin")
    out = tmp_path / "run"
    r = cli("sandbox", archive, "--out", out, "--run", "--crictl", standin,
            "--runtime-endpoint", "unix:///run/crio/crio.sock", "--timeout", "90", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    assert (report["pod_id"], report["container_id"]) == ("f00d" * 16, "c0de" * 16)
    flags = {"--runtime-endpoint": "unix:///run/crio/crio.sock", "--timeout": "90s"}
    pod, ctr = str(out / "pod-config.json"), str(out / "container-config.json")
    assert calls(standin) == [
        {"flags": flags, "sub": "inspecti", "args": ["-q", IMAGE_ID]},
        {"flags": flags, "sub": "runp", "args": [pod]},
        {"flags": flags, "sub": "create", "args": ["f00d" * 16, ctr, pod]},
        {"flags": flags, "sub": "start", "args": ["c0de" * 16]}]


def test_run_finds_crictl_on_the_path(cli: Cli, archive: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    standin = make_standin(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{standin.parent}{os.pathsep}{os.environ['PATH']}")
    r = cli("sandbox", archive, "--out", tmp_path / "run", "--run")
    assert r.code == 0, r.err
    assert f"pod ID        {'f00d' * 16}" in r.out.splitlines()
    assert [c["sub"] for c in calls(standin)] == ["inspecti", "runp", "create", "start"]


def test_a_failed_create_removes_the_sandbox(cli: Cli, archive: Path, tmp_path: Path) -> None:
    standin = make_standin(tmp_path / "bin", "create")
    r = cli("sandbox", archive, "--out", tmp_path / "run", "--run", "--crictl", standin)
    assert (r.code, r.out) == (5, "")
    assert r.err == (
        'error: crictl create failed: time="2026-11-22T10:00:00Z" level=fatal msg="create: rpc '
        'error: code = Unknown desc = injected failure"\n'
        f"hint: see the runtime's log (journalctl -u crio); the sandbox {'f00d' * 16} was "
        "removed\n")
    assert [(c["sub"], c["args"][:1]) for c in calls(standin)] == [
        ("inspecti", ["-q"]), ("runp", [str(tmp_path / "run" / "pod-config.json")]), ("create", ["f00d" * 16]),
        ("stopp", ["f00d" * 16]), ("rmp", ["f00d" * 16])]


def test_a_failed_cleanup_says_how_to_finish_it(cli: Cli, archive: Path, tmp_path: Path) -> None:
    standin = make_standin(tmp_path / "bin", "start", "stopp")
    r = cli("sandbox", archive, "--out", tmp_path / "run", "--run", "--crictl", standin)
    assert r.code == 5
    assert r.err.splitlines()[1].endswith(
        f"could not be removed: crictl stopp {'f00d' * 16}; crictl rmp {'f00d' * 16}")


def test_run_pulls_the_base_image_the_runtime_lacks_by_its_recorded_digest(
        cli: Cli, archive: Path, tmp_path: Path) -> None:
    # CRI-O creates the restore on the image the container ran, by its ID, and pulls
    # nothing (proven against real crictl and CRI-O in test_real_node.py): the stand-in
    # refuses the create as CRI-O does, so a run that skipped the pull fails here.
    standin = make_standin(tmp_path / "bin", images=(), registry={REPO_DIGEST: IMAGE_ID})
    r = cli("sandbox", archive, "--out", tmp_path / "run", "--run", "--crictl", standin,
            "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "sandbox.schema.json", "sandbox --run -o json")
    assert report["base_image"] == {"id": IMAGE_ID, "reference": REPO_DIGEST}
    assert report["pulled_base_image"] is True
    assert report["log"] == f"{tmp_path}/run/logs/{'c0de' * 16}.log"
    assert [(c["sub"], c["args"][-1:]) for c in calls(standin)] == [
        ("inspecti", [IMAGE_ID]), ("pull", [REPO_DIGEST]), ("inspecti", [IMAGE_ID]),
        ("runp", [str(tmp_path / "run" / "pod-config.json")]),
        ("create", [str(tmp_path / "run" / "pod-config.json")]), ("start", ["c0de" * 16])]
    human = cli("sandbox", archive, "--out", tmp_path / "again", "--run", "--crictl", standin)
    assert f"restored onto image {IMAGE_ID[:12]}, the one the container ran, the runtime " \
        "had it" in human.out.splitlines()


@pytest.mark.parametrize(("registry", "said", "hint"), [
    ({}, f"crictl pull failed: time=\"2026-11-22T10:00:00Z\" level=fatal msg=\"pulling image: "
     f"rpc error: code = NotFound desc = {REPO_DIGEST}: manifest unknown\" (the image the "
     "checkpointed container ran: CRI-O restores onto it and does not pull it itself)",
     f"no credentials for {REPO_DIGEST.split('/')[0]} were found here (--creds, --authfile, "
     f"`podman login`), so only the runtime's own apply; pull {REPO_DIGEST} on this host by "
     "hand, or make it reachable"),
    ({REPO_DIGEST: "e" * 64}, f"crictl pulled {REPO_DIGEST}, but it is not image "
     f"{IMAGE_ID[:12]}, the one the checkpointed container ran",
     "the tag has moved since the checkpoint: pull that image by its digest, then run again"),
], ids=["unpullable", "another-image"])
def test_a_base_image_that_cannot_be_had_stops_the_run_before_any_sandbox(
        cli: Cli, archive: Path, tmp_path: Path, registry: dict[str, str], said: str,
        hint: str) -> None:
    standin = make_standin(tmp_path / "bin", images=(), registry=registry)
    r = cli("sandbox", archive, "--out", tmp_path / "run", "--run", "--crictl", standin)
    assert (r.code, r.out, r.err) == (5, "", f"error: {said}\nhint: {hint}\n")
    assert "runp" not in [c["sub"] for c in calls(standin)]


def test_run_pulls_with_the_credentials_found_for_the_base_images_registry(
        cli: Cli, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # To crictl in its environment (CRICTL_CREDS, what `crictl pull --creds` reads), never
    # on its command line: ps shows a command line to every user of the host.
    registry = REPO_DIGEST.split("/")[0]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for env in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(env, raising=False)
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {registry: {
        "auth": base64.b64encode(b"bob:from-the-file").decode()}}}))
    for n, (given, creds) in enumerate((
            ((), None), (("--authfile", str(authfile)), "bob:from-the-file"),
            (("--creds", "alice:pa:ss"), "alice:pa:ss"))):
        standin = make_standin(tmp_path / f"bin-{n}", images=(),
                               registry={REPO_DIGEST: IMAGE_ID})
        r = cli("sandbox", archive, "--out", tmp_path / f"run-{n}", "--run", "--crictl",
                standin, *given)
        assert r.code == 0, r.err
        assert [(c["sub"], c.get("creds")) for c in calls(standin)][:2] == [
            ("inspecti", None), ("pull", creds)]
        assert all("pa:ss" not in " ".join(c["args"]) and "from-the-file" not in
                   " ".join(c["args"]) for c in calls(standin))
    # Credentials serve --run's pull alone: the printed commands leave them to the operator.
    r = cli("sandbox", archive, "--out", tmp_path / "none", "--creds", "alice:pa:ss")
    assert (r.code, r.err.splitlines()) == (2, [
        "error: --creds is for --run: the pull of the image the container ran",
        "hint: add --run, or run the printed commands with CRICTL_CREDS=USER:PASSWORD set for "
        "their `crictl pull`"])
    # A named credentials file that is missing fails before any sandbox exists.
    standin = make_standin(tmp_path / "bin-missing", images=())
    r = cli("sandbox", archive, "--out", tmp_path / "missing", "--run", "--crictl", standin,
            "--authfile", str(tmp_path / "nope.json"))
    assert (r.code, r.err.splitlines()[0]) == (
        4, f"error: {tmp_path}/nope.json: no such credentials file")
    assert calls(standin) == []


def test_the_printed_commands_pull_the_base_image_where_it_is_missing(
        cli: Cli, archive: Path, tmp_path: Path) -> None:
    r = cli("sandbox", archive, "--out", tmp_path / "t", "-o", "json")
    crictl = "crictl --timeout 60s"
    assert r.json()["commands"][0] == (f"{crictl} inspecti {IMAGE_ID} >/dev/null 2>&1 || "
                                       f"{crictl} pull {REPO_DIGEST}")
    assert r.json()["pulled_base_image"] is None and r.json()["log"] is None


@pytest.mark.parametrize(("repo_digests", "name", "reference"), [
    # An older CRI-O's archive: no repo digests, the name the container ran (a tag).
    ("", "quay.io/adrianreber/counter:blog", "quay.io/adrianreber/counter:blog"),
    # Untrusted input: nothing a command line could take for an option, or a shell split.
    ("--insecure@x,reg.example/a b@sha256:1", "-v", None),
])
def test_what_the_archive_offers_to_pull(cli: Cli, tmp_path: Path, repo_digests: str,
                                         name: str, reference: str | None) -> None:
    archive = build(ArchiveSpec(image_ref=repo_digests, image=name),
                    tmp_path / "checkpoint.tar")
    r = cli("sandbox", archive, "--out", tmp_path / "t", "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["base_image"] == {"id": IMAGE_ID, "reference": reference}
    assert len(r.json()["commands"]) == (4 if reference else 3)


def test_the_standin_refuses_a_missing_bind_mount(cli: Cli, archive: Path,
                                                  tmp_path: Path) -> None:
    """The stand-in's CRI-O check can fail: without /var/cache/counter, create is refused."""
    out = tmp_path / "box"
    assert cli("sandbox", archive, "--out", out).code == 0
    config_path = out / "container-config.json"
    config = json.loads(config_path.read_text())
    config["mounts"] = [m for m in config["mounts"] if m["container_path"] != "/var/cache/counter"]
    config_path.write_text(json.dumps(config))
    standin = make_standin(tmp_path / "bin")
    with pytest.raises(DependencyError) as e:
        restore_in_sandbox(CrictlSettings(executable=str(standin)), out / "pod-config.json",
                           config_path, None)
    assert "expects following bind mounts defined (/var/cache/counter)" in e.value.message
    assert [c["sub"] for c in calls(standin)] == ["runp", "create", "stopp", "rmp"]


def test_a_short_timeout_is_refused_before_anything_is_written(cli: Cli, archive: Path,
                                                               tmp_path: Path) -> None:
    r = cli("sandbox", archive, "--out", tmp_path / "x", "--timeout", "30", "--run")
    assert (r.code, r.out) == (2, "")
    assert r.err == ("error: --timeout must be at least 60 seconds\n"
                     "hint: a pull of the base image, or a restore of much memory, takes longer "
                     "than that before the runtime answers\n")
    assert not (tmp_path / "x").exists()


def test_missing_crictl(cli: Cli, archive: Path, tmp_path: Path) -> None:
    r = cli("sandbox", archive, "--out", tmp_path / "x", "--run", "--crictl",
            tmp_path / "no-crictl")
    assert r.code == 5
    assert r.err.splitlines()[0] == (f"error: crictl is not installed ({tmp_path}/no-crictl "
                                     "not found)")
    assert (tmp_path / "x" / "pod-config.json").exists()  # the configs stay, for by hand


def test_an_existing_output_directory_is_not_reused(cli: Cli, archive: Path,
                                                   tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "pod-config.json").write_text("{}")
    r = cli("sandbox", archive, "--out", tmp_path / "used")
    assert (r.code, r.err.splitlines()[0]) == (
        2, f"error: {tmp_path}/used exists and is not an empty directory")


@pytest.mark.parametrize("args, code, first", [
    (["--name", "Not_A_Name"], 2, "error: --name 'Not_A_Name' is not a valid sandbox name"),
    (["--network", "host"], 2, "error: --network 'host': --engine crictl takes none or pod"),
])
def test_bad_options(cli: Cli, archive: Path, tmp_path: Path, args: list[str], code: int,
                     first: str) -> None:
    r = cli("sandbox", archive, "--out", tmp_path / "x", *args)
    assert (r.code, r.err.splitlines()[0]) == (code, first)


def test_an_incomplete_archive_is_refused(cli: Cli, make_archive: Callable[..., Path],
                                         tmp_path: Path) -> None:
    broken = make_archive("broken.tar", omit=("spec.dump",))
    r = cli("sandbox", broken, "--out", tmp_path / "x")
    assert (r.code, r.err) == (3, f"error: {broken}: spec.dump: missing from the archive\n"
                                  "hint: this does not look like a complete container "
                                  "checkpoint\n")
    assert not (tmp_path / "x").exists()
