"""The sandbox's private copy of a checkpoint (migrate/adapters/repack.py), read from a
directory: the root of a checkpoint image as Podman mounts it. An image comes from a
registry, so its root is untrusted like an archive: what a crafted one holds in place
of the metadata or among the members is refused, in one line, without following a link
out or waiting on a FIFO, and never leaves a partial copy readable by others.

`migrate sandbox --engine podman IMAGE` reaches this only as root with Podman; these
tests give the reader a directory made like such a root (the generated `counters`
archive unpacked), which is what Podman hands it.
"""

from __future__ import annotations

import errno
import json
import os
import tarfile
from pathlib import Path

import pytest

from migrate.adapters import repack
from migrate.adapters.repack import DirectorySource, write_copy
from migrate.errors import ArchiveError, InputError, UsageError
from migrate.settings import ArchiveSettings
from tests.conftest import deadline
from tests.test_untrusted_input import read_members


@pytest.fixture
def root(counters_archive: Path, tmp_path: Path) -> Path:
    """The checkpoint image's root: the archive's members as files and directories."""
    out = tmp_path / "root"
    out.mkdir()
    with tarfile.open(counters_archive) as tf:
        tf.extractall(out, filter="data")
    return out


def source(root: Path, **limits: int) -> DirectorySource:
    return DirectorySource(root, "registry.example/c:1", ArchiveSettings(**limits))


def test_the_copy_holds_every_member_with_the_replaced_ones(root: Path,
                                                            tmp_path: Path) -> None:
    src = source(root)
    assert src.config["id"] and src.spec["annotations"]
    assert src.dump_time()[:4] == "2023"  # the inventory's mtime, kept from the archive
    dest = tmp_path / "copy.tar"
    written = write_copy(src, dest, {"config.dump": b"{}"})
    assert written == dest.stat().st_size and dest.stat().st_mode & 0o777 == 0o600
    copied = {info.name: data for info, data in read_members(dest)}
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert set(copied) == on_disk
    assert copied["config.dump"] == b"{}"
    assert copied["spec.dump"] == (root / "spec.dump").read_bytes()
    assert copied["checkpoint/pages-1.img"] == (root / "checkpoint/pages-1.img").read_bytes()
    # Names sorted, depth first: the same image always gives the same bytes.
    again = tmp_path / "again.tar"
    write_copy(source(root), again, {"config.dump": b"{}"})
    assert repack.file_digest(again) == repack.file_digest(dest)


@pytest.mark.parametrize("member", ["config.dump", "spec.dump"])
def test_metadata_that_is_a_link_out_is_not_followed(root: Path, tmp_path: Path,
                                                     member: str) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text((root / member).read_text())  # valid, so only the link can fail it
    (root / member).unlink()
    (root / member).symlink_to(outside)
    with pytest.raises(ArchiveError) as e:
        getattr(source(root), member.split(".")[0])
    assert e.value.message.endswith(f"{member}: cannot be read: Too many levels of "
                                    "symbolic links"), e.value.message
    assert e.value.hint and "crafted" in e.value.hint


def test_metadata_that_is_a_fifo_is_refused_at_once(root: Path) -> None:
    (root / "spec.dump").unlink()
    os.mkfifo(root / "spec.dump")
    # Opened for reading, a FIFO with no writer blocks until one comes: never, here.
    with deadline(10, "reading a FIFO spec.dump"), pytest.raises(ArchiveError) as e:
        source(root).spec  # noqa: B018
    assert e.value.message.endswith("spec.dump: is not a regular file"), e.value.message


def test_metadata_that_is_a_directory_is_refused(root: Path) -> None:
    (root / "config.dump").unlink()
    (root / "config.dump").mkdir()
    with pytest.raises(ArchiveError) as e:
        source(root).config  # noqa: B018
    assert e.value.message.endswith("config.dump: is not a regular file"), e.value.message


def test_missing_oversized_and_malformed_metadata(root: Path) -> None:
    (root / "config.dump").unlink()
    with pytest.raises(ArchiveError) as e:
        source(root).config  # noqa: B018
    assert e.value.message.endswith("config.dump: missing from the image")
    assert e.value.hint == "this does not look like a checkpoint image"
    size = (root / "spec.dump").stat().st_size
    with pytest.raises(ArchiveError) as e:
        source(root, max_json_bytes=size - 1).spec  # noqa: B018
    assert e.value.message.endswith(f"spec.dump: is more than {size - 1} bytes")
    (root / "spec.dump").write_text("[" * 100 + "]" * 100)
    with pytest.raises(ArchiveError) as e:
        source(root).spec  # noqa: B018
    assert "spec.dump" in e.value.message and "deep" in e.value.message, e.value.message
    (root / "spec.dump").write_text(json.dumps({"annotations": {"a": 1}}))
    with pytest.raises(InputError) as schema:
        source(root).spec  # noqa: B018
    assert schema.value.message.startswith("registry.example/c:1: spec.dump: "), \
        schema.value.message


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_member_that_is_neither_file_nor_directory_stops_the_copy(
        root: Path, tmp_path: Path, kind: str) -> None:
    odd = root / "checkpoint" / "odd.img"
    if kind == "symlink":
        odd.symlink_to("/etc/shadow")
    else:
        os.mkfifo(odd)
    dest = tmp_path / "copy.tar"
    with deadline(10, f"copying a {kind}"), pytest.raises(ArchiveError) as e:
        write_copy(source(root), dest, {})
    what = "symlink" if kind == "symlink" else "special file"
    assert e.value.message.endswith(f"checkpoint/odd.img: is a {what}"), e.value.message
    assert dest.stat().st_mode & 0o777 == 0o600  # what was written is private


def test_a_link_in_place_of_the_inventory_gives_no_dump_time(root: Path,
                                                             tmp_path: Path) -> None:
    inventory = root / "checkpoint" / "inventory.img"
    inventory.rename(tmp_path / "inventory.img")
    inventory.symlink_to(tmp_path / "inventory.img")
    assert source(root).dump_time() == ""


def test_a_full_disk_says_so_and_where_the_copy_goes(root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_addfile = tarfile.TarFile.addfile
    calls = []

    def full(self: tarfile.TarFile, *args: object, **kw: object) -> None:
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_addfile(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    with pytest.raises(UsageError) as e:
        write_copy(source(root), tmp_path / "copy.tar", {})
    assert e.value.message == (f"cannot write the sandbox's copy of the checkpoint in "
                               f"{tmp_path}: No space left on device")
    assert e.value.hint == ("the file system is full: TMPDIR chooses where the copy goes; "
                            "it needs as much free space as the checkpoint holds")
