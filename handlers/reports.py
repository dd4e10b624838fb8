"""The front door's figures (issue 14, part 3): `!report`, the weekly report, the CSV.

Counts only. Every figure comes from `Tx.report_figures` (SQL over indexed columns; no
form is read or decrypted), agencies are shown only as configured agencies, and nothing
names a child, a referrer or a worker.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from handlers.chart import HEIGHT, WIDTH, render_png
from handlers.context import Call, Refusal
from handlers.notify import answer_place
from handlers.ports import OutgoingMessage, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from schemas.config import AgencyConfig
from schemas.messages import OutgoingFile
from schemas.reports import ReportFigures
from storage.tx import Tx

log = logging.getLogger(__name__)

LONDON = ZoneInfo("Europe/London")
MAX_DAYS = 366
OTHER_AGENCY = "other (not a configured agency)"
# The last week the weekly report went out for (its Monday, ISO date).
WEEKLY_KV = "reports.weekly_last"
USAGE = (
    "Use !report, !report week, !report month, !report quarter (the last complete one) or "
    "!report 2026-11-01 2026-11-30 (two dates, at most a year apart)."
)


@dataclass(frozen=True)
class Period:
    start: date  # Europe/London, inclusive
    end: date  # inclusive

    def title(self) -> str:
        if self.start.year == self.end.year:
            return f"{self.start:%a %d %b} – {self.end:%a %d %b %Y}"
        return f"{self.start:%a %d %b %Y} – {self.end:%a %d %b %Y}"

    def slug(self) -> str:
        return f"{self.start.isoformat()}_{self.end.isoformat()}"


@dataclass(frozen=True)
class Report:
    period: Period
    figures: ReportFigures
    png: bytes

    @property
    def file_name(self) -> str:
        return f"front-door-report_{self.period.slug()}.png"


def last_complete(kind: str, today: date) -> Period:
    """The last complete week (Monday to Sunday), calendar month or quarter before `today`."""
    if kind == "week":
        monday = today - timedelta(days=today.weekday())
        return Period(monday - timedelta(days=7), monday - timedelta(days=1))
    if kind == "month":
        end = today.replace(day=1) - timedelta(days=1)
        return Period(end.replace(day=1), end)
    if kind == "quarter":
        first = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
        end = first - timedelta(days=1)
        return Period(date(end.year, 3 * ((end.month - 1) // 3) + 1, 1), end)
    raise ValueError(kind)


def parse_period(args: str, today: date) -> Period:
    """The period `!report` asks for; ValueError with the reason if it cannot be."""
    words = args.lower().split()
    if not words:
        return last_complete("week", today)
    if len(words) == 1 and words[0] in ("week", "month", "quarter"):
        return last_complete(words[0], today)
    if len(words) != 2:
        raise ValueError(USAGE)
    try:
        start, end = date.fromisoformat(words[0]), date.fromisoformat(words[1])
    except ValueError:
        raise ValueError(f"Dates are written YYYY-MM-DD. {USAGE}") from None
    if end < start:
        raise ValueError("The second date is before the first: give the earlier date first.")
    if start > today:
        raise ValueError("That period has not started yet.")
    if (end - start).days + 1 > MAX_DAYS:
        raise ValueError(f"A report covers at most {MAX_DAYS} days: ask for a shorter period.")
    return Period(start, end)


def _london_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), LONDON).astimezone(UTC)


async def build_report(tx: Tx, settings: Settings, period: Period) -> Report:
    """The figures for `period` (open and overdue as of now) and their chart."""
    lo = _london_midnight(period.start)
    hi = _london_midnight(period.end + timedelta(days=1))
    weeks = []
    monday = period.start - timedelta(days=period.start.weekday())
    while monday <= period.end:
        w_start = max(monday, period.start)
        w_end = min(monday + timedelta(days=7), period.end + timedelta(days=1))
        weeks.append((monday, _london_midnight(w_start), _london_midnight(w_end)))
        monday += timedelta(days=7)
    raw = await tx.report_figures(period.start, period.end, lo, hi, weeks)
    figures = replace(raw, agencies=configured_agencies(raw.agencies, settings.agencies))
    # The chart's font has no en dash.
    png = render_png(figures, f"Front door: {period.title().replace('–', 'to')}")
    return Report(period, figures, png)


def configured_agencies(
    stored: tuple[tuple[str, int], ...], agencies: dict[str, AgencyConfig]
) -> tuple[tuple[str, int], ...]:
    """Counts by configured agency (matched on its key or name, ignoring case and
    spacing); everything else, whatever the referrer typed, is counted as "other" and
    never shown."""
    names: dict[str, str] = {}
    for key, agency in agencies.items():
        names[_norm(key)] = agency.name
        names[_norm(agency.name)] = agency.name
    counts: dict[str, int] = {}
    for typed, n in stored:
        label = names.get(_norm(typed), OTHER_AGENCY)
        counts[label] = counts.get(label, 0) + n
    return tuple(sorted(counts.items(), key=lambda kv: (kv[0] == OTHER_AGENCY, -kv[1], kv[0])))


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _hours(hours: float | None) -> str:
    if hours is None:
        return "none decided"
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"


def report_doc(report: Report) -> Doc:
    f = report.figures
    pct = f.in_time_percent
    doc = Doc().heading(f"Front door report: {report.period.title()}")
    doc.fields(
        (
            "Received",
            f"{f.received} ({f.child_protection} child protection referrals, "
            f"{f.contacts} contacts, as classified now)",
        ),
        (
            "Decided in the period",
            f"{f.decided}; within the decision deadline: {f.decided_in_time}"
            + ("" if pct is None else f" ({pct:.0f}%)"),
        ),
        ("Median time from receipt to decision", _hours(f.median_hours_to_decision)),
        (
            "Reclassified since receipt",
            f"{f.downgraded} child protection referral(s) now contacts; "
            f"{f.upgraded} contact(s) now child protection referrals",
        ),
        ("Open now", f"{f.open_now}, of which overdue: {f.overdue_now}"),
        (
            "Referred again within 12 months",
            f"{f.repeat_referrals} referral(s) about {f.repeat_children} child(ren) "
            "with an earlier record in the 12 months before",
        ),
    )
    doc.para("Per week (Monday to Sunday):")
    doc.bullets(
        *(
            f"w/c {w.week_start:%d %b %Y}: {w.child_protection} child protection referrals, "
            f"{w.contacts} contacts"
            for w in f.weeks
        )
    )
    doc.para("Outcomes (decided in the period):")
    doc.bullets(*([f"{o}: {n}" for o, n in f.outcomes] or ["none"]))
    doc.para("Referring agencies:")
    doc.bullets(*([f"{a}: {n}" for a, n in f.agencies] or ["none"]))
    doc.para(
        "Counts only. Children are matched by name and date of birth (keyed hash), not by "
        "links made by hand. The chart follows."
    )
    return doc


def report_csv(report: Report) -> str:
    """The same figures as the text and the chart, one per row: section, item, value."""
    f = report.figures
    rows: list[tuple[str, str, str]] = [
        ("period", "start", f.start.isoformat()),
        ("period", "end", f.end.isoformat()),
        ("period", "generated_at", f.generated_at.astimezone(UTC).isoformat()),
    ]
    for w in f.weeks:
        week = f"week {w.week_start.isoformat()}"
        rows += [
            (week, "child protection referrals", str(w.child_protection)),
            (week, "contacts", str(w.contacts)),
        ]
    pct = f.in_time_percent
    rows += [
        ("received", "child protection referrals", str(f.child_protection)),
        ("received", "contacts", str(f.contacts)),
        ("received", "total", str(f.received)),
        ("decisions", "decided", str(f.decided)),
        ("decisions", "within deadline", str(f.decided_in_time)),
        ("decisions", "within deadline percent", "" if pct is None else f"{pct:.1f}"),
        (
            "decisions",
            "median hours to decision",
            "" if f.median_hours_to_decision is None else f"{f.median_hours_to_decision:.2f}",
        ),
    ]
    rows += [("outcome", o, str(n)) for o, n in f.outcomes]
    rows += [("agency", a, str(n)) for a, n in f.agencies]
    rows += [
        ("reclassified", "child protection referral to contact", str(f.downgraded)),
        ("reclassified", "contact to child protection referral", str(f.upgraded)),
        ("now", "open", str(f.open_now)),
        ("now", "overdue", str(f.overdue_now)),
        ("referred again within 12 months", "referrals", str(f.repeat_referrals)),
        ("referred again within 12 months", "children", str(f.repeat_children)),
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("section", "item", "value"))
    writer.writerows(tuple(_cell(c) for c in row) for row in rows)
    return out.getvalue()


def _cell(text: str) -> str:
    # A configured agency name starting with = + - @ would be a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def report_messages(
    report: Report, room_id: str, *, reply_to: str | None, thread_root: str | None
) -> tuple[OutgoingMessage, OutgoingMessage]:
    """The figures as text, then the chart as an encrypted image."""
    body, html = report_doc(report).render()
    text = OutgoingMessage(room_id, body, html, reply_to=reply_to, thread_root=thread_root)
    chart = OutgoingMessage(
        room_id,
        report.file_name,
        "",
        reply_to=reply_to,
        thread_root=thread_root,
        file=OutgoingFile.of(report.png, report.file_name, "image/png", width=WIDTH, height=HEIGHT),
    )
    return text, chart


async def report_command(c: Call) -> None:
    """`!report [week|month|quarter|FROM TO]`: advice team and managers, in the
    advice-team room only (the figures are for the team, not a direct message)."""
    if c.msg.room_id != c.settings.advice_team_room:
        raise Refusal(
            "Reports go to the advice-team room only, where the whole team sees the same "
            "figures: send !report there."
        )
    try:
        period = parse_period(c.args, c.tx.now.astimezone(LONDON).date())
    except ValueError as exc:
        raise Refusal(str(exc)) from None
    report = await build_report(c.tx, c.settings, period)
    thread_root, reply_to = answer_place(c.msg)
    text, chart = report_messages(report, c.msg.room_id, reply_to=reply_to, thread_root=thread_root)
    await c.tx.enqueue(text, txn_id=txn_id_for(c.msg.event_id, "report"), purpose="report")
    await c.tx.enqueue(
        chart, txn_id=txn_id_for(c.msg.event_id, "report_chart"), purpose="report_chart"
    )
    log.info("report queued: event=%s period=%s", c.msg.event_id, period.slug())


def weekly_period(now: datetime, weekday: int, hour: int, minute: int) -> Period:
    """The week the latest weekly report due at or before `now` covers: the complete
    week (Monday to Sunday, Europe/London) before the week of that due time."""
    local = now.astimezone(LONDON)
    day = local.date() - timedelta(days=local.weekday()) + timedelta(days=weekday)
    if datetime.combine(day, time(hour, minute), LONDON) > local:
        day -= timedelta(days=7)
    monday = day - timedelta(days=day.weekday())
    return Period(monday - timedelta(days=7), monday - timedelta(days=1))


async def weekly_report_due(tx: Tx, settings: Settings) -> bool:
    """Queue the weekly report if it is due and has not gone for its week yet.

    The week is remembered in the same transaction that queues the report, so it goes
    once per week however often the bot restarts; its transaction IDs come from the
    week, so even a resend would be the same event to the homeserver."""
    schedule = settings.reports.weekly
    if schedule is None:
        return False
    period = weekly_period(tx.now, *schedule)
    last = await tx.get_kv(WEEKLY_KV)
    if last is not None and last >= period.start.isoformat():
        return False
    report = await build_report(tx, settings, period)
    room = settings.advice_team_room
    text, chart = report_messages(report, room, reply_to=None, thread_root=None)
    key = f"weekly-report:{period.start.isoformat()}"
    await tx.enqueue(text, txn_id=txn_id_for(key, "report"), purpose="weekly_report")
    await tx.enqueue(chart, txn_id=txn_id_for(key, "report_chart"), purpose="weekly_report_chart")
    await tx.set_kv(WEEKLY_KV, period.start.isoformat())
    log.info("weekly report queued: period=%s", period.slug())
    return True
