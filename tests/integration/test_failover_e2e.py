"""Active/standby on PostgreSQL with a real Synapse and real E2EE (issue 13, part 3): two
`referral-bot run` processes on one database, each with its own data_dir as on two
machines. The leader killed with SIGKILL in the middle of a burst of 200 referrals from 4
practitioners: the standby takes over, every referral is acknowledged exactly once, by
the same device, with REF numbers without gaps. The leader's database session ended by
the server (`pg_terminate_backend`): it stops before the standby sends anything."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from datetime import datetime

import pytest

from bot.chat_user import ChatUser
from bot.devprocess import BotProcess, poll_until
from bot.devserver import free_port
from bot.world import World
from tests.forms import referral
from tests.integration.live import db_rows, open_dm

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("engine"),
    pytest.mark.parametrize("engine", ["postgresql"], indirect=True),
]

SENDERS = 4
PER_SENDER = 50
KILL_AFTER_ACKS = 60


def acks(people: list[tuple[ChatUser, str]], bot: str, sent: set[str]) -> Counter[str]:
    return Counter(
        r.in_reply_to
        for user, _ in people
        for r in user.received
        if r.sender == bot and r.in_reply_to in sent
    )


async def bot_devices(user: ChatUser, bot: str) -> set[str]:
    """The bot's devices as a practitioner's client sees them (a fresh keys query)."""
    user.client.users_for_key_query.add(bot)
    await user.client.keys_query()
    return {d.id for d in user.client.device_store.active_user_devices(bot)}


async def test_the_standby_takes_over_from_a_killed_leader_mid_burst(world: World) -> None:
    port_a, port_b = free_port(), free_port()
    world.configure(http_listen=f"127.0.0.1:{port_a}")
    config_b = world.second_machine("machine-b", port_b)
    leader = BotProcess(world.config_path, world.base / "bot-a.log", http_port=port_a)
    standby = BotProcess(config_b, world.base / "bot-b.log", http_port=port_b)
    async with leader, contextlib.AsyncExitStack() as stack:
        await leader.wait_healthy()
        await standby.start()  # after the leader is up: the first to start leads
        stack.push_async_callback(standby.stop)
        await standby.wait_status("standby")
        assert 'referralbot_role{role="standby"} 1.0' in await standby.metrics()

        people: list[tuple[ChatUser, str]] = []
        for i in range(SENDERS):
            user = await world.add_user(f"ha{i}-{world.bot_user[1:5]}")
            room = await user.create_room(invite=[world.bot_user], encrypted=True)
            await user.wait_joined(room, world.bot_user)
            people.append((user, room))
        devices_before = await bot_devices(people[0][0], world.bot_user)
        assert len(devices_before) == 1

        sent: list[str] = []

        async def burst(user: ChatUser, room: str, who: int) -> None:
            for n in range(PER_SENDER):
                sent.append(await user.send(room, referral(Child_name=f"Failover Child {who} {n}")))

        senders = asyncio.gather(*(burst(u, r, i) for i, (u, r) in enumerate(people)))
        await poll_until(
            lambda: sum(acks(people, world.bot_user, set(sent)).values()) >= KILL_AFTER_ACKS,
            60,
            f"{KILL_AFTER_ACKS} acknowledgements",
        )
        await leader.kill9()
        killed_at = time.monotonic()
        acked_at_kill = sum(acks(people, world.bot_user, set(sent)).values())
        takeover_s = await standby.wait_status("ok")
        first_ack_after: float | None = None
        before = acked_at_kill
        while first_ack_after is None:
            if sum(acks(people, world.bot_user, set(sent)).values()) > before:
                first_ack_after = time.monotonic() - killed_at
            await asyncio.sleep(0.02)
        await senders
        total = SENDERS * PER_SENDER
        ids = set(sent)
        deadline = time.monotonic() + 120
        while len(acks(people, world.bot_user, ids)) < total:
            assert time.monotonic() < deadline, f"{len(acks(people, world.bot_user, ids))} acked"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # let any duplicate arrive before counting
        devices_after = await bot_devices(people[0][0], world.bot_user)

    print(
        f"\nfailover: leader killed after {acked_at_kill} acks; standby ready in "
        f"{takeover_s:.2f} s, first acknowledgement from it {first_ack_after:.2f} s after the kill"
    )
    counted = acks(people, world.bot_user, ids)
    assert all(counted[e] == 1 for e in ids), [n for n in counted.values() if n != 1]
    assert devices_after == devices_before, "the standby is the same device, not a new login"
    assert takeover_s < 10, "within storage.failover_seconds (default 10)"
    rows = db_rows(world, "SELECT event_id, year, year_seq FROM referrals")
    assert len(rows) == total and {r[0] for r in rows} == ids
    for year in {r[1] for r in rows}:
        seqs = sorted(int(str(r[2])) for r in rows if r[1] == year)
        assert seqs == list(range(1, len(seqs) + 1)), "REF numbers without gaps or repeats"
    assert db_rows(world, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    assert db_rows(world, "SELECT epoch FROM leader") == [(2,)]


def _log_times(log: str, text: str) -> list[datetime]:
    """When each log line containing `text` was written (the text log format)."""
    return [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        for line in log.splitlines()
        if text in line and line[:4].isdigit()
    ]


async def test_a_leader_whose_session_is_terminated_stops_before_the_standby_sends(
    world: World,
) -> None:
    port_a, port_b = free_port(), free_port()
    world.configure(http_listen=f"127.0.0.1:{port_a}")
    config_b = world.second_machine("machine-b", port_b)
    leader = BotProcess(world.config_path, world.base / "bot-a.log", http_port=port_a)
    standby = BotProcess(config_b, world.base / "bot-b.log", http_port=port_b)
    async with leader, contextlib.AsyncExitStack() as stack:
        await leader.wait_healthy()
        await standby.start()
        stack.push_async_callback(standby.stop)
        await standby.wait_status("standby")
        user, room = await open_dm(world, f"term-{world.bot_user[1:5]}")
        sent: list[str] = []

        async def trickle() -> None:
            for n in range(30):
                sent.append(await user.send(room, referral(Child_name=f"Terminated Child {n}")))
                await asyncio.sleep(0.1)

        sender = asyncio.create_task(trickle())
        await poll_until(
            lambda: sum(acks([(user, room)], world.bot_user, set(sent)).values()) >= 5,
            60,
            "5 acknowledgements",
        )
        # What a DBA (or a network cut noticed by the server) does to the leader's session:
        # the one holding the leader's advisory lock (storage/engine.py, key 101).
        terminated = db_rows(
            world,
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND classid = 101 AND granted AND objid::text::bigint ="
            " (hashtext(current_schema())::bigint + 4294967296) % 4294967296",
        )
        assert terminated == [(True,)]
        assert leader.proc is not None
        assert await asyncio.wait_for(leader.proc.wait(), 30) == 1, "it stops, exit status 1"
        await standby.wait_status("ok")
        await sender
        ids = set(sent)
        await poll_until(
            lambda: len(acks([(user, room)], world.bot_user, ids)) == len(ids),
            60,
            "every referral acknowledged",
        )
        await asyncio.sleep(1.5)  # let any duplicate arrive before counting

    counted = acks([(user, room)], world.bot_user, ids)
    assert all(counted[e] == 1 for e in ids), counted
    ended = _log_times(leader.log(), "the database session ended")
    last_sent_by_old = max(_log_times(leader.log(), "bot.pipeline: sent:"))
    first_sent_by_new = min(_log_times(standby.log(), "bot.pipeline: sent:"))
    assert ended and ended[0] <= first_sent_by_new
    assert last_sent_by_old < first_sent_by_new, (
        "the old leader sent nothing once the new one began"
    )
    assert db_rows(world, "SELECT epoch FROM leader") == [(2,)]
