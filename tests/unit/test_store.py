"""The store: migrations, append-only running record, file permissions."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from storage.engine import Store, _split_sql
from storage.migrations import LATEST_VERSION, MIGRATIONS
from tests.keys import KEYRING


async def test_fresh_database_is_migrated_and_private(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "data" / "referrals.db", KEYRING)
    assert await store.schema_version() == LATEST_VERSION
    await store.close()
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "referrals.db").stat().st_mode) == 0o600
    db = sqlite3.connect(tmp_path / "data" / "referrals.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_upgrade_from_the_first_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first = await Store.open(path, KEYRING)
    await first.close()
    # Reopening applies nothing twice and keeps the version.
    again = await Store.open(path, KEYRING)
    assert await again.schema_version() == LATEST_VERSION
    await again.close()


async def test_running_record_is_append_only(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "r.db", KEYRING)
    async with store.transaction() as tx:
        await tx._db.execute(
            "INSERT INTO referrals (ref, year, year_seq, event_id, room_id, sender, received_at,"
            " declared_type, declared_by, current_type, immediate_danger, state, decision_due,"
            " form) VALUES ('REF-2026-000001', 2026, 1, '$e', '!r', '@u:x', 't',"
            " 'contact', '@u:x', 'contact', 0, 'received', 't', '{}')"
        )
        await tx.append_record(1, "@u:x", "received")
    await store.close()
    db = sqlite3.connect(tmp_path / "r.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE record_entries SET kind = 'forged'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM record_entries")


async def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "r.db", KEYRING)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.set_kv("k", "v")
            raise RuntimeError("abort")
    async with store.transaction() as tx:
        assert await tx.get_kv("k") is None
    await store.close()


def test_sql_splitter_keeps_triggers_whole() -> None:
    parts = _split_sql(
        "CREATE TABLE a (x);\n-- comment\nCREATE TRIGGER t BEFORE DELETE ON a\n"
        "    BEGIN SELECT RAISE(ABORT, 'no'); END;\nCREATE INDEX i ON a (x);"
    )
    assert len(parts) == 3 and parts[1].startswith("CREATE TRIGGER")


# -- migrations: every step, from the first schema, keeps what was stored ----------------

# Rows as the FIRST schema stored them, written in that schema's own SQL so this test keeps
# working whatever later steps change (never through today's insert methods).
SCHEMA_1_ROWS = [
    "INSERT INTO kv (key, value) VALUES ('sync_token', 's72594_4483_1934')",
    "INSERT INTO referrals (id, ref, year, year_seq, event_id, room_id, sender, received_at,"
    " declared_type, declared_by, current_type, immediate_danger, state, decision_due, form)"
    " VALUES (1, 'REF-2025-000001', 2025, 1, '$ev1', '!dm1', '@nurse:example.org',"
    " '2025-11-03T09:15:00.000+00:00', 'child protection referral', '@nurse:example.org',"
    " 'child protection referral', 0, 'received', '2025-11-04T09:15:00.000+00:00',"
    ' \'{"child":{"name":"Alex Testchild"}}\')',
    "INSERT INTO referrals (id, ref, year, year_seq, event_id, room_id, sender, received_at,"
    " declared_type, declared_by, current_type, immediate_danger, state, decision_due, form)"
    " VALUES (2, 'REF-2025-000002', 2025, 2, '$ev2', '!dm2', '@gp:example.org',"
    " '2025-11-03T10:00:00.000+00:00', 'contact', '@gp:example.org', 'contact', 1,"
    " 'received', '2025-11-03T11:00:00.000+00:00', '{}')",
    "INSERT INTO record_entries (referral_id, at, actor, kind, detail) VALUES"
    " (1, '2025-11-03T09:15:01.000+00:00', '@nurse:example.org', 'received',"
    ' \'{"event_id":"$ev1"}\'),'
    " (1, '2025-11-03T09:15:02.000+00:00', 'referral-bot', 'ack_sent', '{}'),"
    " (2, '2025-11-03T10:00:01.000+00:00', '@gp:example.org', 'received', '{}')",
    "INSERT INTO inbox (event_id, room_id, sender, origin_ts, room_encrypted, state, payload,"
    " received_at) VALUES ('$ev1', '!dm1', '@nurse:example.org', 1762161300000, 1, 'done', NULL,"
    " '2025-11-03T09:15:00.500+00:00'), ('$ev3', '!dm1', '@nurse:example.org', 1762161400000,"
    " 1, 'pending', '{\"body\":\"!help\"}', '2025-11-03T09:16:40.000+00:00')",
    "INSERT INTO outbox (txn_id, room_id, content, sensitive, referral_id, purpose, created_at)"
    ' VALUES (\'rbtxn1\', \'!dm2\', \'{"room_id":"!dm2","body":"ack","html":"ack",'
    '"reply_to":"$ev2","thread_root":"$ev2","sensitive":true}\', 1, 2, \'ack\','
    " '2025-11-03T10:00:01.000+00:00')",
]


async def _store_at(path: Path, version: int) -> Store:
    """A store whose schema is exactly `version` (Store.open would go to the latest)."""
    import aiosqlite

    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = aiosqlite.Row
    store = Store(db, path, KEYRING, None)
    await store.migrate(target=version)
    return store


async def test_each_step_applies_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "steps.db"
    # The numbers in MIGRATIONS (a gap between branches' steps is closed at merge).
    for version, _ in MIGRATIONS:
        store = await _store_at(path, version)
        assert await store.schema_version() == version
        await store.close()
    store = await Store.open(path, KEYRING)
    assert await store.schema_version() == LATEST_VERSION
    await store.close()


async def test_rows_stored_at_the_first_schema_survive_every_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    old = await _store_at(path, 1)
    async with old.transaction() as tx:
        for sql in SCHEMA_1_ROWS:
            await tx._db.execute(sql)
    await old.close()

    store = await Store.open(path, KEYRING)  # upgrades to the latest
    assert await store.schema_version() == LATEST_VERSION
    async with store.transaction() as tx:
        assert await tx.get_kv("sync_token") == "s72594_4483_1934"
        first = await tx.referral_by_ref("REF-2025-000001")
        second = await tx.referral_by_event("$ev2")
        record = await tx.record_of(1)
        pending = await tx.next_pending("!dm1")
        unsent = await tx.unsent()
        assert await tx.next_year_seq(2025) == 3
    await store.close()

    assert first is not None and second is not None
    assert first.declared_type == "child protection referral"
    assert first.declared_by == "@nurse:example.org"
    assert first.form == {"child": {"name": "Alex Testchild"}}
    assert first.received_at.isoformat() == "2025-11-03T09:15:00+00:00"
    assert second.current_type == "contact" and second.immediate_danger
    assert [e.kind for e in record] == ["received", "ack_sent"]
    assert record[0].detail == {"event_id": "$ev1"}
    assert pending is not None and pending.event_id == "$ev3" and pending.body == "!help"
    assert [(r.txn_id, r.purpose, r.referral_id) for r in unsent] == [("rbtxn1", "ack", 2)]
    assert unsent[0].message.reply_to == "$ev2"

    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM record_entries")  # still append-only after the upgrade
    db.close()


async def test_a_database_newer_than_the_bot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this bot"):
        await Store.open(path, KEYRING)


async def test_the_read_connection_sees_commits_and_cannot_write(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "r.db", KEYRING)
    async with store.transaction() as tx:
        await tx.set_kv("k", "v1")
    async with store.reading() as tx:
        assert await tx.get_kv("k") == "v1"
        counts = await tx.ops_counts()
        assert counts.referrals == {} and counts.outbox_depth == 0
    async with store.transaction() as tx:
        await tx.set_kv("k", "v2")
    async with store.reading() as tx:
        assert await tx.get_kv("k") == "v2"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await tx.set_kv("k", "forged")
    await store.close()


# The queries that run on every tick of the deadline clock (inside its write transaction)
# and on every /metrics scrape: each must be answered from an index, not by reading every
# referral's row (900 MB with 100,000 referrals; docs/BENCHMARKS.md).
FREQUENT_QUERIES = [
    pytest.param(
        "SELECT * FROM referrals WHERE channel = 'phone' AND written_followup_at IS NULL"
        " AND written_followup_due <= ? AND followup_flagged_at IS NULL",
        ("2026-11-27T16:00:00+00:00",),
        "USING INDEX referrals_followup_due",
        id="Tx.followups_overdue",
    ),
    pytest.param(
        "SELECT * FROM referrals WHERE state IN ('received', 'claimed')"
        " AND decision_due < ? AND (last_reminder_at IS NULL OR last_reminder_at < ?)"
        " ORDER BY received_at, id",
        ("2026-11-27T16:00:00.000+00:00", "2026-11-27T15:00:00.000+00:00"),
        "USING INDEX referrals_open_due (state=? AND decision_due<?)",
        id="Tx.due_for_reminder",
    ),
    pytest.param(
        "SELECT current_type, state, COUNT(*) FROM referrals GROUP BY current_type, state",
        (),
        "USING COVERING INDEX referrals_by_type_state",
        id="Tx.ops_counts",
    ),
]


@pytest.mark.parametrize(("query", "args", "plan_says"), FREQUENT_QUERIES)
async def test_frequent_queries_read_an_index_not_every_referral(
    tmp_path: Path, query: str, args: tuple[str, ...], plan_says: str
) -> None:
    store = await Store.open(tmp_path / "r.db", KEYRING)
    await store.close()
    db = sqlite3.connect(tmp_path / "r.db")
    plan = " ".join(str(row) for row in db.execute("EXPLAIN QUERY PLAN " + query, args))
    db.close()
    assert plan_says in plan
