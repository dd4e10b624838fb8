"""A guided referral: one question at a time, in a direct message, for a phone.

The conversation is a small state machine kept in a draft (`storage/drafts.py`),
stored, encrypted, in the transaction of every answer: a restart or a crash resumes at
the right question with nothing lost or repeated (the answer's event is either handled
with its draft saved, or not at all, and the replies go through the outbox with
transaction IDs derived from the answer).

Answers are kept as text in the typed form's words and checked by the typed form's own
rules (`referral_form.parse_values`), one field at a time; *send* hands the whole form to
`intake.record_referral`, the one intake path, so a guided referral gets the same
reference, acknowledgement, team summary and running record as a typed one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from handlers import flood, intake, views
from handlers.context import Call
from handlers.guided_questions import (
    AGE_KEYS,
    BY_KEY,
    DONE_ID,
    IDENTITY_KEYS,
    MENU_CHOICES,
    QUESTIONS,
    REFERRER_KEYS,
    REVIEW_CHOICES,
    Choice,
    Context,
    Question,
)
from handlers.intake import record_referral
from handlers.notify import LONDON, format_time
from handlers.ports import Incoming, OutgoingMessage, Poll, txn_id_for
from handlers.referral_form import FIELD_BY_KEY, parse_values, read_labelled, referral_template
from handlers.render import Doc
from handlers.settings import Settings
from schemas.domain import Purpose
from storage.drafts import Draft
from storage.tx import Tx

log = logging.getLogger(__name__)

MENU = "menu"
REVIEW = "review"
CHANGE = "change"
CONTROL_WORDS = ("back", "skip", "review", "cancel")
HINT = "You can send back, review or cancel at any time."
HINT_OPTIONAL = "This one is optional: send skip to leave it out. " + HINT
_NUMBERS = re.compile(r"^\s*\d{1,2}(\s*[,;]\s*\d{1,2}|\s+and\s+\d{1,2}|\s+\d{1,2})*\s*$")
_DATE_LIKE = re.compile(r"^\d{1,2}\s*[/.\-]\s*\d{1,2}\s*[/.\-]\s*\d{1,4}$")


@dataclass
class State:
    """What a draft holds (encrypted as one JSON value)."""

    mode: str = MENU  # "menu" or "referral"
    phone: bool = False
    step: str = MENU
    answers: dict[str, str] = field(default_factory=dict)  # field key -> text
    done: list[str] = field(default_factory=list)  # questions answered or skipped, in order
    by_event: dict[str, str] = field(default_factory=dict)  # answer event -> question
    poll: dict[str, str] | None = None  # the open poll: {"txn": …, "step": …}
    selection: list[str] = field(default_factory=list)  # a multi-choice poll, so far
    sent: list[str] = field(default_factory=list)  # txn IDs of this draft's messages
    saved: dict[str, str] | None = None  # the referrer's details kept from last time

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def context(self) -> Context:
        return Context(self.answers, self.phone, self.saved is not None)


class _Turn:
    """The replies to one event, queued in order with transaction IDs derived from it."""

    def __init__(self, tx: Tx, draft_key: str, room_id: str, reply_to: str | None) -> None:
        self.tx = tx
        self.key = draft_key
        self.room_id = room_id
        self.reply_to = reply_to
        self.count = 0
        self.txn_ids: list[str] = []
        # Polls to end once this turn's own messages are queued: the next question first.
        self.ending: list[str] = []

    async def send(self, doc: Doc, *, poll: Poll | None = None, reply: bool = False) -> str:
        self.count += 1
        txn_id = txn_id_for(self.key, f"guided:{self.count}")
        body, html = doc.render()
        await self.tx.enqueue(
            OutgoingMessage(
                self.room_id,
                body,
                html,
                reply_to=self.reply_to if reply and poll is None else None,
                poll=poll,
            ),
            txn_id=txn_id,
            purpose="guided",
        )
        self.txn_ids.append(txn_id)
        return txn_id

    async def flush(self) -> None:
        """End the polls closed in this turn, so they cannot be tapped again."""
        ending, self.ending = self.ending, []
        for txn in ending:
            sent_as = await self.tx.sent_event_of(txn)
            if sent_as is not None:  # not sent yet: nothing to end
                await self.send(Doc().para("This poll is closed."), poll=Poll(end_of=sent_as))


# ------------------------------------------------------------------------------ entry


async def start(tx: Tx, msg: Incoming, settings: Settings, *, phone: bool = False) -> None:
    """`!refer` on its own (or `!phone-referral` for a worker): a new guided referral.

    An open draft in this room is replaced: one draft per person per room."""
    turn = _Turn(tx, msg.event_id, msg.room_id, msg.event_id)
    old = await tx.draft_of(msg.room_id, msg.sender)
    if old is not None:
        old_state = State.from_json(old.state)
        await _close_poll(turn, old_state)
        await turn.flush()
        await tx.forget_sent(old_state.sent)
    state = State(mode="referral", phone=phone)
    if not phone:
        state.saved = await tx.saved_referrer(msg.sender)
    intro = (
        "Telephone referral: I will ask about the child and then the CALLER's details, one "
        "question at a time."
        if phone
        else "A referral, one question at a time. Answer each in a message of its own."
    )
    await _advance(turn, state, settings, prefix=[intro])
    await _save(tx, msg, state, settings, started_by=msg.event_id, turn=turn)
    log.info("guided referral started: event=%s phone=%s", msg.event_id, phone)


async def refer(c: Call) -> None:
    """`!refer`: on its own in a direct message, the guided referral; `!refer template`
    the blank form; `!refer` with fields, the typed referral (handlers/intake.py)."""
    if c.msg.private and _alone(c.msg.body):
        await start(c.tx, c.msg, c.settings)
    elif c.args.lower() == "template":
        doc = Doc().para("Copy this, fill it in and send it back:").pre(referral_template())
        await c.say(doc, Purpose.TEMPLATE, sensitive=False)
    else:
        await intake.take_referral(c.tx, c.msg, c.settings)


async def phone_referral(c: Call) -> None:
    """`!phone-referral`: on its own in a direct message, the guided flow with the
    caller's details; otherwise the typed form (handlers/intake.py)."""
    if c.msg.private and _alone(c.msg.body):
        await start(c.tx, c.msg, c.settings, phone=True)
    else:
        await intake.take_referral(c.tx, c.msg, c.settings, phone=True)


def _progress(state: State) -> tuple[object, ...]:
    """What an answer that moves the conversation on changes."""
    return (state.mode, state.step, dict(state.answers), list(state.done), list(state.selection))


def _alone(body: str) -> bool:
    """The command word with nothing after it, on its line or below (a typed form has
    its fields on the following lines)."""
    return len(body.split()) == 1


async def me_command(c: Call) -> None:
    """`!me` shows the details kept for the next referral; `!me forget` deletes them."""
    await me(c.tx, c.msg, c.settings, c.args)


async def on_message(tx: Tx, msg: Incoming, settings: Settings) -> bool:
    """A message that is not a command. True if the guided conversation took it: an answer
    to the open draft, or (in a direct message, with no draft) the offer of what to do."""
    draft = await tx.draft_of(msg.room_id, msg.sender)
    if draft is None:
        if not msg.private or msg.room_id == settings.advice_team_room:
            return False
        if await flood.ration(tx, msg, Doc(), flood.GUIDED) is None:
            return True  # a flood of chatter: the offer was made, and repeated (flood.py)
        state = State()
        turn = _Turn(tx, msg.event_id, msg.room_id, msg.event_id)
        await _ask_menu(turn, state, prefix="Hello. What would you like to do?")
        await _save(tx, msg, state, settings, started_by=msg.event_id, turn=turn)
        return True
    await _answer(tx, msg, settings, draft, msg.body, from_poll=None)
    return True


async def on_poll_response(tx: Tx, msg: Incoming, settings: Settings) -> None:
    """A tap in one of the bot's polls."""
    draft = await tx.draft_of(msg.room_id, msg.sender)
    if draft is None:
        log.info("poll response without a draft: event=%s", msg.event_id)
        return
    state = State.from_json(draft.state)
    poll = state.poll
    if poll is None or poll["step"] != state.step:
        log.info("poll response to a closed poll: event=%s", msg.event_id)
        return
    sent_as = await tx.sent_event_of(poll["txn"])
    if sent_as is not None and sent_as != msg.poll_of:
        # An older poll (ended, but some clients still let it be tapped): not this question.
        turn = _Turn(tx, msg.event_id, msg.room_id, msg.event_id)
        await turn.send(
            Doc().para("That poll is closed. Please answer the latest question."), reply=True
        )
        state.sent.extend(turn.txn_ids)
        await _save(tx, msg, state, settings, started_by=draft.started_by, turn=turn)
        return
    await _answer(tx, msg, settings, draft, "", from_poll=msg.poll_answers)


async def on_edit(tx: Tx, msg: Incoming, settings: Settings) -> bool:
    """An edit (`m.replace`) of an answer of the open draft: change that answer, say so."""
    assert msg.edit_of is not None
    draft = await tx.draft_of(msg.room_id, msg.sender)
    if draft is None:
        return False
    state = State.from_json(draft.state)
    key = state.by_event.get(msg.edit_of)
    if key is None or key not in BY_KEY or msg.command:
        return False
    question = BY_KEY[key]
    turn = _Turn(tx, msg.event_id, msg.room_id, msg.event_id)
    today = _today(msg)
    problem = None
    values: dict[str, str] = {}
    if not question.applies(state.context()) or not question.fields:
        problem = "that question no longer applies"
    else:
        values, problem = _interpret(question, msg.body, state, settings, today)
    if problem is not None:
        await turn.send(
            Doc().para(f"Your edit was NOT applied to '{question.title}': {problem}."),
            reply=True,
        )
    else:
        for k in question.fields:
            state.answers.pop(k, None)
        state.answers.update(values)
        await turn.send(
            Doc().para(
                f"Changed '{question.title}' to: {_shown(question, state.answers)}. "
                "Carry on with the latest question."
            ),
            reply=True,
        )
        if state.step == REVIEW:
            await _advance(turn, state, settings, step=_next_step(state))
    state.sent.extend(turn.txn_ids)
    await _save(tx, msg, state, settings, started_by=draft.started_by, turn=turn)
    return True


async def me(tx: Tx, msg: Incoming, settings: Settings, args: str) -> None:
    """`!me`: the referrer details kept for guided referrals; `!me forget` deletes them."""
    turn = _Turn(tx, msg.event_id, msg.room_id, msg.event_id)
    if not msg.private:
        await turn.send(
            Doc().para("Use !me in a direct message with me: your details are not shown here."),
            reply=True,
        )
        return
    word = args.strip().lower()
    if word == "forget":
        forgotten = await tx.forget_referrer(msg.sender)
        text = (
            "Deleted: your details are no longer kept. A guided referral will ask for them again."
            if forgotten
            else "I keep no details of yours: nothing to delete."
        )
        await turn.send(Doc().para(text), reply=True)
        return
    if word:
        await turn.send(Doc().para("Send !me to see your details, or !me forget."), reply=True)
        return
    saved = await tx.saved_referrer(msg.sender)
    if saved is None:
        await turn.send(
            Doc().para(
                "I keep no details of yours. After your first guided referral (send !refer), "
                "your name, role, agency and phone are kept, encrypted, and offered next time."
            ),
            reply=True,
        )
        return
    doc = Doc().heading("Your details, kept for your next referral")
    doc.fields(*_referrer_rows(saved))
    doc.para("!me forget deletes them.")
    await turn.send(doc, reply=True)


# ------------------------------------------------------------------------------ answers


async def _answer(
    tx: Tx,
    msg: Incoming,
    settings: Settings,
    draft: Draft,
    text: str,
    *,
    from_poll: tuple[str, ...] | None,
) -> None:
    state = State.from_json(draft.state)
    turn = _Turn(tx, msg.event_id, msg.room_id, msg.event_id)
    before = _progress(state)
    await tx.savepoint()
    finished = await _step(tx, turn, msg, settings, state, text, from_poll)
    if not finished and from_poll is None and _progress(state) == before:
        # Nothing moved on (a wrong answer, asked again): rationed like chatter, so that a
        # flood gets a bounded number of replies (handlers/flood.py). An answer that moves
        # the referral on, and a tap, never are.
        await tx.rollback_to_savepoint()
        note = await flood.ration(tx, msg, Doc(), flood.GUIDED)
        if note is None:
            return
        state = State.from_json(draft.state)
        turn = _Turn(tx, msg.event_id, msg.room_id, msg.event_id)
        finished = await _step(tx, turn, msg, settings, state, text, from_poll)
        if note.blocks:
            await turn.send(note)
    else:
        await tx.release_savepoint()
        if from_poll is None:
            await flood.forgive(tx, msg)
    if finished:
        await _close_poll(turn, state)
        await turn.flush()
        await tx.forget_sent(state.sent)
        await tx.delete_draft(draft.id)
        return
    await _save(tx, msg, state, settings, started_by=draft.started_by, turn=turn)


async def _step(
    tx: Tx,
    turn: _Turn,
    msg: Incoming,
    settings: Settings,
    state: State,
    text: str,
    from_poll: tuple[str, ...] | None,
) -> bool:
    """Act on one answer; True when the draft is finished (sent or cancelled)."""
    word = " ".join(text.casefold().split()).strip(".!")
    if (from_poll is None and word == "cancel") or (
        from_poll == ("cancel",) and state.step == REVIEW
    ):
        await _close_poll(turn, state)
        await turn.send(
            Doc().para(
                "Cancelled. Nothing was sent to the advice team and your answers are deleted."
            ),
            reply=True,
        )
        log.info("guided referral cancelled: event=%s", msg.event_id)
        return True
    if state.step == MENU:
        return await _menu_answer(tx, turn, msg, settings, state, word, from_poll)
    if from_poll is None and word == "back":
        previous = _previous_step(state)
        await _advance(turn, state, settings, step=previous, again=True)
        return False
    if from_poll is None and word == "review" and state.step not in (REVIEW,):
        await _show_review(turn, state, settings, complete=_next_step(state) == REVIEW)
        return False
    if state.step == REVIEW:
        return await _review_answer(tx, turn, msg, settings, state, word, from_poll)
    if state.step == CHANGE:
        target = _find_question(state, word)
        if target is None:
            await turn.send(
                Doc().para(f"'{text.strip()[:40]}' is not one of the answers listed."),
                reply=True,
            )
            await _ask_change(turn, state)
        else:
            await _advance(turn, state, settings, step=target.key, again=True)
        return False

    question = BY_KEY.get(state.step)
    if question is None:
        await _advance(turn, state, settings)
        return False
    if from_poll is None and word == "skip":
        if not question.optional:
            await _close_poll(turn, state)
            await _advance(
                turn,
                state,
                settings,
                step=question.key,
                prefix=[f"'{question.title}' is needed: it cannot be skipped."],
            )
            return False
        for k in question.fields:
            state.answers.pop(k, None)
        _mark_done(state, question.key, msg.event_id)
        await _advance(turn, state, settings, step=_next_step(state))
        return False

    if from_poll is not None:
        if question.multi and DONE_ID not in from_poll:
            state.selection = [a for a in from_poll if a != DONE_ID]
            return False  # still choosing: each tap sends the whole selection
        by_id = {c.id: c for c in _choices(question, settings)}
        # In the order tapped, as a typed list keeps the order typed.
        chosen = [by_id[a] for a in dict.fromkeys(from_poll) if a in by_id]
        if not chosen and question.multi and state.selection:
            chosen = [by_id[a] for a in state.selection if a in by_id]
        text = ", ".join(c.value for c in chosen)
        if not chosen:
            text = ""
    elif question.multi and state.selection:
        choices = _choices(question, settings)
        if word in ("done", "that's all", "thats all", str(len(choices) + 1)):
            # Tapped in the poll, then finished by typing.
            text = ", ".join(c.value for c in choices if c.id in state.selection)
    values, problem = _interpret(question, text, state, settings, _today(msg))
    if problem is not None:
        await _close_poll(turn, state)
        await _advance(turn, state, settings, step=question.key, prefix=[problem], reply=True)
        return False
    if question.key == "use_saved":
        _mark_done(state, question.key, msg.event_id)
        if values.get("use") == "yes" and state.saved is not None:
            state.answers.update(state.saved)
            for key in REFERRER_KEYS:
                _mark_done(state, key, None)
        await _advance(turn, state, settings, step=_next_step(state))
        return False
    for k in question.fields:
        state.answers.pop(k, None)
    state.answers.update(values)
    state.selection = []
    _mark_done(state, question.key, msg.event_id)
    prefix: list[str] = []
    if question.key == "immediate_danger" and values.get("immediate_danger") == "yes":
        prefix.append(
            "PHONE 999 NOW if you have not already: a child in immediate danger needs the "
            "police now. Then carry on here; the advice team is alerted the moment you send."
        )
    await _advance(turn, state, settings, step=_next_step(state), prefix=prefix)
    return False


async def _menu_answer(
    tx: Tx,
    turn: _Turn,
    msg: Incoming,
    settings: Settings,
    state: State,
    word: str,
    from_poll: tuple[str, ...] | None,
) -> bool:
    choice = _pick(MENU_CHOICES, word, from_poll)
    if choice is None:
        await _ask_menu(turn, state, prefix="Please choose one of these:")
        return False
    await _close_poll(turn, state)
    if choice.id == "refer":
        state.mode = "referral"
        state.saved = await tx.saved_referrer(msg.sender)
        await _advance(turn, state, settings, prefix=["A referral, one question at a time."])
        return False
    if choice.id == "status":
        await _my_open_referrals(tx, turn, msg)
        return True
    await turn.send(_help(), reply=True)
    return True


async def _review_answer(
    tx: Tx,
    turn: _Turn,
    msg: Incoming,
    settings: Settings,
    state: State,
    word: str,
    from_poll: tuple[str, ...] | None,
) -> bool:
    if from_poll is None and word.startswith("change "):
        target = _find_question(state, word[len("change ") :])
        if target is not None:
            await _close_poll(turn, state)
            await _advance(turn, state, settings, step=target.key, again=True)
            return False
    choice = _pick(REVIEW_CHOICES, word, from_poll)
    if choice is None:
        await _close_poll(turn, state)
        await _show_review(
            turn, state, settings, complete=True, prefix="Please answer send, change or cancel."
        )
        return False
    if choice.id == "change":
        await _close_poll(turn, state)
        state.step = CHANGE
        await _ask_change(turn, state)
        return False
    # send
    parsed = parse_values(_applicable_answers(state), _today(msg))
    if parsed.form is None:
        problem = parsed.problems[0]
        target = _question_of_label(problem.field)
        await _close_poll(turn, state)
        await _advance(
            turn,
            state,
            settings,
            step=target.key if target else REVIEW,
            prefix=[f"{problem.field}: {problem.problem}."],
        )
        return False
    # The referral is recorded against the event that said "send". A poll response is a
    # reference to the poll and cannot root a thread, so a tap records against the poll.
    event_id = msg.event_id
    if msg.poll_of is not None and state.poll is not None:
        event_id = await tx.sent_event_of(state.poll["txn"]) or msg.event_id
    await _close_poll(turn, state)
    anchor = msg
    if event_id != msg.event_id:  # the poll: a plain event of the bot's, in this room
        anchor = replace(msg, event_id=event_id, thread_root=None, related=False, poll_of=None)
    ref = await record_referral(tx, anchor, settings, parsed.form, phone=state.phone, guided=True)
    if not state.phone:
        details = {k: state.answers[k] for k in REFERRER_KEYS if k in state.answers}
        if details != state.saved:
            await tx.save_referrer(msg.sender, details)
            await turn.send(
                Doc().para(
                    f"{ref} is sent (my acknowledgement is in its thread). Your details (name, "
                    "role, agency, phone) are kept, encrypted, to offer next time: !me shows "
                    "them, !me forget deletes them."
                )
            )
    log.info("guided referral sent: ref=%s event=%s", ref, event_id)
    return True


# ------------------------------------------------------------------------------ asking


async def _advance(
    turn: _Turn,
    state: State,
    settings: Settings,
    *,
    step: str | None = None,
    prefix: list[str] | None = None,
    again: bool = False,
    reply: bool = False,
) -> None:
    """Ask the question for `step` (default: the next one), or show the review."""
    step = step or _next_step(state)
    state.step = step
    if step == REVIEW:
        await _close_poll(turn, state)
        await _show_review(turn, state, settings, complete=True, prefix=" ".join(prefix or []))
        return
    if step == MENU:
        await _ask_menu(turn, state, prefix=" ".join(prefix or []) or "What would you like to do?")
        return
    question = BY_KEY[step]
    choices = _choices(question, settings)
    applicable = [q for q in QUESTIONS if q.applies(state.context())]
    number = next((i + 1 for i, q in enumerate(applicable) if q.key == step), len(applicable))
    ask = question.ask_caller if state.phone and question.ask_caller else question.ask
    if question.key == "use_saved" and state.saved is not None:
        ask = "Use your details from last time? " + "; ".join(
            v for _, v in _referrer_rows(state.saved)
        )
    doc = Doc()
    if not choices:
        for line in prefix or []:
            doc.para(line, strong=True)
    doc.para(f"Question {number} of {len(applicable)}: {ask}", strong=True)
    if choices:
        numbered = [f"{i}. {c.text}" for i, c in enumerate(choices, 1)]
        if question.multi:
            numbered.append(f"{len(choices) + 1}. That's all (after choosing)")
        doc.bullets(*numbered)
    if question.key == "referrer.agency" and not choices:
        doc.para("Write the name of the organisation, e.g. Example Academy.")
    else:
        doc.para(question.expect)
    shown = _shown(question, state.answers)
    if again and shown:
        doc.para(f"Your answer was: {shown}. Send a new one to change it.")
    doc.para(HINT_OPTIONAL if question.optional else HINT)
    await _close_poll(turn, state)
    if choices:
        answers = tuple((c.id, c.text) for c in choices)
        if question.multi:
            answers += ((DONE_ID, "That's all"),)
        poll = Poll(
            question=ask, answers=answers, max_selections=len(answers) if question.multi else 1
        )
        if prefix:
            # A client that shows the poll does not show its text: say this first.
            lead = Doc()
            for line in prefix:
                lead.para(line, strong=True)
            await turn.send(lead, reply=reply)
        txn = await turn.send(doc, poll=poll)
        state.poll = {"txn": txn, "step": step}
    else:
        await turn.send(doc, reply=reply)


async def _ask_menu(turn: _Turn, state: State, prefix: str) -> None:
    state.step = MENU
    doc = Doc().para(prefix, strong=True)
    doc.bullets(*(f"{i}. {c.text}" for i, c in enumerate(MENU_CHOICES, 1)))
    doc.para("Tap one, or send its number. (Commands such as !help work as always.)")
    await _close_poll(turn, state)
    txn = await turn.send(
        doc, poll=Poll(question=prefix, answers=tuple((c.id, c.text) for c in MENU_CHOICES))
    )
    state.poll = {"txn": txn, "step": MENU}


async def _show_review(
    turn: _Turn, state: State, settings: Settings, *, complete: bool, prefix: str = ""
) -> None:
    doc = Doc()
    if prefix:
        doc.para(prefix, strong=True)
    doc.heading("Your referral so far" if not complete else "Please check your referral")
    rows: list[tuple[str, str]] = []
    for i, question in enumerate(_reviewable(state), 1):
        shown = _shown(question, state.answers)
        if not shown:
            shown = (
                "(skipped)"
                if question.key in state.done
                else "(not answered yet)"
                if not question.optional
                else "(not answered)"
            )
        rows.append((f"{i}. {question.title}", shown))
    doc.fields(*rows)
    if not complete:
        doc.para("Carry on with the question below.")
        await turn.send(doc)
        await _advance(turn, state, settings, step=state.step)
        return
    label = _type_label(state)
    state.step = REVIEW
    ask = f"Send this as a {label}?"
    doc.para(ask, strong=True)
    doc.bullets(*(f"{i}. {c.text}" for i, c in enumerate(REVIEW_CHOICES, 1)))
    doc.para(
        "Send: it goes to the advice team now. Change: pick an answer by number or name "
        "(e.g. change 5). Cancel: delete it all."
    )
    await _close_poll(turn, state)
    # The summary and the question in one message; the poll repeats the question, for
    # clients that show polls (they do not show the poll's text fallback).
    await turn.send(doc)
    txn = await turn.send(
        Doc().para(ask).bullets(*(f"{i}. {c.text}" for i, c in enumerate(REVIEW_CHOICES, 1))),
        poll=Poll(question=ask, answers=tuple((c.id, c.text) for c in REVIEW_CHOICES)),
    )
    state.poll = {"txn": txn, "step": REVIEW}


async def _ask_change(turn: _Turn, state: State) -> None:
    state.step = CHANGE
    doc = Doc().para("Which answer do you want to change? Send its number or name:", strong=True)
    doc.bullets(*(f"{i}. {q.title}" for i, q in enumerate(_reviewable(state), 1)))
    await turn.send(doc)


async def _close_poll(turn: _Turn, state: State) -> None:
    """Close the open poll: it is ended after this turn's messages (`_Turn.flush`)."""
    if state.poll is not None:
        turn.ending.append(state.poll["txn"])
        state.poll = None


# ------------------------------------------------------------------------------ helpers


def _today(msg: Incoming) -> date:
    return datetime.fromtimestamp(msg.origin_ts / 1000, UTC).astimezone(LONDON).date()


def _choices(question: Question, settings: Settings) -> tuple[Choice, ...]:
    if question.key == "referrer.agency":
        return tuple(
            Choice(key, agency.name or key, key, (agency.name.casefold(),) if agency.name else ())
            for key, agency in list(settings.agencies.items())[:19]
        )
    return question.choices


def _pick(
    choices: tuple[Choice, ...], word: str, from_poll: tuple[str, ...] | None
) -> Choice | None:
    if from_poll is not None:
        return next((c for c in choices if c.id in from_poll), None)
    if word.isdigit() and 1 <= int(word) <= len(choices):
        return choices[int(word) - 1]
    for c in choices:
        if word in (c.id, c.value.casefold(), c.text.casefold(), *c.words):
            return c
    return None


def _interpret(
    question: Question, text: str, state: State, settings: Settings, today: date
) -> tuple[dict[str, str], str | None]:
    """The field values an answer gives, or a one-line reason it cannot be taken.

    Checked with the typed form's rules against the other answers so far; only problems
    with this question's own fields count (the rest are simply not answered yet)."""
    text = text.strip()
    if not text:
        return {}, "please answer the question" + (" (or skip)" if question.optional else "")
    if question.key == "use_saved":
        choice = _pick(question.choices, " ".join(text.casefold().split()), None)
        if choice is None:
            return {}, "answer yes to use these details, or change"
        return {"use": choice.id}, None
    choices = _choices(question, settings)
    values: dict[str, str]
    if question.key == "child.age":
        lowered = text.casefold()
        if lowered.startswith(("due", "edd", "unborn")):
            values = {"child.unborn_due_date": re.sub(r"^\W*(due|edd|unborn)\W*", "", lowered)}
        elif _DATE_LIKE.match(text.replace(" ", "")):
            values = {"child.date_of_birth": text.replace(" ", "")}
        else:
            values = {"child.approximate_age": text}
    elif question.key == "identity":
        found, problem = read_labelled(text, IDENTITY_KEYS)
        if problem is not None:
            return {}, problem + "; or send skip"
        values = found
    elif choices:
        word = " ".join(text.casefold().split()).strip(".!")
        if _NUMBERS.match(word):
            numbers = [int(n) for n in re.findall(r"\d+", word)]
            if question.multi and numbers and numbers[-1] == len(choices) + 1:
                numbers = numbers[:-1]  # "that's all" typed as its number
            if not numbers or any(not 1 <= n <= len(choices) for n in numbers):
                return {}, f"choose a number from 1 to {len(choices)}"
            if len(numbers) > 1 and not question.multi:
                return {}, "choose only one"
            values = {question.fields[0]: ", ".join(choices[n - 1].value for n in numbers)}
        else:
            picked = _pick(choices, word, None)
            values = {question.fields[0]: picked.value if picked else text}
    else:
        values = {question.fields[0]: text}
    trial = {k: v for k, v in _applicable_answers(state).items() if k not in question.fields}
    trial.update(values)
    parsed = parse_values(trial, today)
    labels = {FIELD_BY_KEY[k].label for k in question.fields}
    if question.key == "child.age":
        labels |= {"Date of birth", "Approximate age", "Unborn due date"}
    mine = [p for p in parsed.problems if p.field in labels]
    if mine:
        return {}, mine[0].problem[:1].upper() + mine[0].problem[1:]
    return values, None


def _applicable_answers(state: State) -> dict[str, str]:
    ctx = state.context()
    keys = {k for q in QUESTIONS if q.applies(ctx) for k in q.fields}
    return {k: v for k, v in state.answers.items() if k in keys}


def _mark_done(state: State, key: str, event_id: str | None) -> None:
    if key not in state.done:
        state.done.append(key)
    if event_id is not None:
        state.by_event[event_id] = key


def _next_step(state: State) -> str:
    ctx = state.context()
    for question in QUESTIONS:
        if question.applies(ctx) and question.key not in state.done:
            return question.key
    return REVIEW


def _previous_step(state: State) -> str:
    ctx = state.context()
    done = [k for k in state.done if k in BY_KEY and BY_KEY[k].applies(ctx)]
    if state.step in done:
        index = done.index(state.step)
        return done[index - 1] if index > 0 else done[0]
    return done[-1] if done else (state.step if state.step in BY_KEY else QUESTIONS[0].key)


def _reviewable(state: State) -> list[Question]:
    ctx = state.context()
    return [q for q in QUESTIONS if q.fields and q.applies(ctx)]


def _find_question(state: State, word: str) -> Question | None:
    word = word.strip().casefold()
    listed = _reviewable(state)
    if word.isdigit() and 1 <= int(word) <= len(listed):
        return listed[int(word) - 1]
    for q in listed:
        if word in (q.title.casefold(), q.key.casefold()):
            return q
    for q in listed:
        if word and word in q.title.casefold():
            return q
    return None


def _question_of_label(label: str) -> Question | None:
    for q in QUESTIONS:
        if any(FIELD_BY_KEY[k].label == label for k in q.fields):
            return q
    return None


def _shown(question: Question, answers: dict[str, str]) -> str:
    if question.key == "child.age":
        for key in AGE_KEYS:
            if key in answers:
                return f"{FIELD_BY_KEY[key].label}: {answers[key]}"
        return ""
    parts = []
    for key in question.fields:
        if key in answers:
            value = answers[key]
            label = FIELD_BY_KEY[key].label
            parts.append(f"{label}: {value}" if len(question.fields) > 1 else value)
    return "; ".join(parts)


def _type_label(state: State) -> str:
    value = state.answers.get("referral_type", "").casefold()
    return "CONTACT" if value == "contact" else "CHILD PROTECTION REFERRAL"


def _referrer_rows(details: dict[str, str]) -> list[tuple[str, str]]:
    return [(FIELD_BY_KEY[k].label, details[k]) for k in REFERRER_KEYS if k in details]


def _help() -> Doc:
    return (
        Doc()
        .heading("How to refer")
        .para(
            "Send !refer and I ask one question at a time; tap an answer or type it. At the "
            "end you check everything and choose to send. Nothing reaches the advice team "
            "until you send."
        )
        .para(
            "At any time: back (the previous question), skip (optional questions), review "
            "(everything so far), cancel (delete it). Editing an answer you sent changes it."
        )
        .para("!status REF-… shows where a referral is; !help lists every command.")
        .para("If a child is in immediate danger, phone 999 now.", strong=True)
    )


async def _my_open_referrals(tx: Tx, turn: _Turn, msg: Incoming) -> None:
    mine = [r for r in await tx.open_referrals() if r.sender == msg.sender][-10:]
    if not mine:
        await turn.send(Doc().para("You have no open referrals."), reply=True)
        return
    doc = Doc().heading("Your open referrals")
    for r in mine:
        doc.fields(*views.status_rows(r, tx.now))
    await turn.send(doc, reply=True)


async def _save(
    tx: Tx, msg: Incoming, state: State, settings: Settings, *, started_by: str, turn: _Turn
) -> None:
    """Store the draft after every answer; its expiry starts again from now."""
    await turn.flush()
    state.sent.extend(t for t in turn.txn_ids if t not in state.sent)
    hours = settings.draft_hours
    expires = tx.now + timedelta(hours=hours)
    remind = expires - (timedelta(hours=2) if hours >= 4 else timedelta(hours=hours / 2))
    await tx.put_draft(
        room_id=msg.room_id,
        user_id=msg.sender,
        started_by=started_by,
        state=state.to_json(),
        expires_at=expires,
        remind_at=remind,
    )


# ------------------------------------------------------------------------------ the clock


async def check_drafts(tx: Tx, settings: Settings) -> int:
    """Remind once before a draft expires; delete it when it does. Messages queued."""
    queued = 0
    for draft in await tx.drafts_to_remind():
        state = State.from_json(draft.state)
        key = f"{draft.started_by}\x00{draft.updated_at.isoformat()}"
        turn = _Turn(tx, key, draft.room_id, None)
        what = (
            "Your referral is ready: send it, change an answer, or cancel."
            if state.step == REVIEW
            else "Answer the latest question to carry on, or send cancel."
        )
        await turn.send(
            Doc().para(
                f"Reminder: your unfinished referral will be deleted at "
                f"{format_time(draft.expires_at)} unless you carry on. {what}",
                strong=True,
            )
        )
        await tx.draft_reminded(draft.id)
        queued += 1
    for draft in await tx.drafts_expired():
        state = State.from_json(draft.state)
        turn = _Turn(tx, f"{draft.started_by}\x00expired", draft.room_id, None)
        await _close_poll(turn, state)
        await turn.flush()
        await tx.forget_sent(state.sent)
        await tx.delete_draft(draft.id)
        if state.mode == MENU:
            continue  # only the offer of what to do: nothing to say
        await turn.send(
            Doc().para(
                f"Your unfinished referral was deleted: it had no answer for "
                f"{_hours(settings.draft_hours)}. Nothing was sent to the advice team. Send "
                "!refer to start again."
            )
        )
        queued += 1
        log.info("guided draft expired: started_by=%s", draft.started_by)
    return queued


def _hours(hours: float) -> str:
    if hours >= 1 and float(hours).is_integer():
        return f"{int(hours)} hour{'s' if hours != 1 else ''}"
    return f"{round(hours * 60)} minutes"
