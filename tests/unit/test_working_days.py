from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.working_days import (
    LONDON,
    OFFICE_CLOSES,
    OFFICE_OPENS,
    add_working_days,
    add_working_hours,
    describe_deadline,
    is_working_day,
    next_working_day,
)


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON)


# ---------------------------------------------------------------- is_working_day


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 11, 27), True),  # Friday
        (date(2026, 11, 28), False),  # Saturday
        (date(2026, 11, 29), False),  # Sunday
        (date(2026, 11, 30), True),  # Monday
        (date(2026, 12, 24), True),  # Christmas Eve is not a bank holiday
        (date(2026, 12, 25), False),  # Christmas Day, Friday
        (date(2026, 12, 26), False),  # Boxing Day, Saturday
        (date(2026, 12, 28), False),  # Boxing Day substitute, Monday
        (date(2026, 12, 29), True),
        (date(2027, 1, 1), False),  # New Year's Day
        (date(2027, 3, 25), True),  # Thursday before Easter
        (date(2027, 3, 26), False),  # Good Friday
        (date(2027, 3, 29), False),  # Easter Monday
        (date(2027, 3, 30), True),
        (date(2026, 5, 4), False),  # early May bank holiday 2026
        (date(2027, 5, 3), False),  # early May bank holiday 2027
        (date(2027, 5, 4), True),
        (date(2027, 5, 31), False),  # spring bank holiday
        (date(2027, 12, 27), False),  # Christmas Day substitute
        (date(2027, 12, 28), False),  # Boxing Day substitute
    ],
)
def test_is_working_day(day: date, expected: bool) -> None:
    assert is_working_day(day) is expected


def test_next_working_day_skips_christmas_and_substitute_day() -> None:
    assert next_working_day(date(2026, 12, 24)) == date(2026, 12, 29)
    assert next_working_day(date(2027, 3, 25)) == date(2027, 3, 30)


# ---------------------------------------------------------------- add_working_days


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        # Friday afternoon + 1: the same time on Monday.
        (london(2026, 11, 27, 15), 1, london(2026, 11, 30, 15)),
        # Saturday: the clock starts on Monday at 09:00, so + 1 is Tuesday 09:00.
        (london(2026, 11, 28, 10), 1, london(2026, 12, 1, 9)),
        # Sunday evening, likewise.
        (london(2026, 11, 29, 22), 1, london(2026, 12, 1, 9)),
        # Christmas 2026: Friday 25th, Saturday 26th and the substitute Monday 28th skipped.
        (london(2026, 12, 24, 16), 1, london(2026, 12, 29, 16)),
        # Before 09:00 on a working day: the clock starts at 09:00 that day.
        (london(2026, 12, 2, 7, 30), 1, london(2026, 12, 3, 9)),
        # After 17:00: the clock starts at 09:00 on the next working day.
        (london(2026, 12, 2, 17, 1), 1, london(2026, 12, 4, 9)),
        (london(2026, 11, 27, 18), 1, london(2026, 12, 1, 9)),
        # 17:00 exactly is still in the office day.
        (london(2026, 11, 27, 17), 1, london(2026, 11, 30, 17)),
        (london(2026, 11, 27, 9), 1, london(2026, 11, 30, 9)),
        # Easter 2027: Good Friday and Easter Monday skipped.
        (london(2027, 3, 25, 11), 1, london(2027, 3, 30, 11)),
        (london(2027, 3, 26, 11), 1, london(2027, 3, 31, 9)),  # received on Good Friday
        # Early May bank holiday 2027 (Monday 3 May).
        (london(2027, 4, 30, 14), 1, london(2027, 5, 4, 14)),
        # Several days across a weekend.
        (london(2026, 11, 25, 10), 3, london(2026, 11, 30, 10)),
        (london(2026, 11, 30, 10), 10, london(2026, 12, 14, 10)),
        # Zero days: when the clock starts.
        (london(2026, 11, 27, 15), 0, london(2026, 11, 27, 15)),
        (london(2026, 11, 28, 15), 0, london(2026, 11, 30, 9)),
    ],
)
def test_add_working_days(start: datetime, days: int, expected: datetime) -> None:
    result = add_working_days(start, days)
    assert result == expected
    assert result.tzinfo == LONDON
    assert (result.hour, result.minute) == (expected.hour, expected.minute)


def test_add_working_days_keeps_wall_clock_time_over_spring_clock_change() -> None:
    # Clocks go forward on Sunday 29 March 2026: Friday is GMT, Monday is BST.
    start = london(2026, 3, 27, 15)
    result = add_working_days(start, 1)
    assert result == london(2026, 3, 30, 15)
    assert result.utcoffset() == timedelta(hours=1)
    # Aware datetimes in the same zone subtract as wall-clock times; compare in UTC.
    assert result.astimezone(UTC) - start.astimezone(UTC) == timedelta(days=3, hours=-1)


def test_add_working_days_keeps_wall_clock_time_over_autumn_clock_change() -> None:
    # Clocks go back on Sunday 25 October 2026.
    start = london(2026, 10, 23, 15)
    result = add_working_days(start, 1)
    assert result == london(2026, 10, 26, 15)
    assert result.utcoffset() == timedelta(0)
    assert result.astimezone(UTC) - start.astimezone(UTC) == timedelta(days=3, hours=1)


def test_add_working_days_accepts_utc_and_other_zones() -> None:
    # 14:00 UTC on a June Friday is 15:00 in London (BST).
    result = add_working_days(datetime(2027, 6, 4, 14, tzinfo=UTC), 1)
    assert result == london(2027, 6, 7, 15)
    assert result.tzinfo == LONDON
    # 08:30 UTC in summer is 09:30 in London: inside office hours.
    assert add_working_days(datetime(2027, 6, 2, 8, 30, tzinfo=UTC), 1) == london(2027, 6, 3, 9, 30)
    # 07:30 in New York is 12:30 in London in November.
    new_york = datetime(2026, 11, 27, 7, 30, tzinfo=ZoneInfo("America/New_York"))
    assert add_working_days(new_york, 1) == london(2026, 11, 30, 12, 30)
    # A fixed offset: 23:30 at UTC-2 on Friday is 01:30 on Saturday in London.
    fixed = datetime(2026, 11, 27, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert add_working_days(fixed, 1) == london(2026, 12, 1, 9)


def test_add_working_days_refuses_naive_and_negative() -> None:
    with pytest.raises(ValueError, match="timezone"):
        add_working_days(datetime(2026, 11, 27, 15), 1)
    with pytest.raises(ValueError):
        add_working_days(london(2026, 11, 27, 15), -1)


# ---------------------------------------------------------------- add_working_hours


@pytest.mark.parametrize(
    ("start", "hours", "expected"),
    [
        (london(2026, 11, 27, 15), 4, london(2026, 11, 30, 11)),  # Friday 15:00 + 4h
        (london(2026, 11, 27, 15), 2, london(2026, 11, 27, 17)),  # ends exactly at closing
        (london(2026, 11, 27, 15), 2.5, london(2026, 11, 30, 9, 30)),
        (london(2026, 11, 30, 13), 8, london(2026, 12, 1, 13)),  # a full office day
        (london(2026, 11, 30, 13), 0.25, london(2026, 11, 30, 13, 15)),
        (london(2026, 11, 28, 10), 1, london(2026, 11, 30, 10)),  # Saturday
        (london(2026, 11, 30, 6), 1, london(2026, 11, 30, 10)),  # before opening
        (london(2026, 11, 30, 20), 1, london(2026, 12, 1, 10)),  # after closing
        (london(2026, 11, 30, 17), 1, london(2026, 12, 1, 10)),  # at closing
        (london(2026, 12, 24, 16), 2, london(2026, 12, 29, 10)),  # Christmas 2026
        (london(2027, 3, 25, 16), 8, london(2027, 3, 30, 16)),  # Easter 2027
        (london(2027, 4, 30, 16), 2, london(2027, 5, 4, 10)),  # early May 2027
        (london(2026, 11, 30, 9), 40, london(2026, 12, 4, 17)),  # a whole week
        (london(2026, 11, 27, 15), 0, london(2026, 11, 27, 15)),
    ],
)
def test_add_working_hours(start: datetime, hours: float, expected: datetime) -> None:
    result = add_working_hours(start, hours)
    assert result == expected
    assert result.tzinfo == LONDON


def test_add_working_hours_over_clock_change() -> None:
    # Friday 27 March 2026 16:00 GMT + 2 office hours: Monday 30 March 10:00 BST.
    result = add_working_hours(london(2026, 3, 27, 16), 2)
    assert result == london(2026, 3, 30, 10)
    assert result.utcoffset() == timedelta(hours=1)
    assert result.astimezone(UTC).hour == 9
    # And back: Friday 23 October 2026 16:00 BST + 2h = Monday 26 October 10:00 GMT.
    assert add_working_hours(london(2026, 10, 23, 16), 2) == datetime(2026, 10, 26, 10, tzinfo=UTC)


def test_add_working_hours_accepts_utc() -> None:
    # Friday 14:00 UTC in June is 15:00 BST; + 4h = Monday 11:00 BST.
    result = add_working_hours(datetime(2027, 6, 4, 14, tzinfo=UTC), 4)
    assert result == london(2027, 6, 7, 11)
    assert result.tzinfo == LONDON


@pytest.mark.parametrize("hours", [-1.0, float("nan"), float("inf")])
def test_add_working_hours_refuses_bad_hours(hours: float) -> None:
    with pytest.raises(ValueError):
        add_working_hours(london(2026, 11, 27, 15), hours)


def test_add_working_hours_refuses_naive() -> None:
    with pytest.raises(ValueError):
        add_working_hours(datetime(2026, 11, 27, 15), 1)


_starts = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


@given(start=_starts, hours=st.integers(min_value=0, max_value=200))
def test_add_working_hours_properties(start: datetime, hours: int) -> None:
    result = add_working_hours(start, hours)
    assert result.tzinfo == LONDON
    assert result >= start
    assert is_working_day(result.date())
    assert OFFICE_OPENS <= result.time() <= OFFICE_CLOSES
    # One more hour never ends earlier, and takes at least an hour of real time.
    assert add_working_hours(start, hours + 1) - result >= timedelta(hours=1)
    # Eight office hours are one working day when the clock starts inside office hours.
    if hours % 8 == 0 and OFFICE_OPENS < result.time() < OFFICE_CLOSES:
        assert add_working_days(start, hours // 8) == result


@given(start=_starts, days=st.integers(min_value=0, max_value=30))
def test_add_working_days_properties(start: datetime, days: int) -> None:
    result = add_working_days(start, days)
    assert result.tzinfo == LONDON
    assert result >= start
    assert is_working_day(result.date())
    assert OFFICE_OPENS <= result.time() <= OFFICE_CLOSES
    later = add_working_days(start, days + 1)
    assert later.time() == result.time()
    assert later.date() == next_working_day(result.date())


# ---------------------------------------------------------------- describe_deadline


def test_describe_deadline() -> None:
    assert describe_deadline(london(2026, 11, 30, 15)) == "Monday 30 November 2026, 15:00"
    assert describe_deadline(london(2027, 3, 1, 9, 5)) == "Monday 1 March 2027, 09:05"


def test_describe_deadline_shows_london_time() -> None:
    assert describe_deadline(datetime(2027, 6, 7, 14, tzinfo=UTC)) == "Monday 7 June 2027, 15:00"
    assert describe_deadline(datetime(2026, 12, 29, 16, tzinfo=UTC)) == (
        "Tuesday 29 December 2026, 16:00"
    )
