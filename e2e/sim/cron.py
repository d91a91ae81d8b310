"""Cron schedules as the CronJob controller reads them (robfig/cron v3's standard parser).

Five fields, minute hour day-of-month month day-of-week:

    *  ?           every value (`?` too, as robfig allows)
    5  5-10  */15  values, ranges, steps (`a/n` means a-max/n)
    1,15,30        lists of any of these
    jan-dec        month names, sun-sat day names (case-insensitive)
    @yearly @annually @monthly @weekly @daily @midnight @hourly

Days of the week run 0 (Sunday) to 6, as in robfig (7 is refused). When both
day fields are restricted (neither starts with `*` or `?`), a day matches
either one; otherwise it must match both (cron's classic rule). `@every`
and `TZ=`/`CRON_TZ=` prefixes are refused: the API server refuses the
latter (the `timeZone` field says it), the simulator does not run the former.

Times are computed in the schedule's zone (IANA, `zoneinfo`), on wall-clock
minutes: a minute that does not exist in that zone (a spring-forward gap) is
skipped, one that happens twice (fall back) runs once, at its first instance.

`CronClock` is what time the CronJob controller thinks it is: the wall clock
until a test sets it, then where it was put.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["MISSED_TOO_MANY", "CronClock", "Schedule", "load_zone", "most_recent",
           "parse_schedule"]

#: More missed start times than this and the controller only warns (as Kubernetes does).
MISSED_TOO_MANY = 100

_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    start=1)}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, minimum, maximum, names) per field, in schedule order.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 6, _DAYS))
_YEARS_AHEAD = 5  # robfig gives up looking after this many years (e.g. "0 0 30 2 *")


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: the allowed values of each field, in a time zone."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool  # day of month or day of week was `*`/`?`: both must match
    zone: dt.tzinfo

    def _day_matches(self, t: dt.datetime) -> bool:
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        return (dom and dow) if self.any_day else (dom or dow)

    def _next_wall(self, t: dt.datetime) -> dt.datetime | None:
        """The first matching naive wall-clock minute strictly after naive `t`."""
        t = t.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = t.year + _YEARS_AHEAD
        while t.year <= limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + dt.timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + dt.timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += dt.timedelta(minutes=1)
            else:
                return t
        return None

    def next(self, after: dt.datetime) -> dt.datetime | None:
        """The first scheduled time strictly after the aware `after` (None: never)."""
        wall = after.astimezone(self.zone).replace(tzinfo=None)
        while True:
            found = self._next_wall(wall)
            if found is None:
                return None
            local = found.replace(tzinfo=self.zone)
            exists = local.astimezone(dt.UTC).astimezone(self.zone).replace(tzinfo=None) == found
            if exists and local > after:
                return local.astimezone(dt.UTC)
            wall = found


def load_zone(name: str | None) -> dt.tzinfo:
    """The IANA zone `name` (None or "": UTC, the simulated controller's local time)."""
    if not name:
        return dt.UTC
    if name == "Local" or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {name}") from e


def _names(token: str, names: dict[str, int]) -> int:
    lowered = token.lower()
    if lowered in names:
        return names[lowered]
    if not token.isdigit():
        raise ValueError(f"failed to parse int from {token}")
    return int(token)


def _range(part: str, low: int, high: int, names: dict[str, int]) -> tuple[set[int], bool]:
    """One comma-separated part: its values and whether it was a bare `*`/`?`."""
    span, _, step_text = part.partition("/")
    star = span in ("*", "?")
    if star:
        start, end = low, high
    else:
        first, dash, last = span.partition("-")
        start = _names(first, names)
        end = _names(last, names) if dash else (high if step_text else start)
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"invalid step {step_text!r} in {part!r}")
        step = int(step_text)
    if start < low:
        raise ValueError(f"beginning of range ({start}) below minimum ({low}): {part}")
    if end > high:
        raise ValueError(f"end of range ({end}) above maximum ({high}): {part}")
    if start > end:
        raise ValueError(f"beginning of range ({start}) beyond end of range ({end}): {part}")
    return set(range(start, end + 1, step)), star and step == 1


def parse_schedule(text: str, zone: str | None = None) -> Schedule:
    """Parse a CronJob's `schedule` (and `timeZone`); ValueError says what is wrong."""
    spec = text.strip()
    if "TZ" in spec:
        raise ValueError("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
    if spec.startswith("@"):
        if spec.startswith("@every"):
            raise ValueError("@every schedules are not supported by the simulator")
        if spec.lower() not in _DESCRIPTORS:
            raise ValueError(f"unrecognized descriptor: {spec}")
        spec = _DESCRIPTORS[spec.lower()]
    fields = spec.split()
    if len(fields) != len(_FIELDS):
        raise ValueError(f"expected exactly 5 fields, found {len(fields)}: {text}")
    values: list[frozenset[int]] = []
    stars: list[bool] = []
    for raw, (_, low, high, names) in zip(fields, _FIELDS, strict=True):
        allowed: set[int] = set()
        star = False
        for part in raw.split(","):
            found, is_star = _range(part, low, high, names)
            allowed |= found
            star = star or is_star
        values.append(frozenset(allowed))
        stars.append(star)
    minutes, hours, days, months, weekdays = values
    return Schedule(minutes, hours, days, months, weekdays, any_day=stars[2] or stars[4],
                    zone=load_zone(zone))


def most_recent(schedule: Schedule, earliest: dt.datetime, now: dt.datetime
                ) -> tuple[dt.datetime | None, int]:
    """The latest scheduled time in (earliest, now], and about how many were missed.

    As the controller's mostRecentScheduleTime: the count is estimated from
    the interval between the first two times (exact for regular schedules),
    and only the most recent time is ever started.
    """
    first = schedule.next(earliest)
    if first is None or now < first:
        return None, 0
    second = schedule.next(first)
    if second is None or now < second:
        return first, 1
    interval = max(int((second - first).total_seconds()), 1)
    missed = int((now - first).total_seconds()) // interval + 1
    # Walk forward from a little before the estimate: irregular schedules
    # ("30 6-16/4 * * 1-5") make it a little off; an overshoot walks from the start.
    for start in (max(earliest, first + dt.timedelta(seconds=(missed - 3) * interval)),
                  earliest):
        latest = None
        t = schedule.next(start)
        while t is not None and t <= now:
            latest, t = t, schedule.next(t)
        if latest is not None:
            return latest, missed
    return first, missed  # pragma: no cover - the walk from `earliest` finds `first`


class CronClock:
    """What time the CronJob controller thinks it is: the wall clock, or a set time."""

    def __init__(self) -> None:
        self._fixed: dt.datetime | None = None
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        """The controller's current time (aware, UTC)."""
        with self._lock:
            return self._fixed if self._fixed is not None else dt.datetime.now(dt.UTC)

    def set(self, to: dt.datetime) -> None:
        """Stop the clock at `to` (aware); it never goes back."""
        if to.tzinfo is None:
            raise ValueError("the cron clock needs an aware datetime (tzinfo set)")
        with self._lock:
            current = self._fixed if self._fixed is not None else dt.datetime.now(dt.UTC)
            if to < current:
                raise ValueError(f"the cron clock cannot go back from {current} to {to}")
            self._fixed = to.astimezone(dt.UTC)

    def seconds_until(self, t: dt.datetime) -> float | None:
        """Real seconds until the clock shows `t` (None: a set clock never gets there)."""
        with self._lock:
            if self._fixed is not None:
                return None
        return max(0.0, (t - dt.datetime.now(dt.UTC)).total_seconds())
