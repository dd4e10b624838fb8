"""The state of a guided referral (`handlers/guided.py`) and its draft's life.

`State` is what a draft holds, stored encrypted as one JSON value (`storage/drafts.py`);
the step helpers here say which question comes next or before. `Turn` queues the replies
to one event with transaction IDs derived from it, so a retried event sends nothing twice.
`save_draft` stores the state after every answer; `check_drafts` (the clock) reminds once
before a draft expires and deletes it when it does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from handlers.guided_questions import BY_KEY, QUESTIONS, Context, Question
from handlers.notify import format_time
from handlers.ports import Incoming, OutgoingMessage, Poll, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from storage.tx import Tx

log = logging.getLogger(__name__)

MENU = "menu"
REVIEW = "review"
CHANGE = "change"


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


class Turn:
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

    async def send(
        self, doc: Doc, *, poll: Poll | None = None, reply: bool = False, purpose: str = "guided"
    ) -> str:
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
            purpose=purpose,
        )
        self.txn_ids.append(txn_id)
        return txn_id

    async def flush(self) -> None:
        """End the polls closed in this turn, so they cannot be tapped again."""
        ending, self.ending = self.ending, []
        for txn in ending:
            sent_as = await self.tx.sent_event_of(txn)
            if sent_as is not None:  # not sent yet: nothing to end
                closed = Doc().para("This poll is closed.")
                await self.send(closed, poll=Poll(end_of=sent_as), purpose="poll_end")


async def close_poll(turn: Turn, state: State) -> None:
    """Close the open poll: it is ended after this turn's messages (`Turn.flush`)."""
    if state.poll is not None:
        turn.ending.append(state.poll["txn"])
        state.poll = None


# ------------------------------------------------------------------------------ steps


def applicable_answers(state: State) -> dict[str, str]:
    ctx = state.context()
    keys = {k for q in QUESTIONS if q.applies(ctx) for k in q.fields}
    return {k: v for k, v in state.answers.items() if k in keys}


def mark_done(state: State, key: str, event_id: str | None) -> None:
    if key not in state.done:
        state.done.append(key)
    if event_id is not None:
        state.by_event[event_id] = key


def next_step(state: State) -> str:
    ctx = state.context()
    for question in QUESTIONS:
        if question.applies(ctx) and question.key not in state.done:
            return question.key
    return REVIEW


def previous_step(state: State) -> str:
    ctx = state.context()
    done = [k for k in state.done if k in BY_KEY and BY_KEY[k].applies(ctx)]
    if state.step in done:
        index = done.index(state.step)
        return done[index - 1] if index > 0 else done[0]
    return done[-1] if done else (state.step if state.step in BY_KEY else QUESTIONS[0].key)


def reviewable(state: State) -> list[Question]:
    ctx = state.context()
    return [q for q in QUESTIONS if q.fields and q.applies(ctx)]


# ------------------------------------------------------------------------------ the draft


async def save_draft(
    tx: Tx, msg: Incoming, state: State, settings: Settings, *, started_by: str, turn: Turn
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
        turn = Turn(tx, key, draft.room_id, None)
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
        turn = Turn(tx, f"{draft.started_by}\x00expired", draft.room_id, None)
        await close_poll(turn, state)
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
