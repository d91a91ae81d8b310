"""kubectl habits at the boundary: global options before or after the command.

kubectl takes `-v`, `--context`, `--kubeconfig` and `-n` anywhere on the line;
click takes a group's options only before the command name. Rather than
declare the global options again on each of twenty commands, the command line
is rearranged once, before click sees it: a global option written after the
command moves in front of it, unless that command declares an option of the
same name itself (its own `-n`, or memparse's `--context`, which counts bytes).
Nothing after `--` moves, and the value of an option the command declares is
never mistaken for an option (`memparse --search -v`).
"""

from __future__ import annotations

import re
from typing import Any

#: Root options without a value, and with one.
FLAGS = frozenset({"--debug", "--verbose"})
VALUED = frozenset({"--kubeconfig", "--context", "-n", "--namespace"})
_VERBOSE = re.compile(r"-v+")


def _options(command: Any) -> tuple[set[str], set[str]]:
    """(every option name ``command`` declares, those that take a value)."""
    declared: set[str] = set()
    valued: set[str] = set()
    for param in getattr(command, "params", []):
        names = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
        if not any(n.startswith("-") for n in names):
            continue  # an argument
        declared.update(names)
        if not (getattr(param, "is_flag", False) or getattr(param, "count", False)):
            valued.update(names)
    return declared, valued


def _leaf(root: Any, args: list[str], start: int) -> tuple[Any, int] | None:
    """The command ``args[start:]`` runs and where its own arguments begin."""
    command, at = root, start
    while hasattr(command, "commands"):
        if at < len(args) and args[at] in command.commands:
            command, at = command.commands[args[at]], at + 1
        elif getattr(command, "default_command", None) and command is not root:
            command = command.commands[command.default_command]  # `sandbox ARCHIVE`
        else:
            return None
    return command, at


def globals_first(root: Any, args: list[str]) -> list[str]:
    """``args`` with the global options written after the command moved before it."""
    cut = args.index("--") if "--" in args else len(args)
    head, tail = args[:cut], args[cut:]
    _, root_valued = _options(root)
    i = 0
    while i < len(head) and head[i].startswith("-"):  # the root's own options
        i += 2 if head[i] in root_valued else 1
    found = _leaf(root, head, i) if i < len(head) else None
    if found is None:
        return args
    leaf, begins = found
    declared, valued = _options(leaf)
    kept: list[str] = []
    moved: list[str] = []
    j, rest = 0, head[begins:]
    while j < len(rest):
        token = rest[j]
        name, has_value = token.split("=", 1)[0], "=" in token
        takes = 1 if not has_value and j + 1 < len(rest) else 0
        if name in declared:
            kept += rest[j:j + 1 + (takes if name in valued else 0)]
            j += 1 + (takes if name in valued else 0)
        elif name in FLAGS or _VERBOSE.fullmatch(token):
            moved.append(token)
            j += 1
        elif name in VALUED:
            moved += rest[j:j + 1 + takes]
            j += 1 + takes
        else:
            kept.append(token)
            j += 1
    return head[:i] + moved + head[i:begins] + kept + tail


def complete_var(executable: str) -> str:
    """The environment variable a completion script sets to call ``executable`` back
    (``_MIGRATE_COMPLETE``, ``_KUBECTL_MIGRATE_COMPLETE``)."""
    return "_" + re.sub(r"[^A-Za-z0-9]", "_", executable).upper() + "_COMPLETE"
