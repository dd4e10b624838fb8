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

This module holds the entry points and the step machine (what an answer does next). The
draft's state and life are in `guided_state.py`, asking and the review in
`guided_asking.py`, reading an answer in `guided_answers.py`, the questions themselves in
`guided_questions.py`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, date, datetime

from handlers import flood, intake, views
from handlers.context import Call
from handlers.form_fields import referral_template
from handlers.guided_answers import choices_for, find_question, interpret, pick, question_of_label
from handlers.guided_asking import (
    advance,
    ask_change,
    ask_menu,
    referrer_rows,
    show_review,
    shown_answer,
)
from handlers.guided_questions import BY_KEY, DONE_ID, MENU_CHOICES, REFERRER_KEYS, REVIEW_CHOICES
from handlers.guided_state import (
    CHANGE,
    MENU,
    REVIEW,
    State,
    Turn,
    applicable_answers,
    close_poll,
    mark_done,
    next_step,
    previous_step,
    save_draft,
)
from handlers.intake import record_referral
from handlers.notify import LONDON
from handlers.ports import Incoming
from handlers.referral_form import parse_values
from handlers.render import Doc
from handlers.settings import Settings
from schemas.domain import Purpose
from storage.drafts import Draft
from storage.tx import Tx

log = logging.getLogger(__name__)

CONTROL_WORDS = ("back", "skip", "review", "cancel")


# ------------------------------------------------------------------------------ entry


async def start(tx: Tx, msg: Incoming, settings: Settings, *, phone: bool = False) -> None:
    """`!refer` on its own (or `!phone-referral` for a worker): a new guided referral.

    An open draft in this room is replaced: one draft per person per room."""
    turn = Turn(tx, msg.event_id, msg.room_id, msg.event_id)
    old = await tx.draft_of(msg.room_id, msg.sender)
    if old is not None:
        old_state = State.from_json(old.state)
        await close_poll(turn, old_state)
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
    await advance(turn, state, settings, prefix=[intro])
    await save_draft(tx, msg, state, settings, started_by=msg.event_id, turn=turn)
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
        turn = Turn(tx, msg.event_id, msg.room_id, msg.event_id)
        await ask_menu(turn, state, prefix="Hello. What would you like to do?")
        await save_draft(tx, msg, state, settings, started_by=msg.event_id, turn=turn)
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
        turn = Turn(tx, msg.event_id, msg.room_id, msg.event_id)
        await turn.send(
            Doc().para("That poll is closed. Please answer the latest question."), reply=True
        )
        state.sent.extend(turn.txn_ids)
        await save_draft(tx, msg, state, settings, started_by=draft.started_by, turn=turn)
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
    turn = Turn(tx, msg.event_id, msg.room_id, msg.event_id)
    today = _today(msg)
    problem = None
    values: dict[str, str] = {}
    if not question.applies(state.context()) or not question.fields:
        problem = "that question no longer applies"
    else:
        values, problem = interpret(question, msg.body, state, settings, today)
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
                f"Changed '{question.title}' to: {shown_answer(question, state.answers)}. "
                "Carry on with the latest question."
            ),
            reply=True,
        )
        if state.step == REVIEW:
            await advance(turn, state, settings, step=next_step(state))
    state.sent.extend(turn.txn_ids)
    await save_draft(tx, msg, state, settings, started_by=draft.started_by, turn=turn)
    return True


async def me(tx: Tx, msg: Incoming, settings: Settings, args: str) -> None:
    """`!me`: the referrer details kept for guided referrals; `!me forget` deletes them."""
    turn = Turn(tx, msg.event_id, msg.room_id, msg.event_id)
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
    doc.fields(*referrer_rows(saved))
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
    turn = Turn(tx, msg.event_id, msg.room_id, msg.event_id)
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
        turn = Turn(tx, msg.event_id, msg.room_id, msg.event_id)
        finished = await _step(tx, turn, msg, settings, state, text, from_poll)
        if note.blocks:
            await turn.send(note)
    else:
        await tx.release_savepoint()
        if from_poll is None:
            await flood.forgive(tx, msg)
    if finished:
        await close_poll(turn, state)
        await turn.flush()
        await tx.forget_sent(state.sent)
        await tx.delete_draft(draft.id)
        return
    await save_draft(tx, msg, state, settings, started_by=draft.started_by, turn=turn)


async def _step(
    tx: Tx,
    turn: Turn,
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
        await close_poll(turn, state)
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
        previous = previous_step(state)
        await advance(turn, state, settings, step=previous, again=True)
        return False
    if from_poll is None and word == "review" and state.step not in (REVIEW,):
        await show_review(turn, state, settings, complete=next_step(state) == REVIEW)
        return False
    if state.step == REVIEW:
        return await _review_answer(tx, turn, msg, settings, state, word, from_poll)
    if state.step == CHANGE:
        target = find_question(state, word)
        if target is None:
            await turn.send(
                Doc().para(f"'{text.strip()[:40]}' is not one of the answers listed."),
                reply=True,
            )
            await ask_change(turn, state)
        else:
            await advance(turn, state, settings, step=target.key, again=True)
        return False

    question = BY_KEY.get(state.step)
    if question is None:
        await advance(turn, state, settings)
        return False
    if from_poll is None and word == "skip":
        if not question.optional:
            await close_poll(turn, state)
            await advance(
                turn,
                state,
                settings,
                step=question.key,
                prefix=[f"'{question.title}' is needed: it cannot be skipped."],
            )
            return False
        for k in question.fields:
            state.answers.pop(k, None)
        mark_done(state, question.key, msg.event_id)
        await advance(turn, state, settings, step=next_step(state))
        return False

    if from_poll is not None:
        if question.multi and DONE_ID not in from_poll:
            state.selection = [a for a in from_poll if a != DONE_ID]
            return False  # still choosing: each tap sends the whole selection
        by_id = {c.id: c for c in choices_for(question, settings)}
        # In the order tapped, as a typed list keeps the order typed.
        chosen = [by_id[a] for a in dict.fromkeys(from_poll) if a in by_id]
        if not chosen and question.multi and state.selection:
            chosen = [by_id[a] for a in state.selection if a in by_id]
        text = ", ".join(c.value for c in chosen)
        if not chosen:
            text = ""
    elif question.multi and state.selection:
        choices = choices_for(question, settings)
        if word in ("done", "that's all", "thats all", str(len(choices) + 1)):
            # Tapped in the poll, then finished by typing.
            text = ", ".join(c.value for c in choices if c.id in state.selection)
    values, problem = interpret(question, text, state, settings, _today(msg))
    if problem is not None:
        await close_poll(turn, state)
        await advance(turn, state, settings, step=question.key, prefix=[problem], reply=True)
        return False
    if question.key == "use_saved":
        mark_done(state, question.key, msg.event_id)
        if values.get("use") == "yes" and state.saved is not None:
            state.answers.update(state.saved)
            for key in REFERRER_KEYS:
                mark_done(state, key, None)
        await advance(turn, state, settings, step=next_step(state))
        return False
    for k in question.fields:
        state.answers.pop(k, None)
    state.answers.update(values)
    state.selection = []
    mark_done(state, question.key, msg.event_id)
    prefix: list[str] = []
    if question.key == "immediate_danger" and values.get("immediate_danger") == "yes":
        prefix.append(
            "PHONE 999 NOW if you have not already: a child in immediate danger needs the "
            "police now. Then carry on here; the advice team is alerted the moment you send."
        )
    await advance(turn, state, settings, step=next_step(state), prefix=prefix)
    return False


async def _menu_answer(
    tx: Tx,
    turn: Turn,
    msg: Incoming,
    settings: Settings,
    state: State,
    word: str,
    from_poll: tuple[str, ...] | None,
) -> bool:
    choice = pick(MENU_CHOICES, word, from_poll)
    if choice is None:
        await ask_menu(turn, state, prefix="Please choose one of these:")
        return False
    await close_poll(turn, state)
    if choice.id == "refer":
        state.mode = "referral"
        state.saved = await tx.saved_referrer(msg.sender)
        await advance(turn, state, settings, prefix=["A referral, one question at a time."])
        return False
    if choice.id == "status":
        await _my_open_referrals(tx, turn, msg)
        return True
    await turn.send(_help(), reply=True)
    return True


async def _review_answer(
    tx: Tx,
    turn: Turn,
    msg: Incoming,
    settings: Settings,
    state: State,
    word: str,
    from_poll: tuple[str, ...] | None,
) -> bool:
    if from_poll is None and word.startswith("change "):
        target = find_question(state, word[len("change ") :])
        if target is not None:
            await close_poll(turn, state)
            await advance(turn, state, settings, step=target.key, again=True)
            return False
    choice = pick(REVIEW_CHOICES, word, from_poll)
    if choice is None:
        await close_poll(turn, state)
        await show_review(
            turn, state, settings, complete=True, prefix="Please answer send, change or cancel."
        )
        return False
    if choice.id == "change":
        await close_poll(turn, state)
        state.step = CHANGE
        await ask_change(turn, state)
        return False
    # send
    parsed = parse_values(applicable_answers(state), _today(msg))
    if parsed.form is None:
        problem = parsed.problems[0]
        target = question_of_label(problem.field)
        await close_poll(turn, state)
        await advance(
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
    await close_poll(turn, state)
    anchor = msg
    if event_id != msg.event_id:  # the poll: a plain event of the bot's, in this room
        anchor = replace(msg, event_id=event_id, thread_root=None, related=False, poll_of=None)
    ref = await record_referral(tx, anchor, settings, parsed.form, phone=state.phone, guided=True)
    if not state.phone:
        details = {k: state.answers[k] for k in REFERRER_KEYS if k in state.answers}
        if details == state.saved:
            await tx.touch_referrer(msg.sender)  # used again: kept for longer
        else:
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


# ------------------------------------------------------------------------------ helpers


def _today(msg: Incoming) -> date:
    return datetime.fromtimestamp(msg.origin_ts / 1000, UTC).astimezone(LONDON).date()


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


async def _my_open_referrals(tx: Tx, turn: Turn, msg: Incoming) -> None:
    mine = [r for r in await tx.open_referrals() if r.sender == msg.sender][-10:]
    if not mine:
        await turn.send(Doc().para("You have no open referrals."), reply=True)
        return
    doc = Doc().heading("Your open referrals")
    for r in mine:
        doc.fields(*views.status_rows(r, tx.now))
    await turn.send(doc, reply=True)
