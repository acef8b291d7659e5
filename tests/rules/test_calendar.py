"""Working calendars and durations: hand-computed cases.

Public holidays are what `holidays` 0.108 reports (pinned in test_holidays_package_facts):
* UA: no public holidays from 2023 on (martial law; 2026 and 2027 are empty); 2021 still lists
  Independence Day 2021-08-24, the substituted day off 2021-08-23 and the working Saturday 2021-08-28.
* RU 2026: Jan 1-8 New Year holidays, Jan 9 (substituted from Jan 3), Feb 23, Mar 9 (Mar 8 observed),
  May 1, May 11, Jun 12, Nov 4, Dec 31 (substituted from Jan 4); no working Saturdays.
* RU 2025: Dec 31 and Nov 3 are days off, and Saturday 2025-11-01 is a working day (weekend_workdays).

Weekdays used: 2026-03-20 Fri, 03-27 Fri, 03-29 Sun (Kyiv DST starts 03:00 -> 04:00),
2026-10-25 Sun (Kyiv DST ends 04:00 -> 03:00), 2026-11-07 Sat, 2025-12-30 Tue, 2026-01-12 Mon.
"""
from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest
import yaml

from rules import calendar as cal_module
from rules.calendar import CalendarError, Duration, WorkingCalendar, parse_duration

KYIV_TZ, MSK_TZ = ZoneInfo("Europe/Kyiv"), ZoneInfo("Europe/Moscow")
KYIV = WorkingCalendar.from_config({"timezone": "Europe/Kyiv", "country": "UA",
                                    "hours": {"mon-fri": "10:00-19:00"}})
AGENCY = WorkingCalendar.from_config({
    "timezone": "Europe/Kyiv", "country": "UA", "hours": {"mon-fri": "10:00-19:00", "sat": "off"},
    "saturday_hours": "11:00-15:00", "days_off": ["2026-12-31"], "working_days": ["2026-11-07"]})
MOSCOW = WorkingCalendar.from_config({"timezone": "Europe/Moscow", "country": "RU",
                                      "hours": {"mon-fri": "09:00-18:00"}})
NIGHT = WorkingCalendar.from_config({"timezone": "Europe/Kyiv", "hours": {"sun": "02:00-05:00"}})


def kyiv(*args: int) -> datetime:
    """A Kyiv wall-clock datetime (fold=0)."""
    return datetime(*args, tzinfo=KYIV_TZ)


def msk(*args: int) -> datetime:
    """A Moscow wall-clock datetime."""
    return datetime(*args, tzinfo=MSK_TZ)


def utc(*args: int) -> datetime:
    """A UTC datetime."""
    return datetime(*args, tzinfo=UTC)


def same(a: datetime, b: datetime) -> bool:
    """Same instant and same wall clock and offset."""
    return a == b and a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.utcoffset() == b.utcoffset()


def test_holidays_package_facts() -> None:
    ua_2026, ru_2026 = holidays.country_holidays("UA", years=2026), holidays.country_holidays("RU", years=2026)
    assert holidays.__version__ == "0.108"
    assert len(ua_2026) == 0 and len(holidays.country_holidays("UA", years=2025)) == 0
    assert date(2021, 8, 24) in holidays.country_holidays("UA", years=2021)
    assert {date(2026, 1, d) for d in range(1, 10)} <= set(ru_2026) and len(ru_2026) == 18
    assert date(2026, 12, 31) in ru_2026 and not ru_2026.weekend_workdays
    assert date(2025, 11, 1) in holidays.country_holidays("RU", years=2025).weekend_workdays


@pytest.mark.parametrize("calendar, day, expected", [
    pytest.param(KYIV, date(2026, 1, 1), True, id="ua-2026-new-year-is-working-under-martial-law"),
    pytest.param(KYIV, date(2026, 8, 24), True, id="ua-2026-independence-day-is-working"),
    pytest.param(KYIV, date(2021, 8, 24), False, id="ua-2021-independence-day"),
    pytest.param(KYIV, date(2021, 8, 23), False, id="ua-2021-substituted-day-off"),
    pytest.param(KYIV, date(2021, 8, 28), True, id="ua-2021-working-saturday"),
    pytest.param(MOSCOW, date(2026, 1, 8), False, id="ru-new-year-holidays"),
    pytest.param(MOSCOW, date(2026, 1, 9), False, id="ru-jan-9-substituted-from-jan-3"),
    pytest.param(MOSCOW, date(2026, 3, 9), False, id="ru-womens-day-observed"),
    pytest.param(MOSCOW, date(2025, 11, 1), True, id="ru-2025-working-saturday"),
    pytest.param(MOSCOW, date(2025, 11, 3), False, id="ru-2025-monday-off-for-saturday"),
    pytest.param(AGENCY, date(2026, 12, 31), False, id="extra-day-off"),
    pytest.param(AGENCY, date(2026, 11, 7), True, id="extra-working-saturday"),
    pytest.param(AGENCY, kyiv(2026, 11, 7, 12), True, id="datetime-counts-by-local-date"),
])
def test_is_working_day(calendar: WorkingCalendar, day: date, expected: bool) -> None:
    assert calendar.is_working_day(day) is expected


@pytest.mark.parametrize("calendar, day, expected", [
    pytest.param(KYIV, date(2026, 3, 27), (kyiv(2026, 3, 27, 10), kyiv(2026, 3, 27, 19)), id="weekday"),
    pytest.param(KYIV, date(2026, 3, 29), None, id="sunday"),
    pytest.param(AGENCY, date(2026, 11, 7), (kyiv(2026, 11, 7, 11), kyiv(2026, 11, 7, 15)), id="saturday-hours"),
    pytest.param(MOSCOW, date(2025, 11, 1), (msk(2025, 11, 1, 9), msk(2025, 11, 1, 18)), id="ru-saturday-monday-hours"),
    pytest.param(NIGHT, date(2026, 3, 29), (kyiv(2026, 3, 29, 2), kyiv(2026, 3, 29, 5)), id="dst-start-day"),
])
def test_working_hours_on(calendar: WorkingCalendar, day: date, expected: tuple | None) -> None:
    assert calendar.working_hours_on(day) == expected


@pytest.mark.parametrize("moment, expected", [
    pytest.param(kyiv(2026, 3, 30, 10), True, id="start-included"),
    pytest.param(kyiv(2026, 3, 30, 18, 59, 59), True, id="last-second"),
    pytest.param(kyiv(2026, 3, 30, 19), False, id="end-excluded"),
    pytest.param(utc(2026, 3, 30, 7), True, id="utc-07-is-kyiv-10-summer"),
    pytest.param(utc(2026, 3, 27, 7, 30), False, id="utc-0730-is-kyiv-0930-winter"),
])
def test_is_working_time(moment: datetime, expected: bool) -> None:
    assert KYIV.is_working_time(moment) is expected


@pytest.mark.parametrize("calendar, moment, expected", [
    pytest.param(KYIV, kyiv(2026, 3, 30, 12), kyiv(2026, 3, 30, 12), id="inside-is-itself"),
    pytest.param(KYIV, kyiv(2026, 3, 30, 8), kyiv(2026, 3, 30, 10), id="before-start"),
    pytest.param(KYIV, kyiv(2026, 3, 27, 19), kyiv(2026, 3, 30, 10), id="friday-end-to-monday"),
    pytest.param(KYIV, utc(2026, 3, 27, 17, 30), kyiv(2026, 3, 30, 10), id="utc-input-across-dst"),
    pytest.param(MOSCOW, msk(2025, 12, 30, 20), msk(2026, 1, 12, 9), id="ru-new-year-break"),
])
def test_next_working_moment(calendar: WorkingCalendar, moment: datetime, expected: datetime) -> None:
    assert same(calendar.next_working_moment(moment), expected)


@pytest.mark.parametrize("calendar, moment, n, expected", [
    pytest.param(KYIV, kyiv(2026, 3, 20, 18, 30), 2, kyiv(2026, 3, 24, 18, 30), id="fri-1830-plus-2-is-tue-1830"),
    pytest.param(KYIV, kyiv(2026, 3, 20, 19, 30), 2, kyiv(2026, 3, 25, 10), id="fri-1930-plus-2-is-wed-10"),
    pytest.param(KYIV, kyiv(2026, 3, 21, 12), 2, kyiv(2026, 3, 25, 10), id="sat-plus-2-is-wed-10"),
    pytest.param(KYIV, kyiv(2026, 3, 23, 8), 1, kyiv(2026, 3, 24, 10), id="before-hours-counts-from-start"),
    pytest.param(KYIV, kyiv(2026, 3, 21, 12), 0, kyiv(2026, 3, 23, 10), id="zero-is-next-working-moment"),
    pytest.param(KYIV, kyiv(2026, 3, 23, 12), -1, kyiv(2026, 3, 20, 12), id="minus-1-from-monday"),
    pytest.param(KYIV, kyiv(2026, 3, 27, 12), 1, kyiv(2026, 3, 30, 12), id="across-dst-keeps-wall-clock"),
    pytest.param(MOSCOW, msk(2025, 12, 30, 10), 1, msk(2026, 1, 12, 10), id="ru-over-new-year"),
    pytest.param(MOSCOW, msk(2026, 1, 12, 10), -1, msk(2025, 12, 30, 10), id="ru-back-over-new-year"),
    pytest.param(MOSCOW, msk(2025, 10, 31, 10), 1, msk(2025, 11, 1, 10), id="ru-to-working-saturday"),
    pytest.param(MOSCOW, msk(2025, 10, 31, 10), 2, msk(2025, 11, 5, 10), id="ru-over-nov-3-and-4"),
    pytest.param(AGENCY, kyiv(2026, 11, 6, 18, 30), 1, kyiv(2026, 11, 7, 15), id="clamped-to-saturday-end"),
    pytest.param(AGENCY, kyiv(2026, 11, 6, 10), 1, kyiv(2026, 11, 7, 11), id="clamped-to-saturday-start"),
    pytest.param(AGENCY, kyiv(2026, 12, 30, 12), 1, kyiv(2027, 1, 1, 12), id="over-extra-day-off"),
])
def test_add_working_days(calendar: WorkingCalendar, moment: datetime, n: int, expected: datetime) -> None:
    assert same(calendar.add_working_days(moment, n), expected)


@pytest.mark.parametrize("calendar, moment, delta, expected", [
    pytest.param(KYIV, kyiv(2026, 3, 20, 18), timedelta(hours=2), kyiv(2026, 3, 23, 11), id="over-weekend"),
    pytest.param(KYIV, kyiv(2026, 3, 23, 10), timedelta(hours=9), kyiv(2026, 3, 23, 19), id="ends-at-close"),
    pytest.param(KYIV, kyiv(2026, 3, 21, 12), timedelta(minutes=3), kyiv(2026, 3, 23, 10, 3), id="from-saturday"),
    pytest.param(KYIV, kyiv(2026, 3, 23, 10, 30), -timedelta(hours=1), kyiv(2026, 3, 20, 18, 30), id="backwards"),
    pytest.param(KYIV, kyiv(2026, 3, 23, 11), -timedelta(hours=1), kyiv(2026, 3, 23, 10), id="back-to-open"),
    pytest.param(KYIV, kyiv(2026, 3, 21, 12), timedelta(0), kyiv(2026, 3, 21, 12), id="zero-is-identity"),
    pytest.param(KYIV, utc(2026, 3, 27, 16), timedelta(hours=2), kyiv(2026, 3, 30, 11), id="utc-input"),
    pytest.param(MOSCOW, msk(2025, 12, 30, 17), timedelta(hours=2), msk(2026, 1, 12, 10), id="ru-new-year"),
    pytest.param(NIGHT, kyiv(2026, 3, 29, 2), timedelta(hours=2), kyiv(2026, 3, 29, 5), id="dst-gap-is-skipped"),
    pytest.param(NIGHT, kyiv(2026, 10, 25, 2), timedelta(hours=3), kyiv(2026, 10, 25, 4), id="dst-repeat-counts-twice"),
])
def test_add_working_time(calendar: WorkingCalendar, moment: datetime, delta: timedelta, expected: datetime) -> None:
    assert same(calendar.add_working_time(moment, delta), expected)


@pytest.mark.parametrize("calendar, day, n, expected", [
    pytest.param(KYIV, date(2026, 3, 27), 5, kyiv(2026, 3, 20, 10), id="five-before-friday"),
    pytest.param(KYIV, date(2026, 3, 30), 1, kyiv(2026, 3, 27, 10), id="one-before-monday"),
    pytest.param(KYIV, date(2026, 3, 30), 0, kyiv(2026, 3, 30, 10), id="zero-on-working-day"),
    pytest.param(KYIV, date(2026, 3, 29), 0, kyiv(2026, 3, 27, 10), id="zero-on-sunday"),
    pytest.param(KYIV, utc(2026, 3, 29, 22, 30), 1, kyiv(2026, 3, 27, 10), id="utc-datetime-is-kyiv-monday"),
    pytest.param(MOSCOW, date(2026, 1, 12), 1, msk(2025, 12, 30, 9), id="ru-over-new-year"),
])
def test_working_days_before(calendar: WorkingCalendar, day: date, n: int, expected: datetime) -> None:
    assert same(calendar.working_days_before(day, n), expected)


def test_working_days_before_rejects_negative() -> None:
    with pytest.raises(ValueError, match=r"^n: expected a whole number of working days >= 0, got -1$"):
        KYIV.working_days_before(date(2026, 3, 27), -1)


@pytest.mark.parametrize("calendar, moment, at, only, expected", [
    pytest.param(KYIV, kyiv(2026, 3, 27, 9, 30), time(9), True, kyiv(2026, 3, 30, 9), id="fri-after-9-to-mon"),
    pytest.param(KYIV, kyiv(2026, 3, 27, 9), time(9), True, kyiv(2026, 3, 30, 9), id="strictly-after"),
    pytest.param(KYIV, kyiv(2026, 3, 27, 10), time(9), False, kyiv(2026, 3, 28, 9), id="every-day"),
    pytest.param(KYIV, kyiv(2026, 3, 29, 0), time(3, 30), False, kyiv(2026, 3, 29, 4, 30), id="dst-gap-forward"),
    pytest.param(KYIV, kyiv(2026, 10, 25, 0), time(3, 30), False, kyiv(2026, 10, 25, 3, 30), id="ambiguous-fold-0"),
    pytest.param(MOSCOW, msk(2025, 12, 30, 10), time(9), True, msk(2026, 1, 12, 9), id="ru-new-year"),
])
def test_next_daily(calendar: WorkingCalendar, moment: datetime, at: time, only: bool, expected: datetime) -> None:
    assert calendar.next_daily(moment, at, working_days_only=only) == expected


def test_ambiguous_time_takes_summer_offset() -> None:
    digest = KYIV.next_daily(kyiv(2026, 10, 25, 0), time(3, 30), working_days_only=False)
    assert digest.utcoffset() == timedelta(hours=3) and digest.fold == 0


def test_second_pass_through_the_fold_is_after_the_first() -> None:
    second_0315 = datetime(2026, 10, 25, 3, 15, fold=1, tzinfo=KYIV_TZ)  # 01:15 UTC, after 03:30 summer time
    digest = KYIV.next_daily(second_0315, time(3, 30), working_days_only=False)
    assert same(digest, kyiv(2026, 10, 26, 3, 30)) and digest.utcoffset() == timedelta(hours=2)
    assert NIGHT.add_working_time(second_0315, timedelta(minutes=30)).astimezone(UTC) == utc(2026, 10, 25, 1, 45)


def test_moscow_has_no_dst() -> None:
    march, october = MOSCOW.working_hours_on(date(2026, 3, 30)), MOSCOW.working_hours_on(date(2026, 10, 26))
    assert march[0].utcoffset() == october[0].utcoffset() == timedelta(hours=3)
    assert parse_duration("3 days").apply(msk(2026, 3, 27, 10), MOSCOW) - msk(2026, 3, 27, 10) == timedelta(hours=72)


@pytest.mark.parametrize("text, moment, calendar, sign, jitter, expected", [
    pytest.param("3 days", kyiv(2026, 3, 27, 10), KYIV, 1, 0, kyiv(2026, 3, 30, 10), id="days-keep-wall-clock-dst"),
    pytest.param("3 days", utc(2026, 3, 27, 8), KYIV, 1, 0, utc(2026, 3, 30, 7), id="utc-input-kyiv-days"),
    pytest.param("1 day", kyiv(2026, 3, 28, 3, 30), KYIV, 1, 0, kyiv(2026, 3, 29, 4, 30), id="day-into-gap"),
    pytest.param("1 day", kyiv(2026, 10, 24, 3, 30), None, 1, 0, utc(2026, 10, 25, 0, 30), id="day-into-fold"),
    pytest.param("1 week", kyiv(2026, 3, 23, 10), KYIV, -1, 0, kyiv(2026, 3, 16, 10), id="week-before"),
    pytest.param("1 hour", kyiv(2026, 3, 29, 4, 30), KYIV, -1, 0, kyiv(2026, 3, 29, 2, 30), id="hour-before-is-elapsed"),
    pytest.param("5 working days", kyiv(2026, 3, 27, 12), KYIV, -1, 0, kyiv(2026, 3, 20, 12), id="working-days-before"),
    pytest.param("3 working minutes", kyiv(2026, 3, 27, 18, 59), KYIV, 1, 0, kyiv(2026, 3, 30, 10, 2), id="unanswered"),
    pytest.param("30-60 minutes", kyiv(2026, 3, 23, 10), KYIV, 1, 0, kyiv(2026, 3, 23, 10, 30), id="range-jitter-0"),
    pytest.param("30-60 minutes", kyiv(2026, 3, 23, 10), KYIV, 1, 1, kyiv(2026, 3, 23, 11), id="range-jitter-1"),
    pytest.param("30-60 minutes", kyiv(2026, 3, 23, 10), None, 1, 0.5, kyiv(2026, 3, 23, 10, 45), id="range-jitter-half"),
    pytest.param("30-60 working minutes", kyiv(2026, 3, 20, 18, 45), KYIV, 1, 1, kyiv(2026, 3, 23, 10, 45),
                 id="working-range-jitter-1"),
    pytest.param("1-3 days", kyiv(2026, 3, 23, 10), KYIV, 1, 0.3, kyiv(2026, 3, 25, 10), id="day-range-rounds"),
])
def test_duration_apply(text: str, moment: datetime, calendar: WorkingCalendar | None, sign: int, jitter: float,
                        expected: datetime) -> None:
    assert same(parse_duration(text).apply(moment, calendar, sign=sign, jitter=jitter),
                expected.astimezone(calendar.tz if calendar else moment.tzinfo))


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: parse_duration("2 working days").apply(kyiv(2026, 3, 23), None),
                 "2 working days: expected a WorkingCalendar for a working duration, got None", id="no-calendar"),
    pytest.param(lambda: parse_duration("30-60 minutes").apply(kyiv(2026, 3, 23), KYIV, jitter=1.5),
                 "sign, jitter: expected 1 or -1 and a number from 0 to 1, got 1, 1.5", id="jitter-out-of-range"),
    pytest.param(lambda: parse_duration("1 day").apply(datetime(2026, 3, 27, 10), KYIV),
                 "expected a timezone-aware datetime, got datetime.datetime(2026, 3, 27, 10, 0)", id="naive-apply"),
    pytest.param(lambda: KYIV.is_working_time(datetime(2026, 3, 27, 10)),
                 "expected a timezone-aware datetime, got datetime.datetime(2026, 3, 27, 10, 0)", id="naive-time"),
])
def test_apply_errors(call, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message


@pytest.mark.parametrize("text, expected, canonical", [
    pytest.param("3 days", Duration(3, "days", False), "3 days", id="days"),
    pytest.param("2 working days", Duration(2, "days", True), "2 working days", id="working-days"),
    pytest.param("1 hour", Duration(1, "hours", False), "1 hour", id="singular"),
    pytest.param("90 minutes", Duration(90, "minutes", False), "90 minutes", id="minutes"),
    pytest.param("30–60 minutes", Duration(30, "minutes", False, 60), "30-60 minutes", id="range-en-dash"),
    pytest.param("30 - 60 minutes", Duration(30, "minutes", False, 60), "30-60 minutes", id="range-hyphen-spaced"),
    pytest.param("1 week", Duration(1, "weeks", False), "1 week", id="week"),
    pytest.param("5 Working Hours", Duration(5, "hours", True), "5 working hours", id="working-hours-any-case"),
    pytest.param(" 3 min ", Duration(3, "minutes", False), "3 minutes", id="abbreviation"),
    pytest.param("1.5 hours", Duration(1.5, "hours", False), "1.5 hours", id="decimal-hours"),
    pytest.param("1 working minute", Duration(1, "minutes", True), "1 working minute", id="working-singular"),
])
def test_parse_duration_and_str_round_trip(text: str, expected: Duration, canonical: str) -> None:
    duration = parse_duration(text)
    assert duration == expected and str(duration) == canonical and parse_duration(canonical) == duration


EXPECTED = "expected a duration such as '3 days', '2 working days' or '30-60 minutes'"


@pytest.mark.parametrize("text, message", [
    pytest.param("soon", f"{EXPECTED}, found 'soon'", id="word"),
    pytest.param("3 parsecs", f"{EXPECTED}, found '3 parsecs'", id="unknown-unit"),
    pytest.param("-3 days", f"{EXPECTED}, found '-3 days'", id="negative"),
    pytest.param(None, f"{EXPECTED}, found None", id="none"),
    pytest.param("60-30 minutes", "expected a range whose end is greater than its start, found '60-30 minutes'",
                 id="reversed-range"),
    pytest.param("1.5 days", "expected a whole number of days, found '1.5 days'", id="fractional-days"),
    pytest.param("2 working weeks",
                 "expected working minutes, hours or days (working weeks are not defined), found '2 working weeks'",
                 id="working-weeks"),
])
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(CalendarError) as caught:
        parse_duration(text)
    assert str(caught.value) == message


KEYS = "country, days_off, hours, saturday_hours, subdivision, timezone, working_days"


@pytest.mark.parametrize("cfg, message", [
    pytest.param({"timezone": "Mars/Base"}, "timezone: expected an IANA name such as 'Europe/Kyiv', got 'Mars/Base'",
                 id="timezone"),
    pytest.param({"country": "XX"}, "country: expected a `holidays` code such as 'UA' or 'RU', got 'XX'",
                 id="country"),
    pytest.param({"country": "UA", "subdivision": "XX"},
                 "subdivision: expected a `holidays` code for 'UA', got 'XX'", id="subdivision"),
    pytest.param({"hours": {"mon-fri": "25:00-26:00"}},
                 "hours.mon-fri: expected working hours such as '10:00-19:00' or 'off', got '25:00-26:00'",
                 id="hours-out-of-range"),
    pytest.param({"hours": {"mon": "19:00-10:00"}},
                 "hours.mon: expected working hours such as '10:00-19:00' or 'off', got '19:00-10:00'",
                 id="hours-reversed"),
    pytest.param({"hours": {"funday": "10:00-19:00"}}, "hours: expected days such as 'mon-fri' or 'sat', got 'funday'",
                 id="unknown-day"),
    pytest.param({"hours": {"fri-mon": "10:00-19:00"}}, "hours: expected days such as 'mon-fri' or 'sat', got 'fri-mon'",
                 id="wrapping-range"),
    pytest.param({"hours": {"mon-sun": "off"}},
                 "hours: expected at least one day with working hours, got {'mon-sun': 'off'}", id="no-working-day"),
    pytest.param({"hours": "9-18"}, "hours: expected a mapping such as {'mon-fri': '10:00-19:00'}, got '9-18'",
                 id="hours-not-mapping"),
    pytest.param({"saturday_hours": "late"},
                 "saturday_hours: expected working hours such as '10:00-19:00' or 'off', got 'late'", id="saturday"),
    pytest.param({"days_off": ["2026-13-01"]}, "days_off[0]: expected a date 'YYYY-MM-DD', got '2026-13-01'",
                 id="bad-date"),
    pytest.param({"days_off": "2026-12-31"},
                 "days_off: expected a list of dates such as ['2026-12-31'], got '2026-12-31'", id="dates-not-list"),
    pytest.param({"days_off": ["2026-12-31"], "working_days": [date(2026, 12, 31)]},
                 "working_days: expected dates not in days_off, got '2026-12-31'", id="day-both-off-and-on"),
    pytest.param({"workdays": []}, f"calendar: expected keys among {KEYS}, got 'workdays'", id="unknown-key"),
    pytest.param(["UA"], f"calendar: expected a mapping of {KEYS}, got ['UA']", id="not-mapping"),
])
def test_config_errors(cfg, message: str) -> None:
    with pytest.raises(CalendarError) as caught:
        WorkingCalendar.from_config(cfg)
    assert str(caught.value) == message


def test_config_defaults() -> None:
    calendar = WorkingCalendar.from_config({})
    assert calendar.timezone == "UTC" and calendar.country is None
    assert calendar.working_hours_on(date(2026, 1, 1)) == (utc(2026, 1, 1, 9), utc(2026, 1, 1, 18))
    assert calendar.working_hours_on(date(2026, 1, 3)) is None and calendar == WorkingCalendar()


def test_docstring_yaml_example_loads() -> None:
    doc = cal_module.__doc__
    block = doc[doc.index("    calendar:"):doc.index("\n\n", doc.index("    calendar:"))]
    calendar = WorkingCalendar.from_config(yaml.safe_load(textwrap.dedent(block))["calendar"])
    assert calendar.working_hours_on(date(2026, 11, 6)) == (msk(2026, 11, 6, 10), msk(2026, 11, 6, 17))
    assert calendar.working_hours_on(date(2026, 11, 5))[1] == msk(2026, 11, 5, 19)
    assert calendar.working_hours_on(date(2026, 11, 7)) == (msk(2026, 11, 7, 11), msk(2026, 11, 7, 15))
    assert not calendar.is_working_day(date(2026, 11, 14)) and not calendar.is_working_day(date(2026, 11, 4))


def test_direct_construction_is_validated_and_hashable() -> None:
    calendar = WorkingCalendar("Europe/Kyiv", {0: (time(10), time(19))}, extra_days_off=frozenset({date(2026, 3, 30)}))
    assert calendar.hours[1] is None and len({calendar, WorkingCalendar("Europe/Kyiv", {0: (time(10), time(19))})}) == 2
    assert calendar.next_working_moment(kyiv(2026, 3, 27)) == kyiv(2026, 4, 6, 10)
    with pytest.raises(CalendarError, match=r"^hours\[0\]: expected \(start, end\) naive times with start < end"):
        WorkingCalendar("UTC", {0: (time(19), time(10))})


def test_duration_fields_are_validated() -> None:
    with pytest.raises(CalendarError) as caught:
        Duration(3, "fortnights", False)
    assert str(caught.value) == ("duration: expected a unit among minutes, hours, days, weeks, "
                                 "got Duration(amount=3, unit='fortnights', working=False, upto=None)")


def test_no_working_day_at_all_is_reported() -> None:
    calendar = WorkingCalendar("UTC", {0: (time(9), time(18))},
                               extra_days_off=frozenset(date(2026, 1, 5) + timedelta(weeks=k) for k in range(600)))
    with pytest.raises(CalendarError, match="expected a working day within 3660 days"):
        calendar.next_working_moment(utc(2026, 1, 1))


def test_module_reads_no_clock() -> None:
    source = open(cal_module.__file__, encoding="utf-8").read()
    assert ".now(" not in source and "today(" not in source and "time.time" not in source


SHOP = WorkingCalendar.from_config({"timezone": "Europe/Kyiv", "hours": {"mon-sat": "10:00-19:00"},
                                    "days_off": ["2026-12-25"]})
KYIV_TZ = ZoneInfo("Europe/Kyiv")


@pytest.mark.parametrize("start, end, minutes", [
    (datetime(2026, 12, 8, 18, 59, tzinfo=KYIV_TZ), datetime(2026, 12, 9, 10, 2, tzinfo=KYIV_TZ), 3),      # over a night
    (datetime(2026, 12, 12, 18, 59, tzinfo=KYIV_TZ), datetime(2026, 12, 14, 10, 2, tzinfo=KYIV_TZ), 3),    # Sunday off
    (datetime(2026, 12, 24, 18, 0, tzinfo=KYIV_TZ), datetime(2026, 12, 26, 10, 30, tzinfo=KYIV_TZ), 90),   # a day off
    (datetime(2026, 12, 8, 11, 0, tzinfo=KYIV_TZ), datetime(2026, 12, 8, 11, 2, 30, tzinfo=KYIV_TZ), 2.5),
    (datetime(2026, 12, 8, 20, 0, tzinfo=KYIV_TZ), datetime(2026, 12, 9, 9, 0, tzinfo=KYIV_TZ), 0),        # all after hours
    (datetime(2026, 12, 8, 8, 0, tzinfo=UTC), datetime(2026, 12, 8, 9, 0, tzinfo=UTC), 60),          # zones mixed
    (datetime(2026, 12, 9, 10, 2, tzinfo=KYIV_TZ), datetime(2026, 12, 8, 18, 59, tzinfo=KYIV_TZ), -3),     # backwards
])
def test_working_time_between(start: datetime, end: datetime, minutes: float) -> None:
    assert SHOP.working_time_between(start, end) == timedelta(minutes=minutes)
    # the inverse of add_working_time from a working moment
    if minutes > 0 and SHOP.is_working_time(start):
        assert SHOP.add_working_time(start, timedelta(minutes=minutes)) == end


def test_to_config_reads_back_as_the_same_calendar() -> None:
    full = WorkingCalendar.from_config({"timezone": "Europe/Moscow", "country": "RU", "hours": {"mon-fri": "10:00-19:00",
                                        "fri": "10:00-17:00"}, "saturday_hours": "11:00-15:00",
                                        "days_off": ["2026-12-31"], "working_days": ["2026-11-07"]})
    for calendar in (full, SHOP, WorkingCalendar()):
        assert WorkingCalendar.from_config(calendar.to_config()) == calendar
    assert SHOP.to_config()["hours"]["sun"] == "off"
