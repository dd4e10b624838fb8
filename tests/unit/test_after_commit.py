"""After-commit work: a committed transaction starts the workers for what it left (new
messages, new inbox events, room jobs); a rolled-back one starts nothing.

One hook on the store (`Store.on_commit`, set by the pipeline) replaces the hand-offs that
every caller used to write after its transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.messages import InboxItem, OutgoingMessage
from storage.base import Committed
from storage.engine import Store
from storage.tx import Tx
from tests.engines import location, sql
from tests.keys import KEYRING
from tests.unit.rig import DM, NURSE, TEAM, Rig

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")


class Boom(Exception):
    pass


async def a_meeting(tx: Tx) -> int:
    """A referral and a meeting about it (which adds its create-room job)."""
    referral_id = await tx.insert_referral(
        ref="R-2026-0001",
        year=2026,
        year_seq=1,
        event_id="$ref",
        room_id=DM,
        sender=NURSE,
        received_at=tx.now,
        declared_type="contact",
        immediate_danger=False,
        decision_due=tx.now,
        form={},
    )
    return await tx.insert_meeting(
        referral_id=referral_id, event_id="$call", chair=NURSE, called_by=NURSE, scheduled=None
    )


def message(room: str, text: str) -> OutgoingMessage:
    return OutgoingMessage(room, text, f"<p>{text}</p>", sensitive=False)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(location(tmp_path / "r.db"), KEYRING)
    yield s
    await s.close()


async def test_a_commit_hands_on_what_it_left(store: Store) -> None:
    seen: list[Committed] = []
    store.on_commit = seen.append
    async with store.transaction() as tx:
        await tx.enqueue(message(TEAM, "hello"), txn_id="t1", purpose="test")
        await tx.add_inbox([InboxItem("$e1", DM, NURSE, 1, True, "pending", {"body": "x"})])
        assert seen == []  # nothing before the commit
    assert seen == [Committed(frozenset({TEAM}), frozenset({DM}), False)]


async def test_room_jobs_are_handed_on(store: Store) -> None:
    seen: list[Committed] = []
    store.on_commit = seen.append
    async with store.transaction() as tx:
        await a_meeting(tx)
    assert seen == [Committed(room_jobs=True)]


async def test_a_rollback_hands_on_nothing(store: Store) -> None:
    seen: list[Committed] = []
    store.on_commit = seen.append
    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.enqueue(message(TEAM, "never"), txn_id="t2", purpose="test")
            await a_meeting(tx)
            raise Boom
    assert seen == []
    assert sql(store.where, "SELECT COUNT(*) FROM outbox") == [(0,)]


async def test_a_transaction_that_left_nothing_calls_nothing(store: Store) -> None:
    seen: list[Committed] = []
    store.on_commit = seen.append
    async with store.transaction() as tx:
        await tx.set_kv("k", "v")
        # An event already stored is not new work.
        await tx.add_inbox([InboxItem("$e2", DM, NURSE, 1, True, "pending", {"body": "x"})])
    seen.clear()
    async with store.transaction() as tx:
        await tx.add_inbox([InboxItem("$e2", DM, NURSE, 1, True, "pending", {"body": "x"})])
    async with store.snapshot() as tx:
        await tx.get_kv("k")
    async with store.reading() as tx:
        await tx.get_kv("k")
    assert seen == []


async def test_a_savepoint_rolled_back_takes_its_rooms_with_it(store: Store) -> None:
    seen: list[Committed] = []
    store.on_commit = seen.append
    async with store.transaction() as tx:
        await tx.enqueue(message(DM, "kept"), txn_id="t3", purpose="test")
        await tx.savepoint()
        await tx.enqueue(message(TEAM, "undone"), txn_id="t4", purpose="test")
        await a_meeting(tx)
        await tx.rollback_to_savepoint()
    assert seen == [Committed(outbox_rooms=frozenset({DM}))]


async def test_a_failing_hook_does_not_undo_or_fail_the_commit(store: Store) -> None:
    def broken(_: Committed) -> None:
        raise RuntimeError("worker gone")

    store.on_commit = broken
    async with store.transaction() as tx:
        await tx.enqueue(message(TEAM, "stored"), txn_id="t5", purpose="test")
    async with store.transaction() as tx:
        assert [r.message.body for r in await tx.unsent()] == ["stored"]


async def test_work_committed_outside_the_pipeline_is_delivered(tmp_path: Path) -> None:
    # The deadline clock, device trust and verification write their notices in their own
    # transactions; nobody hands the rooms on, the commit does.
    rig = await Rig.open(tmp_path / "r.db")
    try:
        async with rig.store.transaction() as tx:
            await tx.enqueue(message(TEAM, "a notice"), txn_id="t6", purpose="test")
        await rig.pipeline.wait_idle()
        assert [m.body for m in rig.messenger.to(TEAM)] == ["a notice"]
    finally:
        await rig.close()


async def test_an_event_stored_by_the_sync_is_handled_without_a_kick(tmp_path: Path) -> None:
    rig = await Rig.open(tmp_path / "r.db")
    try:
        async with rig.store.transaction() as tx:
            await tx.add_inbox(
                [InboxItem("$help", DM, NURSE, 1, True, "pending", {"body": "!help"})]
            )
        await rig.pipeline.wait_idle()
        replies = rig.messenger.to(DM)
        assert len(replies) == 1 and "!refer" in replies[0].body
    finally:
        await rig.close()
