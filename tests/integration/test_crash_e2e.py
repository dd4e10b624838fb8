"""Crash safety on a real Synapse: the bot runs as `referral-bot run` in its own process,
is killed with SIGKILL in the middle of a burst of referrals, and started again.

Every referral must be acknowledged exactly once on the practitioner's side, and recorded
exactly once in the database, with reference numbers that have no gaps and no repeats.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest

from bot.chat_user import ChatUser
from bot.world import World
from tests.forms import referral
from tests.integration.botproc import BotProcess, poll_until
from tests.integration.live import db_rows, team_summaries

pytestmark = pytest.mark.integration

SENDERS = 4
PER_SENDER = 50
KILL_AFTER_ACKS = (60, 130)  # killed twice: mid-burst, and again while catching up


def acks(people: list[tuple[ChatUser, str]], bot: str, sent: set[str]) -> Counter[str]:
    return Counter(
        r.in_reply_to
        for user, _ in people
        for r in user.received
        if r.sender == bot and r.in_reply_to in sent
    )


async def test_kill_9_in_a_burst_of_200_loses_and_repeats_nothing(
    engine: str, world: World
) -> None:
    """On SQLite and on PostgreSQL (`engine`): the guarantees are the database's."""
    total = SENDERS * PER_SENDER
    bot = BotProcess(world.config_path, world.base / "bot.log")
    async with bot:
        people: list[tuple[ChatUser, str]] = []
        for i in range(SENDERS):
            user = await world.add_user(f"crash{i}-{world.bot_user[1:5]}")
            room = await user.create_room(invite=[world.bot_user], encrypted=True)
            await user.wait_joined(room, world.bot_user)
            people.append((user, room))
        await world.worker.wait_joined(world.team_room, world.bot_user)

        sent: list[str] = []

        async def burst(user: ChatUser, room: str, who: int) -> None:
            for n in range(PER_SENDER):
                sent.append(await user.send(room, referral(Child_name=f"Crash Child {who} {n}")))

        started = time.monotonic()
        senders = asyncio.gather(*(burst(u, r, i) for i, (u, r) in enumerate(people)))
        acked_at_kill = []

        def acknowledged(n: int) -> Callable[[], bool]:
            return lambda: sum(acks(people, world.bot_user, set(sent)).values()) >= n

        for kill_after in KILL_AFTER_ACKS:
            await poll_until(
                acknowledged(kill_after),
                60,
                f"{kill_after} acknowledgements",
            )
            await bot.kill9()
            acked_at_kill.append(sum(acks(people, world.bot_user, set(sent)).values()))
            await bot.start()
        await senders
        assert len(sent) == total
        ids = set(sent)
        deadline = time.monotonic() + 120
        while len(acks(people, world.bot_user, ids)) < total:
            assert time.monotonic() < deadline, (
                f"{len(acks(people, world.bot_user, ids))} of {total} acknowledged"
            )
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
        # The team room is one room, so its summaries go one after another: they trail.
        while len(team_summaries(world)) < total:
            assert time.monotonic() < deadline, (
                f"{len(team_summaries(world))} of {total} summaries; "
                f"undecryptable: {world.worker.undecryptable}"
            )
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # let any duplicate arrive before counting

    print(
        f"\n{total} referrals, kill -9 after {acked_at_kill} acks: "
        f"all acknowledged in {elapsed:.1f} s"
    )
    counted = acks(people, world.bot_user, ids)
    assert all(counted[e] == 1 for e in ids), [n for n in counted.values() if n != 1]
    decrypted = [
        r for user, _ in people for r in user.received if r.in_reply_to in ids and r.decrypted
    ]
    assert len(decrypted) == total, "every acknowledgement arrives end-to-end encrypted"

    rows = db_rows(world, "SELECT event_id, year, year_seq, ref FROM referrals")
    assert len(rows) == total and {r[0] for r in rows} == ids, "one referral per event ID"
    for year in {r[1] for r in rows}:
        seqs = sorted(int(str(r[2])) for r in rows if r[1] == year)
        assert seqs == list(range(1, len(seqs) + 1)), "REF numbers without gaps or repeats"
    assert len({r[3] for r in rows}) == total
    per_referral = db_rows(
        world,
        "SELECT referral_id, COUNT(CASE WHEN kind = 'received' THEN 1 END),"
        " COUNT(CASE WHEN kind = 'ack_sent' THEN 1 END),"
        " COUNT(CASE WHEN kind = 'team_summary_sent' THEN 1 END)"
        " FROM record_entries GROUP BY referral_id",
    )
    assert len(per_referral) == total
    assert all(r[1:] == (1, 1, 1) for r in per_referral), "each step recorded once"
    assert db_rows(world, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    assert db_rows(world, "SELECT COUNT(*) FROM inbox WHERE state != 'done'") == [(0,)]
    assert set(team_summaries(world).values()) == {1}, "the team is told once of each referral"
