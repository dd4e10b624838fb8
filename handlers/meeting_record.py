"""What a strategy meeting has on record: attendance, the checklist for closing, the
minutes, the summary `!show` carries, and reminders of actions until they are done.

The review found minutes that never reached the child's record and actions nobody chased:
the minutes go into the referral's running record, and owners (then the chair) are reminded.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from handlers.notify import LABEL, LONDON, format_time
from handlers.ports import Incoming, OutgoingMessage, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from schemas.domain import Purpose
from schemas.records import Meeting, MeetingItem, Participant, Referral
from storage.tx import Tx

ATTENDANCE = {
    "to_invite": "invite being sent",
    "invited": "no response yet",
    "joined": "attended",
    "left": "attended (left)",
    "declined": "declined",
}
ATTENDED = ("joined", "left")


def close_checklist(
    participants: list[Participant], items: list[MeetingItem], settings: Settings
) -> tuple[list[str], list[str]]:
    """(problems that block closing, agencies that must be accounted for but are not)."""
    kinds = {i.kind for i in items}
    problems = []
    if "view_child" not in kinds:
        problems.append(
            "record the child's views, or why they could not be obtained: !views child …"
        )
    if "view_parents" not in kinds:
        problems.append(
            "record the parents' views, or why they could not be obtained: !views parents …"
        )
    for i in items:
        if i.kind == "action" and (not i.owner or not i.due):
            problems.append(f"action {i.number} has no owner or due date")
    if "decision" not in kinds:
        problems.append("record the meeting's decisions: !decision …")
    accounted = {p.agency for p in participants if p.status in ATTENDED}
    accounted |= {i.agency for i in items if i.kind == "info"}
    absent = [key for key in settings.meetings.must_account_for if key not in accounted]
    return problems, absent


def attendance_lines(
    participants: list[Participant], items: list[MeetingItem], settings: Settings
) -> list[str]:
    informed = {i.agency for i in items if i.kind == "info"}
    lines = []
    for p in participants:
        status = ATTENDANCE[p.status]
        if p.agency in informed and p.status not in ATTENDED:
            status += ", information provided"
        lines.append(f"{p.agency or 'no agency'} · {p.user_id} · {p.role} · {status}")
    listed = {p.agency for p in participants}
    for key in settings.meetings.must_account_for:
        if key not in listed:
            lines.append(
                f"{key} · NOBODY INVITED" + (" · information provided" if key in informed else "")
            )
    return lines


async def minutes_doc(
    tx: Tx, meeting: Meeting, referral: Referral, settings: Settings, *, final: bool
) -> Doc:
    participants = await tx.participants(meeting.id)
    items = await tx.items(meeting.id)
    title = "Minutes" if final else "Minutes so far"
    doc = Doc().heading(
        f"{title}: strategy meeting for {referral.ref} ({LABEL[referral.current_type]})"
    )
    doc.fields(
        ("Chair", meeting.chair),
        ("Called", format_time(meeting.created_at)),
        ("Scheduled", meeting.scheduled or "at once"),
        ("Closed", format_time(meeting.closed_at) if meeting.closed_at else "open"),
    )
    _attendance_sections(doc, participants)
    _item_sections(doc, items)
    if meeting.close_note:
        doc.para(meeting.close_note, strong=True)
    return doc


def _attendance_sections(doc: Doc, participants: list[Participant]) -> None:
    doc.heading("Invited").bullets(
        *or_none([f"{p.user_id} ({p.agency or 'no agency'}, {p.role})" for p in participants])
    )
    attended = [p for p in participants if p.status in ATTENDED]
    missing = [p for p in participants if p.status not in ATTENDED]
    doc.heading("Attended").bullets(
        *or_none([f"{p.user_id} ({p.agency or 'no agency'})" for p in attended])
    )
    doc.heading("Invited but did not attend").bullets(
        *or_none(
            [f"{p.user_id} ({p.agency or 'no agency'}): {ATTENDANCE[p.status]}" for p in missing]
        )
    )


def _item_sections(doc: Doc, items: list[MeetingItem]) -> None:
    """What was recorded, by kind; the actions (owner, due date, done) after the decisions."""
    sections = (
        ("Information provided", "info"),
        ("The child's views", "view_child"),
        ("The parents' views", "view_parents"),
        ("Decisions", "decision"),
        ("Recommendations", "recommendation"),
    )
    for title, kind in sections:
        chosen = [i for i in items if i.kind == kind]
        texts = [f"{i.text} ({i.agency or i.author})" for i in chosen] or ["none recorded"]
        doc.heading(title).bullets(*texts)
        if kind == "decision":
            actions = [i for i in items if i.kind == "action"]
            doc.heading("Actions").bullets(
                *or_none(
                    [
                        f"{a.number}. {a.text} — owner {a.owner}, due {dmy(a.due)}"
                        + (f" — DONE {format_time(a.done_at)}" if a.done_at else "")
                        for a in actions
                    ],
                    "none recorded",
                )
            )


def meetings_section(doc: Doc, meetings: list[tuple[Meeting, list[MeetingItem]]]) -> None:
    """For !show: the plan and decisions of every meeting on a referral."""
    if not meetings:
        return
    doc.heading("Strategy meetings")
    for meeting, items in meetings:
        lines = [
            f"Meeting {meeting.id} ({meeting.state}), chair {meeting.chair}, "
            f"called {format_time(meeting.created_at)}"
        ]
        lines += [f"Decision: {i.text}" for i in items if i.kind == "decision"]
        lines += [
            f"Action {i.number}: {i.text} — {i.owner}, due {dmy(i.due)}"
            + (" (done)" if i.done_at else " (open)")
            for i in items
            if i.kind == "action"
        ]
        lines += [f"Recommendation: {i.text}" for i in items if i.kind == "recommendation"]
        doc.bullets(*lines)


def or_none(lines: list[str], empty: str = "nobody") -> list[str]:
    return lines or [empty]


def dmy(iso: str | None) -> str:
    return date.fromisoformat(iso).strftime("%d/%m/%Y") if iso else "no date"


async def on_membership(tx: Tx, msg: Incoming, settings: Settings, meeting: Meeting) -> None:
    """Attendance follows what people do with their invite."""
    if msg.target is None or msg.membership is None:
        return
    status = {"join": "joined", "leave": "declined", "invite": "invited"}.get(msg.membership)
    if status is None:
        return
    current = {p.user_id: p.status for p in await tx.participants(meeting.id)}
    if msg.target not in current:
        return
    if msg.membership == "leave" and current[msg.target] in ATTENDED:
        status = "left"
    if await tx.set_participant_status(meeting.id, msg.target, status):
        await tx.append_record(
            meeting.referral_id, msg.target, f"meeting_{status}", {"meeting": meeting.id}
        )


async def chase_actions(tx: Tx, settings: Settings) -> int:
    """Remind owners before an action is due; tell the chair of overdue actions until done."""
    now = tx.now
    queued = 0
    interval = timedelta(minutes=settings.deadlines.reminder_interval_minutes)
    for meeting, item in await tx.open_actions():
        if meeting.room_id is None or item.due is None:
            continue
        due_day = date.fromisoformat(item.due)
        due_end = datetime.combine(due_day, time(17, 0), LONDON)
        remind_from = datetime.combine(
            due_day - timedelta(days=settings.meetings.action_reminder_days), time(9, 0), LONDON
        )
        overdue = now > due_end
        if overdue:
            if item.overdue_told_at is not None and now - item.overdue_told_at < interval:
                continue
            text = (
                f"OVERDUE: action {item.number} ({item.text}) was due {dmy(item.due)}; "
                f"owner {item.owner}. Mark it with !done {item.number}."
            )
            mentions = (meeting.chair,)
        elif now >= remind_from and item.reminded_at is None:
            text = (
                f"Reminder: action {item.number} ({item.text}) is due {dmy(item.due)}. "
                f"Mark it with !done {item.number}."
            )
            mentions = (item.owner or meeting.chair,)
        else:
            continue
        body, html = Doc().para(text, strong=overdue).render()
        stamp = now.strftime("%Y%m%d%H%M") if overdue else "before"
        await tx.enqueue(
            OutgoingMessage(meeting.room_id, body, html, mentions=mentions),
            txn_id=txn_id_for(f"action{item.id}#{stamp}", Purpose.ACTION_REMINDER),
            purpose=Purpose.ACTION_REMINDER,
            referral_id=meeting.referral_id,
        )
        await tx.mark_action_reminded(item.id, overdue=overdue)
        queued += 1
    return queued
