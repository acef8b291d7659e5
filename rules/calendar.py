"""Working calendars and rule durations. Pure: every function takes the moment it needs (no I/O, no clock).

A client's calendar in config (every key optional):

    calendar:
      timezone: Europe/Moscow        # IANA name; default UTC
      country: RU                    # `holidays` country code; default: no public holidays
      subdivision: null              # `holidays` subdivision code, with country only
      hours:                         # default mon-fri 09:00-18:00; days not listed are off
        mon-fri: "10:00-19:00"
        fri: "10:00-17:00"           # a single day overrides a range
        sat: off                     # off or null: a day off
      saturday_hours: "11:00-15:00"  # hours of an extra working day whose weekday is off
      days_off: ["2026-12-31"]       # the agency's own days off
      working_days: ["2026-11-07"]   # e.g. a Saturday made a working day

Conventions:
* A day works if in working_days; else not if in days_off or a public holiday of the country;
  else yes if `holidays` lists it as a weekend working day (RU 2025-11-01); else if its weekday
  has hours. A working day whose weekday is off uses saturday_hours, else Monday's hours.
* Working hours are half-open: with 10:00-19:00, 10:00 is working time and 19:00 is not.
* Datetimes must be timezone-aware (naive ones raise ValueError); results are in the calendar's zone.
* Working days keep the wall-clock time, counted from next_working_moment: with 10:00-19:00,
  2 working days after Friday 18:30 is Tuesday 18:30; after Friday 19:30 or Saturday, Wednesday
  10:00. A time outside the target day's hours is clamped to them (18:30 -> a Saturday's 15:00).
* Wall-clock results: a time in the spring DST gap moves forward by the gap (03:30 -> 04:30 in
  Kyiv on 2026-03-29); an ambiguous autumn time takes fold=0, the first (summer-time) one.
* Minutes and hours, working or not, are elapsed time (UTC arithmetic), not wall-clock.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Iterator, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

Span = tuple[time, time]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CONFIG_KEYS = ("country", "days_off", "hours", "saturday_hours", "subdivision", "timezone", "working_days")
MAX_IDLE_DAYS = 3660  # give up after ten years without a working day
_SPAN = re.compile(r"\s*(\d{1,2}):(\d{2})\s*[-–]\s*(\d{1,2}):(\d{2})\s*")
_ONE_DAY = timedelta(days=1)


class CalendarError(ValueError):
    """A calendar configuration is invalid."""


def _aware(dt: datetime) -> datetime:
    """Return dt if it is a timezone-aware datetime, else raise ValueError."""
    if not isinstance(dt, datetime) or dt.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {dt!r}")
    return dt


def _wall(d: date, t: time, tz: tzinfo) -> datetime:
    """Wall-clock d t in tz: a time in a DST gap moves forward by the gap, fold=0 if ambiguous."""
    return datetime.combine(d, t.replace(tzinfo=None, fold=0), tzinfo=tz).astimezone(UTC).astimezone(tz)


@lru_cache(maxsize=512)
def _country_year(country: str, subdiv: str | None, year: int) -> tuple[frozenset[date], frozenset[date]]:
    """Public holidays and weekend working days that `holidays` lists for one country and year."""
    found = holidays.country_holidays(country, subdiv=subdiv, years=year)
    return (frozenset(d for d in found if d.year == year),
            frozenset(d for d in found.weekend_workdays if d.year == year))


def _check_zone(name: Any) -> None:
    """Reject a name that is not an IANA time zone."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise CalendarError(f"timezone: expected an IANA name such as 'Europe/Kyiv', got {name!r}"
                            f"{_zone_hint(name)}") from None


def _zone_hint(name: Any) -> str:
    """'; did you mean "Europe/Kyiv"?' for a near miss of an IANA name (any case), else ''."""
    from zoneinfo import available_timezones
    zones = {z.casefold(): z for z in available_timezones()}
    close = difflib.get_close_matches(str(name).casefold(), list(zones), n=1, cutoff=0.8)
    return f'; did you mean "{zones[close[0]]}"?' if close else ""


def _check_span(key: str, value: Any) -> None:
    """Reject anything but None or a (start, end) pair of naive times with start < end."""
    if value is not None and not (isinstance(value, tuple) and len(value) == 2 and value[0] < value[1]
                                  and all(isinstance(t, time) and t.tzinfo is None for t in value)):
        raise CalendarError(f"{key}: expected (start, end) naive times with start < end, got {value!r}")


def _check_hours(hours: Any) -> None:
    """Reject weekday hours that are not {0..6: (start, end) or None} with some working day."""
    if not isinstance(hours, Mapping) or set(hours) - set(range(7)) or not any(hours.values()):
        raise CalendarError(f"hours: expected weekdays 0 (Mon) to 6 (Sun), some with hours, got {hours!r}")
    for day, span in hours.items():
        _check_span(f"hours[{day}]", span)


def _check_country(country: Any, subdivision: Any) -> None:
    """Reject a country or subdivision code that `holidays` does not know."""
    known = holidays.list_supported_countries()
    if country is not None and country not in known:
        raise CalendarError(f"country: expected a `holidays` code such as 'UA' or 'RU', got {country!r}")
    if subdivision is not None and subdivision not in known.get(country or "", []):
        raise CalendarError(f"subdivision: expected a `holidays` code for {country!r}, got {subdivision!r}")


def _parse_span(key: str, value: Any) -> Span | None:
    """Parse '10:00-19:00' into two times; None, 'off' or False (YAML's bare off) is a day off."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    m = _SPAN.fullmatch(value) if isinstance(value, str) else None
    try:
        start, end = time(int(m[1]), int(m[2])), time(int(m[3]), int(m[4]))  # type: ignore[index]
        if start < end:
            return start, end
    except (TypeError, ValueError):
        pass
    raise CalendarError(f"{key}: expected working hours such as '10:00-19:00' or 'off', got {value!r}")


def _parse_hours(value: Any) -> dict[int, Span | None]:
    """Weekday hours from {'mon-fri': '10:00-19:00', 'sat': 'off'}; a single day beats a range."""
    if not isinstance(value, Mapping) or not value:
        raise CalendarError(f"hours: expected a mapping such as {{'mon-fri': '10:00-19:00'}}, got {value!r}")
    hours: dict[int, Span | None] = {}
    for key, span in sorted(value.items(), key=lambda kv: "-" not in str(kv[0])):  # ranges first
        ends = [DAYS.index(p) if p in DAYS else -1 for p in key.strip().lower().split("-")] \
            if isinstance(key, str) else []
        if len(ends) not in (1, 2) or not 0 <= ends[0] <= ends[-1]:
            raise CalendarError(f"hours: expected days such as 'mon-fri' or 'sat', got {key!r}")
        hours.update(dict.fromkeys(range(ends[0], ends[-1] + 1), _parse_span(f"hours.{key}", span)))
    if not any(hours.values()):
        raise CalendarError(f"hours: expected at least one day with working hours, got {value!r}")
    return hours


def _parse_dates(key: str, value: Any) -> frozenset[date]:
    """A list of 'YYYY-MM-DD' strings or dates."""
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise CalendarError(f"{key}: expected a list of dates such as ['2026-12-31'], got {value!r}")
    out = set()
    for i, item in enumerate(value):
        try:
            out.add(item if type(item) is date else date.fromisoformat(item))
        except (TypeError, ValueError):
            raise CalendarError(f"{key}[{i}]: expected a date 'YYYY-MM-DD', got {item!r}") from None
    return frozenset(out)


@dataclass(frozen=True)
class WorkingCalendar:
    """When a client works: time zone, weekday hours, public holidays, extra days off and on."""

    timezone: str = "UTC"
    hours: Mapping[int, Span | None] = field(
        default_factory=lambda: dict.fromkeys(range(5), (time(9), time(18))), hash=False)
    country: str | None = None
    subdivision: str | None = None
    extra_days_off: frozenset[date] = frozenset()
    extra_working_days: frozenset[date] = frozenset()
    saturday_hours: Span | None = None

    def __post_init__(self) -> None:
        """Validate the fields; hours gets all seven weekdays, the date sets become frozensets."""
        _check_zone(self.timezone)
        _check_hours(self.hours)
        _check_span("saturday_hours", self.saturday_hours)
        _check_country(self.country, self.subdivision)
        object.__setattr__(self, "hours", MappingProxyType({k: self.hours.get(k) for k in range(7)}))
        object.__setattr__(self, "extra_days_off", frozenset(self.extra_days_off))
        object.__setattr__(self, "extra_working_days", frozenset(self.extra_working_days))
        for both in sorted(self.extra_days_off & self.extra_working_days)[:1]:
            raise CalendarError(f"working_days: expected dates not in days_off, got {both.isoformat()!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> WorkingCalendar:
        """Build a calendar from config (see the module docstring); CalendarError on bad values."""
        if not isinstance(cfg, Mapping):
            raise CalendarError(f"calendar: expected a mapping of {', '.join(CONFIG_KEYS)}, got {cfg!r}")
        for key in cfg:
            if key not in CONFIG_KEYS:
                raise CalendarError(f"calendar: expected keys among {', '.join(CONFIG_KEYS)}, got {key!r}")
        kwargs: dict[str, Any] = {k: cfg[k] for k in ("timezone", "country", "subdivision")
                                  if cfg.get(k) is not None}
        if "hours" in cfg:
            kwargs["hours"] = _parse_hours(cfg["hours"])
        return cls(**kwargs, saturday_hours=_parse_span("saturday_hours", cfg.get("saturday_hours")),
                   extra_days_off=_parse_dates("days_off", cfg.get("days_off") or ()),
                   extra_working_days=_parse_dates("working_days", cfg.get("working_days") or ()))

    @property
    def tz(self) -> ZoneInfo:
        """The calendar's time zone."""
        return ZoneInfo(self.timezone)

    def _date(self, d: date | datetime) -> date:
        """A date, or the local date of an aware datetime."""
        return _aware(d).astimezone(self.tz).date() if isinstance(d, datetime) else d

    def _hours_for(self, d: date) -> Span | None:
        """The wall-clock hours of day d, or None if it is a day off."""
        own = self.hours[d.weekday()]
        default = self.saturday_hours or self.hours[0] or next(h for h in self.hours.values() if h)
        if d in self.extra_working_days:
            return own or default
        if d in self.extra_days_off:
            return None
        if self.country is not None:
            public, weekend_workdays = _country_year(self.country, self.subdivision, d.year)
            if d in public:
                return None
            if d in weekend_workdays:
                return own or default
        return own

    def is_working_day(self, d: date) -> bool:
        """Is d a working day (a datetime counts by its local date)?"""
        return self._hours_for(self._date(d)) is not None

    def working_hours_on(self, d: date) -> tuple[datetime, datetime] | None:
        """Start and end of working hours on d as aware datetimes in tz, or None on a day off."""
        d = self._date(d)
        span = self._hours_for(d)
        return None if span is None else (_wall(d, span[0], self.tz), _wall(d, span[1], self.tz))

    def is_working_time(self, dt: datetime) -> bool:
        """Is dt inside working hours (start included, end excluded)?"""
        span = self.working_hours_on(_aware(dt).astimezone(self.tz).date())
        return span is not None and span[0] <= dt.astimezone(UTC) < span[1]  # UTC: exact across a fold

    def _days(self, d: date, step: int, working: bool = True) -> Iterator[date]:
        """The (working) days after d (step=1) or before it (step=-1), d excluded."""
        idle = 0
        while idle < MAX_IDLE_DAYS:
            d += step * _ONE_DAY
            working_day = not working or self.is_working_day(d)
            idle = 0 if working_day else idle + 1
            if working_day:
                yield d
        raise CalendarError(f"calendar: expected a working day within {MAX_IDLE_DAYS} days, got none by {d}")

    def _spans(self, dt: datetime, step: int) -> Iterator[tuple[datetime, datetime]]:
        """Working intervals in UTC from dt forwards (step=1) or backwards (step=-1), clipped at dt."""
        first, dt = dt.astimezone(self.tz).date(), dt.astimezone(UTC)  # compare instants, not wall clocks
        for d in self._days(first - step * _ONE_DAY, step):
            start, end = self.working_hours_on(d) or (dt, dt)
            start, end = (max(start, dt), end) if step > 0 else (start, min(end, dt))
            if start < end:
                yield start.astimezone(UTC), end.astimezone(UTC)

    def next_working_moment(self, dt: datetime) -> datetime:
        """dt itself (in tz) if inside working hours, else the start of the next working hours."""
        return next(self._spans(_aware(dt), 1))[0].astimezone(self.tz)

    def add_working_days(self, dt: datetime, n: int) -> datetime:
        """Same wall-clock time n working days later (n < 0: earlier) from next_working_moment(dt)."""
        start = self.next_working_moment(dt)
        days, d = self._days(start.date(), 1 if n >= 0 else -1), start.date()
        for _ in range(abs(n)):
            d = next(days)
        opens, closes = self.working_hours_on(d) or (start, start)
        return min(max(_wall(d, start.time(), self.tz), opens), closes)

    def add_working_time(self, dt: datetime, delta: timedelta) -> datetime:
        """dt plus delta of working time only (negative delta: backwards); zero returns dt."""
        dt, left, step = _aware(dt), abs(delta), (1 if delta >= timedelta(0) else -1)
        for start, end in self._spans(dt, step) if left else ():
            if left <= end - start:
                return (start + left if step > 0 else end - left).astimezone(self.tz)
            left -= end - start
        return dt.astimezone(self.tz)

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """The working time from start to end (negative when end is before start): with 10:00-19:00,
        18:59 to 10:02 the next working day is 3 minutes."""
        start, end = _aware(start), _aware(end)
        if end < start:
            return -self.working_time_between(end, start)
        total = timedelta(0)
        for opens, closes in self._spans(start, 1) if end > start else ():
            if opens >= end:
                break
            total += min(closes, end) - opens
        return total

    def to_config(self) -> dict[str, Any]:
        """The calendar as from_config reads it back (for a job that carries its calendar)."""
        def span(value: Span | None) -> str:
            return "off" if value is None else f"{value[0]:%H:%M}-{value[1]:%H:%M}"
        cfg: dict[str, Any] = {"timezone": self.timezone, "hours": {DAYS[d]: span(self.hours[d]) for d in range(7)},
                               "days_off": sorted(d.isoformat() for d in self.extra_days_off),
                               "working_days": sorted(d.isoformat() for d in self.extra_working_days)}
        if self.country is not None:
            cfg["country"] = self.country
        if self.subdivision is not None:
            cfg["subdivision"] = self.subdivision
        if self.saturday_hours is not None:
            cfg["saturday_hours"] = span(self.saturday_hours)
        return cfg

    def working_days_before(self, d: date | datetime, n: int) -> datetime:
        """Start of working hours n working days before d (n=0: d, or the last working day before it)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n: expected a whole number of working days >= 0, got {n!r}")
        day = self._date(d)
        days = self._days(day, -1)
        target = day if n == 0 and self.is_working_day(day) else next(days)
        for _ in range(n - 1):
            target = next(days)
        return self.working_hours_on(target)[0]  # type: ignore[index]

    def next_daily(self, dt: datetime, at: time, working_days_only: bool = True) -> datetime:
        """The first wall-clock `at` strictly after dt, on working days only by default."""
        if at.tzinfo is not None:
            raise ValueError(f"at: expected a wall-clock time without tzinfo, got {at!r}")
        days = self._days(_aware(dt).astimezone(self.tz).date() - _ONE_DAY, 1, working=working_days_only)
        return next(moment for moment in (_wall(d, at, self.tz) for d in days) if moment > dt.astimezone(UTC))


UNITS = ("minutes", "hours", "days", "weeks")
_UNIT_WORDS = {"min": "minutes", "mins": "minutes", "minute": "minutes", "minutes": "minutes",
               "h": "hours", "hr": "hours", "hrs": "hours", "hour": "hours", "hours": "hours",
               "day": "days", "days": "days", "week": "weeks", "weeks": "weeks"}
_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"\s*{_NUMBER}(?:\s*[-–]\s*{_NUMBER})?\s*(working\s+)?([a-z]+)\s*", re.IGNORECASE)
EXPECTED_DURATION = "expected a duration such as '3 days', '2 working days' or '30-60 minutes'"


def _problem(amount: float, unit: str, working: bool, upto: float | None) -> str | None:
    """What is wrong with these Duration fields, or None."""
    if unit not in UNITS:
        return f"expected a unit among {', '.join(UNITS)}"
    if working and unit == "weeks":
        return "expected working minutes, hours or days (working weeks are not defined)"
    if upto is not None and upto <= amount:
        return "expected a range whose end is greater than its start"
    if unit in ("days", "weeks") and not all(float(x).is_integer() for x in (amount, upto or 0)):
        return f"expected a whole number of {unit}"
    return None


def _number(x: float) -> str:
    """3.0 -> '3', 1.5 -> '1.5'."""
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Duration:
    """A rule's duration: '3 days', '2 working days', '30-60 minutes'."""

    amount: float
    unit: str
    working: bool
    upto: float | None = None

    def __post_init__(self) -> None:
        """Reject inconsistent fields with CalendarError."""
        problem = _problem(self.amount, self.unit, self.working, self.upto)
        if problem or self.amount < 0:
            raise CalendarError(f"duration: {problem or 'expected an amount >= 0'}, got {self!r}")

    def __str__(self) -> str:
        """The text parse_duration reads back: '2 working days', '30-60 minutes', '1 hour'."""
        number = _number(self.amount) + (f"-{_number(self.upto)}" if self.upto is not None else "")
        unit = self.unit[:-1] if self.upto is None and self.amount == 1 else self.unit
        return f"{number} {'working ' if self.working else ''}{unit}"

    def apply(self, dt: datetime, calendar: WorkingCalendar | None, *, sign: int = 1,
              jitter: float = 0.0) -> datetime:
        """dt moved by this duration (sign=-1: before); jitter 0..1 picks a point of a range."""
        if sign not in (1, -1) or not 0 <= jitter <= 1:
            raise ValueError(f"sign, jitter: expected 1 or -1 and a number from 0 to 1, "
                             f"got {sign!r}, {jitter!r}")
        dt, value = _aware(dt), self.amount + ((self.upto or self.amount) - self.amount) * jitter
        whole = sign * math.floor(value + 0.5) * (7 if self.unit == "weeks" else 1)  # days, half up
        if self.working:
            if calendar is None:
                raise ValueError(f"{self}: expected a WorkingCalendar for a working duration, got None")
            if self.unit == "days":
                return calendar.add_working_days(dt, whole)
            return calendar.add_working_time(dt, sign * timedelta(**{self.unit: value}))
        tz = calendar.tz if calendar is not None else dt.tzinfo
        local = dt.astimezone(tz)
        if self.unit in ("days", "weeks"):
            return _wall(local.date() + timedelta(days=whole), local.time(), tz)  # type: ignore[arg-type]
        return (dt.astimezone(UTC) + sign * timedelta(**{self.unit: value})).astimezone(tz)


_DURATION_WORDS = ("working", *_UNIT_WORDS)


def duration_hint(text: Any) -> str:
    """'; did you mean "working"?' for the first word of a duration that is a near miss of one it
    knows ("2 workign days"), else ''."""
    for word in re.findall(r"[^\W\d_]+", str(text)):
        if word.lower() in _DURATION_WORDS:
            continue
        close = difflib.get_close_matches(word.lower(), _DURATION_WORDS, n=1, cutoff=0.7)
        return f'; did you mean "{close[0]}"?' if close else ""
    return ""


def parse_duration(text: str) -> Duration:
    """Parse '3 days', '2 working days', '1 hour', '30-60 minutes' (hyphen or en dash), '3 min'."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    unit = _UNIT_WORDS.get(m[4].lower()) if m else None
    if m is None or unit is None:
        raise CalendarError(f"{EXPECTED_DURATION}, found {text!r}{duration_hint(text)}")
    amount, upto, working = float(m[1]), (float(m[2]) if m[2] else None), bool(m[3])
    problem = _problem(amount, unit, working, upto)
    if problem:
        raise CalendarError(f"{problem}, found {text!r}")
    return Duration(amount, unit, working, upto)
