"""Asking in a guided referral (`handlers/guided.py`): the next question (as a poll when it
has choices, with a numbered list for clients that do not show polls), the menu, the
review of every answer before sending, and the list of answers to change.
"""

from __future__ import annotations

from handlers.form_fields import FIELD_BY_KEY
from handlers.guided_answers import choices_for
from handlers.guided_questions import (
    AGE_KEYS,
    BY_KEY,
    DONE_ID,
    MENU_CHOICES,
    QUESTIONS,
    REFERRER_KEYS,
    REVIEW_CHOICES,
    Question,
)
from handlers.guided_state import (
    CHANGE,
    MENU,
    REVIEW,
    State,
    Turn,
    close_poll,
    next_step,
    reviewable,
)
from handlers.ports import Poll
from handlers.render import Doc
from handlers.settings import Settings

HINT = "You can send back, review or cancel at any time."
HINT_OPTIONAL = "This one is optional: send skip to leave it out. " + HINT


async def advance(
    turn: Turn,
    state: State,
    settings: Settings,
    *,
    step: str | None = None,
    prefix: list[str] | None = None,
    again: bool = False,
    reply: bool = False,
) -> None:
    """Ask the question for `step` (default: the next one), or show the review."""
    step = step or next_step(state)
    state.step = step
    if step == REVIEW:
        await close_poll(turn, state)
        await show_review(turn, state, settings, complete=True, prefix=" ".join(prefix or []))
        return
    if step == MENU:
        await ask_menu(turn, state, prefix=" ".join(prefix or []) or "What would you like to do?")
        return
    question = BY_KEY[step]
    choices = choices_for(question, settings)
    applicable = [q for q in QUESTIONS if q.applies(state.context())]
    number = next((i + 1 for i, q in enumerate(applicable) if q.key == step), len(applicable))
    ask = question.ask_caller if state.phone and question.ask_caller else question.ask
    if question.key == "use_saved" and state.saved is not None:
        ask = "Use your details from last time? " + "; ".join(
            v for _, v in referrer_rows(state.saved)
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
    shown = shown_answer(question, state.answers)
    if again and shown:
        doc.para(f"Your answer was: {shown}. Send a new one to change it.")
    doc.para(HINT_OPTIONAL if question.optional else HINT)
    await close_poll(turn, state)
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


async def ask_menu(turn: Turn, state: State, prefix: str) -> None:
    state.step = MENU
    doc = Doc().para(prefix, strong=True)
    doc.bullets(*(f"{i}. {c.text}" for i, c in enumerate(MENU_CHOICES, 1)))
    doc.para("Tap one, or send its number. (Commands such as !help work as always.)")
    await close_poll(turn, state)
    txn = await turn.send(
        doc, poll=Poll(question=prefix, answers=tuple((c.id, c.text) for c in MENU_CHOICES))
    )
    state.poll = {"txn": txn, "step": MENU}


async def show_review(
    turn: Turn, state: State, settings: Settings, *, complete: bool, prefix: str = ""
) -> None:
    doc = Doc()
    if prefix:
        doc.para(prefix, strong=True)
    doc.heading("Your referral so far" if not complete else "Please check your referral")
    rows: list[tuple[str, str]] = []
    for i, question in enumerate(reviewable(state), 1):
        shown = shown_answer(question, state.answers)
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
        await advance(turn, state, settings, step=state.step)
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
    await close_poll(turn, state)
    # The summary and the question in one message; the poll repeats the question, for
    # clients that show polls (they do not show the poll's text fallback).
    await turn.send(doc)
    txn = await turn.send(
        Doc().para(ask).bullets(*(f"{i}. {c.text}" for i, c in enumerate(REVIEW_CHOICES, 1))),
        poll=Poll(question=ask, answers=tuple((c.id, c.text) for c in REVIEW_CHOICES)),
    )
    state.poll = {"txn": txn, "step": REVIEW}


async def ask_change(turn: Turn, state: State) -> None:
    state.step = CHANGE
    doc = Doc().para("Which answer do you want to change? Send its number or name:", strong=True)
    doc.bullets(*(f"{i}. {q.title}" for i, q in enumerate(reviewable(state), 1)))
    await turn.send(doc)


def shown_answer(question: Question, answers: dict[str, str]) -> str:
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


def referrer_rows(details: dict[str, str]) -> list[tuple[str, str]]:
    return [(FIELD_BY_KEY[k].label, details[k]) for k in REFERRER_KEYS if k in details]
