"""A poll's end gives way: the room's newer messages go before it, and it goes once the
room is quiet (bot/outbox_order.py). The guided referral's next question must not queue
behind the end of the poll just answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

from handlers.ports import OutgoingMessage
from schemas.messages import Poll
from tests.unit.rig import DM, Rig, rig_at


async def queue(rig: Rig, *items: tuple[str, str]) -> None:
    store = rig.store
    async with store.transaction() as tx:
        for txn, purpose in items:
            poll = Poll(end_of="$question1") if purpose == "poll_end" else None
            await tx.enqueue(OutgoingMessage(DM, txn, "", poll=poll), txn_id=txn, purpose=purpose)


def bodies(rig: Rig) -> list[str]:
    return [m.body for m in rig.messenger.to(DM)]


async def test_a_poll_end_goes_after_the_newer_question_queued_behind_it(tmp_path: Path) -> None:
    async with rig_at(tmp_path / "referrals.db") as rig:
        rig.pipeline.poll_ends.quiet_s = 0.0
        await queue(rig, ("end-1", "poll_end"), ("question-2", "guided"))
        await rig.pipeline.wait_idle()
        assert bodies(rig) == ["question-2", "end-1"]


async def test_a_poll_end_waits_for_a_quiet_room_and_lets_a_quick_answer_through(
    tmp_path: Path,
) -> None:
    async with rig_at(tmp_path / "referrals.db") as rig:
        rig.pipeline.poll_ends.quiet_s = 0.6
        await queue(rig, ("question-2", "guided"), ("end-1", "poll_end"))
        await asyncio.sleep(0.2)  # the practitioner answers question 2 at once
        assert bodies(rig) == ["question-2"]
        await queue(rig, ("question-3", "guided"))
        await rig.pipeline.wait_idle()
        assert bodies(rig) == ["question-2", "question-3", "end-1"]


async def test_a_poll_end_is_not_held_longer_than_its_limit(tmp_path: Path) -> None:
    async with rig_at(tmp_path / "referrals.db") as rig:
        rig.pipeline.poll_ends.quiet_s = 60.0
        rig.pipeline.poll_ends.max_wait_s = 0.3
        await queue(rig, ("question-2", "guided"), ("end-1", "poll_end"))
        await asyncio.wait_for(rig.pipeline.wait_idle(), 5)
        assert bodies(rig) == ["question-2", "end-1"]
