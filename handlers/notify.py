"""Queueing what the bot says: replies, advice-team messages, and telling the referrer.

Every message is stored in the outbox inside the transaction of the change it reports,
and the time it was actually sent is added to the referral's running record.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from handlers.ports import Incoming, OutgoingMessage, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from schemas.records import Referral
from storage.tx import Tx

LONDON = ZoneInfo("Europe/London")

# The classification as every message shows it: in capitals, exactly as recorded.
LABEL = {
    "child protection referral": "CHILD PROTECTION REFERRAL",
    "contact": "CONTACT",
}


def format_time(dt: datetime) -> str:
    return dt.astimezone(LONDON).strftime("%A %d %B %Y, %H:%M")


def answer_place(msg: Incoming, *, open_thread: bool = False) -> tuple[str | None, str]:
    """Where the bot answers `msg`: (the thread root, or None for no thread; the event
    replied to). The one place this is decided, for every answer to a message.

    A message sent inside a thread is answered in that thread (its root), replying to the
    message. Any other message is answered with a plain reply; `open_thread` (the
    acknowledgement of a referral) starts a thread on it instead, but only if it has no
    relation of its own: Synapse refuses a thread rooted on an event that has one (400
    "Cannot start threads from an event with a relation"), and that refusal never changes.
    """
    if msg.thread_root is not None:
        return msg.thread_root, msg.event_id
    if open_thread and not msg.related:
        return msg.event_id, msg.event_id
    return None, msg.event_id


async def reply(
    tx: Tx,
    msg: Incoming,
    purpose: str,
    doc: Doc,
    *,
    sensitive: bool = True,
    referral_id: int | None = None,
) -> None:
    body, html = doc.render()
    thread_root, reply_to = answer_place(msg)
    await tx.enqueue(
        OutgoingMessage(
            msg.room_id,
            body,
            html,
            reply_to=reply_to,
            thread_root=thread_root,
            sensitive=sensitive,
        ),
        txn_id=txn_id_for(msg.event_id, purpose),
        purpose=purpose,
        referral_id=referral_id,
    )


async def team_message(
    tx: Tx,
    settings: Settings,
    doc: Doc,
    *,
    txn_id: str,
    purpose: str,
    referral_id: int | None = None,
    mentions: tuple[str, ...] = (),
) -> None:
    body, html = doc.render()
    await tx.enqueue(
        OutgoingMessage(settings.advice_team_room, body, html, mentions=mentions),
        txn_id=txn_id,
        purpose=purpose,
        referral_id=referral_id,
    )


async def tell_referrer(
    tx: Tx,
    referral: Referral,
    answered_event_id: str,
    kind: str,
    doc: Doc,
) -> None:
    """Send an update to the referrer, where their referral was acknowledged.

    The running record gets `tell_<kind>_sent`, with the time, once it has gone.
    """
    current = LABEL[referral.current_type]
    full = Doc().heading(f"{referral.ref}: {current}")
    full.blocks.extend(doc.blocks)
    full.fields(("Reference", referral.ref), ("Now recorded as", current))
    await thread_message(
        tx,
        referral,
        full,
        to=referral.sender,
        txn_id=txn_id_for(answered_event_id, f"tell_{kind}"),
        purpose=f"tell_{kind}",
    )


async def thread_message(
    tx: Tx, referral: Referral, doc: Doc, *, to: str, txn_id: str, purpose: str
) -> None:
    """A message where the referral's acknowledgement went, mentioning `to`: in the
    referral's thread (normally the thread the acknowledgement opened on the referral), or,
    for a referral that has none (it was sent with a relation of its own, or the homeserver
    refused the thread), as a reply to the referral's message."""
    body, html = doc.render()
    root = referral.thread_root
    await tx.enqueue(
        OutgoingMessage(
            referral.room_id,
            body,
            html,
            thread_root=root,
            reply_to=None if root is not None else referral.event_id,
            mentions=(to,),
        ),
        txn_id=txn_id,
        purpose=purpose,
        referral_id=referral.id,
    )


async def send_failed(
    tx: Tx,
    settings: Settings,
    *,
    room_id: str,
    purpose: str,
    referral_id: int | None,
    outbox_id: int,
    code: str,
) -> None:
    """Tell the advice team, in one line, that a message could not be delivered: the
    homeserver refused it for good. Reference, purpose and error code only (no personal
    data). A message that was itself for the advice-team room is only logged (bot/pipeline.py):
    telling the team there would likely fail the same way."""
    if room_id == settings.advice_team_room:
        return
    referral = await tx.referral_by_id(referral_id) if referral_id is not None else None
    what = purpose.replace("_", " ")
    about = f" for {referral.ref}" if referral is not None else ""
    doc = Doc().para(
        f"NOT DELIVERED: the {what} message{about} was refused by the homeserver "
        f"({code}) and has been given up. Reach the recipient another way; an admin can "
        f"resend it with: referral-bot outbox --retry {outbox_id}",
        strong=True,
    )
    await team_message(
        tx,
        settings,
        doc,
        txn_id=txn_id_for(f"outbox:{outbox_id}", f"send_failed:{tx.now.isoformat()}"),
        purpose="send_failed",
        referral_id=referral_id,
    )
