"""Edits, deletions and corrections: what was recorded stays as it was sent.

A referral is evidence. Editing the chat message (`m.replace`) or deleting it (a
redaction) changes nothing in the record; the bot says so, and says how to correct it:
`!amend REF-… text` appends a correction to the running record and tells the advice team.
"""

from __future__ import annotations

import re

from handlers.context import MIN_REASON, Call, Refusal, in_team_place
from handlers.notify import LABEL, team_message, thread_message
from handlers.ports import Incoming, OutgoingMessage, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from schemas.domain import Kind, Purpose
from schemas.records import Referral
from storage.tx import Tx

_AMEND = re.compile(r"\s*!amend\b[ \t]*(\S*)\s*(.*)\Z", re.IGNORECASE | re.DOTALL)


def _how_to_amend(ref: str) -> str:
    return (
        f"To correct it or add to it, send: !amend {ref} followed by the correction (it may "
        "run over several lines). The correction is added to the running record, next to "
        "the referral as first sent, and the advice team is told."
    )


async def on_edit(tx: Tx, msg: Incoming, settings: Settings) -> None:
    """An edit of a referral or of a command: nothing changes; say so and how to correct."""
    assert msg.edit_of is not None
    referral = await tx.referral_by_event(msg.edit_of)
    if referral is not None and referral.room_id != msg.room_id:
        # An edit is in the room of the message it edits; one naming a referral's event
        # from another room is not about that referral, and learns nothing of it.
        referral = None
    if referral is not None:
        await tx.append_record(
            referral.id, msg.sender, Kind.EDIT_NOT_APPLIED, {"event_id": msg.event_id}
        )
        doc = (
            Doc()
            .para(
                f"Your edit was NOT applied: {referral.ref} stays recorded exactly as you first "
                f"sent it, as a {LABEL[referral.current_type]}.",
                strong=True,
            )
            .para(_how_to_amend(referral.ref))
        )
        await thread_message(
            tx,
            referral,
            doc,
            to=msg.sender,
            txn_id=txn_id_for(msg.event_id, Purpose.EDIT_NOT_APPLIED),
            purpose=Purpose.EDIT_NOT_APPLIED,
        )
        return
    if not msg.command:
        return  # an edit of ordinary chat: nothing was acted on, nothing to say
    doc = Doc().para(
        "Edits are not acted on: I acted on your message as you first sent it (see my reply "
        "to it). Send the corrected command as a new message. To correct a referral, use "
        "!amend REF-… followed by the correction."
    )
    body, html = doc.render()
    await tx.enqueue(
        OutgoingMessage(msg.room_id, body, html, reply_to=msg.edit_of, sensitive=False),
        txn_id=txn_id_for(msg.event_id, Purpose.EDIT_NOT_APPLIED),
        purpose=Purpose.EDIT_NOT_APPLIED,
    )


async def on_redaction(tx: Tx, msg: Incoming, settings: Settings) -> None:
    """A referral's message was deleted in the chat: the referral stays on record."""
    assert msg.redacts is not None
    referral = await tx.referral_by_event(msg.redacts)
    if referral is None:
        return
    await tx.append_record(
        referral.id,
        msg.sender,
        Kind.MESSAGE_DELETED_IN_CHAT,
        {"event_id": msg.redacts, "redaction": msg.event_id},
    )
    label = LABEL[referral.current_type]
    doc = (
        Doc()
        .para(
            f"The message of {referral.ref} was deleted in this chat. The referral is NOT "
            f"withdrawn or deleted: it stays on record as a {label}, and the advice team "
            "has been told.",
            strong=True,
        )
        .para(_how_to_amend(referral.ref))
        .para("To withdraw a concern, phone the advice team: a referral is never deleted.")
    )
    body, html = doc.render()
    # Not in the thread of the deleted message: a plain message in the room.
    await tx.enqueue(
        OutgoingMessage(referral.room_id, body, html, mentions=(referral.sender,)),
        txn_id=txn_id_for(msg.event_id, Purpose.MESSAGE_DELETED),
        purpose=Purpose.MESSAGE_DELETED,
        referral_id=referral.id,
    )
    await _tell_team(
        tx,
        settings,
        referral,
        f"{referral.ref}: its message was deleted in the chat by {msg.sender}. The referral "
        f"stays on record. !show {referral.ref} for the details.",
        txn_id=txn_id_for(msg.event_id, Purpose.MESSAGE_DELETED_TEAM),
        purpose=Purpose.MESSAGE_DELETED_TEAM,
    )


async def amend(c: Call) -> None:
    """`!amend REF-… text`: the referrer or the advice team appends a correction."""
    match = _AMEND.match(c.msg.body)
    ref_text, text = (match.group(1), match.group(2).strip()) if match else ("", "")
    r = await c.referral(ref_text)
    if r.sender != c.msg.sender and not c.settings.is_team(c.msg.sender):
        raise Refusal(
            f"Only the practitioner who sent {r.ref} or the advice team can amend it. "
            "Nothing was changed."
        )
    if not in_team_place(c.msg.room_id, c.msg.private, c.settings) and c.msg.room_id != r.room_id:
        raise Refusal(
            f"Use !amend in a direct message with me, or where {r.ref} was sent. "
            "Nothing was changed."
        )
    if len(text) < MIN_REASON:
        raise Refusal(f"Write the correction after the reference: !amend {r.ref} the correction.")
    await c.record(r, Kind.AMENDED, {"text": text, "event_id": c.msg.event_id})
    await c.say(
        Doc().para(
            f"Correction added to the running record of {r.ref}. The referral as first sent "
            "is kept as well; the advice team has been told."
        ),
        Purpose.AMENDED,
        referral_id=r.id,
    )
    if c.msg.room_id != c.settings.advice_team_room:
        who = "the referrer" if c.msg.sender == r.sender else c.msg.sender
        await _tell_team(
            c.tx,
            c.settings,
            r,
            f"{r.ref}: {who} added a correction to the running record. !show {r.ref} to read it.",
            txn_id=txn_id_for(c.msg.event_id, Purpose.AMENDED_TEAM),
            purpose=Purpose.AMENDED_TEAM,
        )


async def _tell_team(
    tx: Tx, settings: Settings, r: Referral, text: str, *, txn_id: str, purpose: str
) -> None:
    """A short note to the advice team, no free text; the holder (if any) is pinged."""
    await team_message(
        tx,
        settings,
        Doc().para(text),
        txn_id=txn_id,
        purpose=purpose,
        referral_id=r.id,
        mentions=(r.claimed_by,) if r.claimed_by else (),
    )
