"""The store: migrations, append-only running record, file permissions."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from bot.migrations import LATEST_VERSION
from bot.store import Store, _split_sql
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
