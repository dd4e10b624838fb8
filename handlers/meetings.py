"""Strategy meetings: the right agencies in an encrypted room, and a record that reaches
the child's file.

The review found strategy meetings without health or education, without the child's
views, with actions that had no owner or timescale, and minutes that never reached the
child's record. So: the safeguarding leads of the agencies that must be there are invited
and their absence is visible; the meeting cannot be closed without the child's and
parents' views, health and education accounted for, and every action owned and dated;
and the minutes are appended to the referral's running record and told to the referrer.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from handlers.notify import LABEL, LONDON, format_time, tell_referrer
from handlers.pattern import agency_of, find_pattern
from handlers.ports import Incoming, OutgoingMessage, RoomSpec, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from handlers.views import form_rows
from handlers.workflow import USER_RE, Call, Refusal, _split
from schemas.records import Meeting, MeetingItem, Participant, Referral
from storage.tx import Tx

QUESTIONS = (
    "Is there reasonable cause to suspect that the child is suffering, or is likely to "
    "suffer, significant harm?",
    "Should a section 47 enquiry start? Single-agency or joint with the police?",
    "What must happen now to keep the child safe, and who does it, by when?",
    "What are the child's own views and wishes, and the parents' or carers' views?",
    "What does each agency know? Is anything missing (health, education, police, GP)?",
    "Is an initial child protection conference needed?",
)
ATTENDANCE = {
    "to_invite": "invite being sent",
    "invited": "no response yet",
    "joined": "attended",
    "left": "attended (left)",
    "declined": "declined",
}
ATTENDED = ("joined", "left")


# -- setting up ------------------------------------------------------------------------


def _agencies_named(referral: Referral, settings: Settings) -> list[str]:
    """Agency keys whose key or name appears in the referrer's agency."""
    said = agency_of(referral)
    return [
        key
        for key, agency in settings.agencies.items()
        if key in said.split() or agency.name.casefold() in said or said in agency.name.casefold()
    ]


async def start_meeting(
    tx: Tx,
    referral: Referral,
    *,
    called_by: str,
    event_id: str,
    scheduled: str | None,
    settings: Settings,
) -> tuple[int, list[str]]:
    """Record a new meeting and ask the shell to create its room. Returns the meeting ID
    and the problems to show (agencies that could not be invited)."""
    meeting_id = await tx.insert_meeting(
        referral_id=referral.id,
        event_id=event_id,
        chair=called_by,
        called_by=called_by,
        scheduled=scheduled,
    )
    await tx.add_participant(meeting_id, called_by, agency="csc", role="chair", status="to_invite")
    if referral.channel == "matrix" and settings.is_allowed(referral.sender):
        await tx.add_participant(
            meeting_id,
            referral.sender,
            agency=settings.agency_of(referral.sender),
            role="referrer",
            status="to_invite",
        )
    problems: list[str] = []
    wanted = list(
        dict.fromkeys([*settings.meetings.required_agencies, *_agencies_named(referral, settings)])
    )
    # The child's school and GP, when known, are asked through their agencies' leads.
    child = referral.form.get("child", {})
    for field, key in (("school", "education"), ("gp", "gp")):
        if (
            child.get(field)
            and key not in wanted
            and (key in settings.agencies or key == "education")
        ):
            wanted.append(key)
    for key in wanted:
        agency = settings.agencies.get(key)
        lead = agency.safeguarding_lead if agency else None
        if lead is None:
            problems.append(f"{key}: NOT INVITED, no safeguarding lead is configured")
        elif not settings.is_allowed(lead):
            problems.append(f"{key}: NOT INVITED, {lead} is not on an allowed homeserver")
        else:
            await tx.add_participant(meeting_id, lead, agency=key, role="lead", status="to_invite")
    await tx.append_record(
        referral.id,
        called_by,
        "strategy_meeting_called",
        {"meeting": meeting_id, "scheduled": scheduled, "not_invited": problems},
    )
    return meeting_id, problems


def room_spec(meeting: Meeting, referral: Referral, participants: list[Participant]) -> RoomSpec:
    """Room name and topic carry the reference only: the homeserver can read them."""
    return RoomSpec(
        name=f"Strategy meeting {referral.ref}",
        topic=f"Strategy discussion for {referral.ref}. Use !help here for meeting commands.",
        invite=tuple(p.user_id for p in participants),
        moderator=meeting.chair,
    )


def agenda(
    meeting: Meeting, referral: Referral, group: list[Referral], settings: Settings, now: datetime
) -> Doc:
    doc = Doc().heading(f"Strategy meeting for {referral.ref}: {LABEL[referral.current_type]}")
    doc.fields(
        ("Chair", meeting.chair),
        ("When", meeting.scheduled or "now"),
        ("Referral received", format_time(referral.received_at)),
    )
    doc.heading("Referral summary").fields(*form_rows(referral.form))
    others = [g for g in group if g.id != referral.id]
    pattern = find_pattern(group, now, settings.pattern)
    doc.heading("Previous contacts about this child")
    if pattern is not None and pattern.triggered:
        doc.para(f"PATTERN: {pattern.headline()}", strong=True).para(pattern.cumulative())
    if others:
        doc.bullets(
            *(
                f"{g.ref} · {LABEL[g.current_type]} · {format_time(g.received_at)} · "
                f"{g.agency or ''} · {g.outcome or g.state}"
                for g in others
            )
        )
    else:
        doc.para("None on record.")
    doc.heading("Questions for the meeting").bullets(*QUESTIONS)
    doc.para(
        "Record as you go: !views child …, !views parents …, !info … (if your agency cannot "
        "attend), !decision …, !action @owner dd/mm/yyyy …, !recommendation …; !attendance "
        "and !minutes show where things stand; the chair closes with !close."
    )
    return doc


async def room_created(tx: Tx, meeting_id: int, room_id: str, settings: Settings) -> None:
    """The shell created the room: remember it, mark invites sent, queue the agenda."""
    meeting = await tx.meeting(meeting_id)
    assert meeting is not None
    await tx.set_meeting_room(meeting_id, room_id)
    for p in await tx.participants(meeting_id):
        if p.status == "to_invite":
            await tx.set_participant_status(meeting_id, p.user_id, "invited")
    referral = await tx.referral_by_id(meeting.referral_id)
    assert referral is not None
    meeting = await tx.meeting(meeting_id)
    assert meeting is not None
    group = await tx.referrals_of_child(referral)
    body, html = agenda(meeting, referral, group, settings, tx.now).render()
    await tx.enqueue(
        OutgoingMessage(room_id, body, html),
        txn_id=txn_id_for(f"meeting{meeting_id}", "agenda"),
        purpose="meeting_agenda",
        referral_id=referral.id,
    )
    await tx.append_record(
        referral.id, settings.bot_user_id, "strategy_meeting_room_created", {"meeting": meeting_id}
    )


# -- commands outside the meeting room -------------------------------------------------


async def strategy(c: Call) -> None:
    ref, scheduled = _split(c.args, 2)
    r = await c.referral(ref)
    if not r.is_open and r.outcome != "strategy discussion (section 47)":
        raise Refusal(
            f"{r.ref} is decided ({r.outcome}); a strategy meeting needs an open referral."
        )
    meeting_id, problems = await start_meeting(
        c.tx,
        r,
        called_by=c.msg.sender,
        event_id=c.msg.event_id,
        scheduled=scheduled.strip() or None,
        settings=c.settings,
    )
    participants = await c.tx.participants(meeting_id)
    doc = Doc().para(f"Setting up an encrypted strategy meeting room for {r.ref}; you chair it.")
    doc.fields(*((p.user_id, f"{p.role}, {p.agency or 'no agency'}") for p in participants))
    if problems:
        doc.para("Not invited — act on these:", strong=True).bullets(*problems)
    await c.say(doc, referral_id=r.id)
    await tell_referrer(
        c.tx,
        r,
        c.msg.event_id,
        "strategy",
        Doc().para(
            "A strategy meeting has been called about your referral"
            + (f" ({scheduled.strip()})" if scheduled.strip() else "")
            + ". You are invited to its encrypted room."
        ),
    )


# -- commands in the meeting room ------------------------------------------------------


@dataclass(frozen=True)
class MeetingCall:
    call: Call
    meeting: Meeting
    referral: Referral


async def meeting_command(
    tx: Tx, msg: Incoming, settings: Settings, meeting: Meeting, word: str, args: str
) -> bool:
    """Handle a command typed in a meeting room. False if `word` is not a meeting command."""
    handler = MEETING_COMMANDS.get(word)
    if handler is None:
        return False
    referral = await tx.referral_by_id(meeting.referral_id)
    assert referral is not None
    call = Call(tx, msg, settings, args)
    participants = {p.user_id for p in await tx.participants(meeting.id)}
    await tx.savepoint()
    try:
        if msg.sender not in participants and not settings.is_team(msg.sender):
            raise Refusal("Only people invited to this meeting can use its commands.")
        if meeting.state != "open" and word not in ("!done", "!minutes", "!attendance"):
            raise Refusal("This meeting is closed. Its minutes are on the referral's record.")
        await handler(MeetingCall(call, meeting, referral))
    except Refusal as refusal:
        await tx.rollback_to_savepoint()
        await call.say(Doc().para(str(refusal)), "refused")
    else:
        await tx.release_savepoint()
    return True


def _agency(m: MeetingCall, user_id: str) -> str | None:
    return m.call.settings.agency_of(user_id) or (
        "csc" if m.call.settings.is_team(user_id) else None
    )


async def _add(m: MeetingCall, kind: str, text: str, **extra: str | None) -> MeetingItem:
    text = text.strip()
    if len(text) < 3:
        raise Refusal("Write the text after the command.")
    item = await m.call.tx.add_item(
        m.meeting.id, kind, m.call.msg.sender, text, agency=_agency(m, m.call.msg.sender), **extra
    )
    return item


async def info(m: MeetingCall) -> None:
    item = await _add(m, "info", m.call.args)
    await m.call.say(Doc().para(f"Information from {item.agency or m.call.msg.sender} recorded."))


async def views(m: MeetingCall) -> None:
    whose, text = _split(m.call.args, 2)
    if whose.lower() not in ("child", "parents"):
        raise Refusal(
            "Say whose views: !views child what the child said (or why their views could not "
            "be obtained), or !views parents …"
        )
    await _add(m, f"view_{whose.lower()}", text)
    await m.call.say(
        Doc().para(
            f"The {whose.lower()}'s views are recorded."
            if whose.lower() == "child"
            else "The parents' views are recorded."
        )
    )


async def action(m: MeetingCall) -> None:
    owner, when, text = _split(m.call.args, 3)
    if not USER_RE.match(owner):
        raise Refusal("Every action needs an owner: !action @owner:server dd/mm/yyyy what to do.")
    if not m.call.settings.is_allowed(owner):
        raise Refusal(f"{owner} is not on an allowed homeserver.")
    due = _parse_date(when)
    if due is None:
        raise Refusal(f"Every action needs a due date as dd/mm/yyyy (got {when or 'nothing'!r}).")
    if due < m.call.tx.now.astimezone(LONDON).date():
        raise Refusal(f"The due date {when} is in the past.")
    item = await _add(m, "action", text, owner=owner, due=due.isoformat())
    await m.call.say(Doc().para(f"Action {item.number} recorded: {owner}, due {due:%d/%m/%Y}."))


async def recommendation(m: MeetingCall) -> None:
    await _add(m, "recommendation", m.call.args)
    await m.call.say(Doc().para("Recommendation recorded (not an action: it has no owner)."))


async def decision(m: MeetingCall) -> None:
    await _add(m, "decision", m.call.args)
    await m.call.say(Doc().para("Decision recorded."))


async def done(m: MeetingCall) -> None:
    word = _split(m.call.args, 1)[0]
    if not word.isdigit():
        raise Refusal("Give the action's number: !done 2")
    items = {i.number: i for i in await m.call.tx.items(m.meeting.id) if i.kind == "action"}
    item = items.get(int(word))
    if item is None:
        raise Refusal(f"There is no action {word} in this meeting.")
    if m.call.msg.sender not in (item.owner, m.meeting.chair) and not m.call.settings.is_team(
        m.call.msg.sender
    ):
        raise Refusal(
            f"Only {item.owner}, the chair or the advice team can complete action {word}."
        )
    if not await m.call.tx.complete_action(m.meeting.id, int(word), m.call.msg.sender):
        raise Refusal(f"Action {word} is already done.")
    await m.call.tx.append_record(
        m.referral.id,
        m.call.msg.sender,
        "meeting_action_done",
        {"meeting": m.meeting.id, "action": int(word), "text": item.text},
    )
    await m.call.say(Doc().para(f"Action {word} marked done."))


async def attendance(m: MeetingCall) -> None:
    participants = await m.call.tx.participants(m.meeting.id)
    items = await m.call.tx.items(m.meeting.id)
    await m.call.say(
        Doc()
        .heading("Attendance")
        .bullets(*_attendance_lines(participants, items, m.call.settings))
    )


async def minutes(m: MeetingCall) -> None:
    await m.call.say(
        await minutes_doc(m.call.tx, m.meeting, m.referral, m.call.settings, final=False)
    )


async def chair(m: MeetingCall) -> None:
    new = _split(m.call.args, 1)[0]
    s = m.call.settings
    if m.call.msg.sender != m.meeting.chair and not s.is_manager(m.call.msg.sender):
        raise Refusal("Only the chair or a team manager can change the chair.")
    if not USER_RE.match(new) or not s.is_team(new):
        raise Refusal("The chair must be a children's social care worker (advice team or manager).")
    await m.call.tx.set_chair(m.meeting.id, new)
    if await m.call.tx.add_participant(
        m.meeting.id, new, agency="csc", role="chair", status="invited"
    ):
        await m.call.tx.add_room_job("invite", m.meeting.id, new)
    await m.call.tx.add_room_job("power", m.meeting.id, new)
    await m.call.tx.append_record(
        m.referral.id,
        m.call.msg.sender,
        "meeting_chair_changed",
        {"meeting": m.meeting.id, "to": new},
    )
    await m.call.say(Doc().para(f"{new} now chairs this meeting."))


async def invite_agency(m: MeetingCall) -> None:
    key = _split(m.call.args, 1)[0].lower()
    agency = m.call.settings.agencies.get(key)
    if agency is None:
        known = ", ".join(sorted(m.call.settings.agencies)) or "none configured"
        raise Refusal(f"Unknown agency {key!r}. Agencies: {known}.")
    if agency.safeguarding_lead is None:
        raise Refusal(f"{agency.name} has no safeguarding lead configured; use !invite @user.")
    await _invite(m, agency.safeguarding_lead, key, "lead")


async def invite(m: MeetingCall) -> None:
    user = _split(m.call.args, 1)[0]
    if not USER_RE.match(user):
        raise Refusal("Give a full Matrix ID: !invite @name:server")
    await _invite(m, user, m.call.settings.agency_of(user), "invited")


async def _invite(m: MeetingCall, user: str, agency: str | None, role: str) -> None:
    if not m.call.settings.is_allowed(user):
        raise Refusal(f"{user} is not on an allowed homeserver and cannot be invited.")
    if not await m.call.tx.add_participant(
        m.meeting.id, user, agency=agency, role=role, status="invited"
    ):
        raise Refusal(f"{user} is already invited.")
    await m.call.tx.add_room_job("invite", m.meeting.id, user)
    await m.call.say(Doc().para(f"Inviting {user} ({agency or 'no agency'})."))


async def close(m: MeetingCall) -> None:
    tx, s = m.call.tx, m.call.settings
    if m.call.msg.sender != m.meeting.chair:
        raise Refusal(f"Only the chair ({m.meeting.chair}) can close the meeting.")
    word, reason = _split(m.call.args, 2)
    override = word.lower() == "anyway"
    participants = await tx.participants(m.meeting.id)
    items = await tx.items(m.meeting.id)
    problems, absent = close_checklist(participants, items, s)
    if problems:
        raise Refusal("The meeting cannot be closed yet:\n" + "\n".join(f"- {p}" for p in problems))
    note = None
    if absent:
        if not override or len(reason.strip()) < 3:
            raise Refusal(
                "WARNING: " + ", ".join(absent) + " neither attended nor provided information. "
                "Ask them for it (!info), or close with: !close anyway <why they are missing>"
            )
        note = f"Closed without {', '.join(absent)}: {reason.strip()}"
    await tx.close_meeting(m.meeting.id, note)
    meeting = await tx.meeting(m.meeting.id)
    assert meeting is not None
    doc = await minutes_doc(tx, meeting, m.referral, s, final=True)
    text, _ = doc.render()
    await m.call.say(doc, "minutes")
    await tx.append_record(
        m.referral.id,
        m.call.msg.sender,
        "strategy_meeting_minutes",
        {"meeting": m.meeting.id, "text": text},
    )
    decisions = [i.text for i in items if i.kind == "decision"]
    actions = [i for i in items if i.kind == "action"]
    update = Doc().para("The strategy meeting about your referral has taken place.", strong=True)
    update.heading("Decisions").bullets(*decisions) if decisions else update.para(
        "No decisions were recorded."
    )
    if actions:
        update.heading("Actions").bullets(
            *(f"{a.number}. {a.text} — {a.owner}, by {_dmy(a.due)}" for a in actions)
        )
    await tell_referrer(tx, m.referral, m.call.msg.event_id, "meeting_outcome", update)


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


def _attendance_lines(
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
    doc.heading("Invited").bullets(
        *_or_none([f"{p.user_id} ({p.agency or 'no agency'}, {p.role})" for p in participants])
    )
    attended = [p for p in participants if p.status in ATTENDED]
    missing = [p for p in participants if p.status not in ATTENDED]
    doc.heading("Attended").bullets(
        *_or_none([f"{p.user_id} ({p.agency or 'no agency'})" for p in attended])
    )
    doc.heading("Invited but did not attend").bullets(
        *_or_none(
            [f"{p.user_id} ({p.agency or 'no agency'}): {ATTENDANCE[p.status]}" for p in missing]
        )
    )
    sections = (
        ("Information provided", "info"),
        ("The child's views", "view_child"),
        ("The parents' views", "view_parents"),
        ("Decisions", "decision"),
        ("Recommendations", "recommendation"),
    )
    for title_, kind in sections:
        chosen = [i for i in items if i.kind == kind]
        texts = [f"{i.text} ({i.agency or i.author})" for i in chosen] or ["none recorded"]
        doc.heading(title_).bullets(*texts)
        if kind == "decision":
            actions = [i for i in items if i.kind == "action"]
            doc.heading("Actions").bullets(
                *_or_none(
                    [
                        f"{a.number}. {a.text} — owner {a.owner}, due {_dmy(a.due)}"
                        + (f" — DONE {format_time(a.done_at)}" if a.done_at else "")
                        for a in actions
                    ],
                    "none recorded",
                )
            )
    if meeting.close_note:
        doc.para(meeting.close_note, strong=True)
    return doc


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
            f"Action {i.number}: {i.text} — {i.owner}, due {_dmy(i.due)}"
            + (" (done)" if i.done_at else " (open)")
            for i in items
            if i.kind == "action"
        ]
        lines += [f"Recommendation: {i.text}" for i in items if i.kind == "recommendation"]
        doc.bullets(*lines)


def _or_none(lines: list[str], empty: str = "nobody") -> list[str]:
    return lines or [empty]


def _dmy(iso: str | None) -> str:
    return date.fromisoformat(iso).strftime("%d/%m/%Y") if iso else "no date"


_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")


def _parse_date(text: str) -> date | None:
    found = _DATE.match(text.strip())
    if not found:
        return None
    try:
        return date(int(found[3]), int(found[2]), int(found[1]))
    except ValueError:
        return None


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
                f"OVERDUE: action {item.number} ({item.text}) was due {_dmy(item.due)}; "
                f"owner {item.owner}. Mark it with !done {item.number}."
            )
            mentions = (meeting.chair,)
        elif now >= remind_from and item.reminded_at is None:
            text = (
                f"Reminder: action {item.number} ({item.text}) is due {_dmy(item.due)}. "
                f"Mark it with !done {item.number}."
            )
            mentions = (item.owner or meeting.chair,)
        else:
            continue
        body, html = Doc().para(text, strong=overdue).render()
        stamp = now.strftime("%Y%m%d%H%M") if overdue else "before"
        await tx.enqueue(
            OutgoingMessage(meeting.room_id, body, html, mentions=mentions),
            txn_id=txn_id_for(f"action{item.id}#{stamp}", "action_reminder"),
            purpose="action_reminder",
            referral_id=meeting.referral_id,
        )
        await tx.mark_action_reminded(item.id, overdue=overdue)
        queued += 1
    return queued


MeetingHandler = Callable[[MeetingCall], Awaitable[None]]
MEETING_COMMANDS: dict[str, MeetingHandler] = dict(
    {
        "!info": info,
        "!views": views,
        "!action": action,
        "!recommendation": recommendation,
        "!decision": decision,
        "!done": done,
        "!attendance": attendance,
        "!minutes": minutes,
        "!chair": chair,
        "!invite-agency": invite_agency,
        "!invite": invite,
        "!close": close,
    }
)
MEETING_HELP: tuple[tuple[str, str], ...] = (
    ("!attendance", "who was invited, attended, declined, or sent information"),
    ("!info text", "information from an agency that cannot attend"),
    ("!views child text / !views parents text", "their views, or why they could not be had"),
    ("!action @owner dd/mm/yyyy text", "an agreed action: owner and due date required"),
    ("!recommendation text", "a recommendation (kept apart from actions)"),
    ("!decision text", "a decision of the meeting"),
    ("!done N", "action N is complete"),
    ("!minutes", "the minutes so far"),
    ("!invite-agency KEY / !invite @user", "invite an agency's safeguarding lead, or a person"),
    ("!chair @user", "the chair or a manager hands over the chair"),
    ("!close", "the chair closes the meeting; minutes go to the referral's record"),
)
