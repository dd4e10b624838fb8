"""Working days and office hours in England and Wales, for referral deadlines.

A working day is Monday to Friday except bank holidays in England and Wales (including
substitute days, e.g. Monday 28 December 2026 for Boxing Day on a Saturday). The office day
is 09:00 to 17:00 Europe/London, whatever the season: British Summer Time is handled by
working in London wall-clock time.

Every function accepts timezone-aware datetimes in any zone and returns datetimes in
Europe/London. Naive datetimes are refused with ValueError: a deadline computed from a time
whose zone is unknown could be an hour out.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

LONDON = ZoneInfo("Europe/London")
OFFICE_OPENS = time(9, 0)
OFFICE_CLOSES = time(17, 0)

_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
# Bank holidays are computed for this many years at a time and cached.
_YEARS_PER_BLOCK = 10


@lru_cache(maxsize=32)
def _bank_holidays(first_year: int, last_year: int) -> frozenset[date]:
    """Bank holidays in England and Wales from `first_year` to `last_year` inclusive."""
    calendar = holidays.country_holidays("GB", subdiv="ENG", years=range(first_year, last_year + 1))
    return frozenset(calendar.keys())


def is_bank_holiday(d: date) -> bool:
    first = max(1, d.year - d.year % _YEARS_PER_BLOCK)
    return d in _bank_holidays(first, first + _YEARS_PER_BLOCK - 1)


def is_working_day(d: date) -> bool:
    """Monday to Friday and not a bank holiday in England and Wales."""
    if isinstance(d, datetime):
        d = d.date()
    return d.weekday() < 5 and not is_bank_holiday(d)


def next_working_day(d: date) -> date:
    """The first working day after `d`."""
    d += timedelta(days=1)
    while not is_working_day(d):
        d += timedelta(days=1)
    return d


def _london(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is needed, e.g. one in UTC")
    return moment.astimezone(LONDON)


def _at(d: date, clock: time) -> datetime:
    return datetime.combine(d, clock, tzinfo=LONDON)


def _clock_start(moment: datetime, *, closing_counts: bool) -> datetime:
    """When the clock starts for something received at `moment` (in London time).

    Inside office hours it starts at once; before 09:00 on a working day at 09:00 that day;
    otherwise at 09:00 on the next working day. 17:00 itself is inside office hours when
    `closing_counts`, and the start of the next working day otherwise.
    """
    local = _london(moment)
    today = local.date()
    now = local.time().replace(tzinfo=None)
    if is_working_day(today):
        if now < OFFICE_OPENS:
            return _at(today, OFFICE_OPENS)
        if now < OFFICE_CLOSES or (closing_counts and now == OFFICE_CLOSES):
            return local
    return _at(next_working_day(today), OFFICE_OPENS)


def add_working_days(start: datetime, days: int) -> datetime:
    """The same clock time, `days` working days after the clock starts.

    Friday 15:00 + 1 is Monday 15:00; Saturday 10:00 + 1 is Tuesday 09:00 (the clock starts
    at 09:00 on Monday). Adding 0 gives the moment the clock starts.
    """
    if days < 0:
        raise ValueError("days must be 0 or more")
    clock = _clock_start(start, closing_counts=True)
    d = clock.date()
    for _ in range(days):
        d = next_working_day(d)
    return _at(d, clock.time().replace(tzinfo=None))


def add_working_hours(start: datetime, hours: float) -> datetime:
    """The moment when `hours` of office time (09:00-17:00 on working days) have passed.

    Friday 15:00 + 4 hours is Monday 11:00. A deadline that falls exactly at closing time
    is 17:00 that day, not 09:00 the next working day.
    """
    if not math.isfinite(hours) or hours < 0:
        raise ValueError("hours must be a finite number, 0 or more")
    remaining = timedelta(hours=hours)
    current = _clock_start(start, closing_counts=False)
    while True:
        # Office hours never contain a clock change, so wall-clock arithmetic is exact.
        left_today = _at(current.date(), OFFICE_CLOSES) - current
        if remaining <= left_today:
            return current + remaining
        remaining -= left_today
        current = _at(next_working_day(current.date()), OFFICE_OPENS)


def describe_deadline(due: datetime) -> str:
    """A deadline for people, in London time: "Monday 30 November 2026, 15:00"."""
    local = _london(due)
    return (
        f"{_DAY_NAMES[local.weekday()]} {local.day} {_MONTH_NAMES[local.month - 1]} "
        f"{local.year}, {local.hour:02}:{local.minute:02}"
    )
