"""One practitioner's client floods its DM with chatter and unknown commands while another
practitioner sends referrals: the flooder gets a handful of answers, never one each, its
own referral in the middle of the flood is still acknowledged, and every referral of the
other practitioner is acknowledged."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.world import World
from handlers import flood
from tests.forms import referral
from tests.integration.live import db_rows, open_dm, running

pytestmark = pytest.mark.integration

FLOOD = 60
REFERRALS = 5


async def test_a_flood_gets_bounded_answers_and_others_are_acknowledged(world: World) -> None:
    async with running(world):
        flooder, flood_dm = await open_dm(world, f"flooder-{world.bot_user[1:5]}")
        nurse, dm = await open_dm(world, f"calm-nurse-{world.bot_user[1:5]}")
        flooded: list[str] = []

        async def chatter() -> None:
            for n in range(FLOOD):
                body = f"!hmm {n}" if n % 2 else f"are you there? {n}"
                if n == FLOOD // 2:  # a real referral in the middle of the flood
                    body = referral(Child_name="Flood Middle Child")
                flooded.append(await flooder.send(flood_dm, body))

        async def referrals() -> list[tuple[str, float]]:
            sent = []
            for n in range(REFERRALS):
                await asyncio.sleep(0.3)
                t0 = time.monotonic()
                sent.append((await nurse.send(dm, referral(Child_name=f"Calm Child {n}")), t0))
            return sent

        _, sent = await asyncio.gather(chatter(), referrals())
        latencies = []
        for event_id, t0 in sent:
            ack = await nurse.wait_reply(event_id, timeout=30)
            assert "CHILD PROTECTION REFERRAL" in ack.body
            latencies.append(ack.at - t0)
        middle = flooded[FLOOD // 2]
        assert "CHILD PROTECTION REFERRAL" in (await flooder.wait_reply(middle, timeout=30)).body
        await asyncio.sleep(3.0)  # any answer still to come to the flood arrives now

    answers = [
        r for r in flooder.received if r.sender == world.bot_user and r.in_reply_to in flooded
    ]
    chatter_answers = [r for r in answers if r.in_reply_to != middle]
    print(
        f"\nflood of {FLOOD}: {len(chatter_answers)} answers to chatter; the other "
        f"practitioner's {REFERRALS} acknowledgements in "
        f"{', '.join(f'{x * 1000:.0f}' for x in latencies)} ms"
    )
    assert flood.BURST <= len(chatter_answers) <= flood.BURST + 1
    assert "I will not answer more messages like this" in chatter_answers[flood.BURST - 1].body
    assert len({r.in_reply_to for r in answers}) == len(answers), "one answer per message at most"
    stored = {e for (e,) in db_rows(world, "SELECT event_id FROM referrals")}
    assert stored == {middle, *(e for e, _ in sent)}
    # Every flood message was taken and handled, answered or not.
    assert db_rows(world, "SELECT COUNT(*) FROM inbox WHERE state = 'pending'") == [(0,)]
