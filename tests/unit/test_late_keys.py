"""A message whose room key arrives late keeps its place (issue 10, part 6): through the
real store and pipeline, with the clock the test controls."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from schemas.messages import InboxItem
from tests.forms import referral
from tests.unit.harness import NURSE, Harness

# Storage behaviour: every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.usefixtures("engine")


WAIT_S = 30.0


@pytest_asyncio.fixture
async def h(tmp_path: Path, engine: str) -> AsyncIterator[Harness]:
    harness = await Harness.open(tmp_path / "referrals.db", late_key_wait_seconds=WAIT_S)
    yield harness
    # The pipeline too: a held room's delayed look would otherwise start a worker on the
    # closed store, in the session's event loop, long after this test.
    await harness.close()


async def _undecryptable(h: Harness, event_id: str) -> int:
    """As the sync loop stores a message whose room key has not arrived; its inbox seq."""
    ts = int(h.now.timestamp() * 1000)
    async with h.store.transaction() as tx:
        await tx.add_inbox(
            [InboxItem(event_id, h.dm(NURSE), NURSE, ts, True, "undecrypted", {"raw": "..."})]
        )
    db = h.store._db
    async with db.execute("SELECT seq FROM inbox WHERE event_id = ?", (event_id,)) as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _key_arrives(h: Harness, seq: int, body: str) -> None:
    """As the sync loop does once the key is there: the message becomes pending."""
    async with h.store.transaction() as tx:
        await tx.set_decrypted(seq, {"body": body, "private": True})
    h.pipeline.kick_rooms({h.dm(NURSE)})
    await h.pipeline.wait_idle()


def _ref_of(h: Harness, event_id: str) -> str:
    acks = [m for m in h.replies_to(event_id) if m.thread_root == event_id]
    assert len(acks) == 1, [m.body for m in h.replies_to(event_id)]
    found = re.search(r"REF-\d{4}-\d{6}", acks[0].body)
    assert found, acks[0].body
    return found.group()


async def _record_texts(h: Harness, ref: str) -> list[tuple[str, dict[str, object]]]:
    async with h.store.transaction() as tx:
        r = await tx.referral_by_ref(ref)
        assert r is not None
        return [(e.kind, e.detail) for e in await tx.record_of(r.id)]


async def test_a_later_message_waits_for_the_held_one_which_keeps_its_place(h: Harness) -> None:
    held_seq = await _undecryptable(h, "$held")
    h.now += timedelta(seconds=2)
    later = await h.send(NURSE, referral(**{"Child name": "Sam Later"}))
    # Within the wait, the later referral is neither recorded nor acknowledged.
    assert h.replies_to(later) == []
    async with h.store.transaction() as tx:
        assert await tx.referral_count() == 0

    h.now += timedelta(seconds=3)
    await _key_arrives(h, held_seq, referral(**{"Child name": "Alex Early"}))
    # The held one is handled first and gets the first REF; the later one follows.
    assert _ref_of(h, "$held").endswith("-000001")
    assert _ref_of(h, later).endswith("-000002")
    entries = await _record_texts(h, _ref_of(h, "$held"))
    late = [d for k, d in entries if k == "decrypted_late"]
    assert len(late) == 1
    assert late[0]["later_messages_handled_first"] == 0
    assert "decrypted late at" in str(late[0]["text"])
    assert entries[0][0] == "received"
    # The later one was not late: nothing noted.
    assert all(k != "decrypted_late" for k, _ in await _record_texts(h, _ref_of(h, later)))


async def test_after_the_wait_later_messages_go_on_and_the_record_notes_it(h: Harness) -> None:
    held_seq = await _undecryptable(h, "$held")
    h.now += timedelta(seconds=1)
    later = await h.send(NURSE, referral(**{"Child name": "Sam Later"}))
    assert h.replies_to(later) == []

    # The wait is over: the room goes on without the held message.
    h.now += timedelta(seconds=WAIT_S)
    h.pipeline.kick_rooms({h.dm(NURSE)})
    await h.pipeline.wait_idle()
    assert _ref_of(h, later).endswith("-000001")
    # A message sent after that is not held either.
    after = await h.send(NURSE, "!help")
    assert h.replies_to(after)

    h.now += timedelta(minutes=5)
    await _key_arrives(h, held_seq, referral(**{"Child name": "Alex Early"}))
    ref = _ref_of(h, "$held")
    assert ref.endswith("-000002")  # the next REF, no gap, no reuse
    entries = await _record_texts(h, ref)
    late = [d for k, d in entries if k == "decrypted_late"]
    assert len(late) == 1
    assert late[0]["later_messages_handled_first"] == 2
    assert "2 later message(s) of the room were handled before it" in str(late[0]["text"])
    assert late[0]["decrypted_at"] != late[0]["received"]


async def test_a_held_message_in_one_room_does_not_hold_another_room(h: Harness) -> None:
    await _undecryptable(h, "$held")
    other = await h.send("@gp:example.org", referral())
    assert _ref_of(h, other).endswith("-000001")


async def test_zero_wait_never_holds(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "zero.db", late_key_wait_seconds=0.0)
    try:
        await _undecryptable(h, "$held")
        later = await h.send(NURSE, referral())
        assert _ref_of(h, later).endswith("-000001")
    finally:
        await h.store.close()


async def test_a_held_rooms_delayed_look_starts_nothing_once_the_bot_stopped(
    tmp_path: Path, engine: str
) -> None:
    import asyncio

    h = await Harness.open(tmp_path / "stop.db", late_key_wait_seconds=0.2)
    await _undecryptable(h, "$held")
    await h.send(NURSE, referral())  # held behind it: a look at the room in 0.2 s
    await h.close()
    await asyncio.sleep(0.5)
    assert h.pipeline.inbox_workers.busy == 0
