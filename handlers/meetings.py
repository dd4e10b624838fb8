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

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime

from handlers.context import USER_RE, Call, Handler, Refusal, split_args
from handlers.meeting_record import (
    attendance_lines,
    close_checklist,
    dmy,
    minutes_doc,
)
from handlers.notify import LABEL, LONDON, format_time, tell_referrer
from handlers.pattern import agency_of, find_pattern
from handlers.ports import OutgoingMessage, RoomSpec, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from handlers.views import form_rows
from schemas.domain import Channel, Kind, Outcome, Purpose, Told
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


# -- setting up ------------------------------------------------------------------------


def _agencies_named(referral: Referral, settings: Settings) -> list[str]:
    """Agency keys whose key or name appears in the referrer's agency."""
    said = agency_of(referral)
    return [
        key
        for key, agency in settings.agencies.items()
        if key in said.split() or agency.name.casefold() in said or said in agency.name.casefold()
    ]


def _agencies_wanted(referral: Referral, settings: Settings) -> list[str]:
    """The required agencies, the referrer's own, and the child's school and GP when known
    (asked through their agencies' leads)."""
    wanted = list(
        dict.fromkeys([*settings.meetings.required_agencies, *_agencies_named(referral, settings)])
    )
    child = referral.form.get("child", {})
    for field, key in (("school", "education"), ("gp", "gp")):
        if (
            child.get(field)
            and key not in wanted
            and (key in settings.agencies or key == "education")
        ):
            wanted.append(key)
    return wanted


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
    if referral.channel == Channel.MATRIX and settings.is_allowed(referral.sender):
        await tx.add_participant(
            meeting_id,
            referral.sender,
            agency=settings.agency_of(referral.sender),
            role="referrer",
            status="to_invite",
        )
    problems = []
    for key in _agencies_wanted(referral, settings):
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
        Kind.STRATEGY_MEETING_CALLED,
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
        purpose=Purpose.MEETING_AGENDA,
        referral_id=referral.id,
    )
    await tx.append_record(
        referral.id,
        settings.bot_user_id,
        Kind.STRATEGY_MEETING_ROOM_CREATED,
        {"meeting": meeting_id},
    )


# -- commands outside the meeting room -------------------------------------------------


async def strategy(c: Call) -> None:
    ref, scheduled = split_args(c.args, 2)
    r = await c.referral(ref)
    if not r.is_open and r.outcome != Outcome.STRATEGY:
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
        Told.STRATEGY,
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


MeetingHandler = Callable[[MeetingCall], Awaitable[None]]


def in_meeting(handler: MeetingHandler) -> Handler:
    """A command typed in a meeting's room, given its meeting and referral. The command
    table has already checked the room, who may use it and whether the meeting is open."""

    @functools.wraps(handler)
    async def run(call: Call) -> None:
        meeting = await call.tx.meeting_by_room(call.msg.room_id)
        assert meeting is not None, "the table lets meeting commands into meeting rooms only"
        referral = await call.tx.referral_by_id(meeting.referral_id)
        assert referral is not None
        await handler(MeetingCall(call, meeting, referral))

    return run


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
    whose, text = split_args(m.call.args, 2)
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
    owner, when, text = split_args(m.call.args, 3)
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
    word = split_args(m.call.args, 1)[0]
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
        Kind.MEETING_ACTION_DONE,
        {"meeting": m.meeting.id, "action": int(word), "text": item.text},
    )
    await m.call.say(Doc().para(f"Action {word} marked done."))


async def attendance(m: MeetingCall) -> None:
    participants = await m.call.tx.participants(m.meeting.id)
    items = await m.call.tx.items(m.meeting.id)
    await m.call.say(
        Doc().heading("Attendance").bullets(*attendance_lines(participants, items, m.call.settings))
    )


async def minutes(m: MeetingCall) -> None:
    await m.call.say(
        await minutes_doc(m.call.tx, m.meeting, m.referral, m.call.settings, final=False)
    )


async def chair(m: MeetingCall) -> None:
    new = split_args(m.call.args, 1)[0]
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
        Kind.MEETING_CHAIR_CHANGED,
        {"meeting": m.meeting.id, "to": new},
    )
    await m.call.say(Doc().para(f"{new} now chairs this meeting."))


async def invite_agency(m: MeetingCall) -> None:
    key = split_args(m.call.args, 1)[0].lower()
    agency = m.call.settings.agencies.get(key)
    if agency is None:
        known = ", ".join(sorted(m.call.settings.agencies)) or "none configured"
        raise Refusal(f"Unknown agency {key!r}. Agencies: {known}.")
    if agency.safeguarding_lead is None:
        raise Refusal(f"{agency.name} has no safeguarding lead configured; use !invite @user.")
    await _invite(m, agency.safeguarding_lead, key, "lead")


async def invite(m: MeetingCall) -> None:
    user = split_args(m.call.args, 1)[0]
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
    word, reason = split_args(m.call.args, 2)
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
    await m.call.say(doc, Purpose.MINUTES)
    await tx.append_record(
        m.referral.id,
        m.call.msg.sender,
        Kind.STRATEGY_MEETING_MINUTES,
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
            *(f"{a.number}. {a.text} — {a.owner}, by {dmy(a.due)}" for a in actions)
        )
    await tell_referrer(tx, m.referral, m.call.msg.event_id, Told.MEETING_OUTCOME, update)


_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")


def _parse_date(text: str) -> date | None:
    found = _DATE.match(text.strip())
    if not found:
        return None
    try:
        return date(int(found[3]), int(found[2]), int(found[1]))
    except ValueError:
        return None
