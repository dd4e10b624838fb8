"""Reports (issue 14, part 3): the figures equal counts made here, in Python, from rows
seeded with known values; the chart is a real PNG; `!report` answers in the advice-team
room only; the weekly report goes once per week across restarts."""

from __future__ import annotations

import asyncio
import io
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from PIL import Image

from handlers.reports import (
    OTHER_AGENCY,
    Period,
    build_report,
    last_complete,
    parse_period,
    report_csv,
    weekly_period,
)
from handlers.settings import Settings
from schemas.config import AgencyConfig, ReportsConfig
from schemas.domain import Outcome
from storage.engine import Store
from storage.sql import Executing
from tests.engines import location, on_postgres
from tests.keys import KEYRING
from tests.unit.harness import MANAGER, NURSE, START, TEAM_ROOM, WORKER, Harness

LONDON = ZoneInfo("Europe/London")
CP, CONTACT = "child protection referral", "contact"
OUTCOMES = (Outcome.EARLY_HELP, Outcome.STRATEGY, Outcome.NFA)
AGENCIES = {
    "health": AgencyConfig(name="Community health"),
    "police": AgencyConfig(name="Police"),
}
# What referrers typed, and the configured agency it must be counted under.
TYPED = {
    "health": "Community health",
    "Community  Health": "Community health",
    " police ": "Police",
    "Example Academy 7": OTHER_AGENCY,
    "GP surgery": OTHER_AGENCY,
}
SETTINGS = Settings("@bot:example.org", TEAM_ROOM, agencies=AGENCIES)

# The figures are counted by the database: every test here runs on both engines.
pytestmark = pytest.mark.usefixtures("engine")


@dataclass(frozen=True)
class Seeded:
    received: datetime
    declared: str
    current: str
    typed_agency: str
    child: tuple[str, str]
    decision_due: datetime
    decided_at: datetime | None
    outcome: Outcome | None


def _make_rows(rng: random.Random) -> list[Seeded]:
    children = [(f"Testchild {i:03d} Example", f"2015-03-{i % 28 + 1:02d}") for i in range(40)]
    rows: list[Seeded] = []

    def add(received: datetime, child: tuple[str, str], decided: bool | None = None) -> None:
        declared = rng.choice((CP, CONTACT))
        current = declared if rng.random() < 0.8 else (CONTACT if declared == CP else CP)
        due = received + timedelta(hours=rng.randint(4, 72))
        decided_at = received + timedelta(hours=rng.randint(1, 120), seconds=rng.randint(0, 3599))
        if decided is None:
            decided = rng.random() < 0.85
        decided_at_or_none = None if not decided or decided_at > START else decided_at
        rows.append(
            Seeded(
                received,
                declared,
                current,
                rng.choice(list(TYPED)),
                child,
                due,
                decided_at_or_none,
                rng.choice(OUTCOMES) if decided_at_or_none else None,
            )
        )

    base = datetime(2026, 8, 20, tzinfo=UTC)
    for _ in range(400):
        received = base + timedelta(seconds=rng.randint(0, 96 * 86400))  # to 24 Nov 2026
        add(received, rng.choice(children))
    # On the edges of the period (1 October 00:00 London is 30 September 23:00 UTC).
    add(datetime(2026, 9, 30, 22, 59, 59, tzinfo=UTC), children[0])  # 23:59:59 London, out
    add(datetime(2026, 9, 30, 23, 0, 1, tzinfo=UTC), children[1])  # 00:00:01 London, in
    add(datetime(2026, 11, 15, 23, 59, 0, tzinfo=UTC), children[2])  # last minute, in
    add(datetime(2026, 11, 16, 0, 0, 1, tzinfo=UTC), children[3])  # next day, out
    # A year before: within 12 months of a referral in the period, and just outside.
    add(datetime(2025, 10, 20, 12, 0, tzinfo=UTC), ("Earlier Child", "2014-01-01"), True)
    add(datetime(2026, 10, 19, 12, 0, tzinfo=UTC), ("Earlier Child", "2014-01-01"))  # again
    add(datetime(2025, 10, 10, 12, 0, tzinfo=UTC), ("Old Child", "2013-01-01"), True)
    add(datetime(2026, 10, 11, 12, 0, tzinfo=UTC), ("Old Child", "2013-01-01"))  # > 12 months
    # Never decided, long overdue.
    add(datetime(2026, 11, 2, 9, 0, tzinfo=UTC), ("Open Child", "2016-05-05"), False)
    return rows


async def _seed(store: Store, rows: list[Seeded]) -> None:
    async with store.transaction() as tx:
        for n, row in enumerate(rows, 1):
            name, born = row.child
            referral_id = await tx.insert_referral(
                ref=f"REF-{row.received.year}-{n:06d}",
                year=row.received.year,
                year_seq=n,
                event_id=f"$seed{n}",
                room_id="!dm:example.org",
                sender=f"@nurse{n % 7}:example.org",
                received_at=row.received,
                declared_type=row.declared,
                immediate_danger=False,
                decision_due=row.decision_due,
                form={"child": {"full_name": name, "date_of_birth": born}},
                agency=row.typed_agency,
            )
            if row.current != row.declared:
                await tx.set_current_type(referral_id, row.current)
            if row.decided_at is not None:
                assert row.outcome is not None
                tx.now = row.decided_at
                await tx.decide(referral_id, row.outcome, "@worker:example.org")


def _london_day(dt: datetime) -> date:
    return dt.astimezone(LONDON).date()


async def test_figures_equal_counts_made_independently(tmp_path: Path) -> None:
    rows = _make_rows(random.Random(14))
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    await _seed(store, rows)
    store.clock = lambda: START
    period = Period(date(2026, 10, 1), date(2026, 11, 15))  # across the clocks going back
    async with store.transaction() as tx:
        report = await build_report(tx, SETTINGS, period)
    await store.close()
    f = report.figures

    def in_period(dt: datetime | None) -> bool:
        return dt is not None and period.start <= _london_day(dt) <= period.end

    received = [r for r in rows if in_period(r.received)]
    assert f.child_protection == sum(r.current == CP for r in received)
    assert f.contacts == sum(r.current == CONTACT for r in received)
    assert f.received == len(received) and len(received) > 150

    weeks: dict[date, Counter[str]] = {}
    for r in received:
        day = _london_day(r.received)
        weeks.setdefault(day - timedelta(days=day.weekday()), Counter())[r.current] += 1
    assert [w.week_start for w in f.weeks] == [
        date(2026, 9, 28) + timedelta(days=7 * i) for i in range(7)
    ]
    for w in f.weeks:
        counts = weeks.get(w.week_start, Counter())
        assert (w.child_protection, w.contacts) == (counts[CP], counts[CONTACT]), w

    decided = [r for r in rows if in_period(r.decided_at)]
    assert r_decided_at(decided)
    assert f.decided == len(decided)
    assert f.decided_in_time == sum(r_decided_at([r])[0] <= r.decision_due for r in decided)
    hours = [(r_decided_at([r])[0] - r.received).total_seconds() / 3600 for r in decided]
    assert f.median_hours_to_decision is not None
    assert abs(f.median_hours_to_decision - statistics.median(hours)) < 1e-3
    assert dict(f.outcomes) == dict(Counter(r.outcome for r in decided))

    agencies = Counter(TYPED[r.typed_agency] for r in received)
    assert dict(f.agencies) == dict(agencies)
    assert f.agencies[-1][0] == OTHER_AGENCY  # "other" comes last
    assert f.downgraded == sum(r.declared == CP and r.current == CONTACT for r in received)
    assert f.upgraded == sum(r.declared == CONTACT and r.current == CP for r in received)
    assert f.downgraded > 0 and f.upgraded > 0

    open_rows = [r for r in rows if r.decided_at is None]
    assert f.open_now == len(open_rows)
    assert f.overdue_now == sum(r.decision_due < START for r in open_rows)

    def year_before(dt: datetime) -> datetime:
        return dt.replace(year=dt.year - 1)

    repeats = [
        r
        for r in received
        if any(
            p.child == r.child and year_before(r.received) <= p.received < r.received for p in rows
        )
    ]
    assert f.repeat_referrals == len(repeats) > 0
    assert f.repeat_children == len({r.child for r in repeats})
    children = {r.child for r in repeats}
    assert ("Earlier Child", "2014-01-01") in children
    assert ("Old Child", "2013-01-01") not in children

    # The CSV carries the same figures.
    csv_rows = {
        tuple(line.split(",")[:2]): line.split(",")[-1] for line in report_csv(report).splitlines()
    }
    assert csv_rows[("received", "total")] == str(len(received))
    assert csv_rows[("decisions", "decided")] == str(len(decided))
    assert csv_rows[("referred again within 12 months", "children")] == str(len(children))
    assert csv_rows[("now", "overdue")] == str(f.overdue_now)


def r_decided_at(rows: list[Seeded]) -> list[datetime]:
    out = [r.decided_at for r in rows if r.decided_at is not None]
    assert len(out) == len(rows)
    return out


async def test_report_reads_no_form_and_uses_only_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The query plan of every report statement reads indexes, never the referrals table
    (which holds the encrypted forms)."""
    if on_postgres():
        pytest.skip(
            "SQLite only: EXPLAIN QUERY PLAN and INDEXED BY are SQLite's; on PostgreSQL the"
            " index hints are dropped and the planner chooses"
        )
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    await _seed(store, _make_rows(random.Random(2))[:50])
    statements: list[str] = []
    db = store._db  # the connection the transactions use
    db_execute = db.execute

    def spy(sql: str, params: Sequence[Any] = ()) -> Executing:
        statements.append(sql)
        return db_execute(sql, params)

    monkeypatch.setattr(db, "execute", spy)
    async with store.transaction() as tx:
        await build_report(tx, SETTINGS, Period(date(2026, 10, 1), date(2026, 10, 31)))
    monkeypatch.undo()
    report_sql = [s for s in statements if "FROM referrals" in s]
    assert len(report_sql) >= 8
    for sql in report_sql:
        async with db.execute("EXPLAIN QUERY PLAN " + sql, _dummy_args(sql)) as cur:
            steps = [str(r[3]) for r in await cur.fetchall()]
        reads = [step for step in steps if step.startswith(("SCAN", "SEARCH"))]
        assert reads and all("USING COVERING INDEX" in step for step in reads), (sql, steps)
    await store.close()


def _dummy_args(sql: str) -> tuple[object, ...]:
    return tuple("x" for _ in range(sql.count("?")))


def test_the_chart_is_a_png_of_the_stated_size(tmp_path: Path) -> None:
    from handlers.chart import HEIGHT, WIDTH, render_png
    from schemas.reports import ReportFigures, WeekCount

    figures = ReportFigures(
        start=date(2026, 11, 1),
        end=date(2026, 11, 30),
        generated_at=START,
        weeks=tuple(
            WeekCount(date(2026, 10, 26) + timedelta(days=7 * i), i, 2 * i) for i in range(6)
        ),
        child_protection=15,
        contacts=30,
        decided=40,
        decided_in_time=31,
        median_hours_to_decision=20.5,
        outcomes=(("early help", 20), ("no further action", 20)),
        agencies=tuple((f"Agency {i}", 10 - i) for i in range(9)),
        downgraded=2,
        upgraded=1,
        open_now=5,
        overdue_now=1,
        repeat_referrals=4,
        repeat_children=3,
    )
    png = render_png(figures, "Front door: November 2026")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.verify()  # checks the chunks' CRCs
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
    assert 5_000 < len(png) < 200_000
    # Drawn, not blank: the bar colours are there.
    colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20) or []}
    assert (176, 42, 55) in colours and (31, 111, 178) in colours


def test_periods() -> None:
    wed = date(2026, 11, 25)
    assert last_complete("week", wed) == Period(date(2026, 11, 16), date(2026, 11, 22))
    assert last_complete("week", date(2026, 11, 23)) == Period(
        date(2026, 11, 16), date(2026, 11, 22)
    )
    assert last_complete("month", wed) == Period(date(2026, 10, 1), date(2026, 10, 31))
    assert last_complete("month", date(2026, 1, 5)) == Period(date(2025, 12, 1), date(2025, 12, 31))
    assert last_complete("quarter", wed) == Period(date(2026, 7, 1), date(2026, 9, 30))
    assert last_complete("quarter", date(2026, 2, 1)) == Period(
        date(2025, 10, 1), date(2025, 12, 31)
    )
    assert parse_period("", wed) == last_complete("week", wed)
    assert parse_period("Month", wed) == last_complete("month", wed)
    assert parse_period("2026-01-01 2026-03-31", wed) == Period(date(2026, 1, 1), date(2026, 3, 31))
    for bad, reason in (
        ("fortnight", "Use !report"),
        ("2026-13-01 2026-12-01", "YYYY-MM-DD"),
        ("2026-03-01 2026-02-01", "before the first"),
        ("2025-01-01 2026-03-01", "at most 366 days"),
        ("2027-01-01 2027-01-02", "not started"),
        ("2026-01-01", "Use !report"),
    ):
        try:
            parse_period(bad, wed)
        except ValueError as exc:
            assert reason in str(exc), (bad, exc)
        else:
            raise AssertionError(bad)


def test_weekly_period_follows_london_time() -> None:
    # Monday 09:00 London: in summer that is 08:00 UTC.
    summer_before = datetime(2026, 6, 8, 7, 59, tzinfo=UTC)
    summer_after = datetime(2026, 6, 8, 8, 0, tzinfo=UTC)
    assert weekly_period(summer_before, 0, 9, 0) == Period(date(2026, 5, 25), date(2026, 5, 31))
    assert weekly_period(summer_after, 0, 9, 0) == Period(date(2026, 6, 1), date(2026, 6, 7))
    # Sunday 20:00: the week then ending is not complete, so the one before it.
    sunday = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
    assert weekly_period(sunday, 6, 20, 0) == Period(date(2026, 11, 16), date(2026, 11, 22))


async def test_report_command_in_the_team_room_sends_figures_and_chart(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "r.db", agencies=AGENCIES)
    await _seed(h.store, _make_rows(random.Random(5)))
    asked = await h.send(WORKER, "!report 2026-10-01 2026-11-15", room=TEAM_ROOM)
    text, chart = h.replies_to(asked)
    assert "Front door report: Thu 01 Oct – Sun 15 Nov 2026" in text.body
    assert "Referred again within 12 months" in text.body and "Community health" in text.body
    assert chart.file is not None and chart.file.mimetype == "image/png"
    assert Image.open(io.BytesIO(chart.file.data)).size == (1000, 760)
    # No names, no Matrix IDs of referrers, no typed agencies in what is sent.
    for word in ("Testchild", "Earlier Child", "@nurse", "Example Academy", "GP surgery"):
        assert word not in text.body and word not in text.html
    async with h.store.transaction() as tx:
        report = await build_report(
            tx, h.pipeline.settings, Period(date(2026, 10, 1), date(2026, 11, 15))
        )
    assert report.png == chart.file.data  # the same figures drawn the same way

    # Elsewhere: refused, with the reason, and nothing queued.
    in_dm = await h.send(MANAGER, "!report month")
    assert "advice-team room only" in h.reply(in_dm)
    by_nurse = await h.send(NURSE, "!report", room=TEAM_ROOM)
    assert "Only members of the advice team" in h.reply(by_nurse)
    bad = await h.send(WORKER, "!report 2026-11-30 2026-11-01", room=TEAM_ROOM)
    assert "before the first" in h.reply(bad)
    assert all(m.file is None for m in h.replies_to(bad))
    await h.store.close()


async def test_weekly_report_goes_once_a_week_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    reports = ReportsConfig(weekly_at="monday 09:00")

    async def start(now: datetime) -> Harness:
        h = await Harness.open(path, reports=reports)
        h.now = now
        await h.pipeline.resume()
        await h.pipeline.wait_idle()
        return h

    def weekly(h: Harness) -> list[str]:
        return [
            m.body.splitlines()[0] if m.file is None else "chart" for m in h.messenger.to(TEAM_ROOM)
        ]

    # Wednesday 25 November: this week's Monday 09:00 has passed and nothing was sent yet,
    # so the week of 16-22 November goes now, once.
    h = await start(START)
    await h.tick()
    assert weekly(h) == ["Front door report: Mon 16 Nov – Sun 22 Nov 2026", "chart"]
    await h.tick(timedelta(minutes=1))
    assert len(weekly(h)) == 2
    await h.store.close()

    # Restarts: nothing more for that week.
    for minutes in (2, 60, 60 * 24 * 4):
        h = await start(START + timedelta(minutes=minutes))
        await h.tick()
        assert weekly(h) == []
        await h.store.close()

    # Monday 30 November, 08:59 London (= UTC in winter): not yet; 09:00: the next week.
    h = await start(datetime(2026, 11, 30, 8, 59, tzinfo=UTC))
    await h.tick()
    assert weekly(h) == []
    await h.tick(timedelta(minutes=1))
    assert weekly(h) == ["Front door report: Mon 23 Nov – Sun 29 Nov 2026", "chart"]
    await h.store.close()

    # Queued but the bot stopped before sending: the restart sends it, once.
    h = await Harness.open(path, reports=reports)
    h.now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    async with h.store.transaction() as tx:
        from handlers.reports import weekly_report_due

        assert await weekly_report_due(tx, h.pipeline.settings)
    await h.store.close()  # "crash" before the outbox worker ran
    h = await start(datetime(2026, 12, 7, 9, 5, tzinfo=UTC))
    await h.tick()
    await h.tick(timedelta(hours=1))
    assert weekly(h) == ["Front door report: Mon 30 Nov – Sun 06 Dec 2026", "chart"]
    await h.store.close()


async def test_no_weekly_report_when_unset(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "r.db")
    await h.tick(timedelta(days=8))
    assert h.messenger.to(TEAM_ROOM) == []
    await h.store.close()


def test_cli_report_writes_png_and_csv_of_the_same_figures(
    tmp_path: Path,
) -> None:
    from bot.cli import main
    from tests.unit.rig import write_config

    config = write_config(
        tmp_path,
        extra='[agencies.health]\nname = "Community health"\n[agencies.police]\nname = "Police"\n',
    )
    (tmp_path / "data").mkdir(mode=0o700)
    rows = _make_rows(random.Random(9))

    async def seed() -> None:
        store = await Store.open(location(tmp_path / "data" / "referrals.db"), KEYRING)
        await _seed(store, rows)
        await store.close()

    asyncio.run(seed())  # the command runs its own event loop
    out = tmp_path / "out"
    args = [
        "report",
        "-c",
        str(config),
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-15",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    png = out / "front-door-report_2026-10-01_2026-11-15.png"
    assert Image.open(png).size == (1000, 760)
    lines = png.with_suffix(".csv").read_text().splitlines()
    assert lines[0] == "section,item,value"
    cells = {tuple(line.split(",")[:2]): line.split(",")[2] for line in lines[1:]}
    received = [
        r for r in rows if date(2026, 10, 1) <= _london_day(r.received) <= date(2026, 11, 15)
    ]
    assert cells[("received", "total")] == str(len(received))
    assert cells[("agency", "Police")] == str(
        sum(TYPED[r.typed_agency] == "Police" for r in received)
    )
    assert not any("Academy" in line or "Testchild" in line or "@" in line for line in lines)

    # Dates the wrong way round: refused, nothing written.
    bad = [
        "report",
        "-c",
        str(config),
        "--from",
        "2026-11-15",
        "--to",
        "2026-10-01",
        "-o",
        str(tmp_path / "no"),
    ]
    assert main(bad) == 2
    assert not (tmp_path / "no").exists()


def test_weekly_at_is_checked() -> None:
    import pydantic
    import pytest

    assert ReportsConfig(weekly_at="Friday 7:30").weekly == (4, 7, 30)
    assert ReportsConfig().weekly is None
    for bad in ("mon 09:00", "monday", "monday 24:00", "monday 09:60", "every day 09:00"):
        with pytest.raises(pydantic.ValidationError, match="day of the week"):
            ReportsConfig(weekly_at=bad)


def test_report_benchmark_runs(tmp_path: Path) -> None:
    """A small run of bench/report_build.py, so that the command keeps working."""
    import json
    import subprocess
    import sys

    from bench.seed_db import seed
    from tests.keys import TEST_KEY

    key = tmp_path / "key"
    key.write_text(TEST_KEY)
    db = tmp_path / "referrals.db"
    asyncio.run(seed(db, 300, KEYRING, batch=300))
    command = [sys.executable, "-m", "bench.report_build", "--db", str(db)]
    command += ["--key-file", str(key), "--runs", "1", "--out", str(tmp_path / "run.json")]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    [run] = json.loads((tmp_path / "run.json").read_text())["runs"]
    assert run["received"] > 0 and run["png_bytes"] > 1000, done.stdout
    assert run["build_s"] > 0 and run["peak_extra_mb"] > 0
