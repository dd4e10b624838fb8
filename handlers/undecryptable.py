"""Telling a sender that the bot cannot read their message (yet).

The message is kept and handled if its room key ever arrives, but a referrer who hears
nothing might assume the referral was received. So after a grace period the sender is
told, in a reply to that message, that nothing from it is recorded yet.
"""

from __future__ import annotations

from datetime import datetime

from handlers.notify import format_time
from handlers.ports import OutgoingMessage, txn_id_for
from handlers.render import Doc
from schemas.domain import Purpose
from storage.tx import Tx


async def tell_undecryptable(tx: Tx, *, room_id: str, event_id: str, sent_at: datetime) -> None:
    """Queue the notice once per event (its transaction ID is derived from the event)."""
    doc = (
        Doc()
        .para(
            f"I cannot read your message sent {format_time(sent_at)}: its encryption key has "
            "not reached me. NOTHING from it is recorded yet.",
            strong=True,
        )
        .para(
            "It is kept, and I will act on it and reply if the key arrives. If it was a "
            "referral and you have had no acknowledgement with a REF number, send it again "
            "(if your app offers to, verify your session or restart it first), or phone the "
            "advice team if it is urgent."
        )
    )
    body, html = doc.render()
    await tx.enqueue(
        OutgoingMessage(room_id, body, html, reply_to=event_id, sensitive=False),
        txn_id=txn_id_for(event_id, Purpose.UNDECRYPTABLE),
        purpose=Purpose.UNDECRYPTABLE,
    )
