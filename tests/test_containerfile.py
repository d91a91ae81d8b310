"""The Containerfile builds the image the simulator stands in for: checked by reading it.

The image is built for real, and run in a Job on a real node, by
tests/test_real_node.py (e2e/real/toolimage.py); these quick checks keep the
file consistent with the package and with what the simulator assumes the
image runs (e2e/nodes/toolrun.py).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from e2e.nodes.toolrun import DEFAULT_ARGS, ENTRYPOINTS

REPO = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Containerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def test_the_entrypoint_is_the_console_script_the_simulator_runs() -> None:
    stage = dict(final_stage())
    entrypoint = json.loads(stage["ENTRYPOINT"])  # exec form: no shell in between
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["migrate"] and entrypoint[0] in scripts
    assert entrypoint[0] in ENTRYPOINTS
    assert tuple(json.loads(stage["CMD"])) == DEFAULT_ARGS


def test_the_image_installs_the_wheel_with_buildah_on_debian() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "docker.io/library/debian:bookworm-slim")  # python3 is 3.11
    run = " ".join(args for word, args in stage if word == "RUN")
    assert "buildah" in run and "ca-certificates" in run
    assert re.search(r"pip install .*migrate-\*\.whl", run)
    env = " ".join(args for word, args in stage if word == "ENV")
    assert "PATH=/opt/migrate/bin:" in env and "BUILDAH_ISOLATION=chroot" in env
    build = instructions()[:len(instructions()) - len(stage)]
    assert ("COPY", ". /src") in build  # the wheel is built from the checkout, in a stage


def test_the_readme_says_how_to_build_it() -> None:
    assert "buildah bud -f Containerfile -t" in (REPO / "README.md").read_text()


def test_the_build_context_leaves_the_virtualenv_out() -> None:
    ignored = (REPO / ".containerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)
