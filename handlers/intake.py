"""Taking a referral: validate, record, acknowledge with its classification, tell the team.

The Serious Case Review found referrers who never knew whether their call was treated as
a child protection referral. So the type is required (no default), it is recorded as
declared and by whom, and the acknowledgement states it in capitals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from handlers.form_fields import FieldProblem
from handlers.notify import LONDON, answer_place, format_time
from handlers.pattern import Pattern, find_pattern
from handlers.ports import Incoming, OutgoingMessage, txn_id_for
from handlers.referral_form import parse_referral
from handlers.render import Doc
from handlers.settings import Settings
from handlers.working_days import add_working_days, describe_deadline
from schemas.domain import Channel, Kind, Purpose
from schemas.referral import ReferralForm
from storage.tx import Tx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Taken:
    """A referral just recorded, as its messages need it."""

    id: int
    ref: str
    form: ReferralForm
    received: datetime
    due: datetime
    followup_due: datetime | None
    pattern: Pattern | None


async def take_referral(tx: Tx, msg: Incoming, settings: Settings, *, phone: bool = False) -> None:
    """Record a referral sent in chat, or (`phone=True`) one an advice worker logs for a caller."""
    received = datetime.fromtimestamp(msg.origin_ts / 1000, UTC)
    body = msg.body
    if phone:
        # `!phone-referral` takes the same form as `!refer`.
        first, _, rest = body.lstrip().partition("\n")
        body = "!refer " + first.strip()[len("!phone-referral") :] + "\n" + rest
    parsed = parse_referral(body, today=received.astimezone(LONDON).date())
    if parsed.form is None:
        await _reply_problems(tx, msg, parsed.problems)
        log.info("referral form rejected: event=%s problems=%d", msg.event_id, len(parsed.problems))
        return
    await record_referral(tx, msg, settings, parsed.form, phone=phone)


async def record_referral(
    tx: Tx,
    msg: Incoming,
    settings: Settings,
    form: ReferralForm,
    *,
    phone: bool = False,
    guided: bool = False,
) -> str:
    """Record a validated referral, acknowledge it and tell the team; its reference.

    The one intake path: the typed form (`take_referral`) and the guided conversation
    (handlers/guided.py) both end here, so the same form gets the same reference series,
    acknowledgement, summary and running record. `msg` is the event the referral is
    recorded against and answered from (for a guided referral, the one that said
    "send"); `guided` is noted in the running record."""
    received = datetime.fromtimestamp(msg.origin_ts / 1000, UTC)
    taken = await _record(tx, msg, settings, form, received, phone=phone, guided=guided)
    await _acknowledge(tx, msg, settings, taken)
    log.info(
        "referral recorded: ref=%s event=%s type=%s",
        taken.ref,
        msg.event_id,
        taken.form.referral_type.name,
    )
    return taken.ref


async def _record(
    tx: Tx,
    msg: Incoming,
    settings: Settings,
    form: ReferralForm,
    received: datetime,
    *,
    phone: bool,
    guided: bool = False,
) -> _Taken:
    """Store the referral with its reference, deadline and first running-record entries."""
    year = received.astimezone(LONDON).year
    year_seq = await tx.next_year_seq(year)
    ref = f"REF-{year}-{year_seq:06d}"
    if form.immediate_danger:
        due = received + timedelta(minutes=settings.immediate_danger_minutes)
    else:
        due = add_working_days(received, settings.decision_working_days)
    followup_due = (
        received + timedelta(hours=settings.deadlines.written_followup_hours) if phone else None
    )
    channel = Channel.PHONE if phone else Channel.MATRIX
    rag = "red" if form.immediate_danger else None
    # Where the acknowledgement and every later update go (handlers/notify.py).
    thread_root, _ = answer_place(msg, open_thread=True)
    referral_id = await tx.insert_referral(
        thread_root=thread_root,
        ref=ref,
        year=year,
        year_seq=year_seq,
        event_id=msg.event_id,
        room_id=msg.room_id,
        sender=msg.sender,
        received_at=received,
        declared_type=form.referral_type.value,
        immediate_danger=form.immediate_danger,
        decision_due=due,
        form=form.model_dump(mode="json"),
        rag=rag,
        channel=channel,
        written_followup_due=followup_due,
        agency=form.referrer.agency,
    )
    detail: dict[str, object] = {
        "event_id": msg.event_id,
        "room_id": msg.room_id,
        "channel": channel,
        "declared_type": form.referral_type.value,
        "declared_by": msg.sender,
        "decision_due": due.isoformat(),
        "rag": rag,
    }
    if guided:
        detail["guided"] = True
    await tx.append_record(referral_id, msg.sender, Kind.RECEIVED, detail)
    if msg.decrypted_at is not None:
        overtaken = (
            f"; {msg.overtaken_by} later message(s) of the room were handled before it"
            if msg.overtaken_by
            else ""
        )
        # Its room key came late. It still gets the next REF when it is handled; the record
        # says when it was sent and when it could be read, and whether later messages of
        # the room were handled first (they wait for it only `late_key_wait_seconds`).
        await tx.append_record(
            referral_id,
            settings.bot_user_id,
            "decrypted_late",
            {
                "text": f"received {format_time(received)}, decrypted late at "
                f"{format_time(msg.decrypted_at)}{overtaken}",
                "received": received.isoformat(),
                "decrypted_at": msg.decrypted_at.isoformat(),
                "later_messages_handled_first": msg.overtaken_by,
            },
        )
    pattern = await _pattern_of(tx, msg.event_id, received, settings)
    return _Taken(referral_id, ref, form, received, due, followup_due, pattern)


async def _pattern_of(
    tx: Tx, event_id: str, received: datetime, settings: Settings
) -> Pattern | None:
    """The pattern of contacts about this child, noted in the record when it is shown."""
    referral = await tx.referral_by_event(event_id)
    assert referral is not None
    pattern = find_pattern(await tx.referrals_of_child(referral), received, settings.pattern)
    if pattern is not None and pattern.triggered:
        await tx.append_record(
            referral.id,
            settings.bot_user_id,
            Kind.PATTERN_SHOWN,
            {"headline": pattern.headline(), "cumulative": pattern.cumulative()},
        )
    return pattern


async def _acknowledge(tx: Tx, msg: Incoming, settings: Settings, t: _Taken) -> None:
    """Queue the acknowledgement (a reply starting the referral's thread) and the team's
    summary, in the transaction that recorded the referral."""
    thread_root, reply_to = answer_place(msg, open_thread=True)
    ack = _acknowledgement(
        t.ref, t.form, t.received, t.due, settings, in_thread=thread_root is not None
    )
    if t.followup_due is not None:
        ack.para(
            f"Telephone referral: obtain the caller's written follow-up by "
            f"{format_time(t.followup_due)} and record it with !written {t.ref}. It will be "
            "flagged if it has not arrived by then.",
            strong=True,
        )
    body, html = ack.render()
    await tx.enqueue(
        OutgoingMessage(msg.room_id, body, html, reply_to=reply_to, thread_root=thread_root),
        txn_id=txn_id_for(msg.event_id, Purpose.ACK),
        purpose=Purpose.ACK,
        referral_id=t.id,
    )
    phone = t.followup_due is not None
    body, html = _team_summary(t.ref, t.form, t.received, t.due, t.pattern, phone).render()
    await tx.enqueue(
        OutgoingMessage(settings.advice_team_room, body, html, urgent=t.form.immediate_danger),
        txn_id=txn_id_for(msg.event_id, Purpose.TEAM_SUMMARY),
        purpose=Purpose.TEAM_SUMMARY,
        referral_id=t.id,
    )


def _acknowledgement(
    ref: str,
    form: ReferralForm,
    received: datetime,
    due: datetime,
    settings: Settings,
    *,
    in_thread: bool = True,
) -> Doc:
    label = form.referral_type.label
    doc = Doc()
    if form.immediate_danger:
        doc.para(
            "IMMEDIATE DANGER: if a child is in immediate danger, "
            "also phone the police on 999 now.",
            strong=True,
        )
    doc.heading(f"{ref}: recorded as a {label}")
    doc.fields(
        ("Reference", ref),
        ("Recorded as", label),
        ("Received", format_time(received)),
        ("Concerns", ", ".join(c.value for c in form.concerns)),
        ("Immediate danger", "YES" if form.immediate_danger else "no"),
    )
    if form.immediate_danger:
        doc.para(
            "What happens next: the advice team has been alerted now and will decide what "
            f"happens by {describe_deadline(due)} at the latest."
        )
    else:
        days = settings.decision_working_days
        span = "one working day" if days == 1 else f"{days} working days"
        doc.para(
            f"What happens next: the advice team will decide what happens by "
            f"{describe_deadline(due)} ({span}; weekends and bank holidays in England and "
            "Wales are not counted)."
        )
    where = "in this thread" if in_thread else "in replies to your message"
    doc.para(
        f"You will be told here, {where}, of every change to {ref}: when it is "
        "claimed, if it is reclassified, and when it is decided."
    )
    return doc


def _team_summary(
    ref: str,
    form: ReferralForm,
    received: datetime,
    due: datetime,
    pattern: Pattern | None,
    phone: bool,
) -> Doc:
    doc = Doc()
    if form.immediate_danger:
        doc.para(f"IMMEDIATE DANGER: {ref} needs action now.", strong=True)
    if pattern is not None and pattern.triggered:
        doc.para(f"PATTERN: {pattern.headline()}", strong=True)
        doc.para(pattern.cumulative())
    via = " (by telephone)" if phone else ""
    doc.heading(f"New {form.referral_type.label}{via}: {ref}")
    doc.fields(
        ("Type", form.referral_type.label),
        ("Concerns", ", ".join(c.value for c in form.concerns)),
        ("Immediate danger", "YES" if form.immediate_danger else "no"),
        ("Referrer agency", form.referrer.agency),
        ("Received", format_time(received)),
        ("Decision due", describe_deadline(due)),
    )
    doc.para(f"!claim {ref} to take it; !show {ref} for the details.")
    return doc


async def _reply_problems(tx: Tx, msg: Incoming, problems: tuple[FieldProblem, ...]) -> None:
    doc = Doc().heading("Referral NOT recorded: please correct the form and send it again")
    doc.bullets(*(f"{p.field}: {p.problem}" for p in problems))
    doc.para("Nothing from this message has been stored. Send !refer template for the blank form.")
    body, html = doc.render()
    thread_root, reply_to = answer_place(msg)
    await tx.enqueue(
        OutgoingMessage(msg.room_id, body, html, reply_to=reply_to, thread_root=thread_root),
        txn_id=txn_id_for(msg.event_id, Purpose.FORM_PROBLEMS),
        purpose=Purpose.FORM_PROBLEMS,
    )


def combine_team_summaries(summaries: list[OutgoingMessage]) -> OutgoingMessage:
    """Several new-referral summaries as one advice-team message (sent together under
    load): immediate-danger ones first, each summary whole, separated by a rule."""
    ordered = sorted(summaries, key=lambda m: not m.urgent)  # stable: arrival order kept
    urgent = sum(1 for m in ordered if m.urgent)
    head = Doc()
    if urgent == 1:
        head.para("IMMEDIATE DANGER: the first one below needs action now.", strong=True)
    elif urgent:
        head.para(f"IMMEDIATE DANGER: the first {urgent} below need action now.", strong=True)
    head.para(f"{len(ordered)} new referrals and contacts arrived together:")
    body, html = head.render()
    return OutgoingMessage(
        room_id=ordered[0].room_id,
        body="\n\n----\n\n".join([body, *(m.body for m in ordered)]),
        html="<hr/>".join([html, *(m.html for m in ordered)]),
        sensitive=any(m.sensitive for m in ordered),
        mentions=tuple(dict.fromkeys(u for m in ordered for u in m.mentions)),
        urgent=urgent > 0,
    )
