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
    await tx.enqueue(
        OutgoingMessage(msg.room_id, body, html, reply_to=msg.event_id, sensitive=sensitive),
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
    """Send an update to the referrer, in the thread of their original referral.

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
    """A message in the thread of the referral's original event, mentioning `to`."""
    body, html = doc.render()
    await tx.enqueue(
        OutgoingMessage(
            referral.room_id, body, html, thread_root=referral.event_id, mentions=(to,)
        ),
        txn_id=txn_id,
        purpose=purpose,
        referral_id=referral.id,
    )
