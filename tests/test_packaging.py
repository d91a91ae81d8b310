"""The wheel carries templates/ and schemas/ and works outside a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(out), str(REPO)], check=True, capture_output=True)
    (whl,) = out.glob("migrate-*.whl")
    return whl


def test_wheel_contains_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for schema in (REPO / "schemas").glob("*.json"):
        assert f"migrate/_data/schemas/{schema.name}" in names
    for template in (REPO / "templates").iterdir():
        assert f"migrate/_data/templates/{template.name}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "migrate = migrate.cli.app:main" in text
    assert "kubectl-migrate = migrate.cli.app:main" in text


def test_installed_wheel_finds_schemas_without_a_checkout(
        wheel: Path, tmp_path: Path, counters_archive: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    # Run from an empty directory with only the installed copy importable first.
    code = ("import migrate.resources as r, migrate.validation as v, json, sys;"
            "p = r.schema_path('show.schema.json'); print(p);"
            "assert str(p).startswith(sys.argv[1]), p;"
            "v.validate([], 'show.schema.json', 'x')")
    r = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "migrate", "inspect", str(counters_archive),
                        "-o", "json"], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # The restore targets render from the wheel's templates and check against its schemas.
    for args in (["manifest", "--archive", str(counters_archive), "--image", "r/x:1",
                  "--node", "n"], ["sandbox", str(counters_archive), "--out", "box"]):
        r = subprocess.run([sys.executable, "-m", "migrate", *args], cwd=tmp_path,
                           env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "box" / "container-config.json").is_file()
