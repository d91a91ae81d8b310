"""Human-readable units, the way checkpointctl prints them."""

from __future__ import annotations

import re

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: int) -> str:
    """Binary units with one decimal (``8.6 MiB``, ``3.0 KiB``); below 1024 ``N B``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_micros(us: int) -> str:
    """Durations in microseconds as CRIU's statistics report them (``100809 us``)."""
    return f"{us} us"


_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """``"1048576"``, ``"64G"``, ``"512MiB"`` -> bytes (suffixes are binary units)."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    digits = value.rstrip("kmgt")
    suffix = value[len(digits):]
    if not digits.isdigit() or suffix not in _SUFFIXES:
        raise ValueError("not a size")
    return int(digits) * _SUFFIXES[suffix]


_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``"30d"``, ``"12h"``, ``"1h30m"``, ``"2w"`` -> seconds (a bare number is seconds)."""
    value = text.strip().lower()
    if value.isdigit():
        return int(value)
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError("not a duration")
    return sum(int(n) * _SECONDS[u] for n, u in parts)
