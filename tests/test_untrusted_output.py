"""Untrusted text on a terminal: names from archives never forge lines or drive the terminal.

A container name, a member name or a garbled tar header can hold a newline
(to print a fake ``error: none; all good`` line), an escape sequence
(``ESC [2J`` clears the screen), a C1 control (0x9b is CSI on some
terminals) or a bidi override (U+202E reverses what follows). Tables, trees,
error and hint lines, warnings and log records show them escaped; JSON and
YAML stay valid and give back the exact value.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from migrate.cli import migration
from migrate.cli.output import EscapingFormatter, printable, say, table, to_json, tree
from tests.conftest import REPO, Result
from tests.test_untrusted_input import assert_clean_error, cut, member_info, read_members

Cli = Callable[..., Result]
INVALID_INPUT = 3
EVIL = "evil\nerror: none; all good\x1b[2J\u202e\x9b"
SHOWN = "evil\\nerror: none; all good\\x1b[2J\\u202e\\x9b"
# What must never reach a terminal raw (newline aside, which only tables and
# one-line messages escape).
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def no_raw_controls(*texts: str) -> None:
    for text in texts:
        assert not RAW.search(text), repr(text)


# --- tables, trees, JSON, YAML --------------------------------------------------------------


@pytest.fixture
def evil_archive(make_archive: Callable[..., Path]) -> Path:
    """A CRI-O archive of a container named EVIL, with a changed and a deleted file so named."""
    return make_archive("checkpoint-evil.tar", container=EVIL, rootfs_files={EVIL: b"x"},
                        deleted_files=[EVIL])


def test_show_table_escapes_the_container_name(cli: Cli, evil_archive: Path) -> None:
    r = cli("show", evil_archive)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 2 and lines[1].startswith(SHOWN + "   ")
    no_raw_controls(r.out, r.err)


def test_show_json_and_yaml_keep_the_exact_value(cli: Cli, evil_archive: Path) -> None:
    r = cli("show", evil_archive, "-o", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)[0]["container_name"] == EVIL
    assert "\\u001b[2J\\u202e\\u009b" in r.out
    y = cli("show", evil_archive, "-o", "yaml")
    assert y.code == 0, y.err
    assert yaml.safe_load(y.out)[0]["container_name"] == EVIL
    assert y.out.splitlines()[:2] == [
        '- container_name: "evil\\nerror: none; all good\\e[2J\\u202E\\x9B"',
        "  image: quay.io/adrianreber/counter:blog"]
    no_raw_controls(r.out, y.out)


def test_inspect_tree_escapes_names_and_paths(cli: Cli, evil_archive: Path) -> None:
    r = cli("inspect", evil_archive, "--rootfs-diff")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == SHOWN
    assert lines[-2:] == [f"    ├── {SHOWN} (file, 1 B)", f"    └── {SHOWN} (deleted)"]
    no_raw_controls(r.out)
    data = cli("inspect", evil_archive, "--rootfs-diff", "-o", "json").json()
    assert data["rootfs_diff"] == [{"path": EVIL, "size": 1, "type": "file"}]
    assert data["deleted_files"] == [EVIL]


def test_rootfs_diff_table_escapes_member_names(cli: Cli, evil_archive: Path) -> None:
    r = cli("rootfs-diff", evil_archive)
    assert r.code == 0, r.err
    assert r.out.splitlines()[1:] == [f"{SHOWN}   file      1 B", f"{SHOWN}   deleted   -"]
    no_raw_controls(r.out)


def test_list_escapes_names_and_skipped_paths(cli: Cli, evil_archive: Path,
                                              tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint-\n\x1b[2J.tar"
    bad.write_bytes(b"garbage" * 100)
    r = cli("list", tmp_path)
    assert r.code == 0, r.err
    assert len(r.out.splitlines()) == 2 and f"   {SHOWN}   CRI-O   " in r.out
    shown = str(tmp_path / "checkpoint-\\n\\x1b[2J.tar")
    assert r.err.splitlines() == [
        f"warning: skipped {shown}: {shown}: not a readable tar archive (invalid header)"]
    no_raw_controls(r.out, r.err)


# --- error lines ----------------------------------------------------------------------------


def test_error_naming_a_cut_member_stays_one_line(cli: Cli, make_archive: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    """A member named with a newline and ESC, cut short: the error quotes it escaped."""
    name = "x\nerror: none; all good\x1b[2J"
    whole = make_archive(extra_members={name: b"y" * 2048})
    info = member_info(whole, name)
    arch = cut(whole, tmp_path / "cut.tar", info.offset_data + 100)
    r = cli("show", arch)
    assert_clean_error(r, INVALID_INPUT, f"error: {arch}: x\\nerror: none; all good\\x1b[2J: "
                                         "truncated: its header declares 2048 bytes but the "
                                         "archive ends 100 bytes into it")
    no_raw_controls(r.err)


def test_error_quoting_a_garbled_header_stays_one_line(cli: Cli, counters_archive: Path,
                                                       tmp_path: Path) -> None:
    """After the last member, a header block whose name holds a newline and ESC, checksum bad."""
    last = read_members(counters_archive)[-1][0]
    end = last.offset_data + -(-last.size // 512) * 512
    block = (b"y\nerror: none\x1b[2J".ljust(100, b"\0") + b"\xff" * 412)
    arch = tmp_path / "garbled.tar"
    arch.write_bytes(counters_archive.read_bytes()[:end] + block + bytes(1024))
    r = cli("show", arch)
    assert_clean_error(r, INVALID_INPUT, f"error: {arch}: y\\nerror: none\\x1b[2J: truncated or "
                                         f"corrupt: the header at offset {end} after "
                                         f"{last.name} is not a valid tar header")


def test_usage_error_quotes_the_argument_on_one_line(cli: Cli) -> None:
    """click escapes an unknown option itself (newline as \\x0a); the line stays one line."""
    r = cli("show", "--no-such\x1b[2J\nerror: none")
    assert r.code == 2
    assert r.err.splitlines() == ["error: No such option: --no-such\\x1b[2J\\x0aerror: none",
                                  "hint: see 'migrate show --help'"]


# --- the boundary's own pieces --------------------------------------------------------------


def test_printable_escapes_controls_and_leaves_the_rest() -> None:
    assert printable("a\nb\rc\td\x00e\x1b[2Jf\x7fg\x85h\x9bi") == \
        "a\\nb\\rc\\td\\x00e\\x1b[2Jf\\x7fg\\x85h\\x9bi"
    assert printable("\u202e\u2066\u200f\u2028\udcff") == "\\u202e\\u2066\\u200f\\u2028\\udcff"
    assert printable("café \u2013 日本 \\x00 │") == "café \u2013 日本 \\x00 │"


def test_table_cells_are_one_line_each() -> None:
    assert table(("a", "b"), [("x\ny", "1"), ("z", "2")]) == \
        "A      B\nx\\ny   1\nz      2\n"


def test_tree_labels_are_one_line_each() -> None:
    assert tree(("r\n", [("a\x1b", [("b", [])]), ("c", [])])) == \
        "r\\n\n├── a\\x1b\n│   └── b\n└── c\n"


def test_say_and_progress_lines_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    say("note: a\nb")
    migration._progress("restore", "pod x\x1b[2J\nerror: none")
    assert capsys.readouterr().err == ("note: a\\nb\n"
                                       "migrate: restore: pod x\\x1b[2J\\nerror: none\n")


def test_log_records_are_one_escaped_line() -> None:
    fmt = EscapingFormatter("%(levelname)s: %(message)s")
    record = logging.LogRecord("m", logging.WARNING, __file__, 1, "volume %r at %s", ("v\n", "\x1b[2J"),
                               None)
    assert fmt.format(record) == "WARNING: volume 'v\\n' at \\x1b[2J"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    lines = fmt.format(record).splitlines()
    assert lines[0] == "WARNING: volume 'v\\n' at \\x1b[2J" and lines[1] == \
        "Traceback (most recent call last):"  # --debug tracebacks keep their lines


def test_the_cli_logs_through_the_escaping_formatter(tmp_path: Path) -> None:
    """The handler the CLI installs escapes records (pytest's own handlers hide it in-process)."""
    code = ("import logging; from migrate.cli.app import run; "
            f"run(['list', {str(tmp_path)!r}]); "
            "logging.getLogger('migrate.x').warning('a\\nerror: none\\x1b[2J')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.stderr.splitlines() == [f"no checkpoints found in {tmp_path}",
                                     "WARNING: a\\nerror: none\\x1b[2J"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30)


@given(json_values)
def test_to_json_is_json_dumps_with_controls_escaped(value: Any) -> None:
    text = to_json(value)
    assert json.loads(text) == value
    no_raw_controls(text.replace("\n", ""))
    if not RAW.search(json.dumps(value, ensure_ascii=False).replace("\n", "")):
        assert text == json.dumps(value, indent=2, ensure_ascii=False)


def test_yaml_output_round_trips_controls(cli: Cli, evil_archive: Path) -> None:
    r = cli("rootfs-diff", evil_archive, "-o", "yaml")
    assert r.code == 0, r.err
    assert yaml.safe_load(r.out) == {"rootfs_diff": [{"path": EVIL, "size": 1, "type": "file"}],
                                     "deleted_files": [EVIL]}
    no_raw_controls(r.out)


def test_a_nested_tar_name_in_an_error(cli: Cli, make_archive: Callable[..., Path]) -> None:
    """rootfs-diff.tar's entry, named with ESC, cut short: its name in the error is escaped."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("big\x1b[2J")
        info.size = 1 << 20
        tf.addfile(info, io.BytesIO(b"x" * info.size))
    whole = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(whole)) as tf:
        data_at = tf.getmember("big\x1b[2J").offset_data
    arch = make_archive(extra_members={"rootfs-diff.tar": whole[: data_at + 100]})
    assert_clean_error(cli("rootfs-diff", arch), INVALID_INPUT,
                       f"error: {arch}: rootfs-diff.tar: big\\x1b[2J: truncated: its header "
                       f"declares {1 << 20} bytes but the archive ends 100 bytes into it")
