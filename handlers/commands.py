"""Routing a stored message to its use case, and the small commands that need no state."""

from __future__ import annotations

from bot.store import Tx
from handlers.intake import take_referral
from handlers.ports import Incoming, OutgoingMessage, txn_id_for
from handlers.referral_form import referral_template
from handlers.render import Doc
from handlers.settings import Settings

HELP: tuple[tuple[str, str], ...] = (
    ("!help", "this list"),
    ("!refer template", "the blank referral form, every field explained"),
    ("!refer", "send a referral: !refer on the first line, then one 'Field: value' per line"),
)


def command_word(body: str) -> str | None:
    """The command a message starts with (lower case), or None if it is not a command."""
    first = body.lstrip().split("\n", 1)[0].strip()
    if not first.startswith("!"):
        return None
    return first.split(None, 1)[0].lower()


async def handle_message(tx: Tx, msg: Incoming, settings: Settings) -> None:
    """Act on one message. Runs inside the transaction that marks it handled."""
    if msg.withheld:
        await _reply(tx, msg, "unencrypted", _refuse_unencrypted(settings), sensitive=False)
        return
    if len(msg.body.encode("utf-8", "replace")) > settings.max_message_bytes:
        doc = Doc().para(
            f"This message is too long ({len(msg.body.encode('utf-8', 'replace')):,} bytes; the "
            f"limit is {settings.max_message_bytes:,}). Nothing was stored. Shorten the free-text "
            "fields and send it again."
        )
        await _reply(tx, msg, "too_long", doc, sensitive=False)
        return

    word = command_word(msg.body)
    if word is None:
        if msg.room_id != settings.advice_team_room:
            await _reply(tx, msg, "hint", Doc().para("I only act on commands. Send !help."), False)
        return
    if word == "!help":
        doc = Doc().heading("referral-bot commands").fields(*HELP)
        doc.para(
            "Referrals are only taken in end-to-end encrypted rooms. If a child is in immediate "
            "danger, phone the police on 999."
        )
        await _reply(tx, msg, "help", doc, sensitive=False)
    elif word == "!refer":
        rest = msg.body.lstrip().split("\n", 1)[0].strip()[len("!refer") :].strip().lower()
        if rest == "template":
            doc = Doc().para("Copy this, fill it in and send it back:").pre(referral_template())
            await _reply(tx, msg, "template", doc, sensitive=False)
        else:
            await take_referral(tx, msg, settings)
    else:
        doc = Doc().para(f"Unknown command {word}. Send !help for the list of commands.")
        await _reply(tx, msg, "unknown", doc, sensitive=False)


def _refuse_unencrypted(settings: Settings) -> Doc:
    return Doc().para(
        "This room is not end-to-end encrypted, so I will not take referrals or show referral "
        f"details here. Nothing from your message was stored. Start an encrypted direct "
        f"message with {settings.bot_user_id} and send your referral there.",
        strong=True,
    )


async def _reply(tx: Tx, msg: Incoming, purpose: str, doc: Doc, sensitive: bool) -> None:
    body, html = doc.render()
    await tx.enqueue(
        OutgoingMessage(msg.room_id, body, html, reply_to=msg.event_id, sensitive=sensitive),
        txn_id=txn_id_for(msg.event_id, purpose),
        purpose=purpose,
    )
