"""Idempotency: an event delivered again (duplicate sync, restart before the sync token
was saved) is handled at most once: no second record, no second acknowledgement."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from handlers.ports import txn_id_for
from schemas.messages import InboxItem
from tests.forms import referral
from tests.unit.rig import DM, NURSE, START, Rig, rig_at, sql

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")

EVENTS = [
    ("$r1", referral(Child_name="Replay One")),
    ("$r2", referral(Child_name="Replay Two", Referral_type="contact")),
    ("$bad", referral(Referral_type=None)),
    ("$help", "!help"),
    ("$tpl", "!refer template"),
    ("$unk", "!nope"),
    ("$chat", "hello"),
]


def items(events: list[tuple[str, str]]) -> list[InboxItem]:
    ts = int(START.timestamp() * 1000)
    return [
        InboxItem(event_id, DM, NURSE, ts + n, True, "pending", {"body": body})
        for n, (event_id, body) in enumerate(events)
    ]


async def deliver(rig: Rig, batch: list[InboxItem]) -> None:
    """What the sync loop does with a sync response."""
    await rig.inject(*batch)


def state(rig: Rig, db: Path) -> tuple[object, ...]:
    """Everything that a second handling would change."""
    return (
        sql(db, "SELECT COUNT(*) FROM referrals"),
        sql(db, "SELECT kind, COUNT(*) FROM record_entries GROUP BY kind ORDER BY kind"),
        sql(db, "SELECT COUNT(*) FROM outbox"),
        sql(db, "SELECT COUNT(*) FROM inbox"),
        len(rig.messenger.sent),
    )


async def test_replayed_events_make_no_second_record_or_reply(tmp_path: Path) -> None:
    db = tmp_path / "referrals.db"
    async with rig_at(db) as rig:
        # The same event twice in one sync, and the whole sync delivered twice.
        await deliver(rig, items(EVENTS) + items(EVENTS[:2]))
        first = state(rig, db)
        await deliver(rig, items(EVENTS))
        await deliver(rig, list(reversed(items(EVENTS))))
        assert state(rig, db) == first
        messenger = rig.messenger

    # Restart (a new store and pipeline on the same file), then the same events again,
    # as after a crash before the sync token was saved.
    async with rig_at(db) as rig:
        rig.messenger = messenger
        rig.pipeline.messenger = messenger
        await rig.pipeline.resume()
        await deliver(rig, items(EVENTS))
        assert state(rig, db) == first

    assert sql(db, "SELECT COUNT(*) FROM referrals") == [(2,)]
    # One acknowledgement per referral was sent (each send is in the running record),
    # and every event was answered exactly once.
    kinds = Counter(k for (k,) in sql(db, "SELECT kind FROM record_entries"))
    assert kinds == {"received": 2, "ack_sent": 2, "team_summary_sent": 2}
    replied = Counter(m.reply_to for _, m in messenger.sent if m.reply_to)
    assert replied == {event_id: 1 for event_id, _ in EVENTS}
    assert {t for t, _ in messenger.sent} >= {txn_id_for("$r1", "ack"), txn_id_for("$r2", "ack")}


async def test_a_replay_while_the_first_delivery_is_still_pending(tmp_path: Path) -> None:
    db = tmp_path / "referrals.db"
    async with rig_at(db) as rig:
        async with rig.store.transaction() as tx:  # stored, then a crash before handling
            await tx.add_inbox(items(EVENTS[:1]))
        await deliver(rig, items(EVENTS[:1]))  # delivered again: already known
        await rig.pipeline.resume()  # the restart picks up the stored copy
        await rig.pipeline.wait_idle()
        await deliver(rig, items(EVENTS[:1]))  # and once more after it was handled
        assert sql(db, "SELECT COUNT(*) FROM referrals") == [(1,)]
        assert len(rig.messenger.to(DM)) == 1
