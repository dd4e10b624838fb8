"""The store: migrations, append-only running record, file permissions.

Every test here that takes `engine` runs on SQLite and on PostgreSQL (tests/engines.py)."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from storage.engine import Postgres, Store, _pg_connect, _split_sql
from storage.migrations import LATEST_VERSION, MIGRATIONS
from storage.migrations_pg import POSTGRES_MIGRATIONS
from storage.sql import PostgresConnection, SqliteConnection
from tests.engines import location, on_postgres, sql
from tests.keys import KEYRING


def test_every_schema_step_has_sqlite_and_postgresql_sql() -> None:
    """One migration history: a step added for SQLite needs its PostgreSQL twin in
    storage/migrations_pg.py (the rules for writing it are at the top of that file)."""
    numbers = [v for v, _ in MIGRATIONS]
    assert numbers == list(range(1, len(numbers) + 1))
    assert sorted(POSTGRES_MIGRATIONS) == numbers, "steps without PostgreSQL SQL: " + str(
        sorted(set(numbers) - set(POSTGRES_MIGRATIONS))
    )


async def test_fresh_database_is_migrated_and_private(tmp_path: Path, engine: str) -> None:
    store = await Store.open(location(tmp_path / "data" / "referrals.db"), KEYRING)
    assert await store.schema_version() == LATEST_VERSION
    assert store.engine == engine
    await store.close()
    if on_postgres():
        return
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "referrals.db").stat().st_mode) == 0o600
    db = sqlite3.connect(tmp_path / "data" / "referrals.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_upgrade_from_the_first_schema(tmp_path: Path, engine: str) -> None:
    path = location(tmp_path / "old.db")
    first = await Store.open(path, KEYRING)
    await first.close()
    # Reopening applies nothing twice and keeps the version.
    again = await Store.open(path, KEYRING)
    assert await again.schema_version() == LATEST_VERSION
    await again.close()


async def test_running_record_is_append_only(tmp_path: Path, engine: str) -> None:
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    async with store.transaction() as tx:
        await tx._db.execute(
            "INSERT INTO referrals (ref, year, year_seq, event_id, room_id, sender, received_at,"
            " declared_type, declared_by, current_type, immediate_danger, state, decision_due,"
            " form) VALUES ('REF-2026-000001', 2026, 1, '$e', '!r', '@u:x', 't',"
            " 'contact', '@u:x', 'contact', 0, 'received', 't', '{}')"
        )
        await tx.append_record(1, "@u:x", "received")
    await store.close()
    # From outside the bot, with a SQL shell on the database.
    for statement in ("UPDATE record_entries SET kind = 'forged'", "DELETE FROM record_entries"):
        with pytest.raises(Exception, match="append-only"):
            sql(tmp_path / "r.db", statement)
    if on_postgres():
        with pytest.raises(Exception, match="append-only"):
            sql(tmp_path / "r.db", "TRUNCATE record_entries CASCADE")
    assert sql(tmp_path / "r.db", "SELECT kind FROM record_entries") == [("received",)]


async def test_the_guard_is_lifted_only_inside_the_transaction(tmp_path: Path, engine: str) -> None:
    """`append_only_lifted` (purge, rotate-key): the record can change inside that one
    transaction; after it, and after a rollback, the guard is back."""
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    async with store.transaction() as tx:
        await tx._db.execute(
            "INSERT INTO referrals (ref, year, year_seq, event_id, room_id, sender, received_at,"
            " declared_type, declared_by, current_type, immediate_danger, state, decision_due,"
            " form) VALUES ('REF-2026-000001', 2026, 1, '$e', '!r', '@u:x', 't',"
            " 'contact', '@u:x', 'contact', 0, 'received', 't', '{}')"
        )
        await tx.append_record(1, "@u:x", "received")
        await tx.append_record(1, "@u:x", "noted")
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx, tx.append_only_lifted():
            await tx._db.execute("DELETE FROM record_entries WHERE kind = 'noted'")
            raise RuntimeError("abort")
    async with store.transaction() as tx:
        assert [e.kind for e in await tx.record_of(1)] == ["received", "noted"]
        async with tx.append_only_lifted():
            await tx._db.execute("DELETE FROM record_entries WHERE kind = 'noted'")
    async with store.transaction() as tx:
        assert [e.kind for e in await tx.record_of(1)] == ["received"]
    with pytest.raises(Exception, match="append-only"):
        async with store.transaction() as tx:
            await tx._db.execute("DELETE FROM record_entries")
    await store.close()


async def test_a_failed_transaction_leaves_nothing(tmp_path: Path, engine: str) -> None:
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
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


async def _store_at(db_path: Path, version: int) -> Store:
    """A store whose schema is exactly `version` (Store.open would go to the latest)."""
    import aiosqlite

    where = location(db_path)
    if isinstance(where, Postgres):
        store = Store(PostgresConnection(await _pg_connect(where)), where, KEYRING, None)
    else:
        db = await aiosqlite.connect(where, isolation_level=None)
        db.row_factory = aiosqlite.Row
        store = Store(SqliteConnection(db), where, KEYRING, None)
    await store.migrate(target=version)
    return store


async def test_each_step_applies_once_in_order(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "steps.db"
    for version, _ in MIGRATIONS:  # numbers may have gaps between branches
        store = await _store_at(path, version)
        assert await store.schema_version() == version
        await store.close()
    store = await Store.open(location(path), KEYRING)
    assert await store.schema_version() == LATEST_VERSION
    await store.close()


async def test_rows_stored_at_the_first_schema_survive_every_upgrade(
    tmp_path: Path, engine: str
) -> None:
    path = tmp_path / "v1.db"
    old = await _store_at(path, 1)
    async with old.transaction() as tx:
        for statement in SCHEMA_1_ROWS:
            await tx._db.execute(statement)
    await old.close()

    store = await Store.open(location(path), KEYRING)  # upgrades to the latest
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

    with pytest.raises(Exception, match="append-only"):
        sql(path, "DELETE FROM record_entries")  # still append-only after the upgrade


async def test_a_database_newer_than_the_bot_is_refused(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "future.db"
    where = location(path)
    if on_postgres():
        sql(path, "CREATE TABLE schema_version (version BIGINT NOT NULL)")
        sql(path, "INSERT INTO schema_version VALUES (?)", LATEST_VERSION + 1)
    else:
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
        db.close()
    with pytest.raises(RuntimeError, match="newer than this bot"):
        await Store.open(where, KEYRING)


async def test_the_read_connection_sees_commits_and_cannot_write(
    tmp_path: Path, engine: str
) -> None:
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
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
        with pytest.raises(Exception, match=r"read-?only"):
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


async def test_a_lost_database_session_is_noticed(tmp_path: Path, engine: str) -> None:
    """PostgreSQL: the backend terminated under the bot (a restart, a DBA, the network)
    sets `Store.lost`, which stops the bot; closing the store ourselves does not."""
    if not on_postgres():
        pytest.skip("a SQLite file has no session to lose")
    import asyncio

    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    assert not store.lost.is_set()
    sql(
        tmp_path / "r.db",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = '' AND pid != pg_backend_pid()"
        " AND query NOT LIKE '%pg_terminate_backend%' AND backend_type = 'client backend'"
        " AND datname = current_database() AND pid IN (SELECT pid FROM pg_locks"
        " WHERE locktype = 'advisory')",
    )
    await asyncio.wait_for(store.lost.wait(), 10)
    await store.close()

    again = await Store.open(location(tmp_path / "r.db"), KEYRING)  # the lock went too
    await again.close()
    assert not again.lost.is_set()


async def test_both_engines_have_the_same_tables_columns_and_indexes(
    tmp_path: Path, postgres_server: object
) -> None:
    """The PostgreSQL twin of every step builds the same schema as the SQLite step: a
    column or index forgotten in storage/migrations_pg.py fails here."""
    from tests import engines

    store = await Store.open(tmp_path / "lite.db", KEYRING)
    await store.close()
    sqlite_tables = {
        str(t): {str(c[1]) for c in sql(tmp_path / "lite.db", f"PRAGMA table_info({t})")}
        for (t,) in sql(
            tmp_path / "lite.db",
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
    }
    sqlite_indexes = {
        str(n)
        for (n,) in sql(
            tmp_path / "lite.db",
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
        )
    }
    engines.CURRENT = postgres_server  # type: ignore[assignment]
    try:
        store = await Store.open(location(tmp_path / "pg.db"), KEYRING)
        await store.close()
        columns = sql(
            tmp_path / "pg.db",
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()",
        )
        pg_indexes = {
            str(n)
            for (n,) in sql(
                tmp_path / "pg.db",
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                " AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
            )
        }
    finally:
        engines.CURRENT = None
    pg_tables: dict[str, set[str]] = {}
    for table, column in columns:
        pg_tables.setdefault(str(table), set()).add(str(column))
    pg_tables.pop("schema_version")  # PostgreSQL's PRAGMA user_version
    pg_tables["meeting_participants"].discard("rowid")  # SQLite's implicit rowid
    assert pg_tables == sqlite_tables
    assert pg_indexes == sqlite_indexes


async def test_every_generated_key_is_returned_on_postgresql(tmp_path: Path) -> None:
    """An INSERT's `lastrowid` on PostgreSQL comes from `RETURNING key`, for the tables in
    storage.sql.GENERATED_KEYS: a new table with an INTEGER PRIMARY KEY must be listed."""
    from storage.sql import GENERATED_KEYS

    store = await Store.open(tmp_path / "r.db", KEYRING)
    await store.close()
    generated = {}
    for (table,) in sql(
        tmp_path / "r.db",
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    ):
        keys = [c for c in sql(tmp_path / "r.db", f"PRAGMA table_info({table})") if c[5]]
        if len(keys) == 1 and str(keys[0][2]).upper() == "INTEGER":
            generated[str(table)] = str(keys[0][1])
    assert generated == GENERATED_KEYS


async def test_a_streamed_query_yields_every_row_in_order_across_batches(
    tmp_path: Path, engine: str
) -> None:
    """`Connection.stream` (what `verify` reads the running records with): on PostgreSQL a
    server-side cursor fetching STREAM_BATCH rows at a time, on SQLite the cursor."""
    from storage.sql import STREAM_BATCH

    n = STREAM_BATCH * 2 + 7
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    try:
        async with store.transaction() as tx:
            for i in range(n):
                await tx.set_kv(f"s{i:06d}", str(i))
        async with store.snapshot() as tx:
            keys = [
                str(r[0])
                async for r in tx._db.stream("SELECT key FROM kv WHERE key LIKE 's%' ORDER BY key")
            ]
        assert keys == [f"s{i:06d}" for i in range(n)]
    finally:
        await store.close()
