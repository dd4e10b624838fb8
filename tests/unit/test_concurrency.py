"""Two processes on one database: the guarantees must come from the database, not from
one process's lock. Two `Store` objects (two connections) race for the same rows; on
PostgreSQL at READ COMMITTED, on SQLite through its single writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from storage.engine import Store
from storage.tx import Tx
from tests.engines import location, sql
from tests.keys import KEYRING

pytestmark = pytest.mark.usefixtures("engine")

AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database, as two bot processes (or a bot and a CLI) would be."""
    where = location(tmp_path / "r.db")
    a = await Store.open(where, KEYRING, exclusive=False)
    b = await Store.open(where, KEYRING, exclusive=False)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def take(tx: Tx, n: int) -> int:
    """What intake does for one referral: the next number, the row, its first entry."""
    seq = await tx.next_year_seq(2026)
    await asyncio.sleep(0.002)  # widen the window between reading the number and using it
    referral_id = await tx.insert_referral(
        ref=f"REF-2026-{seq:06d}",
        year=2026,
        year_seq=seq,
        event_id=f"$race{n}",
        room_id="!dm:example.org",
        sender="@nurse:example.org",
        received_at=AT,
        declared_type="contact",
        immediate_danger=False,
        decision_due=AT + timedelta(days=1),
        form={"n": n},
    )
    await tx.append_record(
        referral_id,
        "@nurse:example.org",
        "received",
        {"event_id": f"$race{n}", "declared_type": "contact", "declared_by": "@nurse:example.org"},
    )
    return seq


async def test_concurrent_referrals_number_without_gaps_or_duplicates(
    two: tuple[Store, Store], tmp_path: Path
) -> None:
    n = 30

    async def one(i: int) -> int:
        async with two[i % 2].transaction() as tx:
            return await take(tx, i)

    numbers = await asyncio.gather(*(one(i) for i in range(n)))
    assert sorted(numbers) == list(range(1, n + 1))
    stored = sql(tmp_path / "r.db", "SELECT year_seq FROM referrals ORDER BY year_seq")
    assert [int(str(r[0])) for r in stored] == list(range(1, n + 1))
    async with two[0].transaction() as tx:
        report = await tx.check_chains()
    assert report.referrals == n and report.breaks == []


async def test_exactly_one_of_two_simultaneous_claims_wins(two: tuple[Store, Store]) -> None:
    async with two[0].transaction() as tx:
        await take(tx, 0)
        referral = await tx.referral_by_ref("REF-2026-000001")
    assert referral is not None
    both_inside = asyncio.Barrier(2)

    async def claim(store: Store, worker: str) -> bool:
        async with store.transaction() as tx:
            if store.engine == "postgresql":  # (SQLite's second BEGIN waits for the first)
                await both_inside.wait()  # both transactions are open before either claims
            won = await tx.claim(referral.id, worker)
            await asyncio.sleep(0.01)  # hold the claim uncommitted a while
            return won

    results = await asyncio.wait_for(
        asyncio.gather(claim(two[0], "@a:example.org"), claim(two[1], "@b:example.org")), 30
    )
    assert sorted(results) == [False, True]
    winner = "@a:example.org" if results[0] else "@b:example.org"
    async with two[1].transaction() as tx:
        stored = await tx.referral_by_id(referral.id)
    assert stored is not None and stored.claimed_by == winner and stored.state == "claimed"


async def test_two_writers_on_one_running_record_keep_one_chain(
    two: tuple[Store, Store],
) -> None:
    async with two[0].transaction() as tx:
        await take(tx, 0)
        referral = await tx.referral_by_ref("REF-2026-000001")
    assert referral is not None

    async def note(i: int) -> None:
        async with two[i % 2].transaction() as tx:
            await tx.append_record(referral.id, "@w:example.org", "note", {"i": i})

    await asyncio.gather(*(note(i) for i in range(20)))
    async with two[0].transaction() as tx:
        report = await tx.check_chains()
        entries = await tx.record_of(referral.id)
    assert report.breaks == [] and len(entries) == 21


async def test_the_same_event_stored_by_two_processes_is_one_inbox_row(
    two: tuple[Store, Store], tmp_path: Path
) -> None:
    from schemas.messages import InboxItem

    item = InboxItem("$dup", "!dm:example.org", "@n:example.org", 1, True, "pending", {})
    both_inside = asyncio.Barrier(2)

    async def store_it(store: Store) -> set[str]:
        async with store.transaction() as tx:
            if store.engine == "postgresql":
                await both_inside.wait()
            rooms = await tx.add_inbox([item])
            await asyncio.sleep(0.01)
            return rooms

    results = await asyncio.wait_for(asyncio.gather(store_it(two[0]), store_it(two[1])), 30)
    assert sorted(len(r) for r in results) == [0, 1]  # one stored it; the other saw it there
    assert sql(tmp_path / "r.db", "SELECT COUNT(*) FROM inbox") == [(1,)]
