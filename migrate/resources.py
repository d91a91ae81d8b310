"""Locate the templates/ and schemas/ shipped with the tool.

A wheel carries them inside the package (``migrate/_data``, see pyproject's
force-include); a source checkout or an editable install has them at the top of
the repository. Both layouts are tried, package first.
"""

from __future__ import annotations

from pathlib import Path

from migrate.errors import MigrateError

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """Return the directory holding ``templates`` or ``schemas``."""
    for candidate in (_PACKAGE_DIR / "_data" / kind, _PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise MigrateError(
        f"the tool's {kind}/ directory is missing from this installation",
        hint="reinstall migrate; a wheel must be built with `python -m build`",
    )


def schema_path(name: str) -> Path:
    """Path of a JSON Schema by file name (``show.schema.json``)."""
    return data_dir("schemas") / name

