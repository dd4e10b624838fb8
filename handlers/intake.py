"""Taking a referral: validate, record, acknowledge with its classification, tell the team.

The Serious Case Review found referrers who never knew whether their call was treated as
a child protection referral. So the type is required (no default), it is recorded as
declared and by whom, and the acknowledgement states it in capitals.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from bot.store import Tx
from handlers.notify import LONDON, format_time
from handlers.pattern import Pattern, find_pattern
from handlers.ports import Incoming, OutgoingMessage, txn_id_for
from handlers.referral_form import FieldProblem, parse_referral
from handlers.render import Doc
from handlers.settings import Settings
from handlers.working_days import add_working_days, describe_deadline
from schemas.referral import ReferralForm

log = logging.getLogger(__name__)


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
    await record_referral(
        tx,
        settings,
        parsed.form,
        event_id=msg.event_id,
        room_id=msg.room_id,
        sender=msg.sender,
        received=received,
        phone=phone,
    )


async def record_referral(
    tx: Tx,
    settings: Settings,
    form: ReferralForm,
    *,
    event_id: str,
    room_id: str,
    sender: str,
    received: datetime,
    phone: bool = False,
    guided: bool = False,
) -> str:
    """Record a validated referral, acknowledge it and tell the team; its reference.

    The one intake path: the typed form (`take_referral`) and the guided conversation
    (handlers/guided.py) both end here, so the same form gets the same reference series,
    acknowledgement, summary and running record. `event_id` is the event the referral
    is recorded against and answered in the thread of (for a guided referral, the event
    that said "send"); `guided` is noted in the running record.
    """
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

    referral_id = await tx.insert_referral(
        ref=ref,
        year=year,
        year_seq=year_seq,
        event_id=event_id,
        room_id=room_id,
        sender=sender,
        received_at=received,
        declared_type=form.referral_type.value,
        immediate_danger=form.immediate_danger,
        decision_due=due,
        form=form.model_dump(mode="json"),
        rag="red" if form.immediate_danger else None,
        channel="phone" if phone else "matrix",
        written_followup_due=followup_due,
        agency=form.referrer.agency,
    )
    detail: dict[str, object] = {
        "event_id": event_id,
        "room_id": room_id,
        "channel": "phone" if phone else "matrix",
        "declared_type": form.referral_type.value,
        "declared_by": sender,
        "decision_due": due.isoformat(),
        "rag": "red" if form.immediate_danger else None,
    }
    if guided:
        detail["guided"] = True
    await tx.append_record(referral_id, sender, "received", detail)
    referral = await tx.referral_by_event(event_id)
    assert referral is not None
    pattern = find_pattern(await tx.referrals_of_child(referral), received, settings.pattern)
    if pattern is not None and pattern.triggered:
        await tx.append_record(
            referral_id,
            settings.bot_user_id,
            "pattern_shown",
            {"headline": pattern.headline(), "cumulative": pattern.cumulative()},
        )

    ack = _acknowledgement(ref, form, received, due, settings)
    if phone:
        assert followup_due is not None
        ack.para(
            f"Telephone referral: obtain the caller's written follow-up by "
            f"{format_time(followup_due)} and record it with !written {ref}. It will be "
            "flagged if it has not arrived by then.",
            strong=True,
        )
    body, html = ack.render()
    await tx.enqueue(
        OutgoingMessage(room_id, body, html, reply_to=event_id, thread_root=event_id),
        txn_id=txn_id_for(event_id, "ack"),
        purpose="ack",
        referral_id=referral_id,
    )
    body, html = _team_summary(ref, form, received, due, pattern, phone).render()
    await tx.enqueue(
        OutgoingMessage(settings.advice_team_room, body, html, urgent=form.immediate_danger),
        txn_id=txn_id_for(event_id, "team_summary"),
        purpose="team_summary",
        referral_id=referral_id,
    )
    log.info("referral recorded: ref=%s event=%s type=%s", ref, event_id, form.referral_type.name)
    return ref


def _acknowledgement(
    ref: str, form: ReferralForm, received: datetime, due: datetime, settings: Settings
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
    doc.para(
        f"You will be told here, in this thread, of every change to {ref}: when it is "
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
    await tx.enqueue(
        OutgoingMessage(msg.room_id, body, html, reply_to=msg.event_id),
        txn_id=txn_id_for(msg.event_id, "form_problems"),
        purpose="form_problems",
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
