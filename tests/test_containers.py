"""Container resolution: -c, the default-container annotation, the only container."""

from __future__ import annotations

from typing import Any

import pytest

from migrate.errors import ExitCode, MigrateError
from migrate.pipeline.containers import DEFAULT_CONTAINER, resolve_container


def pod(*names: str, init: tuple[str, ...] = (), annotation: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "prod"}
    if annotation is not None:
        meta["annotations"] = {DEFAULT_CONTAINER: annotation}
    return {"metadata": meta, "spec": {
        "containers": [{"name": n, "image": "x"} for n in names],
        "initContainers": [{"name": n, "image": "x"} for n in init]}}


def test_the_only_container() -> None:
    assert resolve_container(pod("app"), None) == "app"


def test_requested_wins_and_may_name_an_init_container() -> None:
    assert resolve_container(pod("app", "sidecar", annotation="app"), "sidecar") == "sidecar"
    assert resolve_container(pod("app", init=("setup",)), "setup") == "setup"


def test_default_container_annotation() -> None:
    assert resolve_container(pod("app", "sidecar", annotation="sidecar"), None) == "sidecar"


def error(p: dict[str, Any], requested: str | None) -> MigrateError:
    with pytest.raises(MigrateError) as e:
        resolve_container(p, requested)
    return e.value


def test_several_containers_need_a_choice() -> None:
    e = error(pod("app", "sidecar"), None)
    assert e.exit_code == ExitCode.USAGE
    assert (e.message, e.hint) == ("pod prod/web has 2 containers; say which with -c",
                                   "its containers: app, sidecar")


def test_unknown_container_lists_the_choices() -> None:
    e = error(pod("app", init=("setup",)), "db")
    assert e.exit_code == ExitCode.NOT_FOUND
    assert (e.message, e.hint) == ("pod prod/web has no container 'db'",
                                   "its containers: app, setup")


def test_annotation_naming_a_missing_container() -> None:
    e = error(pod("app", "sidecar", annotation="gone"), None)
    assert e.exit_code == ExitCode.NOT_FOUND
    assert e.message == (f"pod prod/web: its {DEFAULT_CONTAINER} annotation names 'gone', "
                         "which is not one of its containers")


def test_init_containers_are_never_the_default() -> None:
    assert resolve_container(pod("app", init=("setup",)), None) == "app"
    assert error(pod(init=("setup",)), None).message == "pod prod/web has no containers"
