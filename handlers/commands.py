"""Routing a stored message to its use case, through the one command table.

Every command is declared once, in `COMMANDS`: its word, its handler, who may use it,
where, its usage and its help line. `!help`, the role gate and the room rule are made from
that table and nowhere else, so what the help says is what runs, and who may do what is
decided in one place (`refusal`), on every command, against the settings in force now.

To add a command: write a handler (`async def x(c: Call) -> None`, raising `Refusal`
to say no; see handlers/context.py) and add one `Command(...)` line to `COMMANDS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from handlers import (
    admin,
    attachments,
    corrections,
    flood,
    guided,
    meetings,
    reports,
    views,
    workflow,
)
from handlers.context import Call, Handler, Refusal, in_team_place
from handlers.meeting_record import on_membership
from handlers.meetings import in_meeting
from handlers.notify import reply
from handlers.ports import Incoming, Reloader
from handlers.render import Doc
from handlers.settings import Settings
from schemas.domain import Purpose
from storage.tx import Tx

log = logging.getLogger(__name__)


class Who(StrEnum):
    """Who may use a command (checked against the settings in force now)."""

    ANYONE = "anyone"
    TEAM = "the advice team (team.advice_team and team.managers)"
    MANAGERS = "team managers"
    ADMINS = "admins (team.admins)"
    INVITED = "people invited to the meeting, and the advice team"


class Where(StrEnum):
    """Where a command may be used. Unencrypted rooms never get this far (refused first)."""

    ANY = "any encrypted room"
    TEAM_PLACE = "the advice-team room or a direct message with the bot"
    MEETING = "a strategy meeting's room"


@dataclass(frozen=True)
class Form:
    """One way of using a command, for one audience: what `!help` shows and who may."""

    usage: str
    help: str
    who: Who = Who.ANYONE
    where: Where = Where.ANY
    # How a refusal names this form; by default the command's word.
    subject: str = ""


@dataclass(frozen=True)
class Command:
    word: str
    # None: answered by the Matrix shell as the message arrives, before it is stored
    # (emoji verification, bot/verification.py, which uses this table's forms and gate).
    run: Handler | None
    form: Form
    # The same word used another way, by another audience (e.g. for someone else).
    also: tuple[Form, ...] = ()
    # Meeting commands that still work once the meeting is closed.
    after_close: bool = False

    @property
    def forms(self) -> tuple[Form, ...]:
        return (self.form, *self.also)

    def label(self, form: Form) -> str:
        return f"{self.word} {form.usage}".strip()


# -- the table ---------------------------------------------------------------------------

_TEAM, _MANAGERS, _ADMINS, _INVITED = Who.TEAM, Who.MANAGERS, Who.ADMINS, Who.INVITED
_PLACE, _MEETING = Where.TEAM_PLACE, Where.MEETING


def _team(usage: str, help_: str) -> Form:
    return Form(usage, help_, _TEAM, _PLACE)


def _managers(usage: str, help_: str) -> Form:
    return Form(usage, help_, _MANAGERS, _PLACE)


def _meeting(usage: str, help_: str) -> Form:
    return Form(usage, help_, _INVITED, _MEETING)


def _for_someone_else(word: str, usage: str, help_: str) -> Form:
    return Form(usage, help_, _TEAM, _PLACE, subject=f"{word} for another person's session")


async def help_command(c: Call) -> None:
    meeting = await c.tx.meeting_by_room(c.msg.room_id)
    doc = help_doc(c.msg.sender, c.settings, meeting_room=meeting is not None)
    await c.say(doc, Purpose.HELP, sensitive=False)


_M = in_meeting
_ANY = Form
_GUIDED = "on its own: a referral one question at a time (tap or type each answer)"
_SEND_REFERRAL = "a typed referral: !refer on the first line, then 'Field: value' lines"
# fmt: off
COMMANDS: dict[str, Command] = {c.word: c for c in (
    Command("!help", help_command, _ANY("", "this list")),
    Command("!refer", guided.refer, _ANY("", _GUIDED),
            also=(_ANY("template", "the blank referral form, every field explained"),
                  _ANY("+ fields", _SEND_REFERRAL))),
    Command("!me", guided.me_command,
            _ANY("[forget]", "your details kept for your next referral; !me forget deletes them")),
    Command("!status", views.status,
            _ANY("REF-…", "where your referral is now (referrers see only their own)")),
    Command("!amend", corrections.amend,
            _ANY("REF-… text", "add a correction to your referral (the referral as sent is kept)")),
    Command("!attach", attachments.attach,
            _ANY("REF-…", "then send files (pictures, PDF, office documents) for that referral")),
    Command("!attachments", attachments.send_attachments,
            _ANY("REF-…", "the files of your referral, sent here (advice team: any referral)")),
    Command("!verify", None,
            _ANY("[SESSION]", "verify one of your sessions (devices) with me, by comparing emoji")),
    Command("!verify-match", None,
            _ANY("SESSION", "from a verified session: my emoji match that session's"),
            also=(_for_someone_else("!verify-match", "@user SESSION",
                                    "after phoning them: their session shows my emoji"),)),
    Command("!verify-reject", None,
            _ANY("SESSION", "from a verified session: my emoji do not match that session's"),
            also=(_for_someone_else("!verify-reject", "@user SESSION",
                                    "their session shows other emoji: cancel"),)),
    Command("!queue", views.queue, _team("", "open referrals, oldest first, with deadlines")),
    Command("!claim", workflow.claim,
            _team("REF-…", "take a referral (only one worker can hold it)")),
    Command("!release", workflow.release, _team("REF-…", "give it back to the queue")),
    Command("!assign", workflow.assign, _managers("REF-… @worker", "give it to a worker")),
    Command("!show", views.show, _team("REF-…", "the full referral and its running record")),
    Command("!note", workflow.note,
            _team("REF-… text", "add to the running record (advice given, calls, checks)")),
    Command("!tell", workflow.tell, _team("REF-… text", "add a note AND send it to the referrer")),
    Command("!rag", workflow.rag,
            _team("REF-… red|amber|green", "RAG rating; sets the decision deadline")),
    Command("!decide", workflow.decide,
            _team("REF-… assessment|strategy|early-help|nfa reason", "record the decision")),
    Command("!reclassify", workflow.reclassify,
            _team("REF-… contact|child-protection reason", "change the classification")),
    Command("!confirm", workflow.confirm, _managers("REF-…", "confirm a downgrade to contact")),
    Command("!phone-referral", guided.phone_referral,
            _team("", "log a telephone referral: on its own (in a DM) one question at a time; "
                  "or the typed form of !refer with the caller's details")),
    Command("!written", workflow.written,
            _team("REF-… note", "the written follow-up of a telephone referral arrived")),
    Command("!link", workflow.link, _team("REF-… REF-…", "count two records as the same child")),
    Command("!unlink", workflow.unlink,
            _team("REF-… REF-…", "no longer count two records as the same child")),
    Command("!chronology", views.chronology,
            _team("REF-…", "the referral and its chronology for the case record")),
    Command("!strategy", meetings.strategy,
            _team("REF-… [when]", "set up an encrypted strategy meeting room; you chair it")),
    Command("!report", reports.report_command, _team(
        "[week|month|quarter|FROM TO]", "the front door's figures and chart (team room)")),
    Command("!reload", admin.reload,
            Form("", "re-read the configuration file (roles, deadlines…) now", _ADMINS, _PLACE)),
    Command("!attendance", _M(meetings.attendance), after_close=True, form=_meeting(
        "", "who was invited, attended, declined, or sent information")),
    Command("!info", _M(meetings.info),
            _meeting("text", "information from an agency that cannot attend")),
    Command("!views", _M(meetings.views),
            _meeting("child|parents text", "their views, or why they could not be had")),
    Command("!action", _M(meetings.action),
            _meeting("@owner dd/mm/yyyy text", "an agreed action: owner and due date required")),
    Command("!recommendation", _M(meetings.recommendation),
            _meeting("text", "a recommendation (kept apart from actions)")),
    Command("!decision", _M(meetings.decision), _meeting("text", "a decision of the meeting")),
    Command("!done", _M(meetings.done), _meeting("N", "action N is complete"), after_close=True),
    Command("!minutes", _M(meetings.minutes), _meeting("", "the minutes so far"),
            after_close=True),
    Command("!invite-agency", _M(meetings.invite_agency),
            _meeting("KEY", "invite an agency's safeguarding lead")),
    Command("!invite", _M(meetings.invite),
            _meeting("@user", "invite a person (allowed homeservers only)")),
    Command("!chair", _M(meetings.chair),
            _meeting("@user", "the chair or a manager hands over the chair")),
    Command("!close", _M(meetings.close),
            _meeting("", "the chair closes the meeting; minutes go to the referral's record")),
)}
# fmt: on


# -- made from the table: help, the role gate, the room rule -----------------------------


def help_doc(sender: str, settings: Settings, *, meeting_room: bool) -> Doc:
    """`!help`: in a meeting's room its commands; elsewhere what this sender may use."""
    if meeting_room:
        return Doc().heading("Strategy meeting commands").fields(*_lines(Where.MEETING, None))
    doc = Doc().heading("referral-bot commands").fields(*_lines(None, (Who.ANYONE,)))
    if settings.is_team(sender):
        doc.heading("Advice team").fields(*_lines(None, (Who.TEAM, Who.MANAGERS)))
    if settings.is_admin(sender):
        doc.heading("Admin").fields(*_lines(None, (Who.ADMINS,)))
    return doc.para(
        "Referrals are only taken in end-to-end encrypted rooms. If a child is in immediate "
        "danger, phone the police on 999."
    )


def _lines(where: Where | None, who: tuple[Who, ...] | None) -> list[tuple[str, str]]:
    """Help lines of the forms used `where` (None: outside meeting rooms) by `who`."""
    lines = []
    for command in COMMANDS.values():
        for form in command.forms:
            here = form.where == where if where is not None else form.where != Where.MEETING
            if here and (who is None or form.who in who):
                prefix = "managers: " if form.who == Who.MANAGERS else ""
                lines.append((command.label(form), prefix + form.help))
    return lines


def static_refusal(
    form: Form, word: str, sender: str, room_id: str, private: bool, settings: Settings
) -> str | None:
    """The role gate and room rule of a form outside meeting rooms; None: allowed."""
    subject = form.subject or word
    if form.who == Who.MANAGERS and not settings.is_manager(sender):
        return f"Only a team manager can use {subject}. Nothing was changed."
    if form.who == Who.TEAM and not settings.is_team(sender):
        return f"Only members of the advice team can use {subject}. Nothing was changed."
    if form.who == Who.ADMINS and not settings.is_admin(sender):
        return (
            f"Only an admin (team.admins in the configuration) can use {subject}. "
            "Nothing was changed."
        )
    if form.where == Where.TEAM_PLACE and not in_team_place(room_id, private, settings):
        return (
            f"Use {subject} in the advice-team room or in a direct message with me: referral "
            "details are not shown in other rooms. Nothing was changed."
        )
    return None


async def refusal(command: Command, c: Call) -> str | None:
    """Why the sender may not use `command` here and now; None if they may."""
    form = command.form
    if form.where != Where.MEETING:
        return static_refusal(
            form, command.word, c.msg.sender, c.msg.room_id, c.msg.private, c.settings
        )
    meeting = await c.tx.meeting_by_room(c.msg.room_id)
    if meeting is None:
        return f"Use {command.word} in a strategy meeting's room; !help there lists its commands."
    invited = {p.user_id for p in await c.tx.participants(meeting.id)}
    if c.msg.sender not in invited and not c.settings.is_team(c.msg.sender):
        return "Only people invited to this meeting can use its commands."
    if meeting.state != "open" and not command.after_close:
        return "This meeting is closed. Its minutes are on the referral's record."
    return None


def screened_words() -> frozenset[str]:
    """The commands the Matrix shell answers as they arrive (never stored in the inbox)."""
    return frozenset(word for word, command in COMMANDS.items() if command.run is None)


# -- routing -----------------------------------------------------------------------------


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
    if await _not_a_command(tx, msg, settings):
        return
    word = command_word(msg.body)
    if word is None:
        if await guided.on_message(tx, msg, settings):
            return
        if msg.room_id != settings.advice_team_room:
            await _reply(tx, msg, Purpose.HINT, "I only act on commands. Send !help.")
        return
    command = COMMANDS.get(word)
    if command is None or command.run is None:
        await _reply(
            tx,
            msg,
            Purpose.UNKNOWN,
            f"Unknown command {word}. Send !help for the list of commands.",
        )
        return
    first_line = msg.body.lstrip().split("\n", 1)[0].strip()
    call = Call(tx, msg, settings, first_line[len(word) :].strip(), reloader)
    refused = await refusal(command, call)
    if refused is not None:
        log.info("refused: command=%s event=%s", word, msg.event_id)
        await _reply(tx, msg, Purpose.REFUSED, refused)
        return
    await _run(command.run, call)


async def _not_a_command(tx: Tx, msg: Incoming, settings: Settings) -> bool:
    """Handle what is not a command to run (membership, deletion, edit, a file, an
    unencrypted room, a message too long); True if the message was one of those."""
    if msg.membership is not None:
        meeting = await tx.meeting_by_room(msg.room_id)
        if meeting is not None:
            await on_membership(tx, msg, settings, meeting)
    elif msg.redacts is not None:
        await corrections.on_redaction(tx, msg, settings)
    elif msg.edit_of is not None:
        if not await guided.on_edit(tx, msg, settings):
            await corrections.on_edit(tx, msg, settings)
    elif msg.poll_of is not None:
        await guided.on_poll_response(tx, msg, settings)
    elif msg.media is not None or msg.media_clear or msg.media_bad:
        await attachments.on_file(tx, msg, settings)
    elif msg.withheld:
        doc = Doc().para(
            "This room is not end-to-end encrypted, so I will not take referrals or show "
            f"referral details here. Nothing from your message was stored. Start an encrypted "
            f"direct message with {settings.bot_user_id} and send your referral there.",
            strong=True,
        )
        await reply(tx, msg, Purpose.UNENCRYPTED, doc, sensitive=False)
    elif (size := len(msg.body.encode("utf-8", "replace"))) > settings.max_message_bytes:
        await _reply(
            tx,
            msg,
            Purpose.TOO_LONG,
            f"This message is too long ({size:,} bytes; the limit is "
            f"{settings.max_message_bytes:,}). Nothing was stored. Shorten the free-text "
            "fields and send it again.",
        )
    else:
        return False
    return True


async def _run(handler: Handler, call: Call) -> None:
    """Run a command; a Refusal rolls back whatever it had done and replies with the reason."""
    await call.tx.savepoint()
    try:
        await handler(call)
    except Refusal as refused:
        await call.tx.rollback_to_savepoint()
        await _reply(call.tx, call.msg, Purpose.REFUSED, str(refused))
    else:
        await call.tx.release_savepoint()


async def _reply(tx: Tx, msg: Incoming, purpose: Purpose, text: str) -> None:
    """A short reply that carries no referral details; answers to chatter and unknown
    commands are rationed per sender (no echo storm for a flood: handlers/flood.py)."""
    doc: Doc | None = Doc().para(text)
    if purpose in flood.RATIONED and doc is not None:
        doc = await flood.ration(tx, msg, doc)
    if doc is not None:
        await reply(tx, msg, purpose, doc, sensitive=False)
