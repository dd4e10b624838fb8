"""Routing a stored message to its use case, and the small commands that need no state."""

from __future__ import annotations

import logging

from bot.store import Tx
from handlers import corrections, guided, meetings, views, workflow
from handlers.admin import reload_command
from handlers.intake import take_referral
from handlers.notify import reply
from handlers.ports import Incoming, Reloader
from handlers.referral_form import referral_template
from handlers.render import Doc
from handlers.settings import Settings
from handlers.workflow import Call, Handler, Refusal

log = logging.getLogger(__name__)

HELP: tuple[tuple[str, str], ...] = (
    ("!help", "this list"),
    ("!refer template", "the blank referral form, every field explained"),
    ("!refer", "on its own: a referral one question at a time (tap or type each answer)"),
    ("!refer + fields", "a typed referral: !refer on the first line, then 'Field: value' lines"),
    ("!me", "your details kept for your next referral; !me forget deletes them"),
    ("!status REF-…", "where your referral is now (referrers see only their own)"),
    ("!amend REF-… text", "add a correction to your referral (the referral as sent is kept)"),
    ("!verify [SESSION]", "verify one of your sessions (devices) with me, by comparing emoji"),
    ("!verify-match SESSION", "from a verified session: my emoji match that session's"),
)
TEAM_HELP: tuple[tuple[str, str], ...] = (
    ("!queue", "open referrals, oldest first, with deadlines"),
    ("!claim REF-…", "take a referral (only one worker can hold it)"),
    ("!release REF-…", "give it back to the queue"),
    ("!assign REF-… @worker", "managers: give it to a worker"),
    ("!show REF-…", "the full referral and its running record"),
    ("!note REF-… text", "add to the running record (advice given, calls, checks)"),
    ("!tell REF-… text", "add a note AND send it to the referrer"),
    ("!rag REF-… red|amber|green", "RAG rating; sets the decision deadline"),
    ("!decide REF-… assessment|strategy|early-help|nfa reason", "record the decision"),
    ("!reclassify REF-… contact|child-protection reason", "change the classification"),
    ("!confirm REF-…", "managers: confirm a downgrade to contact"),
    ("!phone-referral", "log a telephone referral: same form as !refer, caller's details"),
    ("!phone-referral (alone)", "the same, one question at a time"),
    ("!written REF-… note", "the written follow-up of a telephone referral arrived"),
    ("!link REF-… REF-…", "count two records as the same child (!unlink to undo)"),
    ("!chronology REF-…", "the referral and its chronology for the case record"),
    ("!strategy REF-… [when]", "set up an encrypted strategy meeting room; you chair it"),
    ("!verify-match @user SESSION", "after phoning them: their session shows my emoji"),
    ("!verify-reject @user SESSION", "their session shows other emoji: cancel"),
)

# Commands for the advice team: (handler, managers only).
TEAM_COMMANDS: dict[str, tuple[Handler, bool]] = {
    "!queue": (views.queue, False),
    "!claim": (workflow.claim, False),
    "!release": (workflow.release, False),
    "!assign": (workflow.assign, True),
    "!show": (views.show, False),
    "!note": (workflow.note, False),
    "!tell": (workflow.tell, False),
    "!rag": (workflow.rag, False),
    "!decide": (workflow.decide, False),
    "!reclassify": (workflow.reclassify, False),
    "!confirm": (workflow.confirm, True),
    "!written": (workflow.written, False),
    "!link": (workflow.link, False),
    "!unlink": (workflow.unlink, False),
    "!chronology": (views.chronology, False),
    "!strategy": (meetings.strategy, False),
}


def command_word(body: str) -> str | None:
    """The command a message starts with (lower case), or None if it is not a command."""
    first = body.lstrip().split("\n", 1)[0].strip()
    if not first.startswith("!"):
        return None
    return first.split(None, 1)[0].lower()


async def handle_message(
    tx: Tx, msg: Incoming, settings: Settings, *, reloader: Reloader | None = None
) -> None:
    """Act on one message. Runs inside the transaction that marks it handled.

    `settings` are the ones in force now: roles are checked against them on every command.
    """
    if msg.membership is not None:
        meeting = await tx.meeting_by_room(msg.room_id)
        if meeting is not None:
            await meetings.on_membership(tx, msg, settings, meeting)
        return
    if msg.redacts is not None:
        await corrections.on_redaction(tx, msg, settings)
        return
    if msg.edit_of is not None:
        if not await guided.on_edit(tx, msg, settings):
            await corrections.on_edit(tx, msg, settings)
        return
    if msg.poll_of is not None:
        await guided.on_poll_response(tx, msg, settings)
        return
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
        if await guided.on_message(tx, msg, settings):
            return
        if msg.room_id != settings.advice_team_room:
            await _reply(tx, msg, "hint", Doc().para("I only act on commands. Send !help."), False)
        return
    first_line = msg.body.lstrip().split("\n", 1)[0].strip()
    args = first_line[len(word) :].strip()
    meeting = await tx.meeting_by_room(msg.room_id)
    if meeting is not None:
        if word == "!help":
            doc = Doc().heading("Strategy meeting commands").fields(*meetings.MEETING_HELP)
            await _reply(tx, msg, "help", doc, sensitive=False)
            return
        if await meetings.meeting_command(tx, msg, settings, meeting, word, args):
            return
    if word == "!help":
        doc = Doc().heading("referral-bot commands").fields(*HELP)
        if settings.is_team(msg.sender):
            doc.heading("Advice team").fields(*TEAM_HELP)
        if settings.is_admin(msg.sender):
            doc.heading("Admin").fields(
                ("!reload", "re-read the configuration file (roles, deadlines…) now")
            )
        doc.para(
            "Referrals are only taken in end-to-end encrypted rooms. If a child is in immediate "
            "danger, phone the police on 999."
        )
        await _reply(tx, msg, "help", doc, sensitive=False)
    elif word == "!refer":
        if msg.private and not msg.body.strip()[len(word) :].strip():
            await guided.start(tx, msg, settings)
        elif args.lower() == "template":
            doc = Doc().para("Copy this, fill it in and send it back:").pre(referral_template())
            await _reply(tx, msg, "template", doc, sensitive=False)
        else:
            await take_referral(tx, msg, settings)
    elif word == "!status":
        await _run(views.status, tx, msg, settings, args)
    elif word == "!amend":
        await _run(corrections.amend, tx, msg, settings, args)
    elif word == "!reload":
        await reload_command(tx, msg, settings, reloader)
    elif word == "!phone-referral":
        if not await _team_allowed(tx, msg, settings, word, managers_only=False):
            pass
        elif msg.private and not msg.body.strip()[len(word) :].strip():
            await guided.start(tx, msg, settings, phone=True)
        else:
            await take_referral(tx, msg, settings, phone=True)
    elif word == "!me":
        await guided.me(tx, msg, settings, args)
    elif word in TEAM_COMMANDS:
        handler, managers_only = TEAM_COMMANDS[word]
        if await _team_allowed(tx, msg, settings, word, managers_only=managers_only):
            await _run(handler, tx, msg, settings, args)
    else:
        doc = Doc().para(f"Unknown command {word}. Send !help for the list of commands.")
        await _reply(tx, msg, "unknown", doc, sensitive=False)


async def _team_allowed(
    tx: Tx, msg: Incoming, settings: Settings, word: str, *, managers_only: bool
) -> bool:
    """The one permission check for team commands: role now, and a room fit for details."""
    if managers_only and not settings.is_manager(msg.sender):
        refusal = f"Only a team manager can use {word}. Nothing was changed."
    elif not settings.is_team(msg.sender):
        refusal = f"Only members of the advice team can use {word}. Nothing was changed."
    elif msg.room_id != settings.advice_team_room and not msg.private:
        refusal = (
            f"Use {word} in the advice-team room or in a direct message with me: referral "
            "details are not shown in other rooms. Nothing was changed."
        )
    else:
        return True
    log.info("refused: command=%s event=%s", word, msg.event_id)
    await _reply(tx, msg, "refused", Doc().para(refusal), sensitive=False)
    return False


async def _run(handler: Handler, tx: Tx, msg: Incoming, settings: Settings, args: str) -> None:
    """Run a command; a Refusal rolls back whatever it had done and replies with the reason."""
    await tx.savepoint()
    try:
        await handler(Call(tx, msg, settings, args))
    except Refusal as refusal:
        await tx.rollback_to_savepoint()
        await _reply(tx, msg, "refused", Doc().para(str(refusal)), sensitive=False)
    else:
        await tx.release_savepoint()


def _refuse_unencrypted(settings: Settings) -> Doc:
    return Doc().para(
        "This room is not end-to-end encrypted, so I will not take referrals or show referral "
        f"details here. Nothing from your message was stored. Start an encrypted direct "
        f"message with {settings.bot_user_id} and send your referral there.",
        strong=True,
    )


async def _reply(tx: Tx, msg: Incoming, purpose: str, doc: Doc, sensitive: bool) -> None:
    await reply(tx, msg, purpose, doc, sensitive=sensitive)
