"""What `migrate build` and `migrate prune` write: private, and failures that are errors.

A checkpoint holds process memory, so every OCI layout either builder writes
is 0700 directories and 0600 files; a bad --encrypt-for JWK or an unwritable
--termination-message-path is refused up front with a hint, never a bug's exit 1.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from jwcrypto import jwk

from tests.conftest import Result
from tests.test_prune import archive, prune, pruned

Cli = Callable[..., Result]


def modes(root: Path) -> dict[str, int]:
    """Every entry under ``root`` (itself included) -> its permission bits."""
    out = {".": stat.S_IMODE(root.lstat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def assert_private(root: Path) -> None:
    found = modes(root)
    assert "index.json" in found and any(k.startswith("blobs/sha256/") for k in found)
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if (root / name).is_dir() else 0o600)}
    assert wrong == {}


# -- 1. the buildah builder's layout ------------------------------------------------------

real_buildah = pytest.mark.skipif(shutil.which("buildah") is None,
                                  reason="buildah is not installed")


@real_buildah
def test_buildah_layout_is_private(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    r = cli("build", counters_archive, "--builder", "buildah", "--compression", "gzip",
            "--no-push", "--oci-layout", layout)
    assert r.code == 0, r.err
    assert_private(layout)


@real_buildah
def test_buildah_layout_in_a_users_directory(cli: Cli, counters_archive: Path,
                                             tmp_path: Path) -> None:
    """The layout's own entries are narrowed; the directory and its other files are not."""
    layout = tmp_path / "existing"
    layout.mkdir(mode=0o755)
    (layout / "notes.txt").write_text("mine\n")
    (layout / "notes.txt").chmod(0o644)
    r = cli("build", counters_archive, "--builder", "buildah", "--compression", "gzip",
            "--no-push", "--oci-layout", layout)
    assert r.code == 0, r.err
    found = modes(layout)
    assert (found.pop("."), found.pop("notes.txt")) == (0o755, 0o644)
    assert found["blobs"] == found["blobs/sha256"] == 0o700
    assert {m for k, m in found.items() if not (layout / k).is_dir()} == {0o600}


def test_buildah_layout_narrowing_follows_no_symlink(tmp_path: Path) -> None:
    from migrate.adapters.buildah import _private_layout

    layout, outside = tmp_path / "layout", tmp_path / "outside"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("x")
    for p in (outside, outside / "secret"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    (layout / "index.json").write_text("{}")
    (layout / "blobs" / "sha256" / "abc").write_text("blob")
    (layout / "blobs" / "sha256" / "link").symlink_to(outside / "secret")
    (layout / "blobs" / "dirlink").symlink_to(outside)
    (layout / "oci-layout").symlink_to(outside / "secret")
    for p in (layout / "index.json", layout / "blobs" / "sha256" / "abc"):
        p.chmod(0o644)
    _private_layout(layout, new=False)
    assert stat.S_IMODE((layout / "index.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((layout / "blobs" / "sha256" / "abc").stat().st_mode) == 0o600
    assert stat.S_IMODE((layout / "blobs" / "sha256").stat().st_mode) == 0o700
    assert modes(outside) == {".": 0o755, "secret": 0o644}


# -- 2. the native builder's layout -------------------------------------------------------


def test_native_layout_and_its_new_parents_are_private(cli: Cli, counters_archive: Path,
                                                       tmp_path: Path) -> None:
    layout = tmp_path / "a" / "b" / "layout"
    r = cli("build", counters_archive, "--no-push", "--oci-layout", layout)
    assert r.code == 0, r.err
    assert_private(layout)
    assert modes(tmp_path / "a")["."] == modes(tmp_path / "a" / "b")["."] == 0o700


def test_native_layout_follows_no_planted_symlink(cli: Cli, counters_archive: Path,
                                                  tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "index.json.partial").symlink_to(victim)
    r = cli("build", counters_archive, "--no-push", "--oci-layout", layout)
    assert victim.read_text() == "untouched\n"
    assert r.code == 2, r.err
    assert r.err.startswith(f"error: {layout}/index.json.partial: cannot write the OCI "
                            "layout: "), r.err
    assert "hint: " in r.err


def test_unwritable_native_layout_is_no_bug(cli: Cli, counters_archive: Path,
                                            tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    layout = tmp_path / "file" / "layout"
    r = cli("build", counters_archive, "--no-push", "--oci-layout", layout)
    assert r.code == 2, r.err
    assert r.err.splitlines()[0] == (f"error: {layout}: cannot write the OCI layout: "
                                     "Not a directory")
    assert r.err.splitlines()[1].startswith("hint: ")


# -- 3. a JWK that is not for encryption --------------------------------------------------


@pytest.mark.parametrize(("fields", "what"), [
    ({"use": "sig"}, 'the JWK\'s "use" is not "enc": not an encryption key'),
    ({"key_ops": ["verify"]}, 'the JWK\'s "key_ops" lack "wrapKey": it may not wrap a '
                              "layer key"),
])
def test_a_signing_jwk_is_refused(cli: Cli, counters_archive: Path, tmp_path: Path,
                                  fields: dict[str, object], what: str) -> None:
    key = json.loads(jwk.JWK.generate(kty="EC", crv="P-256").export_public())
    path = tmp_path / "node.jwk"
    path.write_text(json.dumps(key | fields))
    layout = tmp_path / "never"
    r = cli("build", counters_archive, "--no-push", "--oci-layout", layout,
            "--encrypt-for", f"jwe:{path}")
    assert r.code == 3, r.err
    assert r.err.splitlines() == [
        f"error: {path}: {what}",
        'hint: give the recipient\'s encryption key: a JWK with "use": "enc" (or no "use") '
        'and, if it has "key_ops", "wrapKey" among them']
    assert not layout.exists()


# -- 4. --termination-message-path --------------------------------------------------------


@pytest.mark.parametrize(("where", "code", "said"), [
    ("missing/x", 4, "no such directory"), (".", 2, "is a directory")])
def test_build_refuses_an_unwritable_termination_path_first(
        cli: Cli, counters_archive: Path, tmp_path: Path, where: str, code: int,
        said: str) -> None:
    layout, message = tmp_path / "layout", tmp_path / where
    r = cli("build", counters_archive, "--no-push", "--oci-layout", layout,
            "--termination-message-path", message)
    assert r.code == code, r.err
    first, hint = r.err.splitlines()
    assert first.startswith(f"error: --termination-message-path {message}: {said}")
    assert hint.startswith("hint: ")
    assert not layout.exists()  # refused before any work


def test_build_reports_before_a_failed_termination_message(cli: Cli, counters_archive: Path,
                                                           tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    r = cli("build", counters_archive, "--no-push", "--oci-layout", layout,
            "--termination-message-path", "/dev/full", "-o", "json")
    assert r.code == 10, r.err
    assert r.json()["destination"] == str(layout)  # the report is out
    assert r.err.startswith("error: --termination-message-path /dev/full: could not write "
                            "the termination message: No space left on device\nhint: ")


@pytest.mark.parametrize(("where", "code", "said"), [
    ("missing/x", 4, "no such directory"), (".", 2, "is a directory")])
def test_prune_refuses_an_unwritable_termination_path_first(
        cli: Cli, tmp_path: Path, where: str, code: int, said: str) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    name = archive(ckpt, "web", 30)
    message = tmp_path / where
    r = prune(cli, ckpt, "--older-than", "1d", "--termination-message-path", str(message))
    assert r.code == code, r.err
    assert r.err.startswith(f"error: --termination-message-path {message}: {said}")
    assert (ckpt / name).exists()  # refused before any work


def test_prune_reports_before_a_failed_termination_message(cli: Cli, tmp_path: Path) -> None:
    name = archive(tmp_path, "web", 30)
    r = prune(cli, tmp_path, "--older-than", "1d", "--termination-message-path", "/dev/full")
    assert r.code == 10, r.err
    assert pruned(as_succeeded(r)) == [name]
    assert r.err.startswith("error: --termination-message-path /dev/full: could not write "
                            "the termination message: No space left on device\nhint: ")


def as_succeeded(r: Result) -> Result:
    """``r`` as `pruned` wants it (exit 0): the report is checked, not the exit code."""
    return Result(0, r.out, r.err)


def test_the_termination_message_is_private_and_follows_no_link(
        cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    message = tmp_path / "message"
    r = cli("build", counters_archive, "--no-push", "--oci-layout", tmp_path / "layout",
            "--termination-message-path", message)
    assert r.code == 0, r.err
    assert message.stat().st_mode & 0o777 == 0o600
    elsewhere = tmp_path / "elsewhere"
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    r = cli("build", counters_archive, "--no-push", "--oci-layout", tmp_path / "layout2",
            "--termination-message-path", link)
    assert r.code == 10, r.err
    assert not elsewhere.exists()
