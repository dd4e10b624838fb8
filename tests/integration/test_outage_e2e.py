"""The homeserver crashes and comes back in the middle of a burst (a Synapse of its own,
so the session's shared one keeps running for the other tests).

The bot must ride it out without a restart: its sync loop and its outbox retry until
the homeserver answers again, then it catches up. Referrals queued in the practitioner's
client during the outage, and sent right after it, are acknowledged once each; messages
the bot had queued when the homeserver died are delivered once each.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

import bot.http_ops
from bot.chat_user import ChatUser
from bot.devserver import DevSynapse
from bot.http_ops import OpsServer
from bot.world import World, make_world
from tests.forms import referral
from tests.integration.botproc import poll_until
from tests.integration.faulty_proxy import FaultyProxy
from tests.integration.live import db_rows, running, team_summaries

pytestmark = pytest.mark.integration

BURST = 30
OUTAGE_S = 3.0
RATE_PER_S = 5


@pytest_asyncio.fixture(loop_scope="session")
async def own_world(tmp_path: Path) -> AsyncIterator[World]:
    hs = DevSynapse(tmp_path / "synapse")
    await hs.start()
    world = await make_world(hs, tmp_path / "world", bot_name="outage-bot")
    try:
        yield world
    finally:
        await world.close()
        await hs.stop()


def acked(user: ChatUser, bot: str, ids: set[str]) -> Counter[str]:
    return Counter(r.in_reply_to for r in user.received if r.sender == bot and r.in_reply_to in ids)


async def wait_acked(user: ChatUser, bot: str, ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(acked(user, bot, ids)) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(acked(user, bot, ids))} of {len(ids)} acknowledged")
        await asyncio.sleep(0.05)


async def test_homeserver_crash_mid_burst_bot_reconnects_and_catches_up(
    own_world: World,
) -> None:
    world = own_world
    hs = world.hs
    async with running(world) as app:
        assert app.sync is not None
        nurse = await world.add_user("outage-nurse")
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        await world.worker.wait_joined(world.team_room, world.bot_user)

        before = [
            await nurse.send(dm, referral(Child_name=f"Before Child {n}")) for n in range(BURST)
        ]
        await poll_until(
            lambda: len(acked(nurse, world.bot_user, set(before))) >= 3, 30, "3 acknowledgements"
        )
        await hs.kill()  # SIGKILL: requests in flight get no answer
        [(unsent_at_crash,)] = db_rows(world, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        assert isinstance(unsent_at_crash, int)
        syncs_at_crash = app.sync.syncs

        async def queued_in_client() -> list[str]:
            # matrix-nio retries these until the homeserver answers again.
            return [
                await nurse.send(dm, referral(Child_name=f"Queued Child {n}")) for n in range(3)
            ]

        queued = asyncio.create_task(queued_in_client())
        await asyncio.sleep(OUTAGE_S)
        assert app._sync_task is not None and not app._sync_task.done(), "sync loop survived"
        # It comes back with a tight message rate limit: the catch-up meets M_LIMIT_EXCEEDED,
        # which matrix-nio waits out (retry_after_ms) and retries, without limit.
        config = yaml.safe_load(hs.config_path.read_text(encoding="utf-8"))
        config["rc_message"] = {"per_second": RATE_PER_S, "burst_count": RATE_PER_S}
        hs.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        back = time.monotonic()
        await hs.start()
        during = await queued
        after = [await nurse.send(dm, referral(Child_name=f"After Child {n}")) for n in range(3)]
        everything = set(before) | set(during) | set(after)
        await wait_acked(nurse, world.bot_user, everything, timeout=60)
        caught_up = time.monotonic() - back
        await asyncio.sleep(1.5)  # let any duplicate arrive before counting
        assert app.sync.syncs > syncs_at_crash, "the bot synced again after the outage"
        assert not app._sync_task.done()

    print(
        f"\noutage {OUTAGE_S:.0f} s with {unsent_at_crash} messages unsent at the crash; "
        f"all {len(everything)} acknowledged {caught_up:.1f} s after the restart began"
    )
    assert unsent_at_crash > 0, "the crash must catch the bot with messages still to send"
    counts = acked(nurse, world.bot_user, everything)
    assert all(counts[e] == 1 for e in everything), "each referral acknowledged exactly once"
    assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(len(everything),)]
    assert db_rows(world, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    # Summaries trail the acknowledgements (gathered under load, sent after them).
    await poll_until(
        lambda: len(team_summaries(world)) >= len(everything), 30, "every team summary"
    )
    await asyncio.sleep(1.0)  # let any duplicate arrive before counting
    summaries = team_summaries(world)
    assert len(summaries) == len(everything) and set(summaries.values()) == {1}


async def test_sync_loop_survives_answers_cut_short_and_proxy_errors(world: World) -> None:
    """A sync answer that stops half-way raises out of matrix-nio (aiohttp's
    ClientPayloadError); a proxy's HTML 502 comes back as a SyncError. Neither may stop
    the bot: it backs off, syncs again from the same token and handles the referral."""
    proxy = FaultyProxy(world.hs.url)
    await proxy.start()
    text = world.config_path.read_text(encoding="utf-8")
    world.config_path.write_text(text.replace(world.hs.url, proxy.url), encoding="utf-8")
    try:
        async with running(world) as app:
            assert app.sync is not None
            nurse = await world.add_user(f"proxy-nurse-{world.bot_user[1:5]}")
            dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
            await nurse.wait_joined(dm, world.bot_user)

            proxy.cut_syncs = 1
            proxy.bad_gateway_syncs = 1
            event_id = await nurse.send(dm, referral(Child_name="Proxy Child"))
            ack = await nurse.wait_reply(event_id, timeout=30)
            assert app._sync_task is not None and not app._sync_task.done()
            await asyncio.sleep(1.0)
            failures = app.sync.failures
    finally:
        await proxy.stop()

    assert proxy.spoiled == 2
    assert failures >= 2, "both spoiled answers were seen as failed syncs"
    assert "CHILD PROTECTION REFERRAL" in ack.body
    assert len(acked(nurse, world.bot_user, {event_id})) == 1
    assert acked(nurse, world.bot_user, {event_id})[event_id] == 1
    assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(1,)]


async def test_health_says_503_while_the_homeserver_answers_no_sync(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut off from the homeserver (every sync refused) the bot acknowledges nothing new:
    /healthz must say so, so that an orchestrator restarts it (and, on PostgreSQL, a
    standby takes over), and say it no longer once syncing works again."""
    monkeypatch.setattr(bot.http_ops, "SYNC_STALE_S", 2.0)
    proxy = FaultyProxy(world.hs.url)
    await proxy.start()
    text = world.config_path.read_text(encoding="utf-8")
    world.config_path.write_text(text.replace(world.hs.url, proxy.url), encoding="utf-8")
    try:
        async with running(world) as app:
            health = OpsServer(app, "127.0.0.1", 0, app.metrics).health
            assert await health() is None
            nurse = await world.add_user(f"cutoff-nurse-{world.bot_user[1:5]}")
            dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
            await nurse.wait_joined(dm, world.bot_user)

            proxy.bad_gateway_syncs = 10_000
            event_id = await nurse.send(dm, referral(Child_name="Cutoff Child"))
            deadline = time.monotonic() + 20
            while (reason := await health()) is None:
                assert time.monotonic() < deadline, "still healthy without a sync"
                await asyncio.sleep(0.2)
            assert reason.startswith("no successful sync for ")

            proxy.bad_gateway_syncs = 0
            ack = await nurse.wait_reply(event_id, timeout=60)
            deadline = time.monotonic() + 20
            while await health() is not None:
                assert time.monotonic() < deadline, await health()
                await asyncio.sleep(0.2)
    finally:
        await proxy.stop()
    assert "CHILD PROTECTION REFERRAL" in ack.body
