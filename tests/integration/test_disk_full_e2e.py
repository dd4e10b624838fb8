"""The disk fills up in the middle of a burst of 50 referrals, then space returns.

The bot's database is made to refuse growth (SQLite's `max_page_count` on the bot's own
connection, as a full disk would refuse it) while a practitioner sends 50 referrals in an
encrypted DM. Meanwhile: no acknowledgement for a referral that is not stored, `/healthz`
answers 503 with the reason. Once there is room again, without a restart: every referral
acknowledged exactly once, REF numbers without gaps.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from bot.devserver import free_port
from bot.world import World
from storage import disk_faults
from tests.disk import free_space, limit_pages
from tests.forms import referral
from tests.integration.botproc import poll_until
from tests.integration.live import db_rows, running, team_summaries

pytestmark = pytest.mark.integration

BURST = 50
# Room for a few referrals, not for 50 (each takes a few 4 KB pages at first).
SPARE_PAGES = 12


async def health(base: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{base}/healthz") as resp,
    ):
        return resp.status, (await resp.json()).get("reason", "")


async def test_disk_full_during_a_burst_loses_nothing_and_acknowledges_nothing_unstored(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk_faults, "PROBE_EVERY_S", 0.5)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    world.configure(http_listen=f"127.0.0.1:{port}")
    nurse = await world.add_user(f"disk-nurse-{world.bot_user[1:5]}")
    async with running(world) as app:
        assert app.store is not None and app.sync is not None
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        await world.worker.wait_joined(world.team_room, world.bot_user)
        first = await nurse.send(dm, referral(Child_name="Disk Child Zero"))
        await nurse.wait_reply(first, timeout=30)
        assert await health(base) == (200, "")

        def acked() -> Counter[str]:
            return Counter(
                r.in_reply_to
                for r in nurse.received
                if r.sender == world.bot_user and r.in_reply_to is not None
            )

        await limit_pages(app.store, SPARE_PAGES)
        burst = [await nurse.send(dm, referral(Child_name=f"Disk Child {n}")) for n in range(BURST)]
        # The disk is full: /healthz says so with the reason.
        deadline = time.monotonic() + 30
        while (status := await health(base))[0] == 200:
            assert time.monotonic() < deadline, "/healthz never turned 503"
            await asyncio.sleep(0.1)
        assert status == (503, "database not writable (disk full)")
        # It stays full for a while: the bot keeps retrying, says 503 throughout and
        # acknowledges only what it stored.
        statuses = []
        for _ in range(20):
            statuses.append(await health(base))
            await asyncio.sleep(0.25)
        stored_while_full = {e for (e,) in db_rows(world, "SELECT event_id FROM referrals")}
        acked_while_full = set(acked()) - {first}
        await asyncio.sleep(0.5)  # an acknowledgement still on its way would show now
        acked_while_full = set(acked()) - {first}
        assert set(statuses) == {(503, "database not writable (disk full)")}
        assert acked_while_full <= stored_while_full, "acknowledged but not stored"
        assert len(stored_while_full) < BURST + 1, "the disk filled before the burst ended"
        assert app._sync_task is not None and not app._sync_task.done()
        refused = app.store.faults.refused
        # The sync loop met the full disk too: it kept its token and synced the same
        # batch again (no referral is lost between sync and inbox).
        sync_failures = app.sync.failures
        pending = db_rows(world, "SELECT COUNT(*) FROM inbox WHERE state = 'pending'")[0][0]

        await free_space(app.store)
        await nurse.wait_for(lambda r: r.in_reply_to in set(burst), timeout=90, count=BURST)
        await poll_until(lambda: len(team_summaries(world)) >= BURST + 1, 60, "team summaries")
        assert await health(base) == (200, "")
        await asyncio.sleep(1.5)  # let any duplicate arrive before counting
        assert not app._sync_task.done()

    counts = acked()
    print(
        f"\ndisk full after {len(stored_while_full) - 1} of {BURST} referrals "
        f"({len(acked_while_full)} acknowledged meanwhile, {refused} writes refused, "
        f"{pending} stored but waiting, {sync_failures} syncs not stored); "
        f"all {BURST} acknowledged once after space returned"
    )
    assert all(counts[e] == 1 for e in [first, *burst]), counts
    refs = [str(r) for (r,) in db_rows(world, "SELECT ref FROM referrals ORDER BY ref")]
    assert refs == [f"REF-{refs[0][4:8]}-{n:06d}" for n in range(1, BURST + 2)]
    assert db_rows(world, "SELECT COUNT(*) FROM inbox WHERE state = 'pending'") == [(0,)]
    assert db_rows(world, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    assert set(team_summaries(world).values()) == {1}
    # Nobody was told that nothing was recorded.
    assert not any("NOTHING" in r.body for r in nurse.received if r.sender == world.bot_user)
    assert sync_failures > 0, "the burst must also meet the full disk in the sync loop"
